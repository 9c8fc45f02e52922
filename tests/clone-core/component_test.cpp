// clone-core component tests: real sandbox clones of this test process. They run as root and
// (CMakeLists.txt) again as an ordinary user, for whom the first ticket moves the test process
// into a user namespace of its own. Code after clone() runs in each clone and must end with
// sync(); it never returns into GoogleTest there, so it reports failures as a nonzero status
// (one bit per check).
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "clone-core/clone.hpp"
#include "cluster_slots.hpp"
#include "clone-core/user_namespace.hpp"
#include "clone-core/netlink_links.hpp"

namespace {

using namespace sf;
using namespace std::chrono_literals;

// Root, or an ordinary user where user namespaces are enabled: the driver's own probe decides.
std::string sandbox_unavailable() {
  auto d = make_driver("sandbox");
  return d ? "" : d.error().message;
}
#define REQUIRE_SANDBOX() \
  if (std::string why = sandbox_unavailable(); !why.empty()) GTEST_SKIP() << why

std::vector<std::string> our_links(unsigned slot) {
  std::vector<std::string> out;
  auto s = netlink::Socket::open();
  if (!s) return {"<netlink failed>"};
  auto links = netlink::list_links(*s);
  if (!links) return {"<list failed>"};
  std::string veth = veth_name(slot, 0);
  veth.pop_back();  // "sfv<k>_"
  for (const auto& l : *links)
    if (l.name == bridge_name(slot) || l.name.rfind(veth, 0) == 0) out.push_back(l.name);
  return out;
}

// The host mounts a clone could leak: anything on /tmp, /dev/shm, /proc or ours. (Other
// tests on this machine add and remove unrelated mounts, e.g. under /run/netns.)
std::string mountinfo() {
  std::ifstream in("/proc/self/mountinfo");
  std::string line, out;
  while (std::getline(in, line)) {
    if (line.find(" /tmp") != std::string::npos || line.find(" /dev/shm") != std::string::npos ||
        line.find(" /proc") != std::string::npos || line.find("snowflock") != std::string::npos ||
        line.find("overlay") != std::string::npos)
      out += line + "\n";
  }
  return out;
}

// Every process whose network namespace is one of `inodes`.
std::vector<pid_t> processes_in_netns(const std::set<ino_t>& inodes) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    struct stat st{};
    std::string path = std::string("/proc/") + e->d_name + "/ns/net";
    if (stat(path.c_str(), &st) == 0 && inodes.count(st.st_ino)) out.push_back(atoi(e->d_name));
  }
  closedir(d);
  return out;
}

void expect_nothing_left(unsigned slot, const std::string& mounts_before, const std::set<ino_t>& netns = {}) {
  EXPECT_TRUE(our_links(slot).empty()) << "links left: " << ::testing::PrintToString(our_links(slot));
  EXPECT_NE(access(slots::state_path(slot).c_str(), F_OK), 0) << "state file left";
  EXPECT_TRUE(slots::try_lock(slot).has_value()) << "slot lock still held";
  EXPECT_EQ(mountinfo(), mounts_before) << "host mount table changed";
  if (!netns.empty()) {
    EXPECT_TRUE(processes_in_netns(netns).empty()) << "processes left in clone namespaces";
  }
}

ino_t own_netns() {
  struct stat st{};
  stat("/proc/self/ns/net", &st);
  return st.st_ino;
}

int udp_socket_bound(const std::string& address, int port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool udp_send(int fd, const std::string& address, int port, const void* data, size_t len) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, address.c_str(), &a.sin_addr);
  return sendto(fd, data, len, 0, reinterpret_cast<sockaddr*>(&a), sizeof a) == static_cast<ssize_t>(len);
}

