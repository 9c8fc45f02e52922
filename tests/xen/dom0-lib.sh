# Shell helpers of the dom0 test scripts (clone-api-in-dom0.sh, mpi-in-dom0.sh), sourced in
# the test bed's dom0 from /root/dom0-lib.sh.
log=/var/log/xen/console
# fail MESSAGE: prints it, the guests' consoles and sfd-xen's logs, and exits 1.
fail() {
  echo "FAIL: $*"
  for f in "$log"/guest-*.log; do echo "--- $f"; tr -d '\r' <"$f" | grep -v 'sf-guest: tick' | tail -n 40; done
  for f in /tmp/sfd-xen-*.log; do echo "--- $f"; tail -n 40 "$f"; done
  xl list
  exit 1
}
# console NAME: guest NAME's console so far.
console() { tr -d '\r' <"$log/guest-$1.log" 2>/dev/null; }
# expect NAME TEXT: guest NAME's console has a line with TEXT, or the test fails.
expect() {
  console "$1" | grep -q -F -- "$2" || fail "guest $1's console has no line with: $2"
}
# clones_of NAME: the clone domains of NAME that xl lists.
clones_of() { xl list | awk -v p="^$1-sf" '$1 ~ p { print $1 }'; }
# await SECONDS CONDITION: polls (10 ms steps) until the shell condition holds.
# (Its variables have names of their own: sh has no locals, and callers loop over n and t.)
await() {
  _await_limit=$(($1 * 100)); shift
  _await_n=0
  until eval "$@"; do
    _await_n=$((_await_n + 1))
    [ $_await_n -lt $_await_limit ] || return 1
    sleep 0.01
  done
}
# start_served NAME MIB [sf-xen-guest options]: creates guest NAME paused with a NIC, starts
# sfd-xen serving it (log /tmp/sfd-xen-NAME.log, pid in $sfd_pid; more sfd-xen options in
# $serve_options) and unpauses it.
sfd_pid=
serve_options=
start_served() {
  name=$1 mib=$2; shift 2
  sf-xen-guest --paused --vif --hostname "$name" "$@" "$name" "$mib" || fail "xl create $name"
  # shellcheck disable=SC2086 # options, split on purpose
  sfd-xen serve -v $serve_options "$name" 2>"/tmp/sfd-xen-$name.log" &
  sfd_pid=$!
  domid=$(xl domid "$name")
  await 30 "xenstore-exists /local/domain/$domid/data/sf-ctl/version" || fail "sfd-xen did not start serving $name"
  xl unpause "$name"
}
# stop_served NAME: destroys the guest; its sfd-xen must then end with status 0.
stop_served() {
  xl destroy "$1"
  await 60 "! kill -0 $sfd_pid 2>/dev/null" || fail "sfd-xen did not stop after $1 was destroyed"
  wait "$sfd_pid" || fail "sfd-xen exited with status $? after $1 was destroyed"
}
# statuses_ok NAME: serves guest NAME running `xen_clone_api statuses` and checks its three
# clones (hostname and address by clone ID, private memory, a ping to the parent) and the
# statuses its sf_join reports (synced 11, exited 7, signaled 11); no clone is left.
statuses_ok() {
  start_served "$1" 128 --args statuses
  sf-xen-await "$1" 'xca: done|xca: FAIL|sf-guest: command exit' 900 >/dev/null || fail "$1's program did not finish"
  expect "$1" "xca: ticket granted=3 subnet=10.213.0.0/24 parent=10.213.0.1"
  expect "$1" "xca: parent memory=42 addr=10.213.0.1 clones running"
  for i in 1 2 3; do
    expect "$1-sf$i" "xca: clone $i host=$1-sf$i want_host=$1-sf$i addr=10.213.0.$((i + 1)) want_addr=10.213.0.$((i + 1)) memory=${i}000 ping_parent=ok"
    console "$1-sf$i" | grep -F "xca: clone $i ping attempts=" || true  # for the record (docs/xen.md)
  done
  expect "$1" "xca: status 1 synced 11"
  expect "$1" "xca: status 2 exited 7"
  expect "$1" "xca: status 3 signaled 11"
  expect "$1" "xca: done"
  [ -z "$(clones_of "$1")" ] || fail "clone domains left after join: $(clones_of "$1")"
}
# pinned DOMAIN...: each domain's first vif is a bridge port with MAC learning off (sfd-xen
# pins the clone's MAC there before it unpauses it).
pinned() {
  for d in "$@"; do
    f=/sys/class/net/vif$(xl domid "$d").0/brport/learning
    [ "$(cat "$f" 2>/dev/null)" = 0 ] || fail "$d's vif learns MACs ($f: $(cat "$f" 2>&1))"
  done
}
# only_dom0: xl lists nothing but Domain-0, or the test fails.
only_dom0() {
  [ "$(xl list | awk 'NR > 1 { print $1 }')" = Domain-0 ] || fail "domains left: $(xl list)"
}
# start_namespace_hosts N: N more "Xen hosts" h1..hN as network namespaces, each with a veth
# (eth0, 10.214.0.<i+1>) on the hosts' bridge sfhosts (10.214.0.1; MTU 9000), a shared key in
# /root/hosts.key and an `sfd-xen host` agent on 10.214.0.<i+1>:7791 (log
# /tmp/sfd-xen-h<i>.log, pid in agent_<i>; start_agent I restarts one). Needs iproute2's ip
# at /usr/local/sbin/ip (busybox's has no netns). $host_options is what sfd-xen serve then
# needs besides the --host options.
ip2=/usr/local/sbin/ip
host_options="--host-iface sfhosts --host-key-file /root/hosts.key"
start_agent() {
  sfd-xen host -v --listen "10.214.0.$(($1 + 1)):7791" --iface eth0 --key-file /root/hosts.key \
    --netns "/run/netns/h$1" 2>>"/tmp/sfd-xen-h$1.log" &
  eval "agent_$1=\$!"
  await 30 "grep -q 'listening on' /tmp/sfd-xen-h$1.log" || fail "the agent of h$1 did not start"
}
start_namespace_hosts() {
  [ -x $ip2 ] || fail "no iproute2 ip at $ip2 (the run's --program)"
  head -c 32 /dev/urandom | xxd -p -c 64 >/root/hosts.key
  # Jumbo frames, as a hosts' link for images should have: a 4 KiB page is one datagram.
  $ip2 link add sfhosts mtu 9000 type bridge && $ip2 addr add 10.214.0.1/24 dev sfhosts && $ip2 link set sfhosts up ||
    fail "bridge sfhosts"
  for h in $(seq 1 "$1"); do
    $ip2 netns add "h$h" || fail "netns h$h"
    $ip2 link add "h$h-0" mtu 9000 type veth peer name eth0 mtu 9000 netns "h$h" || fail "veth of h$h"
    $ip2 link set "h$h-0" master sfhosts up
    $ip2 -n "h$h" addr add "10.214.0.$((h + 1))/24" dev eth0
    $ip2 -n "h$h" link set eth0 up
    $ip2 -n "h$h" link set lo up
    start_agent "$h"
  done
}
