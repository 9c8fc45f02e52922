/* semantics: a test instrument for what a launcher gives its ranks and what users see of
 * their output. Plain stdio on purpose: like most MPI programs it prints with printf and never
 * calls fflush, so what reaches the user depends on how the launcher connected stdout (a
 * pseudo-terminal makes stdio line-buffered; a pipe makes it buffer 4 KiB until exit).
 *
 * Usage: semantics MODE [ARG]
 *   tty              every rank prints "semantics: rank R isatty 0=A 1=B 2=C" (A, B, C are 0/1)
 *   fds              every rank prints "semantics: rank R fds N: FD=KIND ..." listing the
 *                    descriptors it held at start, before MPI_Init (from /proc/self/fd);
 *                    KIND is tty, pipe, null, socket, file or other
 *   print-abort [C]  every rank prints "semantics: I am R of N"; after a barrier rank 0 calls
 *                    MPI_Abort(MPI_COMM_WORLD, C) (default 3); the others wait in MPI_Recv
 *   print-crash      every rank prints "semantics: I am R of N"; after a barrier rank 0
 *                    raises SIGSEGV; the others wait in MPI_Recv
 *   progress [S]     rank 0 prints "semantics: progress K" every 0.5 s, S seconds long
 *                    (default 4), then "semantics: done"; the others wait in a barrier
 *   delayed-abort    every rank prints "semantics: rank R"; ranks with R % 3 == 0 print
 *                    "semantics: rank R aborts", rank 3 sleeps 2 s first, then they call
 *                    MPI_Abort(MPI_COMM_WORLD, 2); the others go straight to MPI_Finalize
 *   finalize-abort   every rank prints "semantics: rank R"; rank 0 sleeps 0.2 s and calls
 *                    MPI_Abort(MPI_COMM_WORLD, 5); the others call MPI_Finalize
 * Exit codes: the launcher's follow the mode (abort code, 139, 0); 2 bad arguments.
 */
#include <dirent.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void nap(double seconds)
{
    struct timespec t = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&t, &t) != 0) {
    }
}

static const char *kind_of(const char *target)
{
    if (strncmp(target, "/dev/pts/", 9) == 0 || strcmp(target, "/dev/tty") == 0 ||
        strcmp(target, "/dev/console") == 0)
        return "tty";
    if (strncmp(target, "pipe:", 5) == 0)
        return "pipe";
    if (strcmp(target, "/dev/null") == 0)
        return "null";
    if (strncmp(target, "socket:", 7) == 0)
        return "socket";
    if (target[0] == '/')
        return "file";
    return "other";
}

/* Writes "N: FD=KIND ..." for this process's descriptors into out (the one used to read
 * /proc/self/fd left out). Called before MPI_Init, so it shows what the launcher handed over
 * and none of Open MPI's own. */
static void describe_fds(char *out, size_t cap)
{
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) {
        snprintf(out, cap, "unreadable");
        return;
    }
    int own = dirfd(d), fds[256], n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256)
        if (e->d_name[0] != '.' && atoi(e->d_name) != own)
            fds[n++] = atoi(e->d_name);
    closedir(d);
    for (int i = 0; i < n; ++i)  /* readdir's order is not numeric */
        for (int j = i + 1; j < n; ++j)
            if (fds[j] < fds[i]) {
                int t = fds[i];
                fds[i] = fds[j];
                fds[j] = t;
            }
    size_t used = (size_t)snprintf(out, cap, "%d:", n);
    for (int i = 0; i < n && used < cap; ++i) {
        char path[64], target[512];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fds[i]);
        ssize_t len = readlink(path, target, sizeof target - 1);
        target[len < 0 ? 0 : len] = '\0';
        used += (size_t)snprintf(out + used, cap - used, " %d=%s", fds[i], kind_of(target));
    }
}

static int usage(int rank)
{
    if (rank == 0)
        fprintf(stderr, "semantics: usage: semantics tty|fds|print-abort [CODE]|print-crash|"
                        "progress [SECONDS]|delayed-abort|finalize-abort\n");
    MPI_Finalize();
    return 2;
}

int main(int argc, char **argv)
{
    /* The descriptors the launcher handed over, before MPI_Init opens its own. */
    char fds[4096];
    describe_fds(fds, sizeof fds);
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc < 2 || argc > 3)
        return usage(rank);
    const char *mode = argv[1];
    const char *arg = argc == 3 ? argv[2] : NULL;
    char *end = NULL;

    if (strcmp(mode, "tty") == 0 && arg == NULL) {
        printf("semantics: rank %d isatty 0=%d 1=%d 2=%d\n", rank, isatty(0), isatty(1), isatty(2));
    } else if (strcmp(mode, "fds") == 0 && arg == NULL) {
        printf("semantics: rank %d fds %s\n", rank, fds);
    } else if (strcmp(mode, "print-abort") == 0) {
        long code = arg ? strtol(arg, &end, 10) : 3;
        if (arg && (*end != '\0' || code < 0 || code > 255))
            return usage(rank);
        printf("semantics: I am %d of %d\n", rank, size);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0)
            MPI_Abort(MPI_COMM_WORLD, (int)code);
        int never = 0;
        MPI_Recv(&never, 1, MPI_INT, 0, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        return 3;
    } else if (strcmp(mode, "print-crash") == 0 && arg == NULL) {
        printf("semantics: I am %d of %d\n", rank, size);
        MPI_Barrier(MPI_COMM_WORLD);
        if (rank == 0) {
            signal(SIGSEGV, SIG_DFL);
            raise(SIGSEGV);
        }
        int never = 0;
        MPI_Recv(&never, 1, MPI_INT, 0, 99, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        return 3;
    } else if (strcmp(mode, "progress") == 0) {
        double seconds = arg ? strtod(arg, &end) : 4.0;
        if (arg && (*end != '\0' || seconds < 0 || seconds > 3600))
            return usage(rank);
        if (rank == 0) {
            for (int k = 1; k <= (int)(seconds * 2); ++k) {
                printf("semantics: progress %d\n", k);
                nap(0.5);
            }
            printf("semantics: done\n");
        }
        MPI_Barrier(MPI_COMM_WORLD);
    } else if (strcmp(mode, "delayed-abort") == 0 && arg == NULL) {
        printf("semantics: rank %d\n", rank);
        if (rank % 3 == 0) {
            printf("semantics: rank %d aborts\n", rank);
            if (rank == 3)
                nap(2.0);
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
    } else if (strcmp(mode, "finalize-abort") == 0 && arg == NULL) {
        printf("semantics: rank %d\n", rank);
        if (rank == 0) {
            nap(0.2);
            MPI_Abort(MPI_COMM_WORLD, 5);
        }
    } else {
        return usage(rank);
    }
    MPI_Finalize();
    return 0;
}