TEST(SandboxClones, IdsAndPrivateMemory) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  static int shared_looking = 42;  // each clone writes its own copy
  auto t = Ticket::request({.clones = 3, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id > 0) {
    int bad = 0;
    if (shared_looking != 42) bad |= 1;  // inherited the parent's state
    shared_looking = static_cast<int>(*id) * 100;
    usleep(20000);  // let the others write theirs
    if (shared_looking != static_cast<int>(*id) * 100) bad |= 2;
    if (current_clone_id() != *id || t->id() != *id || !t->is_clone()) bad |= 4;
    if (getpid() != 2) bad |= 8;  // pid 2 under the clone's own init
    (void)t->sync(bad == 0 ? static_cast<int>(*id) + 10 : -bad);
    _exit(99);  // unreachable: sync does not return in a clone
  }
  EXPECT_EQ(shared_looking, 42);
  auto statuses = t->join();
  ASSERT_TRUE(statuses.ok()) << statuses.error().message;
  ASSERT_EQ(statuses->size(), 3u);
  for (unsigned i = 0; i < 3; ++i) {
    EXPECT_EQ((*statuses)[i].id, i + 1);
    EXPECT_EQ((*statuses)[i].end, CloneEnd::synced);
    EXPECT_EQ((*statuses)[i].value, static_cast<int>(i + 1) + 10);
  }
  expect_nothing_left(slot, mounts);
}

TEST(SandboxClones, HostnamesAddressesAndPrivateFilesystems) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  char marker[] = "/tmp/sft-clone-marker-XXXXXX";
  int mfd = mkstemp(marker);
  ASSERT_GE(mfd, 0);
  ASSERT_EQ(write(mfd, "parent", 6), 6);
  close(mfd);
  std::string shm_marker = "/dev/shm/sft-clone-shm-" + std::to_string(getpid());
  close(open(shm_marker.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  auto t = Ticket::request({.clones = 2, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id > 0) {
    int bad = 0;
    char host[128] = {};
    gethostname(host, sizeof host - 1);
    if (t->node(*id).hostname != host) bad |= 1;
    ifaddrs* ifs = nullptr;
    getifaddrs(&ifs);
    bool found = false;
    for (ifaddrs* i = ifs; i; i = i->ifa_next) {
      if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
      char text[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, text, sizeof text);
      if (std::string(i->ifa_name) == "sf0" && t->node(*id).address_text == text) found = true;
      if (std::string(i->ifa_name) != "sf0" && std::string(i->ifa_name) != "lo") bad |= 2;  // only lo and sf0
    }
    freeifaddrs(ifs);
    if (!found) bad |= 4;
    if (t->interface_name() != "sf0") bad |= 8;
    if (access(shm_marker.c_str(), F_OK) == 0) bad |= 16;  // /dev/shm must be empty
    ifreq ifr{};
    std::strncpy(ifr.ifr_name, "sf0", IFNAMSIZ - 1);
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || ioctl(sock, SIOCGIFMTU, &ifr) != 0 || ifr.ifr_mtu != 65535) bad |= 64;  // loopback-sized frames
    if (sock >= 0) close(sock);
    std::ifstream m(marker);
    std::string content;
    m >> content;
    if (content != "parent") bad |= 32;  // /tmp is a copy-on-write view of the parent's
    std::ofstream(marker, std::ios::trunc) << "clone" << *id;  // private write
    std::ofstream(std::string(marker) + "-new" + std::to_string(*id)) << "x";
    (void)t->sync(bad);
  }
  auto statuses = t->join();
  ASSERT_TRUE(statuses.ok());
  for (const auto& s : *statuses) {
    EXPECT_EQ(s.end, CloneEnd::synced) << "clone " << s.id;
    EXPECT_EQ(s.value, 0) << "clone " << s.id << " failed checks (bit mask)";
  }
  std::ifstream m(marker);
  std::string content;
  m >> content;
  EXPECT_EQ(content, "parent");  // the clones' writes stayed private
  EXPECT_NE(access((std::string(marker) + "-new1").c_str(), F_OK), 0);
  unlink(marker);
  unlink(shm_marker.c_str());
  expect_nothing_left(slot, mounts);
}

// CloneNetwork::shared (clones of a Slurm node): the clones stay in the parent's network
// namespace, so a socket the parent listens on at 127.0.0.1 is reachable from each clone, and
// no bridge or veth is made; hostnames, PIDs and mounts are still the clone's own.
TEST(SandboxClones, SharedNetworkClonesKeepTheParentsNetworkAndGetTheRest) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  auto t = Ticket::request({.clones = 2, .driver = "sandbox", .network = CloneNetwork::shared,
                            .parent_hostname = "sft-node"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  EXPECT_EQ(t->subnet_cidr(), "");
  EXPECT_EQ(t->node(1).address_text, "");
  EXPECT_EQ(t->node(2).hostname, "sft-node-sf2");
  // After the ticket: an ordinary user is in a user namespace now, the network unchanged.
  const ino_t parent_net = own_netns();
  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(listen(listener, 8), 0);
  socklen_t len = sizeof a;
  getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
  struct stat parent_pidns {};
  stat("/proc/self/ns/pid", &parent_pidns);
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id > 0) {
    int bad = 0;
    if (own_netns() != parent_net) bad |= 1;
    char host[128] = {};
    gethostname(host, sizeof host - 1);
    if (std::string(host) != "sft-node-sf" + std::to_string(*id)) bad |= 2;
    struct stat pidns {};
    if (stat("/proc/self/ns/pid", &pidns) != 0 || pidns.st_ino == parent_pidns.st_ino || getpid() != 2) bad |= 4;
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0 || connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) bad |= 8;
    if (c >= 0) close(c);
    if (!t->interface_name().empty()) bad |= 16;
    (void)t->sync(bad);
  }
  EXPECT_TRUE(our_links(slot).empty()) << "a shared-network cluster made links";
  auto statuses = t->join();
  ASSERT_TRUE(statuses.ok()) << statuses.error().message;
  for (const auto& s : *statuses) {
    EXPECT_EQ(s.end, CloneEnd::synced) << "clone " << s.id;
    EXPECT_EQ(s.value, 0) << "clone " << s.id << " failed checks (bit mask)";
  }
  close(listener);
  expect_nothing_left(slot, mounts);
}

