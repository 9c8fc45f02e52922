/* probe: a test instrument. Every rank prints exactly one line of space-separated key=value
 * fields describing what the launcher gave it:
 *   rank=R size=N appnum=A universe_size=U host=H pid=P cwd=DIR [NAME=VALUE ...]
 * appnum and universe_size come from the MPI_APPNUM and MPI_UNIVERSE_SIZE attributes of
 * MPI_COMM_WORLD ("unset" when the attribute is absent). Each non-option argument NAME adds a
 * field NAME=<value of environment variable NAME>, or NAME=(unset) when it is not set.
 * Values are percent-encoded (%XX) for '%', space and bytes outside printable ASCII, so split
 * a line on spaces, then each field at its first '='.
 *
 * Options:
 *   --stdin    rank 0 reads its stdin to EOF and adds stdin_bytes=N stdin_fnv1a=HEX16
 *              (FNV-1a 64 of the bytes; other ranks do not touch stdin).
 *   --partial  rank 0 writes the prompt "probe> " without a newline where it would wait for a
 *              user: with --stdin before it reads stdin (and ends that line with "\n" after
 *              EOF, before its own line), otherwise as the very last thing it prints.
 *   --stderr   every rank also writes "probe: stderr from rank R" to stderr.
 * Ranks print in any order; each line is written with one write so it is never torn.
 *
 * Exit codes: 0 success; 1 reading stdin failed; 2 bad arguments.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LINE_CAP 65536

struct line {
    char text[LINE_CAP];
    size_t used;
};

static void append_raw(struct line *line, const char *text)
{
    size_t n = strlen(text);
    if (line->used + n >= LINE_CAP)
        n = LINE_CAP - 1 - line->used;
    memcpy(line->text + line->used, text, n);
    line->used += n;
    line->text[line->used] = '\0';
}

static void append_encoded(struct line *line, const char *value)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)value; *p != '\0'; ++p) {
        char piece[4] = {(char)*p, '\0', '\0', '\0'};
        if (*p == '%' || *p <= ' ' || *p >= 0x7f) {
            piece[0] = '%';
            piece[1] = hex[*p >> 4];
            piece[2] = hex[*p & 0xf];
        }
        append_raw(line, piece);
    }
}

static void append_field(struct line *line, const char *key, const char *value)
{
    if (line->used > 0)
        append_raw(line, " ");
    append_raw(line, key);
    append_raw(line, "=");
    append_encoded(line, value);
}

static const char *int_attribute(int keyval, char *buffer, size_t cap)
{
    int *value = NULL;
    int flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, keyval, &value, &flag);
    if (!flag || value == NULL)
        return "unset";
    snprintf(buffer, cap, "%d", *value);
    return buffer;
}

/* Writes all of text with write(2) so a line reaches the launcher in one piece. */
static void write_all(int fd, const char *text, size_t n)
{
    while (n > 0) {
        ssize_t done = write(fd, text, n);
        if (done <= 0)
            return;
        text += done;
        n -= (size_t)done;
    }
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    int want_stdin = 0, want_partial = 0, want_stderr = 0;
    for (int i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "--stdin") == 0) {
            want_stdin = 1;
        } else if (strcmp(argv[i], "--partial") == 0) {
            want_partial = 1;
        } else if (strcmp(argv[i], "--stderr") == 0) {
            want_stderr = 1;
        } else if (argv[i][0] == '-' || argv[i][0] == '\0' || strchr(argv[i], '=') != NULL) {
            if (rank == 0)
                fprintf(stderr, "probe: usage: probe [--stdin] [--partial] [--stderr] [ENVVAR...]\n");
            MPI_Finalize();
            return 2;
        }
    }

    static struct line line; /* static: 64 KiB is too much for some launchers' stack limits */
    char number[64];
    snprintf(number, sizeof number, "%d", rank);
    append_field(&line, "rank", number);
    snprintf(number, sizeof number, "%d", size);
    append_field(&line, "size", number);
    append_field(&line, "appnum", int_attribute(MPI_APPNUM, number, sizeof number));
    append_field(&line, "universe_size", int_attribute(MPI_UNIVERSE_SIZE, number, sizeof number));
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) != 0)
        strcpy(host, "unknown");
    append_field(&line, "host", host);
    snprintf(number, sizeof number, "%ld", (long)getpid());
    append_field(&line, "pid", number);
    char cwd[4096];
    append_field(&line, "cwd", getcwd(cwd, sizeof cwd) != NULL ? cwd : "(unknown)");
    for (int i = 1; i < argc; ++i) {
        if (argv[i][0] == '-')
            continue;
        const char *value = getenv(argv[i]);
        append_field(&line, argv[i], value != NULL ? value : "(unset)");
    }

    int status = 0;
    if (rank == 0 && want_partial && want_stdin)
        write_all(STDOUT_FILENO, "probe> ", 7);
    if (rank == 0 && want_stdin) {
        /* FNV-1a: a few lines, and keeps this example free of anything but MPI and libc. */
        uint64_t hash = 0xcbf29ce484222325ULL;
        unsigned long long total = 0;
        char buffer[65536];
        for (;;) {
            ssize_t n = read(STDIN_FILENO, buffer, sizeof buffer);
            if (n == 0)
                break;
            if (n < 0) {
                perror("probe: reading stdin");
                status = 1;
                break;
            }
            for (ssize_t i = 0; i < n; ++i) {
                hash ^= (unsigned char)buffer[i];
                hash *= 0x100000001b3ULL;
            }
            total += (unsigned long long)n;
        }
        snprintf(number, sizeof number, "%llu", total);
        append_field(&line, "stdin_bytes", number);
        snprintf(number, sizeof number, "%016llx", (unsigned long long)hash);
        append_field(&line, "stdin_fnv1a", number);
        if (want_partial)
            write_all(STDOUT_FILENO, "\n", 1);
    }
    append_raw(&line, "\n");
    write_all(STDOUT_FILENO, line.text, line.used);
    if (want_stderr) {
        char message[64];
        int n = snprintf(message, sizeof message, "probe: stderr from rank %d\n", rank);
        write_all(STDERR_FILENO, message, (size_t)n);
    }
    if (rank == 0 && want_partial && !want_stdin)
        write_all(STDOUT_FILENO, "probe> ", 7);

    MPI_Finalize();
    return status;
}
