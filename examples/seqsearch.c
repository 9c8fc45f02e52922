/* seqsearch: the SnowFlock showcase, an embarrassingly parallel DNA sequence search.
 *
 * Every rank generates the same pseudo-random DNA database (DB_SIZE bases, seeded
 * SplitMix64) and the same query set: QUERIES queries of QUERY_LEN bases, each either a
 * mutated copy of a random database stretch (even query ids: ~10% substitutions, so a strong
 * hit exists) or purely random (odd ids: only weak chance hits). The queries are split into
 * contiguous blocks across the ranks; each rank scores its queries against the whole database
 * with Smith-Waterman local alignment, linear gaps (match +2, mismatch -3, gap -4; integer
 * scores, so results are exact), keeping per query the best score and the database position
 * where that alignment ends (ties: the lowest position). Rank 0 gathers the hits with
 * MPI_Gatherv, sorts them (score descending, then query id) and prints
 *   seqsearch: Q queries x L bp against D bp, seed S, R ranks
 *   hit query=Q score=S db_end=E
 *   ...
 *   checksum=HEX16 hits=Q best=S
 *   time=T s            (wall time of the search; the only line that varies between runs)
 * Every hit and checksum line is identical for any number of ranks: each query is scored
 * entirely by one rank with integer arithmetic. The default size takes about 0.5 s on one rank
 * on the 2-core development machine; scale with the options.
 *
 * Usage: seqsearch [--db-size BASES] [--queries N] [--query-length BASES] [--seed S]
 *        (defaults 150000, 32, 64, 2009)
 * Exit codes: 0 success; 1 out of memory; 2 bad arguments.
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { kMatch = 2, kMismatch = -3, kGap = 4 };

struct search_options {
    long db_size;
    long queries;
    long query_length;
    unsigned long long seed;
};

/* One gathered hit; sent as 3 MPI_INTs. */
struct hit {
    int query;
    int score;
    int db_end;
};

/* SplitMix64: tiny, seedable and identical on every platform (rand() is not). */
static uint64_t next_random(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void random_bases(uint64_t *state, char *out, long n)
{
    static const char bases[4] = {'A', 'C', 'G', 'T'};
    for (long i = 0; i < n; ++i)
        out[i] = bases[next_random(state) & 3];
}

static void make_query(const struct search_options *o, const char *db, long id, char *out)
{
    /* Each query has its own stream, so it does not depend on how queries are split. */
    uint64_t state = o->seed * 0x100000001b3ULL + (uint64_t)id + 1;
    if (id % 2 == 0) {
        long start = (long)(next_random(&state) % (uint64_t)(o->db_size - o->query_length + 1));
        memcpy(out, db + start, (size_t)o->query_length);
        for (long i = 0; i < o->query_length; ++i)
            if (next_random(&state) % 10 == 0)
                random_bases(&state, out + i, 1);
    } else {
        random_bases(&state, out, o->query_length);
    }
}

/* Smith-Waterman, one database column at a time; column[] holds H for the previous column. */
static struct hit score_query(const char *query, long query_length, const char *db, long db_size,
                              int *column)
{
    struct hit best = {0, 0, -1};
    memset(column, 0, sizeof(int) * (size_t)(query_length + 1));
    for (long j = 0; j < db_size; ++j) {
        const char base = db[j];
        int diagonal = 0; /* H[i-1][j-1] */
        int above = 0;    /* H[i-1][j] */
        for (long i = 1; i <= query_length; ++i) {
            const int left = column[i]; /* H[i][j-1] */
            int h = diagonal + (query[i - 1] == base ? kMatch : kMismatch);
            if (above - kGap > h)
                h = above - kGap;
            if (left - kGap > h)
                h = left - kGap;
            if (h < 0)
                h = 0;
            diagonal = left;
            column[i] = h;
            above = h;
            if (h > best.score) {
                best.score = h;
                best.db_end = (int)j;
            }
        }
    }
    return best;
}

static int compare_hits(const void *a, const void *b)
{
    const struct hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->query > y->query) - (x->query < y->query);
}

static int parse_long(const char *text, long low, long high, long *value)
{
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || v < low || v > high)
        return -1;
    *value = v;
    return 0;
}

