/* The clone API inside a Xen PV guest served by sfd-xen (tests/xen/xen_clone_api_test runs it
 * in the nested test bed). Every line it prints starts with "xca:" so that dom0 can find it
 * in the guest's console log.
 *
 *   xen_clone_api statuses   3 clones: 1 syncs 11, 2 exits 7, 3 dies of SIGSEGV; each first
 *                            checks its identity (hostname, address), its private memory and
 *                            the cluster network (ping to the parent); the parent joins.
 *   xen_clone_api bench N... for each N: a ticket for N clones, sf_clone timed in the
 *                            parent (until every clone runs), each clone syncs at once, and
 *                            sf_join timed until all have synced (scripts/bench xen).
 *   xen_clone_api wait [keep] 2 clones that sleep; the parent says "clones running" and
 *                            reports the first clone that ends (dom0 destroys one from
 *                            outside: lost), then kills the other; with "keep" it waits for
 *                            ever instead (the test then kills sfd-xen).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clone-core/sf.h"

static const char *end_name(int end) {
  static const char *names[] = {"synced", "exited", "signaled", "killed", "lost"};
  return end >= 0 && end <= 4 ? names[end] : "?";
}

static int die(const char *what) {
  printf("xca: FAIL %s: %s\n", what, sf_last_error());
  fflush(stdout);
  return 1;
}

/* The IPv4 address the interface has, or "" */
static void address_of(const char *ifname, char *out, size_t n) {
  struct ifaddrs *all = NULL, *a;
  out[0] = 0;
  if (getifaddrs(&all) != 0) return;
  for (a = all; a; a = a->ifa_next) {
    if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET && strcmp(a->ifa_name, ifname) == 0)
      inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, out, (socklen_t)n);
  }
  freeifaddrs(all);
}

static volatile long memory_probe = 42; /* written after the clone: private to each copy */

static void report_identity(sf_ticket *t, int id) {
  char host[256] = "", addr[64] = "", cmd[128];
  gethostname(host, sizeof host - 1);
  address_of(sf_interface(t), addr, sizeof addr);
  memory_probe = 1000L * id;
  /* Up to 3 pings of 5 s, as a program's own retries would (TCP resends a SYN after 1 s and
   * 3 s): right after the restore a clone's first packet to the parent is sometimes lost
   * (docs/xen.md, "Limits"); how many it took is printed for the record. */
  snprintf(cmd, sizeof cmd, "ping -c 1 -W 5 %s >/dev/null 2>&1", sf_node_address(t, 0));
  int ping = -1, attempts = 0;
  while (ping != 0 && attempts < 3) {
    ++attempts;
    ping = system(cmd);
  }
  printf("xca: clone %d ping attempts=%d\n", id, attempts);
  printf("xca: clone %d host=%s want_host=%s addr=%s want_addr=%s memory=%ld ping_parent=%s\n", id, host,
         sf_node_hostname(t, (unsigned)id), addr, sf_node_address(t, (unsigned)id), memory_probe, ping == 0 ? "ok" : "failed");
  fflush(stdout);
}

/* CLOCK_BOOTTIME: CLOCK_MONOTONIC stops while the guest is suspended for its save. */
static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static int bench(int argc, char **argv) {
  for (int a = 2; a < argc; ++a) {
    sf_ticket_options o;
    sf_ticket_options_init(&o);
    o.clones = (unsigned)atoi(argv[a]);
    sf_ticket *t = NULL;
    if (sf_request_ticket(&o, &t) != 0) return die("sf_request_ticket");
    const long t0 = now_ms();
    int id = sf_clone(t);
    if (id < 0) return die("sf_clone");
    if (id > 0) sf_sync(0);
    const long t1 = now_ms();
    sf_clone_status st[32];
    if (sf_join(t, st, 32) != 0) return die("sf_join");
    const long t2 = now_ms();
    for (unsigned i = 0; i < o.clones; ++i)
      if (st[i].end != SF_CLONE_SYNCED || st[i].value != 0) {
        printf("xca: FAIL clone %u ended %s %d\n", st[i].id, end_name(st[i].end), st[i].value);
        return 1;
      }
    sf_ticket_free(t);
    printf("xca: bench n=%u clone_ms=%ld synced_ms=%ld\n", o.clones, t1 - t0, t2 - t0);
    fflush(stdout);
  }
  printf("xca: bench done\n");
  fflush(stdout);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    /* No mode: the guest only boots (e.g. the fresh guests of scripts/bench xen). */
    fprintf(stderr, "usage: xen_clone_api statuses | bench N... | wait [keep]\n");
    return 2;
  }
  const char *mode = argv[1];
  if (strcmp(mode, "bench") == 0) return bench(argc, argv);
  const int wait_mode = strcmp(mode, "wait") == 0;
  printf("xca: start %s\n", mode);
  fflush(stdout);
  sf_ticket_options o;
  sf_ticket_options_init(&o);
  o.clones = wait_mode ? 2 : 3;
  sf_ticket *t = NULL;
  if (sf_request_ticket(&o, &t) != 0) return die("sf_request_ticket");
  printf("xca: ticket granted=%d subnet=%s parent=%s\n", sf_granted(t), sf_subnet(t), sf_node_address(t, 0));
  fflush(stdout);
  int id = sf_clone(t);
  if (id < 0) return die("sf_clone");
  if (id > 0) {
    report_identity(t, id);
    if (wait_mode) for (;;) pause();
    if (id == 1) sf_sync(11);
    if (id == 2) exit(7);
    raise(SIGSEGV);
    return 99;
  }
  char addr[64];
  address_of(sf_interface(t), addr, sizeof addr);
  printf("xca: parent memory=%ld addr=%s clones running\n", memory_probe, addr);
  fflush(stdout);
  if (!wait_mode) {
    sf_clone_status st[3];
    if (sf_join(t, st, 3) != 0) return die("sf_join");
    for (int i = 0; i < 3; ++i) printf("xca: status %u %s %d\n", st[i].id, end_name(st[i].end), st[i].value);
    printf("xca: done\n");
    fflush(stdout);
    sf_ticket_free(t);
    return 0;
  }
  /* wait: the first end dom0 causes, then sf_kill (or nothing with "keep"). */
  int fd = sf_exit_fd(t);
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    poll(&p, 1, -1);
    sf_clone_status st[2];
    int n = sf_poll_exited(t, st, 2);
    for (int i = 0; i < n; ++i) printf("xca: ended %u %s %d\n", st[i].id, end_name(st[i].end), st[i].value);
    fflush(stdout);
    if (n > 0) break;
  }
  if (argc > 2 && strcmp(argv[2], "keep") == 0) for (;;) pause();
  if (sf_kill(t) != 0) return die("sf_kill");
  printf("xca: killed\n");
  fflush(stdout);
  sf_ticket_free(t);
  return 0;
}
