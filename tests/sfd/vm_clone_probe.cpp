// vm_clone_probe: runs inside a SnowFlock VM (`sfd run -- vm_clone_probe N [mode]`) and
// prints what the VM clone tests check, one "key=value" line per fact:
//   driver, granted, then per node: id, hostname, address, the value written before the clone
//   (every clone must see it), the value after a private write (each its own), whether the
//   clone reached node 0 over the cluster network, whether an address outside the cluster is
//   unreachable (no route: nothing is sent); the parent prints each clone's status after join.
// mode "crash" makes clone 1 die of SIGSEGV (the parent must see it as signaled);
// mode "kill" makes the parent kill() the cluster while the clones sleep; mode "hold" makes
// every node print "holding" and wait for ever (the test then kills sfd).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "clone-core/clone.hpp"

namespace {

constexpr int kPort = 47400;
volatile int g_value = 0;  // written before the clone, then privately in each copy

int listen_on(const std::string& address) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(kPort);
  inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 64) != 0) {
    std::perror("vm_clone_probe: listen");
    std::exit(3);
  }
  return fd;
}

// 0 on success, else errno.
int connect_to(const std::string& address, int port, unsigned id) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  int err = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    err = errno;
  } else {
    const std::uint32_t v = id;
    if (write(fd, &v, sizeof v) != static_cast<ssize_t>(sizeof v)) err = errno;
  }
  close(fd);
  return err;
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned n = argc > 1 ? static_cast<unsigned>(std::atoi(argv[1])) : 2;
  const std::string mode = argc > 2 ? argv[2] : "";
  setvbuf(stdout, nullptr, _IOLBF, 0);
  g_value = 4242;
  sf::TicketRequest req;
  req.clones = n;
  auto ticket = sf::Ticket::request(req);
  if (!ticket) {
    std::fprintf(stderr, "vm_clone_probe: %s\n", ticket.error().message.c_str());
    return 2;
  }
  std::printf("driver=%s\ngranted=%u\nsubnet=%s\n", std::string(ticket->driver_name()).c_str(), ticket->granted(),
              ticket->subnet_cidr().c_str());
  const std::string parent_address = ticket->node(0).address_text;
  const int listener = listen_on(parent_address);
  auto id = ticket->clone();
  if (!id) {
    std::fprintf(stderr, "vm_clone_probe: clone: %s\n", id.error().message.c_str());
    return 2;
  }
  char host[HOST_NAME_MAX + 1] = {};
  gethostname(host, sizeof host - 1);
  const unsigned me = *id;
  std::printf("node%u.hostname=%s\nnode%u.address=%s\nnode%u.before=%d\n", me, host, me,
              ticket->node(me).address_text.c_str(), me, g_value);
  g_value = 1000 + static_cast<int>(me);
  std::printf("node%u.after=%d\n", me, g_value);
  if (me != 0) {
    close(listener);
    if (mode == "crash" && me == 1) raise(SIGSEGV);
    if (mode == "kill") pause();
    if (mode == "hold") {
      std::printf("node%u.holding\n", me);
      for (;;) pause();
    }
    const int err = connect_to(parent_address, kPort, me);
    std::printf("node%u.reached_parent=%s\n", me, err == 0 ? "yes" : std::strerror(err));
    // 192.0.2.1 (TEST-NET-1) is outside the cluster: there must be no route to it.
    const int out = connect_to("192.0.2.1", 9, me);
    std::printf("node%u.outside=%s\n", me, out == ENETUNREACH ? "unreachable" : std::strerror(out));
    std::fflush(stdout);
    (void)ticket->sync(0);
    return 1;  // not reached
  }
  if (mode == "hold") {
    std::printf("node0.holding\n");
    for (;;) pause();
  }
  if (mode == "kill") {
    sleep(1);
    auto st = ticket->kill();
    std::printf("killed=%s\n", st ? "ok" : st.error().message.c_str());
    return 0;
  }
  unsigned heard = 0;
  if (mode != "crash") {
    for (; heard < ticket->granted(); ++heard) {
      const int c = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      std::uint32_t from = 0;
      if (c < 0 || read(c, &from, sizeof from) != static_cast<ssize_t>(sizeof from)) break;
      close(c);
      std::printf("parent.heard_from=%u\n", from);
    }
  }
  auto statuses = ticket->join();
  if (!statuses) {
    std::fprintf(stderr, "vm_clone_probe: join: %s\n", statuses.error().message.c_str());
    return 2;
  }
  for (const auto& s : *statuses) std::printf("clone%u.end=%s:%d\n", s.id, sf::clone_end_name(s.end), s.value);
  std::printf("node0.final=%d\n", g_value);
  return 0;
}