struct Datagram {
  uint32_t kind = 0;  // 1 bound, 2 go, 3 ring, 4 done
  uint32_t id = 0;
};

bool receive(int fd, Datagram& d, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, timeout_ms) == 1 && recv(fd, &d, sizeof d, 0) == static_cast<ssize_t>(sizeof d);
}

TEST(SandboxClones, ReachEachOtherAndParentButNothingOutside) {
  REQUIRE_SANDBOX();
  const unsigned n = 3;
  const int port = 47011;
  auto t = Ticket::request({.clones = n, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  // Node 0's address is up on the bridge as soon as the ticket is granted.
  int parent_sock = udp_socket_bound(t->node(0).address_text, port);
  ASSERT_GE(parent_sock, 0) << "bind to node 0's address: " << std::strerror(errno);
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id > 0) {
    int bad = 0;
    close(parent_sock);
    int fd = udp_socket_bound(t->node(*id).address_text, port);
    if (fd < 0) (void)t->sync(1);
    const std::string parent = t->node(0).address_text;
    // 1. Tell the parent we are bound until it says go (so every ring peer is listening).
    Datagram d;
    bool go = false;
    for (int round = 0; round < 200 && !go; ++round) {
      Datagram bound{1, *id};
      udp_send(fd, parent, port, &bound, sizeof bound);
      if (receive(fd, d, 50) && d.kind == 2) go = true;
    }
    // 2. Ring: send to the next clone until the previous one's message arrives.
    unsigned next = *id % n + 1, prev = (*id + n - 2) % n + 1;
    bool got = false;
    for (int round = 0; round < 200 && !got; ++round) {
      Datagram ring{3, *id};
      udp_send(fd, t->node(next).address_text, port, &ring, sizeof ring);
      if (receive(fd, d, 50) && d.kind == 3 && d.id == prev) got = true;
    }
    // Keep feeding the next clone a little longer: it may still be waiting for ours.
    for (int round = 0; round < 10; ++round) {
      Datagram ring{3, *id};
      udp_send(fd, t->node(next).address_text, port, &ring, sizeof ring);
      usleep(20000);
    }
    if (!go || !got) bad |= 2;
    Datagram done{4, *id};
    for (int i = 0; i < 3; ++i) udp_send(fd, parent, port, &done, sizeof done);
    // 3. Nothing outside the cluster subnet is routable: TEST-NET, another slot, the Internet.
    for (const char* outside : {"192.0.2.1", "10.213.250.1", "8.8.8.8"}) {
      int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(9);
      inet_pton(AF_INET, outside, &a.sin_addr);
      if (connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 || errno != ENETUNREACH) bad |= 4;
      close(u);
    }
    (void)t->sync(bad);
  }
  std::set<unsigned> bound, done;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  while (done.size() < n && std::chrono::steady_clock::now() < deadline) {
    Datagram d;
    if (!receive(parent_sock, d, 100)) continue;
    if (d.kind == 1) {
      bound.insert(d.id);
      if (bound.size() == n)
        for (unsigned i = 1; i <= n; ++i) {
          Datagram go{2, 0};
          udp_send(parent_sock, t->node(i).address_text, port, &go, sizeof go);
        }
    } else if (d.kind == 4) {
      done.insert(d.id);
    }
  }
  close(parent_sock);
  EXPECT_EQ(bound.size(), n) << "the parent heard from every clone over the bridge";
  EXPECT_EQ(done.size(), n);
  auto statuses = t->join();
  ASSERT_TRUE(statuses.ok());
  for (const auto& s : *statuses) {
    EXPECT_EQ(s.end, CloneEnd::synced);
    EXPECT_EQ(s.value, 0) << "clone " << s.id << " failed checks (bit mask: 2 ring, 4 outside reachable)";
  }
}

TEST(SandboxClones, TwoClustersCoexistAndCannotReachEachOther) {
  REQUIRE_SANDBOX();
  auto a = Ticket::request({.clones = 1, .driver = "sandbox"});
  ASSERT_TRUE(a.ok()) << a.error().message;
  auto b = Ticket::request({.clones = 1, .driver = "sandbox"});
  ASSERT_TRUE(b.ok()) << b.error().message;
  EXPECT_NE(a->layout().slot, b->layout().slot);
  EXPECT_NE(a->subnet_cidr(), b->subnet_cidr());
  auto id = a->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id > 0) {
    int bad = 0;
    for (unsigned node : {0u, 1u}) {
      int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      sockaddr_in s{};
      s.sin_family = AF_INET;
      s.sin_port = htons(9);
      inet_pton(AF_INET, b->node(node).address_text.c_str(), &s.sin_addr);
      if (connect(u, reinterpret_cast<sockaddr*>(&s), sizeof s) == 0 || errno != ENETUNREACH) bad |= 1 << node;
      close(u);
    }
    (void)a->sync(bad);
  }
  auto statuses = a->join();
  ASSERT_TRUE(statuses.ok());
  EXPECT_EQ((*statuses)[0].end, CloneEnd::synced);
  EXPECT_EQ((*statuses)[0].value, 0);
  // b was never cloned; dropping it removes its bridge too.
  unsigned slot_b = b->layout().slot;
  *b = Ticket(std::move(*a));  // releases b's cluster
  EXPECT_TRUE(our_links(slot_b).empty());
}

