/* ring: passes an integer token around all ranks K times. Rank 0 starts with 0; every rank
 * adds (its rank + 1) before passing it on, so after K laps the token must equal
 * K * N * (N + 1) / 2. Rank 0 prints
 *   ring: N ranks, K laps, token = T (expected E) OK|MISMATCH
 * With one rank the token goes from rank 0 to itself.
 *
 * Usage: ring [LAPS]   (default 10)
 * Exit codes: 0 token correct; 1 token mismatch (rank 0); 2 bad arguments.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    long laps = 10;
    char *end = NULL;
    if (argc > 2 || (argc == 2 && ((laps = strtol(argv[1], &end, 10)) < 1 || laps > 1000000 ||
                                   *end != '\0'))) {
        if (rank == 0)
            fprintf(stderr, "ring: usage: ring [LAPS] (1..1000000)\n");
        MPI_Finalize();
        return 2;
    }

    const int next = (rank + 1) % size;
    const int prev = (rank + size - 1) % size;
    long long token = 0;
    for (long lap = 0; lap < laps; ++lap) {
        if (rank == 0) {
            token += rank + 1;
            if (size == 1)
                continue; /* a self-send would need a non-blocking pair; nothing to pass */
            MPI_Send(&token, 1, MPI_LONG_LONG, next, 0, MPI_COMM_WORLD);
            MPI_Recv(&token, 1, MPI_LONG_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(&token, 1, MPI_LONG_LONG, prev, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            token += rank + 1;
            MPI_Send(&token, 1, MPI_LONG_LONG, next, 0, MPI_COMM_WORLD);
        }
    }

    int status = 0;
    if (rank == 0) {
        const long long expected = (long long)laps * size * (size + 1) / 2;
        status = token == expected ? 0 : 1;
        printf("ring: %d ranks, %ld laps, token = %lld (expected %lld) %s\n", size, laps, token,
               expected, status == 0 ? "OK" : "MISMATCH");
        fflush(stdout);
    }
    MPI_Finalize();
    return status;
}
