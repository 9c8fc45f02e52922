#!/bin/sh
# Runs in the test bed's dom0 (tests/xen/xen_testbed_test copies it there): starts a PV guest,
# save/restore-clones it twice under new names, and checks that the three domains run, that
# the clones continue from the snapshot (the guest's boot token, kept in its RAM, and its tick
# counter carry on; a clone that booted afresh would draw a new token and start at tick 1),
# and that after destroying them only Domain-0 is left. Prints "xen clone test: ok" on success.
set -u
fail() { echo "xen clone test: FAILED: $*" >&2; xl list >&2; exit 1; }
log=/var/log/xen/console

sf-xen-guest g0 128 || fail "xl create g0"
ready=$(sf-xen-await g0 'sf-guest: ready' 180) || fail "g0 did not report ready"
token=${ready##*token=}
sf-xen-await g0 'sf-guest: tick 2 ' 60 >/dev/null || fail "g0 does not tick"
xl save -c g0 /tmp/g0.save 2>/tmp/g0.save.log || { cat /tmp/g0.save.log >&2; false; } || fail "xl save -c g0"
# The last tick before the snapshot: the clones must go on from there.
saved=$(tr -d '\r' <$log/guest-g0.log | sed -n 's/^sf-guest: tick \([0-9]*\) .*/\1/p' | tail -n 1)
echo "snapshot of g0 (token $token) after tick $saved: $(stat -c %s /tmp/g0.save) bytes"
for c in c1 c2; do
  sf-xen-guest --config-only $c 128
  xl restore -e /tmp/$c.cfg /tmp/g0.save 2>/tmp/$c.restore.log || { cat /tmp/$c.restore.log >&2; fail "xl restore as $c"; }
done

for d in g0 c1 c2; do
  state=$(xl list "$d" 2>/dev/null | awk 'NR == 2 { print $5 }')
  # r = on a CPU, b = blocked (idle), ------ = runnable; p/s/c/d would mean paused or dying.
  case $state in ''|*p*|*s*|*c*|*d*) fail "$d is not running (state '$state')";; esac
done
for c in c1 c2; do
  first=$(sf-xen-await $c 'sf-guest: tick' 60) || fail "$c does not tick"
  n=$(echo "$first" | sed -n 's/^sf-guest: tick \([0-9]*\) .*/\1/p')
  [ "${first##*token=}" = "$token" ] || fail "$c has token '${first##*token=}', not the snapshot's $token"
  # -ge: a line still unread in the console ring at the snapshot is read again from the clone.
  [ "$n" -ge "$saved" ] || fail "$c's first tick is $n, before the snapshot's $saved"
  tr -d '\r' <$log/guest-$c.log | grep -q 'sf-guest: ready' && fail "$c booted afresh"
  # ...and keeps running on its own.
  sf-xen-await $c "sf-guest: tick $((n + 1)) token=$token" 60 >/dev/null || fail "$c stopped after tick $n"
  echo "$c: continues from the snapshot at tick $n with token $token"
done

for d in g0 c1 c2; do xl destroy $d || fail "xl destroy $d"; done
left=$(xl list | awk 'NR > 1 { print $1 }' | tr '\n' ' ')
[ "$left" = "Domain-0 " ] || fail "domains left after destroy: $left"
echo "xen clone test: ok"
