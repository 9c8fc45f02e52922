/* pi: computes pi = integral_0^1 4/(1+x^2) dx by the midpoint rule with N intervals, the
 * intervals dealt round-robin to the ranks, partial sums combined with MPI_Allreduce.
 * Every rank checks that it received bit-for-bit the same value as rank 0 (MPI_Bcast of
 * rank 0's result) — a check on the collective, not on the numerics. Rank 0 prints
 *   pi = 3.141592653589793 error = 8.3e-14 (N intervals, R ranks)
 *
 * Usage: pi [N]   (default 10000000)
 * Exit codes: 0 success; 1 some rank saw a different allreduced value; 2 bad arguments.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* M_PI is not part of strict C11. */
static const double kPi = 3.14159265358979323846;

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    long long intervals = 10000000;
    if (argc > 2 || (argc == 2 && (intervals = strtoll(argv[1], NULL, 10)) < 1)) {
        if (rank == 0)
            fprintf(stderr, "pi: usage: pi [INTERVALS] (>= 1)\n");
        MPI_Finalize();
        return 2;
    }

    const double width = 1.0 / (double)intervals;
    double partial = 0.0;
    for (long long i = rank; i < intervals; i += size) {
        const double x = ((double)i + 0.5) * width;
        partial += 4.0 / (1.0 + x * x);
    }
    partial *= width;

    double total = 0.0;
    MPI_Allreduce(&partial, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);

    double at_root = total;
    MPI_Bcast(&at_root, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    int mismatch = memcmp(&at_root, &total, sizeof total) != 0;
    if (mismatch)
        fprintf(stderr, "pi: rank %d: allreduced value %.17g differs from rank 0's %.17g\n", rank,
                total, at_root);
    int any_mismatch = 0;
    MPI_Allreduce(&mismatch, &any_mismatch, 1, MPI_INT, MPI_LOR, MPI_COMM_WORLD);

    if (rank == 0) {
        printf("pi = %.15f error = %.3g (%lld intervals, %d ranks)\n", total, fabs(total - kPi),
               intervals, size);
        fflush(stdout);
    }
    MPI_Finalize();
    return any_mismatch ? 1 : 0;
}
