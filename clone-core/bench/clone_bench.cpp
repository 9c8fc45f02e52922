// sf-clone-bench: how long sandbox cloning takes (scripts/bench.d/clone runs it). For each N
// it measures, over several runs:
//   request  Ticket::request(): allocator, slot lock, bridge, N configured network namespaces
//   running  from the clone() call until the parent has received one UDP datagram over the
//            cluster network from every clone (sent by each clone right after clone() returns)
//   return   from the clone() call until clone() returns in the parent
//   join     join() call to return (every clone syncs right after its datagram)
//   total    request + running
// and, as the peer in the same run, plain fork(): N children that each write one byte to a
// pipe (running), then waitpid() (join). Prints a Markdown table: median [min, max] in ms.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "clone-core/clone.hpp"

namespace {

using Clock = std::chrono::steady_clock;
double ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

struct Sample {
  double request = 0, running = 0, ret = 0, join = 0, total = 0, fork_running = 0, fork_join = 0;
};

std::string stats(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  double median = v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  char buf[96];
  std::snprintf(buf, sizeof buf, "%.1f [%.1f, %.1f]", median, v.front(), v.back());
  return buf;
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

bool sandbox_run(unsigned n, Sample& s) {
  const int port = 47400;
  auto t0 = Clock::now();
  auto t = sf::Ticket::request({.clones = n, .driver = "sandbox"});
  if (!t) {
    std::fprintf(stderr, "request: %s\n", t.error().message.c_str());
    return false;
  }
  auto t1 = Clock::now();
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, t->node(0).address_text.c_str(), &a.sin_addr);
  if (bind(sock, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return false;
  auto t2 = Clock::now();
  auto id = t->clone();
  if (!id) {
    std::fprintf(stderr, "clone: %s\n", id.error().message.c_str());
    return false;
  }
  if (*id > 0) {
    // Until the parent acknowledges (a datagram could be lost; the parent's ack is cheap).
    // The inherited socket lives in the parent's network namespace: use a fresh one, which
    // is in the clone's, so the datagram really crosses sf0, the veth and the bridge.
    close(sock);
    int own = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    unsigned me = *id;
    for (int i = 0; i < 100; ++i) {
      sendto(own, &me, sizeof me, 0, reinterpret_cast<sockaddr*>(&a), sizeof a);
      pollfd p{own, POLLIN, 0};
      unsigned ack = 0;
      if (poll(&p, 1, 100) == 1 && recv(own, &ack, sizeof ack, 0) == sizeof ack && ack == me) break;
    }
    (void)t->sync(0);
  }
  auto t3 = Clock::now();
  std::set<unsigned> heard;
  Clock::time_point t4 = t3;
  while (heard.size() < n) {
    pollfd p{sock, POLLIN, 0};
    if (poll(&p, 1, 10000) != 1) {
      std::fprintf(stderr, "heard from only %zu of %u clones\n", heard.size(), n);
      (void)t->kill();
      return false;
    }
    unsigned from = 0;
    sockaddr_in peer{};
    socklen_t len = sizeof peer;
    if (recvfrom(sock, &from, sizeof from, 0, reinterpret_cast<sockaddr*>(&peer), &len) != sizeof from) continue;
    if (heard.insert(from).second) t4 = Clock::now();
    sendto(sock, &from, sizeof from, 0, reinterpret_cast<sockaddr*>(&peer), len);
  }
  close(sock);
  auto t5 = Clock::now();
  auto st = t->join();
  auto t6 = Clock::now();
  if (!st) return false;
  s.request = ms(t0, t1);
  s.running = ms(t2, t4);
  s.ret = ms(t2, t3);
  s.join = ms(t5, t6);
  s.total = ms(t0, t1) + ms(t2, t4);
  return true;
}

void fork_run(unsigned n, Sample& s) {
  int p[2];
  if (pipe(p) != 0) return;
  std::vector<pid_t> kids;
  auto t0 = Clock::now();
  for (unsigned i = 0; i < n; ++i) {
    pid_t k = fork();
    if (k == 0) {
      char c = 1;
      if (write(p[1], &c, 1) != 1) _exit(1);
      _exit(0);
    }
    kids.push_back(k);
  }
  for (unsigned i = 0; i < n; ++i) {
    char c;
    if (read(p[0], &c, 1) != 1) break;
  }
  auto t1 = Clock::now();
  for (pid_t k : kids) waitpid(k, nullptr, 0);
  auto t2 = Clock::now();
  close(p[0]);
  close(p[1]);
  s.fork_running = ms(t0, t1);
  s.fork_join = ms(t1, t2);
}

}  // namespace

int main(int argc, char** argv) {
  int runs = argc > 1 ? std::atoi(argv[1]) : 7;
  std::vector<unsigned> sizes = {1, 2, 4, 8, 16, 32};
  if (argc > 2) {
    sizes.clear();
    for (int i = 2; i < argc; ++i) sizes.push_back(static_cast<unsigned>(std::atoi(argv[i])));
  }
  std::printf("| N | request | clone() to all running on the network | clone() returns | join | request + running | "
              "fork() peer: running | fork() peer: join | running / fork |\n");
  std::printf("|---:|---|---|---|---|---|---|---|---:|\n");
  double running32 = -1;
  for (unsigned n : sizes) {
    std::vector<double> request, running, ret, join, total, frun, fjoin;
    for (int r = 0; r < runs; ++r) {
      Sample s;
      if (!sandbox_run(n, s)) return 1;
      fork_run(n, s);
      request.push_back(s.request);
      running.push_back(s.running);
      ret.push_back(s.ret);
      join.push_back(s.join);
      total.push_back(s.total);
      frun.push_back(s.fork_running);
      fjoin.push_back(s.fork_join);
    }
    std::printf("| %u | %s | %s | %s | %s | %s | %s | %s | %.0fx |\n", n, stats(request).c_str(), stats(running).c_str(),
                stats(ret).c_str(), stats(join).c_str(), stats(total).c_str(), stats(frun).c_str(), stats(fjoin).c_str(),
                median(running) / std::max(median(frun), 1e-3));
    std::fflush(stdout);
    if (n == 32) running32 = median(running);
  }
  if (running32 >= 0)
    std::printf("\nTarget: 32 clones running on the cluster network within 100 ms of the clone() call: "
                "median %.1f ms -> %s.\n", running32, running32 <= 100 ? "met" : "NOT met");
  return 0;
}
