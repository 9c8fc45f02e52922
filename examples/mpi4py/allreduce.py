#!/usr/bin/python3
"""allreduce: the mpi4py example (Debian's python3-mpi4py). Every rank contributes rank + 1
to an allreduce sum and checks the result against N * (N + 1) / 2; every rank prints

    mpi4py: rank=R size=N sum=S expected=E OK|MISMATCH

Run it with Debian's interpreter (/usr/bin/python3), which is the one that has mpi4py.
Exit codes: 0 success; 1 the sum is wrong on this rank.
"""
import sys

from mpi4py import MPI


def main() -> int:
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    size = comm.Get_size()
    total = comm.allreduce(rank + 1, op=MPI.SUM)
    expected = size * (size + 1) // 2
    ok = total == expected
    # One write per line: with print() Open MPI's mpirun was seen putting another rank's
    # line between this text and its newline (it forwards output in the chunks it reads).
    sys.stdout.write(f"mpi4py: rank={rank} size={size} sum={total} expected={expected} "
                     f"{'OK' if ok else 'MISMATCH'}\n")
    sys.stdout.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
