// sfd: clones of an `sfd run` family on other hosts (see remote_member.hpp and
// docs/protocols/remote-member.md).
#include "sfd/remote_member.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <spdlog/spdlog.h>
#include <sstream>
#include <thread>

#include "memtap/tcp_page_source.hpp"
#include "sfd/paths.hpp"
#include "sfd/remote_clone.hpp"
#include "socket_io.hpp"

namespace sf::sfd {
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using socket_io::get_le32;
using socket_io::put_le32;
using socket_io::recv_all;
using socket_io::send_all;
using socket_io::write_all;
using socket_io::set_timeouts;

namespace {

constexpr char kMagic[4] = {'S', 'F', 'R', 'M'};
constexpr std::uint32_t kVersion = 1;
constexpr std::size_t kHelloBytes = 4 + 4 + 32 + 4 + 1;  // magic, version, token, member id, port
constexpr unsigned char kIoPort = 'i';
constexpr unsigned char kCtlPort = 'c';

Result<sockaddr_in> ipv4_endpoint(const std::string& text) {
  auto ep = sf::memtap::parse_endpoint(text);
  if (!ep) return make_error(ep.error().message);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(ep->port);
  if (inet_pton(AF_INET, ep->address.c_str(), &sa.sin_addr) != 1) return make_error("'" + text + "' is not an IPv4 ADDR:PORT");
  return sa;
}

std::string endpoint_text(const sockaddr_in& sa) {
  char b[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &sa.sin_addr, b, sizeof b);
  return std::string(b) + ":" + std::to_string(ntohs(sa.sin_port));
}

// A socket of `type` bound to address:0; returns the fd and the bound endpoint.
Result<std::pair<int, sockaddr_in>> bind_any_port(const std::string& address, int type) {
  auto sa = ipv4_endpoint(address + ":0");
  if (!sa) return sa.error();
  const int fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(std::string("socket: ") + std::strerror(errno));
  socklen_t len = sizeof *sa;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&*sa), sizeof *sa) != 0 || ::getsockname(fd, reinterpret_cast<sockaddr*>(&*sa), &len) != 0) {
    const int e = errno;
    ::close(fd);
    return make_error("cannot bind " + address + ": " + std::strerror(e));
  }
  return std::make_pair(fd, *sa);
}

void no_delay(int fd) {
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

Result<std::vector<std::string>> split_agent(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  if (out.empty()) return make_error("--remote: an empty agent; give the command that runs a command on the other host, e.g. 'ssh node2'");
  return out;
}

Result<std::string> interface_ipv4(const std::string& ifname) {
  if (if_nametoindex(ifname.c_str()) == 0)
    return make_error("--remote-iface: there is no interface '" + ifname + "' here; name this host's link to the remote hosts");
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return make_error(std::string("getifaddrs: ") + std::strerror(errno));
  std::string found;
  for (ifaddrs* i = list; i != nullptr && found.empty(); i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET || ifname != i->ifa_name) continue;
    char b[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, b, sizeof b);
    found = b;
  }
  freeifaddrs(list);
  if (found.empty()) return make_error("--remote-iface: '" + ifname + "' has no IPv4 address; the remote hosts reach this host through it");
  return found;
}

// ---------------------------------------------------------------------------------------------
// MemberService

Result<std::unique_ptr<MemberService>> MemberService::start(const std::string& address, const sf::memtap::OwnerToken& token) {
  auto b = bind_any_port(address, SOCK_STREAM);
  if (!b) return make_error("remote members: " + b.error().message);
  std::unique_ptr<MemberService> s(new MemberService());
  s->fd_ = b->first;
  s->address_ = address;
  s->port_ = ntohs(b->second.sin_port);
  s->token_ = token;
  if (::listen(s->fd_, 64) != 0) return make_error(std::string("remote members: listen: ") + std::strerror(errno));
  return s;
}

MemberService::~MemberService() {
  if (fd_ >= 0) ::close(fd_);
}

std::string MemberService::endpoint() const { return address_ + ":" + std::to_string(port_); }

