/* crash: after a barrier, rank RANK raises SIGSEGV; every other rank then waits in a second
 * barrier that can never complete, so the job only ends if the launcher kills those ranks
 * ("a rank killed by a signal kills the job"). Rank RANK prints
 * "crash: rank R raising SIGSEGV" first. Open MPI's own SIGSEGV handler in the rank may print
 * a backtrace before the signal is re-raised; that is part of the reference behaviour.
 *
 * Usage: crash [RANK]   (default 1, or 0 when run on one rank)
 * Exit codes: rank RANK dies by SIGSEGV (a launcher reports signal 11); 2 bad arguments; 3 if
 * a waiting rank was ever released (it must not be).
 */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    long crash_rank = size > 1 ? 1 : 0;
    char *end = NULL;
    if (argc > 2 ||
        (argc == 2 && ((crash_rank = strtol(argv[1], &end, 10)) < 0 || *end != '\0')) ||
        crash_rank >= size) {
        if (rank == 0)
            fprintf(stderr, "crash: usage: crash [RANK] (RANK < size)\n");
        MPI_Finalize();
        return 2;
    }

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == crash_rank) {
        printf("crash: rank %d raising SIGSEGV\n", rank);
        fflush(stdout);
        raise(SIGSEGV);
        /* Only reached if something ignores SIGSEGV: make sure the rank still dies of it. */
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
        return 4;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    fprintf(stderr, "crash: rank %d was released from a barrier that must never complete\n", rank);
    return 3;
}
