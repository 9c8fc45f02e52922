/* pubsub: MPI's name service (MPI_Publish_name / MPI_Lookup_name / MPI_Unpublish_name), which
 * the launcher serves through PMIx publish/lookup/unpublish. Rank 0 publishes the service
 * "sf-pubsub" with the port name "sf-port-<size>", every rank looks it up, rank 0 unpublishes
 * it, and the last rank checks that a second lookup now fails. Lines:
 *   pubsub: rank R found sf-port-N
 *   pubsub: unpublished            (rank 0)
 *   pubsub: gone after unpublish   (last rank)
 * Exit codes: 0 success; 1 a publish, lookup or unpublish failed or returned a wrong value.
 */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    int rank, size, failed = 0;
    char port[MPI_MAX_PORT_NAME], found[MPI_MAX_PORT_NAME];

    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    snprintf(port, sizeof port, "sf-port-%d", size);

    if (rank == 0 && MPI_Publish_name("sf-pubsub", MPI_INFO_NULL, port) != MPI_SUCCESS) {
        fprintf(stderr, "pubsub: rank 0: MPI_Publish_name failed\n");
        failed = 1;
    }
    MPI_Barrier(MPI_COMM_WORLD);
    memset(found, 0, sizeof found);
    if (MPI_Lookup_name("sf-pubsub", MPI_INFO_NULL, found) != MPI_SUCCESS || strcmp(found, port) != 0) {
        fprintf(stderr, "pubsub: rank %d: lookup gave '%s', expected '%s'\n", rank, found, port);
        failed = 1;
    } else {
        printf("pubsub: rank %d found %s\n", rank, found);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        if (MPI_Unpublish_name("sf-pubsub", MPI_INFO_NULL, port) != MPI_SUCCESS) {
            fprintf(stderr, "pubsub: rank 0: MPI_Unpublish_name failed\n");
            failed = 1;
        } else {
            printf("pubsub: unpublished\n");
        }
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == size - 1) {
        if (MPI_Lookup_name("sf-pubsub", MPI_INFO_NULL, found) == MPI_SUCCESS) {
            fprintf(stderr, "pubsub: rank %d: the name is still there after unpublish\n", rank);
            failed = 1;
        } else {
            printf("pubsub: gone after unpublish\n");
        }
    }
    fflush(stdout);
    MPI_Finalize();
    return failed;
}
