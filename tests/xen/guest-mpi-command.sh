#!/bin/sh
# The PV guest's command in tests/xen/xen_mpi_test: mpirun-sf forks the guest (the xen driver,
# picked by --driver auto) and runs MPI programs on it and its clone, three times in a row. The first
# run is verbose: its debug lines name the driver; every other line of its stderr is shown.
cd /tmp || exit 1
mpirun-sf --allow-run-as-root -v -np 4 --clones 2 /usr/local/bin/hello 2>/tmp/hello.err
st=$?
grep -v '^mpirun-sf: debug:' /tmp/hello.err
grep -o 'forking this machine with the [a-z]* driver' /tmp/hello.err | sed 's/^/mpi: /'
echo "mpi: hello exit $st"
mpirun-sf --allow-run-as-root -np 4 --clones 2 /usr/local/bin/abort 3 7
echo "mpi: abort exit $?"
mpirun-sf --allow-run-as-root -np 4 --clones 2 /usr/local/bin/crash 3
echo "mpi: crash exit $?"
