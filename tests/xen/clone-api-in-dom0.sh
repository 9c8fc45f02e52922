#!/bin/sh
# Runs in the test bed's dom0 (tests/xen/xen_clone_api_test): the clone API inside PV guests
# served by sfd-xen. Guests run xen_clone_api (tests/xen/xen_clone_api.c) as their command.
#  1. g0, 3 clones: identity (hostname, address by clone ID), private memory, the cluster
#     network (each clone pings the parent), and the statuses synced 11, exited 7,
#     signaled 11; no clone domain is left; sfd-xen ends when g0 is destroyed.
#  2. g1, 2 clones: dom0 destroys one from outside (the parent sees it lost), the parent
#     kills the other; no clone domain is left.
#  3. g2, 2 clones: each clone's vif has MAC learning off (its MAC pinned); then sfd-xen is
#     killed with SIGKILL: its lifeline destroys the clones and removes the served keys.
# Prints "xen clone api test: ok" at the end; any failure prints the consoles and logs.
set -u
. /root/dom0-lib.sh

# 1. statuses, identity, memory, network
statuses_ok g0
grep -q 'g0: saved in' /tmp/sfd-xen-g0.log || fail "sfd-xen did not log the save"
stop_served g0
echo "1: statuses, identity, memory, network: ok"

# 2. a clone destroyed from outside is lost; kill ends the other
start_served g1 128 --args wait
sf-xen-await g1 'xca: parent .*clones running|xca: FAIL' 900 >/dev/null || fail "g1 did not clone"
xl destroy g1-sf1 || fail "xl destroy g1-sf1"
sf-xen-await g1 'xca: killed|xca: FAIL' 300 >/dev/null || fail "g1's parent did not kill its clones"
expect g1 "xca: ended 1 lost 0"
[ -z "$(clones_of g1)" ] || fail "clone domains left after kill: $(clones_of g1)"
stop_served g1
echo "2: lost and kill: ok"

# 3. sfd-xen killed: the lifeline cleans up
start_served g2 128 --args wait,keep
sf-xen-await g2 'xca: parent .*clones running|xca: FAIL' 900 >/dev/null || fail "g2 did not clone"
[ "$(clones_of g2 | wc -l)" = 2 ] || fail "g2 does not have 2 clones running: $(clones_of g2)"
pinned g2-sf1 g2-sf2
g2=$(xl domid g2)
kill -9 "$sfd_pid"
wait "$sfd_pid" 2>/dev/null
await 120 '[ -z "$(clones_of g2)" ]' || fail "clone domains left after sfd-xen was killed: $(clones_of g2)"
await 30 "! xenstore-exists /local/domain/$g2/data/sf-ctl" || fail "the served keys of g2 are left after sfd-xen was killed"
xl destroy g2
echo "3: killed sfd-xen: ok"

only_dom0
echo "xen clone api test: ok"
