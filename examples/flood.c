/* flood: a communication-heavy program, after MPICH's pt2pt/sendflood test. In each of ROUNDS
 * rounds every rank but 0 sends MESSAGES messages of BYTES bytes to rank 0 with MPI_Send
 * (eager for small sizes, rendezvous for large), rank 0 receives them with MPI_ANY_SOURCE and
 * checks each message's contents, then a barrier closes the round. Rank 0 prints
 *   flood: N ranks, R rounds, M messages of B bytes per rank and round, checksum C OK|MISMATCH
 * where C sums every received payload's first word. Time is spent waiting for messages, so
 * ranks that busy-poll on an oversubscribed node starve the ones they wait for.
 *
 * Usage: flood [ROUNDS [MESSAGES [BYTES]]]   (defaults 20, 200, 1024)
 * Exit codes: 0 all messages arrived intact; 1 a message was wrong; 2 bad arguments.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *text, long lo, long hi, long *value)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < lo || v > hi)
        return -1;
    *value = v;
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    long rounds = 20, messages = 200, bytes = 1024;
    if (argc > 4 || (argc > 1 && parse(argv[1], 1, 100000, &rounds) != 0) ||
        (argc > 2 && parse(argv[2], 1, 1000000, &messages) != 0) ||
        (argc > 3 && parse(argv[3], (long)sizeof(int), 1 << 24, &bytes) != 0)) {
        if (rank == 0)
            fprintf(stderr, "flood: usage: flood [ROUNDS [MESSAGES [BYTES]]] "
                            "(1..100000, 1..1000000, 4..16777216)\n");
        MPI_Finalize();
        return 2;
    }

    int *buffer = malloc((size_t)bytes);
    if (buffer == NULL)
        MPI_Abort(MPI_COMM_WORLD, 1);
    const int words = (int)(bytes / (long)sizeof(int));
    long long checksum = 0, expected = 0;
    int bad = 0;
    for (long round = 0; round < rounds; ++round) {
        if (rank == 0) {
            for (long m = 0; m < messages * (size - 1); ++m) {
                MPI_Status status;
                MPI_Recv(buffer, words, MPI_INT, MPI_ANY_SOURCE, 0, MPI_COMM_WORLD, &status);
                /* The payload is (source, round, index, ...) repeated. */
                if (buffer[words - 1] != buffer[0] + words - 1 || buffer[0] / 1000 != status.MPI_SOURCE)
                    bad = 1;
                checksum += buffer[0];
            }
        } else {
            for (long m = 0; m < messages; ++m) {
                for (int w = 0; w < words; ++w)
                    buffer[w] = rank * 1000 + (int)((round + m) % 1000) + w;
                MPI_Send(buffer, words, MPI_INT, 0, 0, MPI_COMM_WORLD);
            }
        }
        MPI_Barrier(MPI_COMM_WORLD);
    }
    if (rank == 0) {
        for (long round = 0; round < rounds; ++round)
            for (int source = 1; source < size; ++source)
                for (long m = 0; m < messages; ++m)
                    expected += source * 1000 + (round + m) % 1000;
        int ok = !bad && checksum == expected;
        printf("flood: %d ranks, %ld rounds, %ld messages of %ld bytes per rank and round, "
               "checksum %lld %s\n",
               size, rounds, messages, bytes, checksum, ok ? "OK" : "MISMATCH");
        free(buffer);
        MPI_Finalize();
        return ok ? 0 : 1;
    }
    free(buffer);
    MPI_Finalize();
    return 0;
}
