/* hello: the smallest MPI program; every rank prints one line
 *   Hello from rank R of N on HOST (pid P)
 * (tests parse exactly this shape). Used by the demo and by the launch benchmark.
 *
 * Usage: hello [--sleep SECONDS]   (sleep after printing, before MPI_Finalize; fractions ok)
 * Exit codes: 0 success; 2 bad arguments (rank 0 prints the usage).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int parse_args(int argc, char **argv, double *sleep_seconds)
{
    *sleep_seconds = 0.0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--sleep") == 0 && i + 1 < argc) {
            char *end = NULL;
            *sleep_seconds = strtod(argv[++i], &end);
            if (end == argv[i] || *end != '\0' || *sleep_seconds < 0.0)
                return -1;
        } else {
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    double sleep_seconds = 0.0;
    if (parse_args(argc, argv, &sleep_seconds) != 0) {
        if (rank == 0)
            fprintf(stderr, "hello: usage: hello [--sleep SECONDS]\n");
        MPI_Finalize();
        return 2;
    }

    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0)
        strcpy(host, "unknown");
    printf("Hello from rank %d of %d on %s (pid %ld)\n", rank, size, host, (long)getpid());
    fflush(stdout);

    if (sleep_seconds > 0.0) {
        struct timespec ts;
        ts.tv_sec = (time_t)sleep_seconds;
        ts.tv_nsec = (long)((sleep_seconds - (double)ts.tv_sec) * 1e9);
        while (nanosleep(&ts, &ts) != 0) {
            /* interrupted by a signal handler: sleep the remainder */
        }
    }
    MPI_Finalize();
    return 0;
}
