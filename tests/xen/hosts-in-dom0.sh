#!/bin/sh
# Runs in the test bed's dom0 (tests/xen/xen_hosts_test): clones on other Xen hosts. The
# other hosts are network namespaces h1 and h2 in dom0, each with a veth on the hosts' bridge
# sfhosts and an `sfd-xen host` agent whose sockets are in it (same hypervisor: what is
# tested is the agents' protocol, the image's multicast and each host restoring and serving
# its own clones). Guests run xen_clone_api (tests/xen/xen_clone_api.c).
#  1. g0, 3 clones with --host h1 --host h2: clone 1 here, 2 on h1, 3 on h2; identity,
#     memory, network and the statuses synced 11, exited 7, signaled 11 (the agents answer
#     the clones of h1 and h2); the image went out once (bytes sent < 1.25 x the image, for
#     two hosts) and each agent received it; no clone domain is left.
#  2. g1, 2 clones with --host h1: h1's agent is killed (its lifeline destroys clone 2), the
#     parent sees clone 2 lost and kills clone 1; nothing left.
#  3. g2, 2 clones with --host h1: both vifs have MAC learning off (the origin and the agent
#     pin them); the origin sfd-xen is killed; its lifeline destroys clone 1 and h1's agent,
#     seeing the link end, destroys clone 2.
#  4. a wrong key: the agent refuses the origin, the parent's clone() fails with the reason,
#     nothing is left.
#  5. a --netns that is not a network namespace: the agent refuses to start.
# Prints "xen hosts test: ok" at the end; any failure prints the consoles and logs.
set -u
. /root/dom0-lib.sh
start_namespace_hosts 2
head -c 32 /dev/urandom | xxd -p -c 64 >/root/wrong.key
hosts=$host_options

# 1. three clones on three hosts
serve_options="--host 10.214.0.2:7791 --host 10.214.0.3:7791 $hosts"
statuses_ok g0
for h in 1 2; do
  grep -q 'image of g0 received' "/tmp/sfd-xen-h$h.log" || fail "h$h's agent did not log the image"
done
grep -q 'restored clone 2 as g0-sf2' /tmp/sfd-xen-h1.log || fail "clone 2 was not restored by h1's agent"
grep -q 'restored clone 3 as g0-sf3' /tmp/sfd-xen-h2.log || fail "clone 3 was not restored by h2's agent"
line=$(grep 'multicast once to 2 host(s)' /tmp/sfd-xen-g0.log) || fail "sfd-xen did not multicast the image to 2 hosts"
echo "$line"
# "... image of M MiB multicast once to 2 host(s): S MiB sent, 2 reported it complete": once
# means S well under 2 x M.
echo "$line" | grep -q ' MiB sent, 2 reported it complete$' || fail "not both hosts reported the image complete: $line"
echo "$line" | awk '{ for (i = 1; i <= NF; i++) { if ($i == "image" && $(i+1) == "of") m = $(i+2); if ($i == "sent,") s = $(i-2) } }
                    END { exit !(m > 0 && s < 1.25 * m) }' || fail "the image was not sent once: $line"
stop_served g0
echo "1: three hosts, statuses, identity, memory, network: ok"

# 2. a host agent killed: its clone is lost
serve_options="--host 10.214.0.2:7791 $hosts"
start_served g1 128 --args wait
sf-xen-await g1 'xca: parent .*clones running|xca: FAIL' 900 >/dev/null || fail "g1 did not clone"
[ "$(clones_of g1 | wc -l)" = 2 ] || fail "g1 does not have 2 clones running: $(clones_of g1)"
kill -9 "$agent_1"
wait "$agent_1" 2>/dev/null
sf-xen-await g1 'xca: killed|xca: FAIL' 300 >/dev/null || fail "g1's parent did not kill its clones"
expect g1 "xca: ended 2 lost 0"
await 60 '[ -z "$(clones_of g1)" ]' || fail "clone domains left after the agent was killed: $(clones_of g1)"
stop_served g1
start_agent 1
echo "2: killed host agent: ok"

# 3. the origin killed: both hosts' clones go
start_served g2 128 --args wait,keep
sf-xen-await g2 'xca: parent .*clones running|xca: FAIL' 900 >/dev/null || fail "g2 did not clone"
[ "$(clones_of g2 | wc -l)" = 2 ] || fail "g2 does not have 2 clones running: $(clones_of g2)"
pinned g2-sf1 g2-sf2
kill -9 "$sfd_pid"
wait "$sfd_pid" 2>/dev/null
await 120 '[ -z "$(clones_of g2)" ]' || fail "clone domains left after the origin sfd-xen was killed: $(clones_of g2)"
await 30 "grep -q 'destroying its clones here' /tmp/sfd-xen-h1.log" || fail "h1's agent did not see its origin go"
kill -0 "$agent_1" || fail "h1's agent ended with its origin"
xl destroy g2
echo "3: killed origin: ok"

# 4. a wrong key
serve_options="--host 10.214.0.2:7791 --host-iface sfhosts --host-key-file /root/wrong.key"
start_served g3 128 --args statuses
sf-xen-await g3 'xca: done|xca: FAIL|sf-guest: command exit' 900 >/dev/null || fail "g3's program did not finish"
grep -q "does not hold this host's key" /tmp/sfd-xen-g3.log || fail "sfd-xen did not log the refusal"
console g3 | grep -q "does not hold this host's key" || fail "the guest's clone() did not report the refusal"
[ -z "$(clones_of g3)" ] || fail "clone domains left after the refusal: $(clones_of g3)"
stop_served g3
echo "4: wrong key: ok"

# 5. a --netns that is not a network namespace: the agent refuses to start. It must not
#    listen in dom0's own namespace instead, so the address is one dom0 has (an agent that
#    started would run until timeout's SIGTERM, then exit 0).
timeout 30 sfd-xen host --listen 10.214.0.1:7792 --iface sfhosts --key-file /root/hosts.key --netns /root/hosts.key 2>/tmp/sfd-xen-badns.log
rc=$?
[ $rc = 1 ] || fail "sfd-xen host with a --netns that is not a network namespace exited $rc, not 1: $(cat /tmp/sfd-xen-badns.log)"
grep -q -- '--netns /root/hosts.key: Invalid argument' /tmp/sfd-xen-badns.log || fail "no clear --netns error: $(cat /tmp/sfd-xen-badns.log)"
echo "5: bad --netns: ok"

kill "$agent_1" "$agent_2"
wait "$agent_1" "$agent_2" || fail "an agent did not stop cleanly on SIGTERM"
only_dom0
echo "xen hosts test: ok"