Result<std::map<unsigned, std::pair<int, int>>> MemberService::accept_members(const std::vector<unsigned>& ids, Clock::time_point deadline,
                                                                              const Gone& gone) {
  std::map<unsigned, std::pair<int, int>> got;
  for (unsigned id : ids) got[id] = {-1, -1};
  auto close_all = [&] {
    for (auto& [id, p] : got) {
      if (p.first >= 0) ::close(p.first);
      if (p.second >= 0) ::close(p.second);
    }
  };
  auto complete = [&] {
    for (auto& [id, p] : got) {
      if (p.first < 0 || p.second < 0) return false;
    }
    return true;
  };
  while (!complete()) {
    if (auto why = gone()) {
      close_all();
      return make_error(*why);
    }
    if (Clock::now() > deadline) {
      close_all();
      return make_error("remote members did not connect back to " + endpoint() + " within the time limit (is " + address_ +
                        " reachable from the remote hosts?)");
    }
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    set_timeouts(c, std::chrono::seconds(10));
    unsigned char hello[kHelloBytes];
    sf::memtap::OwnerToken t{};
    bool ok = recv_all(c, hello, sizeof hello) && std::memcmp(hello, kMagic, 4) == 0 && get_le32(hello + 4) == kVersion;
    if (ok) std::memcpy(t.data(), hello + 8, t.size());
    const unsigned id = ok ? get_le32(hello + 40) : 0;
    const unsigned char port = hello[44];
    auto it = got.find(id);
    ok = ok && sf::memtap::tokens_equal(t, token_) && it != got.end() && (port == kIoPort || port == kCtlPort);
    int* slot = ok ? (port == kIoPort ? &it->second.first : &it->second.second) : nullptr;
    if (!ok || *slot >= 0) {
      spdlog::warn("remote members: refused a connection to {} (wrong token, member or port)", endpoint());
      ::close(c);
      continue;
    }
    set_timeouts(c, std::chrono::milliseconds(0));
    no_delay(c);
    *slot = c;
  }
  return got;
}

// ---------------------------------------------------------------------------------------------
// RemoteMemberLink: the agent and the frame relay

// Ethernet frames between the member's tap (opened without a virtio-net header, as the remote
// QEMU's socket netdev has none) and that QEMU's UDP socket. The peer is the first sender (on the private link); others are dropped.
struct RemoteMemberLink::Relay {
  std::shared_ptr<const TapDevice> tap;
  int udp = -1;
  int stop_fd = -1;
  std::thread thread;
  std::atomic<std::uint64_t> frames{0};

  void run() {
    std::vector<char> buf(65536);
    sockaddr_in peer{};
    bool have_peer = false;
    for (;;) {
      pollfd p[3] = {{tap->fd, POLLIN, 0}, {udp, POLLIN, 0}, {stop_fd, POLLIN, 0}};
      if (::poll(p, 3, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (p[2].revents != 0) return;
      if (p[0].revents & POLLIN) {
        const ssize_t n = ::read(tap->fd, buf.data(), buf.size());
        if (n > 0 && have_peer) {
          (void)::sendto(udp, buf.data(), static_cast<std::size_t>(n), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&peer), sizeof peer);
          ++frames;
        }
      }
      if (p[1].revents & POLLIN) {
        sockaddr_in from{};
        socklen_t fl = sizeof from;
        const ssize_t n = ::recvfrom(udp, buf.data(), buf.size(), MSG_DONTWAIT, reinterpret_cast<sockaddr*>(&from), &fl);
        if (n <= 0) continue;
        if (!have_peer) {
          peer = from;
          have_peer = true;
        } else if (from.sin_addr.s_addr != peer.sin_addr.s_addr || from.sin_port != peer.sin_port) {
          continue;
        }
        (void)!::write(tap->fd, buf.data(), static_cast<std::size_t>(n));
        ++frames;
      }
    }
  }
  void halt() {
    if (stop_fd >= 0) {
      const std::uint64_t one = 1;
      (void)!::write(stop_fd, &one, sizeof one);
    }
    if (thread.joinable()) thread.join();
  }
  ~Relay() {
    halt();
    if (udp >= 0) ::close(udp);
    if (stop_fd >= 0) ::close(stop_fd);
  }
};

Result<std::unique_ptr<RemoteMemberLink>> RemoteMemberLink::start(const RemotePlacement& placement, unsigned host_index, unsigned id,
                                                                  json ticket, std::shared_ptr<const TapDevice> tap,
                                                                  const std::string& address) {
  std::unique_ptr<RemoteMemberLink> link(new RemoteMemberLink());
  const auto& agent = placement.agents.at(host_index);
  for (const auto& w : agent) link->host_ += (link->host_.empty() ? "" : " ") + w;
  if (tap->vnet_hdr)  // run.cpp opens a remote family's taps without it (add_tap)
    return make_error("clone " + std::to_string(id) + ": its tap has a virtio-net header, which the remote NIC cannot carry");
  auto relay = std::make_unique<Relay>();
  relay->tap = std::move(tap);
  auto udp = bind_any_port(address, SOCK_DGRAM);
  if (!udp) return make_error("clone " + std::to_string(id) + " on '" + link->host_ + "': frame relay: " + udp.error().message);
  relay->udp = udp->first;
  relay->stop_fd = ::eventfd(0, EFD_CLOEXEC);
  if (relay->stop_fd < 0) return make_error(std::string("eventfd: ") + std::strerror(errno));
  ticket["id"] = id;
  ticket["net"] = endpoint_text(udp->second);
  ticket["mac"] = relay->tap->mac;
  const std::string line = ticket.dump() + "\n";

  std::vector<std::string> argv = agent;
  argv.push_back(placement.sfd_path);
  argv.push_back("remote-member");
  if (placement.verbose) argv.push_back("-v");
  int in_pipe[2] = {-1, -1};
  int out_pipe[2] = {-1, -1};
  if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0)
    return make_error(std::string("pipe: ") + std::strerror(errno));
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return make_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Its own process group (a terminal's Ctrl-C reaches sfd, which stops the member in
    // order) and it dies with sfd.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    ::dup2(in_pipe[0], 0);
    ::dup2(out_pipe[1], 1);
    ::execvp(cargv[0], cargv.data());
    std::fprintf(stderr, "sfd: cannot run the remote agent '%s': %s\n", cargv[0], std::strerror(errno));
    _exit(127);
  }
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  link->pid_ = pid;
  link->stdin_fd_ = in_pipe[1];
  link->stdout_fd_ = out_pipe[0];
  ::fcntl(link->stdout_fd_, F_SETFL, O_NONBLOCK);
  signal(SIGPIPE, SIG_IGN);
  if (!write_all(link->stdin_fd_, line.data(), line.size()))
    spdlog::warn("clone {} on '{}': cannot write its ticket (the agent exited?)", id, link->host_);
  relay->thread = std::thread([r = relay.get()] { r->run(); });
  link->relay_ = std::move(relay);
  spdlog::info("clone {}: placed on '{}' (pid {}), frames relayed over {}", id, link->host_, pid, endpoint_text(udp->second));
  return link;
}

