/* abort: one rank calls MPI_Abort(MPI_COMM_WORLD, CODE) after a barrier; every other rank
 * then blocks in an MPI_Recv that no one will ever match, so the job only ends if the launcher
 * kills those ranks. Used to check that a launcher turns MPI_Abort into "kill the job, exit
 * CODE" (Open MPI's mpirun exits with CODE and prints its MPI_ABORT banner).
 *
 * Usage: abort [RANK [CODE]]   (defaults: RANK 1, or 0 when run on one rank; CODE 7)
 * Exit codes: the launcher's exit code should be CODE; 2 bad arguments. The program itself
 * never returns normally from the aborting rank; if the other ranks were ever released (they
 * must not be) they exit 3.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int parse_int(const char *text, int *value)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < 0 || v > 255)
        return -1;
    *value = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    int abort_rank = size > 1 ? 1 : 0;
    int code = 7;
    if (argc > 3 || (argc > 1 && parse_int(argv[1], &abort_rank) != 0) ||
        (argc > 2 && parse_int(argv[2], &code) != 0) || abort_rank >= size) {
        if (rank == 0)
            fprintf(stderr, "abort: usage: abort [RANK [CODE]] (RANK < size, CODE 0..255)\n");
        MPI_Finalize();
        return 2;
    }

    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == abort_rank) {
        printf("abort: rank %d calling MPI_Abort with code %d\n", rank, code);
        fflush(stdout);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
    /* Nobody sends this message: only the launcher can end this rank. */
    int never = 0;
    MPI_Recv(&never, 1, MPI_INT, abort_rank, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    fprintf(stderr, "abort: rank %d was released from a receive that must never complete\n", rank);
    return 3;
}