TEST(SandboxClones, CleanupAfterKill) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  int pipefd[2];
  ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  auto t = Ticket::request({.clones = 3, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id > 0) {
    close(pipefd[0]);
    if (fork() == 0)
      for (;;) pause();  // a grandchild must die too
    ino_t ns = own_netns();
    if (write(pipefd[1], &ns, sizeof ns) != sizeof ns) _exit(1);
    for (;;) pause();
  }
  close(pipefd[1]);
  std::set<ino_t> namespaces;
  for (unsigned i = 0; i < 3; ++i) {
    ino_t ns = 0;
    ASSERT_EQ(read(pipefd[0], &ns, sizeof ns), static_cast<ssize_t>(sizeof ns));
    EXPECT_NE(ns, own_netns());
    namespaces.insert(ns);
  }
  close(pipefd[0]);
  EXPECT_EQ(namespaces.size(), 3u);
  // Per clone: its init, the clone and the clone's child.
  EXPECT_EQ(processes_in_netns(namespaces).size(), 9u);
  ASSERT_TRUE(t->kill().ok());
  EXPECT_TRUE(t->kill().ok());  // idempotent
  expect_nothing_left(slot, mounts, namespaces);
}

TEST(SandboxClones, CrashesAndExitsWithoutSyncAreReported) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  auto t = Ticket::request({.clones = 3, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id == 1) {
    signal(SIGABRT, SIG_DFL);
    abort();
  }
  if (*id == 2) _exit(3);
  if (*id == 3) (void)t->sync(0);
  auto statuses = t->join();
  ASSERT_TRUE(statuses.ok());
  EXPECT_EQ((*statuses)[0].end, CloneEnd::signaled);
  EXPECT_EQ((*statuses)[0].value, SIGABRT);
  EXPECT_EQ((*statuses)[1].end, CloneEnd::exited);
  EXPECT_EQ((*statuses)[1].value, 3);
  EXPECT_EQ((*statuses)[2].end, CloneEnd::synced);
  expect_nothing_left(slot, mounts);
}

