#!/bin/sh
# Runs in the test bed's dom0 (tests/xen/xen_mpi_test): a PV guest served by sfd-xen runs
# guest-mpi-command.sh: `mpirun-sf -np 4 --clones 2 hello` (ranks on the guest and its clone,
# hostnames by clone ID), then an MPI_Abort with code 7 and a rank's SIGSEGV on the clone (exit
# 139, as mpirun) across the two domains. Prints
# "xen mpi test: ok" at the end; any failure prints the console and sfd-xen's log.
set -u
. /root/dom0-lib.sh

start_served mpi0 256
sf-xen-await mpi0 'mpi: crash exit|sf-guest: command exit' 900 >/dev/null || fail "the guest's MPI runs did not finish"
out=$(console mpi0)
echo "$out" | grep -q '^mpi: hello exit 0$' || fail "mpirun-sf hello did not exit 0"
echo "$out" | grep -q '^mpi: forking this machine with the xen driver$' || fail "mpirun-sf -v did not name the xen driver"
ranks=$(echo "$out" | sed -n 's/^Hello from rank \([0-9]*\) of 4 on \([^ ]*\) .*/\1 \2/p' | sort -n)
[ "$(echo "$ranks" | awk '{print $1}' | tr '\n' ' ')" = "0 1 2 3 " ] || fail "not every rank said hello: $ranks"
[ "$(echo "$ranks" | awk '{print $2}' | sort -u | tr '\n' ' ')" = "mpi0 mpi0-sf1 " ] ||
  fail "the ranks did not run on mpi0 and its clone mpi0-sf1: $ranks"
# Nothing but the ranks' lines from the first run (kernel messages aside): no warning of
# Open MPI or mpirun-sf.
extra=$(echo "$out" | sed -n '/^sf-guest: ready/,/^mpi: hello exit/p' |
        grep -v -e '^sf-guest: ready' -e '^Hello from rank' -e '^mpi: hello exit' -e '^mpi: forking' -e '^\[ *[0-9.]*\]')
[ -z "$extra" ] || fail "mpirun-sf printed more than the ranks' lines: $extra"
echo "$out" | grep -q '^abort: rank 3 calling MPI_Abort with code 7' || fail "rank 3 did not call MPI_Abort"
echo "$out" | grep -q '^mpi: abort exit 7$' || fail "mpirun-sf did not exit 7 after MPI_Abort(7): $(echo "$out" | grep '^mpi: abort')"
echo "$out" | grep -q '^crash: rank 3 raising SIGSEGV' || fail "rank 3 did not crash"
echo "$out" | grep -q '^mpi: crash exit 139$' || fail "mpirun-sf did not exit 139 after a rank's SIGSEGV: $(echo "$out" | grep '^mpi: crash')"
[ "$(grep -c 'clone(s) running' /tmp/sfd-xen-mpi0.log)" = 3 ] || fail "sfd-xen did not clone mpi0 three times"
[ -z "$(clones_of mpi0)" ] || fail "clone domains left: $(clones_of mpi0)"
echo "$out" | grep -v 'sf-guest: tick'
stop_served mpi0
only_dom0
echo "xen mpi test: ok"