RemoteMemberLink::~RemoteMemberLink() { stop(std::chrono::milliseconds(0)); }

std::uint64_t RemoteMemberLink::frames_relayed() const { return relay_ ? relay_->frames.load() : frames_final_; }

std::optional<int> RemoteMemberLink::try_reap() {
  if (status_) return status_;
  if (pid_ <= 0) return std::nullopt;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
  return status_;
}

void RemoteMemberLink::read_output() {
  if (stdout_fd_ < 0) return;
  std::array<char, 4096> buf{};
  for (;;) {
    const ssize_t n = ::read(stdout_fd_, buf.data(), buf.size());
    if (n > 0) {
      out_.append(buf.data(), static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  for (auto nl = out_.find('\n'); nl != std::string::npos; nl = out_.find('\n')) {
    auto j = json::parse(out_.substr(0, nl), nullptr, false);
    out_.erase(0, nl + 1);
    if (j.is_object() && j.value("event", "") == "stopped") stopped_ = j;
  }
  if (out_.size() > (1u << 20)) out_.clear();
}

void RemoteMemberLink::stop(std::chrono::milliseconds grace) {
  if (stdin_fd_ >= 0) {
    ::close(stdin_fd_);
    stdin_fd_ = -1;
  }
  if (pid_ > 0) {
    auto wait_for = [&](std::chrono::milliseconds t) {
      const auto deadline = Clock::now() + t;
      while (!try_reap()) {
        read_output();
        if (Clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return true;
    };
    if (!wait_for(grace)) {
      ::kill(pid_, SIGTERM);
      if (!wait_for(std::chrono::milliseconds(3000))) {
        ::kill(pid_, SIGKILL);
        int st = 0;
        if (::waitpid(pid_, &st, 0) == pid_) status_ = st;
      }
    }
    read_output();
    pid_ = -1;
  }
  if (stdout_fd_ >= 0) {
    ::close(stdout_fd_);
    stdout_fd_ = -1;
  }
  if (relay_) {
    relay_->halt();
    frames_final_ = relay_->frames.load();
    relay_.reset();
  }
}

// ---------------------------------------------------------------------------------------------
// The remote side: `sfd remote-member`

namespace {

constexpr const char* kMemberUsage =
    "usage: sfd remote-member [-v]\n"
    "  Started by `sfd run --remote AGENT` on another host: reads its ticket (one JSON line) on\n"
    "  stdin, starts the clone with its memory from the origin (memtap over mcdist), relays its\n"
    "  guest I/O and control ports to the origin, and stops when stdin ends or on a signal.\n";

// This host's address and interface on the route to `address` (the link to the origin).
Result<std::pair<std::string, std::string>> local_side_of(const std::string& address) {
  auto sa = ipv4_endpoint(address + ":9");
  if (!sa) return sa.error();
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in local{};
  socklen_t len = sizeof local;
  const bool ok = fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&*sa), sizeof *sa) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0;
  const int e = errno;
  if (fd >= 0) ::close(fd);
  if (!ok) return make_error("no route to the origin " + address + " from this host: " + std::strerror(e));
  char b[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &local.sin_addr, b, sizeof b);
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return make_error(std::string("getifaddrs: ") + std::strerror(errno));
  std::string ifname;
  for (ifaddrs* i = list; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr != nullptr && i->ifa_addr->sa_family == AF_INET &&
        reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr.s_addr == local.sin_addr.s_addr) {
      ifname = i->ifa_name;
      break;
    }
  }
  freeifaddrs(list);
  if (ifname.empty()) return make_error(std::string("no interface holds ") + b + ", the address on the route to the origin");
  return std::make_pair(std::string(b), ifname);
}

Result<int> connect_port(const std::string& members, const sf::memtap::OwnerToken& token, unsigned id, unsigned char port) {
  auto sa = ipv4_endpoint(members);
  if (!sa) return make_error("members: " + sa.error().message);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(std::string("socket: ") + std::strerror(errno));
  set_timeouts(fd, std::chrono::seconds(10));
  unsigned char hello[kHelloBytes];
  std::memcpy(hello, kMagic, 4);
  put_le32(hello + 4, kVersion);
  std::memcpy(hello + 8, token.data(), token.size());
  put_le32(hello + 40, id);
  hello[44] = port;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&*sa), sizeof *sa) != 0 || !send_all(fd, hello, sizeof hello)) {
    const int e = errno;
    ::close(fd);
    return make_error("cannot connect to the origin's member service " + members + ": " + std::strerror(e));
  }
  set_timeouts(fd, std::chrono::milliseconds(0));
  no_delay(fd);
  return fd;
}