static int parse_args(int argc, char **argv, struct search_options *o)
{
    *o = (struct search_options){150000, 32, 64, 2009};
    for (int i = 1; i < argc; ++i) {
        if (i + 1 >= argc)
            return -1;
        const char *value = argv[++i];
        long seed = 0;
        if (strcmp(argv[i - 1], "--db-size") == 0) {
            if (parse_long(value, 1, 1L << 30, &o->db_size) != 0)
                return -1;
        } else if (strcmp(argv[i - 1], "--queries") == 0) {
            if (parse_long(value, 1, 1L << 20, &o->queries) != 0)
                return -1;
        } else if (strcmp(argv[i - 1], "--query-length") == 0) {
            if (parse_long(value, 1, 1L << 16, &o->query_length) != 0)
                return -1;
        } else if (strcmp(argv[i - 1], "--seed") == 0) {
            if (parse_long(value, 0, 1L << 62, &seed) != 0)
                return -1;
            o->seed = (unsigned long long)seed;
        } else {
            return -1;
        }
    }
    return o->query_length <= o->db_size ? 0 : -1;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0, size = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    struct search_options o;
    if (parse_args(argc, argv, &o) != 0) {
        if (rank == 0)
            fprintf(stderr, "seqsearch: usage: seqsearch [--db-size BASES] [--queries N] "
                            "[--query-length BASES (<= db size)] [--seed S]\n");
        MPI_Finalize();
        return 2;
    }

    MPI_Barrier(MPI_COMM_WORLD);
    const double started = MPI_Wtime();

    /* Contiguous blocks; the first (queries % size) ranks get one more. */
    int *counts = malloc(sizeof(int) * (size_t)size);
    int *displacements = malloc(sizeof(int) * (size_t)size);
    char *db = malloc((size_t)o.db_size);
    char *query = malloc((size_t)o.query_length);
    int *column = malloc(sizeof(int) * (size_t)(o.query_length + 1));
    struct hit *mine = malloc(sizeof(struct hit) * (size_t)(o.queries / size + 1));
    struct hit *all = rank == 0 ? malloc(sizeof(struct hit) * (size_t)o.queries) : NULL;
    if (!counts || !displacements || !db || !query || !column || !mine || (rank == 0 && !all)) {
        fprintf(stderr, "seqsearch: rank %d: out of memory for a %ld-base database\n", rank,
                o.db_size);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int r = 0, offset = 0; r < size; ++r) {
        counts[r] = (int)(o.queries / size + (r < o.queries % size ? 1 : 0));
        displacements[r] = offset;
        offset += counts[r];
    }

    uint64_t db_state = o.seed;
    random_bases(&db_state, db, o.db_size);
    for (int k = 0; k < counts[rank]; ++k) {
        const long id = displacements[rank] + k;
        make_query(&o, db, id, query);
        mine[k] = score_query(query, o.query_length, db, o.db_size, column);
        mine[k].query = (int)id;
    }

    /* Hits travel as int triples; scale counts and displacements accordingly. */
    for (int r = 0; r < size; ++r) {
        counts[r] *= 3;
        displacements[r] *= 3;
    }
    MPI_Gatherv(mine, counts[rank], MPI_INT, all, counts, displacements, MPI_INT, 0,
                MPI_COMM_WORLD);
    const double elapsed = MPI_Wtime() - started;

    if (rank == 0) {
        qsort(all, (size_t)o.queries, sizeof *all, compare_hits);
        printf("seqsearch: %ld queries x %ld bp against %ld bp, seed %llu, %d ranks\n", o.queries,
               o.query_length, o.db_size, o.seed, size);
        uint64_t checksum = 0xcbf29ce484222325ULL; /* FNV-1a over the sorted triples */
        for (long k = 0; k < o.queries; ++k) {
            printf("hit query=%d score=%d db_end=%d\n", all[k].query, all[k].score, all[k].db_end);
            const int fields[3] = {all[k].query, all[k].score, all[k].db_end};
            for (int f = 0; f < 3; ++f)
                for (int b = 0; b < 4; ++b) {
                    checksum ^= (uint64_t)(((unsigned)fields[f] >> (8 * b)) & 0xffu);
                    checksum *= 0x100000001b3ULL;
                }
        }
        printf("checksum=%016llx hits=%ld best=%d\n", (unsigned long long)checksum, o.queries,
               all[0].score);
        printf("time=%.3f s\n", elapsed);
        fflush(stdout);
    }
    free(all);
    free(mine);
    free(column);
    free(query);
    free(db);
    free(displacements);
    free(counts);
    MPI_Finalize();
    return 0;
}
