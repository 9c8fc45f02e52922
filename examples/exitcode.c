/* exitcode: rank RANK returns CODE from main after MPI_Finalize; every other rank returns 0.
 * Checks the launcher's rule for a normal but non-zero exit (Open MPI's mpirun exits with the
 * status of the failing rank and prints a "exited on signal / non-zero status" notice).
 * Rank RANK prints "exitcode: rank R exiting with code E" before finalizing.
 *
 * Usage: exitcode [RANK [CODE]]   (defaults: RANK 1, or 0 when run on one rank; CODE 3)
 * Exit codes: CODE from rank RANK, 0 from the others; 2 bad arguments.
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

    int exit_rank = size > 1 ? 1 : 0;
    int code = 3;
    if (argc > 3 || (argc > 1 && parse_int(argv[1], &exit_rank) != 0) ||
        (argc > 2 && parse_int(argv[2], &code) != 0) || exit_rank >= size) {
        if (rank == 0)
            fprintf(stderr, "exitcode: usage: exitcode [RANK [CODE]] (RANK < size, CODE 0..255)\n");
        MPI_Finalize();
        return 2;
    }

    if (rank == exit_rank) {
        printf("exitcode: rank %d exiting with code %d\n", rank, code);
        fflush(stdout);
    }
    MPI_Finalize();
    return rank == exit_rank ? code : 0;
}
