/* sf_sum: the SnowFlock API pattern from the papers, in C. The parent builds the input,
 * requests a ticket, splits the work n ways and clones; each clone (which inherited the
 * input: fork semantics) sums its share and sends the result to the parent over the
 * cluster network; the parent adds them up, then sf_join()s and checks the answer.
 *
 *   sf_sum [clones] [numbers]      (default: 4 clones, 10000000 numbers; needs root)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clone-core/sf.h"

enum { kPort = 47300 };

struct share_result {
  uint32_t clone_id;
  uint32_t pad;
  uint64_t sum;
};

static int die(const char *what) {
  fprintf(stderr, "sf_sum: %s: %s\n", what, sf_last_error());
  return 1;
}

static int tcp_listen(const char *address) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(kPort)};
  inet_pton(AF_INET, address, &a.sin_addr);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 64) != 0) {
    perror("sf_sum: listen on the cluster network");
    exit(1);
  }
  return fd;
}

static void send_to_parent(const char *address, const struct share_result *r) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(kPort)};
  inet_pton(AF_INET, address, &a.sin_addr);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || write(fd, r, sizeof *r) != (ssize_t)sizeof *r) {
    perror("sf_sum: send result to the parent");
    sf_sync(2);
  }
  close(fd);
}

int main(int argc, char **argv) {
  unsigned clones = argc > 1 ? (unsigned)atoi(argv[1]) : 4;
  size_t count = argc > 2 ? (size_t)atoll(argv[2]) : 10000000;

  /* The input: built once in the parent; every clone inherits it. */
  uint32_t *input = malloc(count * sizeof *input);
  if (!input) return 1;
  for (size_t i = 0; i < count; ++i) input[i] = (uint32_t)(i % 1000);

  sf_ticket_options options;
  sf_ticket_options_init(&options);
  options.clones = clones;
  options.min_clones = 1; /* take a smaller cluster if that is all there is */
  sf_ticket *ticket = NULL;
  if (sf_request_ticket(&options, &ticket) != SF_OK) return die("sf_request_ticket");
  unsigned granted = (unsigned)sf_granted(ticket);
  printf("granted %u of %u clones on %s\n", granted, clones, sf_subnet(ticket));
  fflush(stdout);

  /* Listen before cloning, on node 0's cluster address (up as soon as the ticket is). */
  int listener = tcp_listen(sf_node_address(ticket, 0));

  int id = sf_clone(ticket);
  if (id < 0) return die("sf_clone");
  if (id > 0) {
    /* A clone: its share of the input, split `granted` ways. */
    close(listener);
    size_t begin = count * (size_t)(id - 1) / granted, end = count * (size_t)id / granted;
    struct share_result r = {(uint32_t)id, 0, 0};
    for (size_t i = begin; i < end; ++i) r.sum += input[i];
    send_to_parent(sf_node_address(ticket, 0), &r);
    sf_sync(0); /* does not return */
  }

  uint64_t total = 0;
  for (unsigned k = 0; k < granted; ++k) {
    int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
    struct share_result r;
    if (c < 0 || read(c, &r, sizeof r) != (ssize_t)sizeof r) {
      fprintf(stderr, "sf_sum: a clone did not report\n");
      sf_kill(ticket);
      return 1;
    }
    close(c);
    printf("clone %u (%s, %s): %llu\n", r.clone_id, sf_node_hostname(ticket, r.clone_id),
           sf_node_address(ticket, r.clone_id), (unsigned long long)r.sum);
    total += r.sum;
  }
  close(listener);

  sf_clone_status *statuses = calloc(granted, sizeof *statuses);
  if (sf_join(ticket, statuses, granted) != SF_OK) return die("sf_join");
  int failed = 0;
  for (unsigned k = 0; k < granted; ++k)
    if (statuses[k].end != SF_CLONE_SYNCED || statuses[k].value != 0) failed = 1;
  sf_ticket_free(ticket);

  uint64_t expected = 0;
  for (size_t i = 0; i < count; ++i) expected += input[i];
  printf("sum %llu (expected %llu): %s\n", (unsigned long long)total, (unsigned long long)expected,
         total == expected && !failed ? "ok" : "WRONG");
  free(statuses);
  free(input);
  return total == expected && !failed ? 0 : 1;
}
