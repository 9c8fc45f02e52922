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
await() {
  t=$1; shift
  n=0
  until eval "$@"; do
    n=$((n + 1))
    [ $n -lt $((t * 100)) ] || return 1
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
# only_dom0: xl lists nothing but Domain-0, or the test fails.
only_dom0() {
  [ "$(xl list | awk 'NR > 1 { print $1 }')" = Domain-0 ] || fail "domains left: $(xl list)"
}