// One line from fd 0, read byte by byte so nothing after it is consumed.
std::optional<std::string> read_line_stdin() {
  std::string line;
  char c = 0;
  for (;;) {
    const ssize_t n = ::read(0, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return std::nullopt;
    if (c == '\n') return line;
    line.push_back(c);
    if (line.size() > 65536) return std::nullopt;
  }
}

}  // namespace

int remote_member_command(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-v" || a == "--verbose") {
      spdlog::set_level(spdlog::level::info);
    } else if (a == "-h" || a == "--help") {
      std::fputs(kMemberUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "sfd remote-member: unknown option %s\n%s", a.c_str(), kMemberUsage);
      return 2;
    }
  }
  auto fail = [](const std::string& m) {
    std::fprintf(stderr, "sfd remote-member: %s\n", m.c_str());
    return 1;
  };
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const int sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0) return fail(std::string("signalfd: ") + std::strerror(errno));

  auto line = read_line_stdin();
  if (!line) return fail("no ticket on stdin (this command is started by `sfd run --remote`)");
  RemoteCloneOptions o;
  std::string members;
  std::string net;
  std::string mac;
  try {
    const json t = json::parse(*line);
    o.control = t.at("control").get<std::string>();
    o.token_hex = t.at("token").get<std::string>();
    o.clone_id = t.at("id").get<std::uint32_t>();
    members = t.at("members").get<std::string>();
    net = t.at("net").get<std::string>();
    mac = t.at("mac").get<std::string>();
    if (t.contains("fetch_timeout_ms")) o.fetch_timeout = std::chrono::milliseconds(t["fetch_timeout_ms"].get<std::uint32_t>());
  } catch (const std::exception& e) {
    return fail(std::string("a malformed ticket: ") + e.what());
  }
  auto token = sf::memtap::parse_token_hex(o.token_hex);
  if (!token) return fail("ticket token: " + token.error().message);
  const std::string origin = net.substr(0, net.rfind(':'));
  auto local = local_side_of(origin);
  if (!local) return fail(local.error().message);
  o.interface = local->second;
  if (int n = sweep_stale_vm_files(); n > 0) spdlog::info("removed {} file(s) left by a killed sfd", n);

  auto io_tcp = connect_port(members, *token, o.clone_id, kIoPort);
  if (!io_tcp) return fail(io_tcp.error().message);
  auto ctl_tcp = connect_port(members, *token, o.clone_id, kCtlPort);
  if (!ctl_tcp) {
    ::close(*io_tcp);
    return fail(ctl_tcp.error().message);
  }
  // QEMU binds this port itself; it was free a moment ago on the link's address.
  auto probe = bind_any_port(local->first, SOCK_DGRAM);
  if (!probe) return fail("UDP port for the NIC: " + probe.error().message);
  ::close(probe->first);
  o.nic = VmConfig::UdpNic{mac, endpoint_text(probe->second), net};
  spdlog::info("remote member {}: origin {} via {} ({}), NIC {} <-> {}", o.clone_id, origin, local->second, local->first,
               o.nic->local, net);

  RemoteCloneTimings t;
  auto rc = RemoteClone::start(o, &t);
  if (!rc) {
    ::close(*io_tcp);
    ::close(*ctl_tcp);
    return fail(rc.error().message);
  }
  const int io_vm = (*rc)->vm().take_io_fd();
  const int ctl_vm = (*rc)->vm().take_ctl_fd();
  auto us = [](std::chrono::microseconds d) { return static_cast<long long>(d.count()); };
  json running = {{"event", "running"},
                  {"id", o.clone_id},
                  {"qemu_pid", (*rc)->vm().pid()},
                  {"interface", o.interface},
                  {"timings_us",
                   {{"descriptor", us(t.descriptor)}, {"mount", us(t.mount)}, {"start", us(t.start)}, {"load", us(t.load)}, {"resume", us(t.resume)}}}};
  std::printf("%s\n", running.dump().c_str());
  std::fflush(stdout);

  // Relay both ports until one side ends.
  const std::array<std::pair<int, int>, 4> routes = {{{io_vm, *io_tcp}, {*io_tcp, io_vm}, {ctl_vm, *ctl_tcp}, {*ctl_tcp, ctl_vm}}};
  std::string why;
  int code = 0;
  std::vector<char> buf(65536);
  while (why.empty()) {
    std::vector<pollfd> p = {{0, POLLIN, 0}, {sig_fd, POLLIN, 0}};
    for (const auto& r : routes) p.push_back({r.first, POLLIN, 0});
    const int n = ::poll(p.data(), p.size(), 200);
    if (n < 0 && errno != EINTR) {
      why = std::string("poll: ") + std::strerror(errno);
      code = 1;
      break;
    }
    if (n > 0 && p[0].revents != 0) {
      const ssize_t k = ::read(0, buf.data(), buf.size());
      if (k <= 0) why = "the origin ended this member (stdin closed)";
    }
    if (n > 0 && (p[1].revents & POLLIN)) {
      signalfd_siginfo si{};
      if (::read(sig_fd, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) why = std::string("signal ") + strsignal(static_cast<int>(si.ssi_signo));
    }
    for (std::size_t i = 0; n > 0 && why.empty() && i < routes.size(); ++i) {
      if ((p[2 + i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const ssize_t k = ::read(routes[i].first, buf.data(), buf.size());
      if (k < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (k <= 0 || !write_all(routes[i].second, buf.data(), static_cast<std::size_t>(k))) {
        why = routes[i].first == *io_tcp || routes[i].first == *ctl_tcp ? "the origin closed the connection" : "the VM closed its port";
      }
    }
    if (!why.empty()) break;
    if (auto st = (*rc)->vm().try_reap()) {
      why = "the VM ended";
      code = 1;
    } else if (auto ex = (*rc)->fuse_exited()) {
      why = *ex;
      code = 1;
      std::fprintf(stderr, "sfd remote-member: %s\n", ex->c_str());
    }
  }
  json stopped = {{"event", "stopped"}, {"id", o.clone_id}, {"why", why}};
  auto stats = json::parse((*rc)->client_stats(), nullptr, false);
  stopped["client"] = stats.is_discarded() ? json(nullptr) : stats;
  ::close(io_vm);
  ::close(ctl_vm);
  ::close(*io_tcp);
  ::close(*ctl_tcp);
  rc->reset();
  std::printf("%s\n", stopped.dump().c_str());
  std::fflush(stdout);
  ::close(sig_fd);
  return code;
}

}  // namespace sf::sfd