TEST(SandboxClones, ParentLearnsEarlyThatACloneDied) {
  REQUIRE_SANDBOX();
  auto t = Ticket::request({.clones = 2, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  auto id = t->clone();
  ASSERT_TRUE(id.ok()) << id.error().message;
  if (*id == 1) _exit(7);
  if (*id == 2)
    for (;;) pause();
  std::vector<CloneStatus> ended;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (ended.empty() && std::chrono::steady_clock::now() < deadline) {
    pollfd p{t->exit_fd(), POLLIN, 0};
    poll(&p, 1, 1000);
    ended = t->poll_exited();
  }
  ASSERT_EQ(ended.size(), 1u);
  EXPECT_EQ(ended[0].id, 1u);
  EXPECT_EQ(ended[0].end, CloneEnd::exited);
  EXPECT_EQ(ended[0].value, 7);
  EXPECT_TRUE(t->poll_exited().empty());  // reported once
  ASSERT_TRUE(t->kill().ok());
  EXPECT_TRUE(our_links(slot).empty());
}

TEST(SandboxClones, RefusesWhenNotSingleThreaded) {
  REQUIRE_SANDBOX();
  auto t = Ticket::request({.clones = 1, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  std::promise<void> stop;
  std::thread other([f = stop.get_future()]() mutable { f.wait(); });
  auto id = t->clone();
  stop.set_value();
  other.join();
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.error().code, Errc::not_single_threaded);
  EXPECT_NE(id.error().message.find("single-threaded"), std::string::npos);
  t = Ticket::request({.clones = 1, .driver = "fake"});  // drops the sandbox cluster
  EXPECT_TRUE(our_links(slot).empty());
}

TEST(SandboxClones, InjectedSetupFailureIsReportedAndCleanedUp) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  setenv("SF_CLONE_FAULT", "setup_fail:2", 1);
  auto t = Ticket::request({.clones = 3, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  unsigned slot = t->layout().slot;
  auto id = t->clone();
  if (id.ok() && *id > 0)
    for (;;) pause();  // a clone that did start is killed by the failing clone()
  unsetenv("SF_CLONE_FAULT");
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.error().code, Errc::namespace_setup);
  EXPECT_NE(id.error().message.find("clone 2"), std::string::npos) << id.error().message;
  expect_nothing_left(slot, mounts);
}

// A helper process (a child of the test) owns a cluster and is killed with SIGKILL.
struct CrashedRun {
  unsigned slot = 0;
  std::vector<pid_t> inits;
};

CrashedRun crash_a_parent() {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) != 0) return {};
  pid_t helper = fork();
  if (helper == 0) {
    close(ready[0]);
    auto t = Ticket::request({.clones = 3, .driver = "sandbox"});
    if (!t) _exit(1);
    auto id = t->clone();
    if (!id) _exit(2);
    if (*id > 0)
      for (;;) pause();
    unsigned slot = t->layout().slot;
    if (write(ready[1], &slot, sizeof slot) != sizeof slot) _exit(3);
    for (;;) pause();
  }
  close(ready[1]);
  CrashedRun run;
  if (read(ready[0], &run.slot, sizeof run.slot) != sizeof run.slot) run.slot = ~0u;
  close(ready[0]);
  auto state = slots::read_state(slots::state_path(run.slot));
  if (state)
    for (const auto& p : state->inits) run.inits.push_back(p.pid);
  kill(helper, SIGKILL);
  waitpid(helper, nullptr, 0);
  return run;
}

bool wait_all_gone(const std::vector<pid_t>& pids) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    bool any = false;
    for (pid_t p : pids) {
      // The inits were the helper's children; now reparented, reaped by the host's init.
      std::ifstream stat("/proc/" + std::to_string(p) + "/stat");
      std::string text;
      std::getline(stat, text);
      if (!text.empty() && text.find(") Z") == std::string::npos) any = true;
    }
    if (!any) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

TEST(SandboxClones, KilledParentTakesClonesDownAndCleanupRemovesTheRest) {
  REQUIRE_SANDBOX();
  std::string mounts = mountinfo();
  // Root, or an ordinary user whose test process is in its own user namespace since an
  // earlier ticket: the helper builds its cluster in this network namespace.
  const bool in_our_network = userns::administers_network();
  CrashedRun run = crash_a_parent();
  ASSERT_NE(run.slot, ~0u) << "the helper could not build a cluster";
  ASSERT_EQ(run.inits.size(), 3u);
  EXPECT_TRUE(wait_all_gone(run.inits)) << "clone inits survived their parent";
  if (in_our_network)
    EXPECT_FALSE(our_links(run.slot).empty()) << "a crashed run leaves its bridge (cleanup test needs it)";
  else  // the helper made a network namespace of its own (an ordinary user's first ticket): gone with it
    EXPECT_TRUE(our_links(run.slot).empty());
  EXPECT_EQ(access(slots::state_path(run.slot).c_str(), F_OK), 0) << "a crashed run leaves its state file";
  auto report = cleanup_stale_clusters();
  ASSERT_TRUE(report.ok()) << report.error().message;
  EXPECT_GE(report->clusters, 1u);
  expect_nothing_left(run.slot, mounts);
}

TEST(SandboxClones, NextRequestCleansAStaleCluster) {
  REQUIRE_SANDBOX();
  CrashedRun run = crash_a_parent();
  ASSERT_NE(run.slot, ~0u);
  EXPECT_TRUE(wait_all_gone(run.inits));
  auto t = Ticket::request({.clones = 1, .driver = "sandbox"});
  ASSERT_TRUE(t.ok()) << t.error().message;
  // The stale slot was cleaned and is free again (the new cluster may even reuse it).
  if (t->layout().slot != run.slot) {
    EXPECT_TRUE(our_links(run.slot).empty());
    EXPECT_NE(access(slots::state_path(run.slot).c_str(), F_OK), 0);
  }
}

}  // namespace
