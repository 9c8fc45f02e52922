// sfd-xen: the host side of the xen driver, run in dom0 (docs/xen.md,
// docs/protocols/xen-clone.md). It serves the named guests: their clone API writes sf.ctl
// requests into xenstore; sfd-xen answers there. A clone is a save/restore clone made with
// libxl: the parent is suspended once into an image, resumed (it goes on), and the image is
// restored N times as new domains with new names, UUIDs and MACs; each copy learns its clone
// ID from its own xenstore keys before it is unpaused. Clones that sync, exit, crash or
// vanish are destroyed and reported to the parent; nothing outlives sfd-xen: a lifeline
// process destroys the clones and removes the served keys even when sfd-xen is killed.
//
// With --host, some clones are restored on other Xen hosts: `sfd-xen host` there (the same
// program in its other role, an agent) receives the image once by mcdist multicast, restores
// its share of the clones, serves their requests and reports how they end over one TCP link
// per ticket (host_link.hpp, docs/protocols/xen-hosts.md).
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern "C" {
#include <libxl.h>
#include <libxl_utils.h>
#include <xenstore.h>
#include <xentoollog.h>
}

#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "clone-core/guest_control.hpp"
#include "clone-core/netlink_links.hpp"
#include "clone-core/vm_identity.hpp"
#include "host_link.hpp"
#include "mcdist/receiver.hpp"
#include "mcdist/sender.hpp"
#include "sf-common/random.hpp"
#include "sfd/vm_network.hpp"

namespace {

namespace gc = sf::guest_control;
namespace hl = sf::sfd::xen;
using json = nlohmann::json;
using namespace std::chrono_literals;

bool g_verbose = false;

void log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void log(const char* fmt, ...) {
  std::va_list ap;
  va_start(ap, fmt);
  std::fputs("sfd-xen: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputc('\n', stderr);
  va_end(ap);
}
#define VLOG(...) \
  do {            \
    if (g_verbose) log(__VA_ARGS__); \
  } while (0)

std::string domain_path(std::uint32_t domid) { return "/local/domain/" + std::to_string(domid); }
std::string key_of(std::uint32_t domid, const char* relative) { return domain_path(domid) + "/" + relative; }

// The lifeline: a child forked before libxl starts, told which clones exist and which
// domains are served. When its pipe ends (sfd-xen exited or was killed) it destroys the
// clones that are left and removes the served keys.
class Lifeline {
 public:
  bool start() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return false;
    const pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
      ::close(fds[1]);
      run(fds[0]);
    }
    ::close(fds[0]);
    fd_ = fds[1];
    pid_ = pid;
    return true;
  }
  void tell(char what, std::uint32_t domid) {
    const std::string line = std::string(1, what) + std::to_string(domid) + "\n";
    if (fd_ >= 0 && ::write(fd_, line.data(), line.size()) < 0) log("lifeline: %s", std::strerror(errno));
  }
  // Normal end: sfd-xen cleaned up itself; the lifeline finds nothing left to do.
  void finish() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (pid_ > 0) {
      while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
    }
    pid_ = -1;
  }

 private:
  [[noreturn]] static void run(int fd) {
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE}) signal(sig, SIG_IGN);
    std::set<std::uint32_t> clones, served;
    std::string buf;
    char chunk[256];
    for (;;) {
      const ssize_t n = ::read(fd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      buf.append(chunk, static_cast<std::size_t>(n));
      std::size_t nl;
      while ((nl = buf.find('\n')) != std::string::npos) {
        const std::string line = buf.substr(0, nl);
        buf.erase(0, nl + 1);
        if (line.size() < 2) continue;
        const auto domid = static_cast<std::uint32_t>(std::strtoul(line.c_str() + 1, nullptr, 10));
        switch (line[0]) {
          case '+': clones.insert(domid); break;
          case '-': clones.erase(domid); break;
          case 's': served.insert(domid); break;
          case 'u': served.erase(domid); break;
        }
      }
    }
    if (!clones.empty()) {
      xentoollog_logger_stdiostream* lg = xtl_createlogger_stdiostream(stderr, XTL_ERROR, 0);
      libxl_ctx* ctx = nullptr;
      if (libxl_ctx_alloc(&ctx, LIBXL_VERSION, 0, reinterpret_cast<xentoollog_logger*>(lg)) == 0) {
        for (auto d : clones) {
          log("sfd-xen is gone: destroying its clone domain %" PRIu32, d);
          libxl_domain_destroy(ctx, d, nullptr);
        }
        libxl_ctx_free(ctx);
      }
    }
    if (!served.empty()) {
      if (xs_handle* xs = xs_open(0)) {
        for (auto d : served) xs_rm(xs, XBT_NULL, key_of(d, gc::kXenDir).c_str());
        xs_close(xs);
      }
    }
    _exit(0);
  }

  int fd_ = -1;
  pid_t pid_ = -1;
};

struct Clone {
  unsigned id = 0;
  std::uint32_t domid = 0;  // on the host that restored it
  std::string name;
  std::string mac;  // its first NIC's
  int host = -1;    // where it runs: -1 here, else the index of its --host (origin only)
  bool ended = false;
  gc::CloneStatus status;
};

// A served domain and the clones of its ticket; in a host agent, the clones one origin's
// ticket placed here (`agent`, keyed above every domain ID, no parent domain on this host).
struct Family {
  std::uint32_t domid = 0;
  std::string name;
  unsigned granted = 0;
  bool cloned = false;
  bool pending_join = false;
  std::vector<sf::sfd::NodeIdentity> nodes;
  std::vector<Clone> clones;  // index id - 1 (origin); the ones placed here (agent)
  std::vector<hl::HostLink> links;  // origin: one per --host, open while its clones are
  bool agent = false;
  bool authed = false;
  std::string nonce;
  hl::HostLink origin;  // agent: the origin that placed these clones
  bool all_ended() const {
    for (const auto& c : clones)
      if (!c.ended) return false;
    return true;
  }
};

struct Options {
  std::string subnet = sf::sfd::kVmSubnet;
  std::string save_dir;
  unsigned max_clones = 32;
  std::vector<std::string> domains;
  // serve: other Xen hosts that restore clones, the link toward them, their shared key.
  std::vector<std::string> hosts;
  std::string host_iface;
  std::string mcast = "239.255.78.1:7790";
  // host: where to listen and receive images, and the network namespace of those sockets.
  std::string listen;
  std::string iface;
  std::string netns;
  sf::mcdist::ClusterKey key;  // --host-key-file (serve) or --key-file (host)
};

// A field's string, or `otherwise` when it is missing or not a string.
std::string text(const json& m, const char* key, const std::string& otherwise) {
  const json& v = hl::field(m, key);
  return v.is_string() ? v.get<std::string>() : otherwise;
}

// Domain IDs are below 0x7ff0; an agent's families are keyed from here up.
constexpr std::uint32_t kAgentKeyBase = 0x10000;

// Runs f with the calling thread in the network namespace `fd` (when fd >= 0): sockets made
// and threads started there stay in it. Back in the thread's own namespace after. Nothing
// (errno set) when the thread cannot enter it: f never runs in the wrong namespace.
template <class F>
auto in_netns(int fd, F f) -> std::optional<decltype(f())> {
  if (fd < 0) return f();
  const int self = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0 || setns(fd, CLONE_NEWNET) != 0) {
    const int e = errno;
    if (self >= 0) ::close(self);
    errno = e;
    return std::nullopt;
  }
  auto r = f();
  if (setns(self, CLONE_NEWNET) != 0) log("cannot return to sfd-xen's network namespace: %s", std::strerror(errno));
  ::close(self);
  return r;
}

// A libxl domain configuration, disposed at the end of its scope.
struct DomainConfig {
  libxl_domain_config c;
  DomainConfig() { libxl_domain_config_init(&c); }
  ~DomainConfig() { libxl_domain_config_dispose(&c); }
  DomainConfig(const DomainConfig&) = delete;
  DomainConfig& operator=(const DomainConfig&) = delete;
};

// A descriptor closed at the end of its scope (the images are unnamed O_TMPFILE files, so
// closing is all their cleanup).
struct FileDescriptor {
  int fd;
  explicit FileDescriptor(int f) : fd(f) {}
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
};

// The saved image mapped read-only while it is multicast.
struct MappedImage {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  ~MappedImage() {
    if (data) ::munmap(const_cast<std::uint8_t*>(data), size);
  }
};

class XenHost {
 public:
  XenHost(Options opt, Lifeline& lifeline) : opt_(std::move(opt)), lifeline_(lifeline) {}
  ~XenHost() {
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (netns_fd_ >= 0) ::close(netns_fd_);
    if (xs_) xs_close(xs_);
    if (ctx_) libxl_ctx_free(ctx_);
    if (logger_) xtl_logger_destroy(reinterpret_cast<xentoollog_logger*>(logger_));
  }

  bool open() {
    logger_ = xtl_createlogger_stdiostream(stderr, g_verbose ? XTL_PROGRESS : XTL_ERROR, 0);
    if (libxl_ctx_alloc(&ctx_, LIBXL_VERSION, 0, reinterpret_cast<xentoollog_logger*>(logger_)) != 0) {
      log("cannot talk to Xen's toolstack (libxl_ctx_alloc failed): run sfd-xen as root in dom0, with xenstored running");
      return false;
    }
    xs_ = xs_open(0);
    if (!xs_) {
      log("cannot open xenstore: %s; is xenstored running?", std::strerror(errno));
      return false;
    }
    return true;
  }

  // Starts serving the named domains; false (with a message) if one cannot be served.
  bool serve() {
    for (const auto& name : opt_.domains) {
      std::uint32_t domid = 0;
      if (libxl_name_to_domid(ctx_, name.c_str(), &domid) != 0 || domid == 0) {
        log("no guest domain named '%s' (`xl list` shows the running ones)", name.c_str());
        return false;
      }
      const std::string vkey = key_of(domid, gc::kXenVersionKey);
      if (char* v = static_cast<char*>(xs_read(xs_, XBT_NULL, vkey.c_str(), nullptr))) {
        std::free(v);
        log("domain '%s' is already served by another sfd-xen (%s exists); stop that one first", name.c_str(), vkey.c_str());
        return false;
      }
      Family f;
      f.domid = domid;
      f.name = name;
      families_[domid] = std::move(f);
      lifeline_.tell('s', domid);
      if (!start_member(domid)) return false;
      log("serving domain %s (%" PRIu32 ")", name.c_str(), domid);
    }
    if (!xs_watch(xs_, "@releaseDomain", "release")) {
      log("cannot watch @releaseDomain: %s", std::strerror(errno));
      return false;
    }
    return true;
  }

  // The event loop: until every served domain is gone (serve) or a signal ends it.
  int run(int sigfd) {
    for (;;) {
      // What to watch: xenstore, the signals, the agent's listening socket, and every open
      // link (an origin's to its hosts, an agent's to its origins).
      std::vector<pollfd> p = {{xs_fileno(xs_), POLLIN, 0}, {sigfd, POLLIN, 0}};
      struct Source {
        std::uint32_t family;
        int link;  // -1: the agent's origin link
      };
      std::vector<Source> sources;
      if (listen_fd_ >= 0) p.push_back({listen_fd_, POLLIN, 0});
      const std::size_t first_link = p.size();
      for (auto& [key, f] : families_) {
        if (f.agent && f.origin.open()) {
          p.push_back({f.origin.fd(), POLLIN, 0});
          sources.push_back({key, -1});
        }
        for (std::size_t k = 0; k < f.links.size(); ++k) {
          if (!f.links[k].open()) continue;
          p.push_back({f.links[k].fd(), POLLIN, 0});
          sources.push_back({key, static_cast<int>(k)});
        }
      }
      if (::poll(p.data(), p.size(), -1) < 0) {
        if (errno == EINTR) continue;
        log("poll: %s", std::strerror(errno));
        return 1;
      }
      if (p[1].revents & POLLIN) {
        signalfd_siginfo si{};
        (void)::read(sigfd, &si, sizeof si);
        log("%s: destroying every clone and stopping", strsignal(static_cast<int>(si.ssi_signo)));
        shut_down();
        return 0;
      }
      for (;;) {
        char** vec = xs_check_watch(xs_);
        if (!vec) break;
        const std::string path = vec[XS_WATCH_PATH];
        const std::string token = vec[XS_WATCH_TOKEN];
        std::free(vec);
        if (token == "release") {
          check_domains();
        } else if (token.rfind("req:", 0) == 0) {
          handle_request(static_cast<std::uint32_t>(std::strtoul(token.c_str() + 4, nullptr, 10)));
        }
      }
      for (std::size_t i = 0; i < sources.size(); ++i) {
        if (!(p[first_link + i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        auto it = families_.find(sources[i].family);
        if (it == families_.end()) continue;
        if (sources[i].link < 0) {
          origin_readable(it->second);
        } else {
          host_readable(it->second, static_cast<std::size_t>(sources[i].link));
        }
      }
      if (listen_fd_ >= 0 && (p[2].revents & POLLIN)) accept_origin();
      if (listen_fd_ < 0 && families_.empty()) {
        log("no served domain is left: stopping");
        return 0;
      }
    }
  }

  void shut_down() {
    for (auto& [key, f] : families_) {
      kill_clones(f);
      if (!f.agent) stop_member(key, true);
    }
    families_.clear();
  }

  // Host agent: listens for origins (in --netns, if given).
  bool listen() {
    std::optional<sf::sfd::Result<int>> fd;  // nothing: --netns cannot be entered
    if (opt_.netns.empty() || (netns_fd_ = ::open(opt_.netns.c_str(), O_RDONLY | O_CLOEXEC)) >= 0)
      fd = in_netns(netns_fd_, [&] { return hl::listen_on(opt_.listen); });
    if (!fd) {
      log("--netns %s: %s (a network namespace file such as /run/netns/NAME, and root)", opt_.netns.c_str(), std::strerror(errno));
      return false;
    }
    if (!*fd) {
      log("%s", fd->error().message.c_str());
      return false;
    }
    listen_fd_ = **fd;
    if (!xs_watch(xs_, "@releaseDomain", "release")) {
      log("cannot watch @releaseDomain: %s", std::strerror(errno));
      return false;
    }
    log("host agent: listening on %s, images on %s", opt_.listen.c_str(), opt_.iface.c_str());
    return true;
  }

 private:
  // ---- host agent: an origin's ticket placed some clones here ----
  void accept_origin() {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return;
    Family f;
    f.agent = true;
    f.domid = kAgentKeyBase + next_agent_++;
    f.origin = hl::HostLink(fd);
    f.origin.set_peer("origin " + std::to_string(f.domid - kAgentKeyBase));
    f.nonce = hl::random_hex(16);
    if (f.origin.send({{"sfd-xen-host", hl::kHostProtocolVersion}, {"nonce", f.nonce}})) families_[f.domid] = std::move(f);
  }

  void drop_origin(Family& f, const std::string& why) {
    log("%s: %s; destroying its clones here", f.origin.peer().c_str(), why.c_str());
    f.origin.close();
    kill_clones(f);
    families_.erase(f.domid);
  }

  void origin_readable(Family& f) {
    auto msgs = f.origin.read_available();
    if (!msgs) return drop_origin(f, msgs.error().message);
    for (const auto& m : *msgs) {
      const std::string op = text(m, "op", "");
      if (!f.authed) {
        if (op != "auth" || !hl::field(m, "proof").is_string() ||
            !hl::proof_matches(opt_.key, f.nonce, hl::field(m, "proof").get<std::string>())) {
          (void)f.origin.send({{"op", "error"}, {"message", "the origin does not hold this host's key (sfd-xen serve --host-key-file must name the same key as sfd-xen host --key-file)"}});
          return drop_origin(f, "refused: it did not prove the hosts' key");
        }
        f.authed = true;
        (void)f.origin.send({{"op", "ready"}});
      } else if (op == "restore" && !f.cloned) {
        if (auto r = agent_restore(f, m); !r) {
          (void)f.origin.send({{"op", "failed"}, {"message", r.error().message}});
          return drop_origin(f, r.error().message);
        }
      } else if (op == "unpause" && f.cloned) {
        for (auto& c : f.clones)
          if (!c.ended && libxl_domain_unpause(ctx_, c.domid, nullptr) != 0) log("cannot unpause %s", c.name.c_str());
        log("%s: %zu clone(s) of %s running", f.origin.peer().c_str(), f.clones.size(), f.name.c_str());
      } else if (op == "kill") {
        for (auto& c : f.clones)
          if (!c.ended && (!m.contains("id") || hl::field(m, "id") == c.id)) end_clone(f, c, gc::CLONE_END_KILLED, 9);
      } else {
        return drop_origin(f, "it sent '" + op + "', which this host agent does not expect now");
      }
    }
  }

  // Receives the image by multicast into a temporary file and restores the clones placed
  // here, paused; the origin unpauses every host's clones together.
  sf::sfd::Status agent_restore(Family& f, const json& m) {
    auto req = hl::parse_restore(m);
    if (!req) return req.error();
    f.name = req->family;
    const std::uint64_t bytes = req->image_bytes;
    for (const auto& rc : req->clones) {
      Clone c;
      c.id = rc.id;
      c.name = rc.name;
      c.mac = rc.mac;
      c.status.set_id(c.id);
      f.clones.push_back(c);
    }
    DomainConfig config;
    libxl_domain_config& cfg = config.c;
    if (libxl_domain_config_from_json(ctx_, &cfg, req->config.dump().c_str()) != 0)
      return sf::sfd::make_error("a restore request with a configuration libxl cannot read");
    std::uint64_t free_kb = 0;
    const std::uint64_t need_kb = cfg.b_info.max_memkb * f.clones.size();
    if (libxl_get_free_memory(ctx_, &free_kb) == 0 && free_kb < need_kb)
      return sf::sfd::make_error("this host's Xen has " + std::to_string(free_kb / 1024) + " MiB free and " + std::to_string(f.clones.size()) +
                                 " clone(s) need " + std::to_string(need_kb / 1024) + " MiB");
    const FileDescriptor image(::open(opt_.save_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    const int img = image.fd;
    if (img < 0) return sf::sfd::make_error("cannot make the image file in " + opt_.save_dir + ": " + std::strerror(errno));
    if (::ftruncate(img, static_cast<off_t>(bytes)) != 0)
      return sf::sfd::make_error("cannot size the image file in " + opt_.save_dir + ": " + std::strerror(errno));
    const auto t0 = now_ms();
    sf::mcdist::ReceiverConfig rc;
    rc.interface = opt_.iface;
    rc.group = req->group;
    rc.port = req->port;
    rc.cluster_id = req->cluster;
    rc.key = opt_.key;
    rc.receiver_id = req->receiver;
    rc.fetch_all = true;
    rc.join_timeout = 60s;  // the origin restores its own clones while it sends
    bool write_failed = false;
    auto entered = in_netns(netns_fd_, [&] {
      return sf::mcdist::MulticastReceiver::start(rc, [&](std::uint64_t page, std::span<const std::uint8_t> data) {
        if (::pwrite(img, data.data(), std::min<std::uint64_t>(data.size(), bytes - page * 4096), static_cast<off_t>(page * 4096)) < 0)
          write_failed = true;
      });
    });
    if (!entered) return sf::sfd::make_error("cannot enter the network namespace of --netns: " + std::string(std::strerror(errno)));
    auto& rx = *entered;
    if (!rx) return sf::sfd::make_error("cannot receive the image on " + opt_.iface + ": " + rx.error().message);
    (void)f.origin.send({{"op", "joined"}});
    auto done = (*rx)->wait_complete(300s);
    (*rx)->stop();
    if (!done) return sf::sfd::make_error("the image did not arrive: " + done.error().message);
    if (write_failed) return sf::sfd::make_error("cannot write the image in " + opt_.save_dir + " (full?)");
    log("%s: image of %s received (%lld MiB) in %lld ms", f.origin.peer().c_str(), f.name.c_str(), static_cast<long long>(bytes >> 20),
        now_ms() - t0);
    (void)f.origin.send({{"op", "received"}, {"ms", now_ms() - t0}});
    f.cloned = true;
    for (auto& c : f.clones) {
      if (!restore(cfg, img, c)) return sf::sfd::make_error("cannot restore clone " + std::to_string(c.id) + " (" + c.name + ") with libxl on this host");
      VLOG("%s: restored clone %u as %s (domain %" PRIu32 ")", f.name.c_str(), c.id, c.name.c_str(), c.domid);
      if (auto s = f.origin.send({{"op", "restored"}, {"id", c.id}, {"domid", c.domid}}); !s) return s.error();
    }
    return sf::ok_status();
  }

 private:
  // ---- xenstore side of one member (a served parent or a clone) ----
  bool start_member(std::uint32_t domid) {
    const std::string vkey = key_of(domid, gc::kXenVersionKey);
    const std::string version = std::to_string(gc::kVersion);
    xs_rm(xs_, XBT_NULL, key_of(domid, gc::kXenHostDir).c_str());
    xs_rm(xs_, XBT_NULL, key_of(domid, gc::kXenRequestKey).c_str());
    if (!xs_write(xs_, XBT_NULL, vkey.c_str(), version.data(), static_cast<unsigned>(version.size()))) {
      log("cannot write %s: %s", vkey.c_str(), std::strerror(errno));
      return false;
    }
    const std::string token = "req:" + std::to_string(domid);
    if (!xs_watch(xs_, key_of(domid, gc::kXenRequestKey).c_str(), token.c_str())) {
      log("cannot watch %s: %s", key_of(domid, gc::kXenRequestKey).c_str(), std::strerror(errno));
      return false;
    }
    seq_[domid] = 0;
    return true;
  }

  void stop_member(std::uint32_t domid, bool served) {
    const std::string token = "req:" + std::to_string(domid);
    xs_unwatch(xs_, key_of(domid, gc::kXenRequestKey).c_str(), token.c_str());
    xs_rm(xs_, XBT_NULL, key_of(domid, gc::kXenDir).c_str());
    seq_.erase(domid);
    if (served) lifeline_.tell('u', domid);
  }

  void send(std::uint32_t domid, const gc::HostMessage& m) {
    std::string body;
    m.SerializeToString(&body);
    char name[16];
    std::snprintf(name, sizeof name, "%08u", ++seq_[domid]);
    const std::string key = key_of(domid, gc::kXenHostDir) + "/" + name;
    if (!xs_write(xs_, XBT_NULL, key.c_str(), body.data(), static_cast<unsigned>(body.size())))
      log("domain %" PRIu32 ": cannot write %s: %s", domid, key.c_str(), std::strerror(errno));
  }
  void refuse(std::uint32_t domid, const std::string& why) {
    log("domain %" PRIu32 ": refused: %s", domid, why.c_str());
    gc::HostMessage m = gc::make_host_message();
    m.set_error(why);
    send(domid, m);
  }
  void done(std::uint32_t domid) {
    gc::HostMessage m = gc::make_host_message();
    m.mutable_done();
    send(domid, m);
  }

  // Which family and member (0 = parent) a domain is.
  bool find(std::uint32_t domid, Family** fam, Clone** clone) {
    for (auto& [pid, f] : families_) {
      if (pid == domid) {
        *fam = &f;
        *clone = nullptr;
        return true;
      }
      for (auto& c : f.clones) {
        if (c.host < 0 && c.domid == domid && !c.ended) {
          *fam = &f;
          *clone = &c;
          return true;
        }
      }
    }
    return false;
  }

  void handle_request(std::uint32_t domid) {
    Family* f = nullptr;
    Clone* c = nullptr;
    if (!find(domid, &f, &c)) return;
    const std::string rkey = key_of(domid, gc::kXenRequestKey);
    unsigned len = 0;
    char* raw = static_cast<char*>(xs_read(xs_, XBT_NULL, rkey.c_str(), &len));
    if (!raw) return;  // the watch's first event, or our own removal
    std::string body(raw, len);
    std::free(raw);
    xs_rm(xs_, XBT_NULL, rkey.c_str());
    auto req = gc::decode_request(body);
    if (!req) return refuse(domid, "sfd-xen: " + req.error().message);
    if (req->version() != gc::kVersion) return refuse(domid, gc::version_mismatch(gc::kVersion, req->version()));
    VLOG("domain %" PRIu32 ": %s", domid, gc::op_name(*req));
    const bool parent = c == nullptr;
    switch (req->op_case()) {
      case gc::Request::kTicket:
        if (!parent) return refuse(domid, "nested clusters are not supported: a clone cannot request a ticket");
        if (f->granted != 0) {
          // The guest side holds one ticket at a time, so the holder of the old one is gone
          // (it ended without join or kill): its clones end now.
          log("%s: a new ticket while the last one is open: its holder is gone, ending its clones", f->name.c_str());
          kill_clones(*f);
          reset(*f);
        }
        return grant(*f, req->ticket());
      case gc::Request::kClone:
        if (!parent) return refuse(domid, "nested clusters are not supported: a clone cannot clone");
        if (f->granted == 0) return refuse(domid, "clone without a ticket: request a ticket first");
        if (f->cloned) return refuse(domid, "this ticket was already used to clone");
        return clone(*f);
      case gc::Request::kSync:
        if (parent) return refuse(domid, "sync() is for clones; the parent calls join()");
        done(domid);
        return end_clone(*f, *c, gc::CLONE_END_SYNCED, req->sync().status());
      case gc::Request::kExit:
        if (parent) return refuse(domid, "exit reports come from clones");
        done(domid);
        return end_clone(*f, *c, req->exit().end() == gc::CLONE_END_SIGNALED ? gc::CLONE_END_SIGNALED : gc::CLONE_END_EXITED,
                         req->exit().value());
      case gc::Request::kJoin:
        if (!parent) return refuse(domid, "join() is for the parent; clones call sync()");
        if (!f->cloned) return refuse(domid, "join() before clone()");
        if (f->all_ended()) return join_reply(*f);
        f->pending_join = true;
        return;
      case gc::Request::kKill:
        if (!parent) return refuse(domid, "kill() is for the parent");
        kill_clones(*f);
        if (f->pending_join) join_reply(*f);
        reset(*f);
        return done(domid);
      case gc::Request::OP_NOT_SET: break;
    }
    refuse(domid, "a request without an operation this sfd-xen knows (sf.ctl version " + std::to_string(gc::kVersion) + ")");
  }

  void grant(Family& f, const gc::TicketRequest& t) {
    const unsigned want = t.clones();
    if (want == 0) return refuse(f.domid, "a ticket for 0 clones");
    if (want > opt_.max_clones)
      return refuse(f.domid, "cannot clone this domain " + std::to_string(want) + " times: sfd-xen makes at most " +
                                 std::to_string(opt_.max_clones) + " clones per ticket");
    libxl_dominfo info;
    libxl_dominfo_init(&info);
    if (libxl_domain_info(ctx_, &info, f.domid) != 0) {
      libxl_dominfo_dispose(&info);
      return refuse(f.domid, "cannot read this domain's information from Xen");
    }
    const std::uint64_t mem_kb = info.current_memkb + info.outstanding_memkb;
    libxl_dominfo_dispose(&info);
    unsigned here = 0;  // the other hosts check their own memory
    for (unsigned i = 1; i <= want; ++i) here += placement(i) < 0;
    std::uint64_t free_kb = 0;
    if (libxl_get_free_memory(ctx_, &free_kb) == 0 && free_kb < mem_kb * here)
      return refuse(f.domid, "cannot clone this domain " + std::to_string(here) + " times here: " + std::to_string(here) + " x " +
                                 std::to_string(mem_kb / 1024) + " MiB are needed and Xen has " + std::to_string(free_kb / 1024) +
                                 " MiB free; ask for fewer clones or free memory");
    const std::string host = t.hostname().empty() ? f.name : t.hostname();
    gc::HostMessage m = gc::make_host_message();
    gc::TicketReply& reply = *m.mutable_ticket();
    reply.set_granted(want);
    reply.set_subnet(opt_.subnet);
    f.nodes.clear();
    const std::string parent_mac = first_mac(f.domid);
    for (unsigned i = 0; i <= want; ++i) {
      auto n = sf::sfd::vm_node_identity(i, host, opt_.subnet);
      if (!n) return refuse(f.domid, n.error().message);
      if (i == 0 && !parent_mac.empty()) n->mac = parent_mac;  // the parent keeps its NIC's MAC
      f.nodes.push_back(*n);
      gc::Node& node = *reply.add_nodes();
      node.set_id(i);
      node.set_address(n->address);
      node.set_prefix(n->prefix);
      node.set_mac(n->mac);
      node.set_hostname(n->hostname);
    }
    if (m.ByteSizeLong() > gc::kXenMaxMessage)
      return refuse(f.domid, "a ticket for " + std::to_string(want) + " clones does not fit a xenstore value; ask for fewer");
    f.granted = want;
    log("%s: ticket: %u clone(s) granted", f.name.c_str(), want);
    send(f.domid, m);
  }

  std::string first_mac(std::uint32_t domid) {
    int n = 0;
    libxl_device_nic* nics = libxl_device_nic_list(ctx_, domid, &n);
    std::string out;
    if (nics && n > 0) {
      char buf[18];
      const std::uint8_t* m = nics[0].mac;
      std::snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
      out = buf;
    }
    if (nics) libxl_device_nic_list_free(nics, n);
    return out;
  }

  // Where clone i (1..N) runs: -1 on this host, else the index of its --host. Round robin over
  // this host and the others, this host first.
  int placement(unsigned i) const { return static_cast<int>((i - 1) % (opt_.hosts.size() + 1)) - 1; }

  // Saves the parent once, resumes it, restores the image as each clone: here with libxl, on
  // the other hosts by their agents, which receive the image once by multicast.
  void clone(Family& f) {
    const auto t0 = now_ms();
    DomainConfig config;
    libxl_domain_config& cfg = config.c;
    if (libxl_retrieve_domain_configuration(ctx_, f.domid, &cfg, nullptr) != 0)
      return refuse(f.domid, "cannot read this domain's configuration from libxl");
    for (int i = 0; i < cfg.num_disks; ++i) {
      if (cfg.disks[i].readwrite)
        return refuse(f.domid, std::string("cannot clone a domain with a writable disk (") +
                                   (cfg.disks[i].vdev ? cfg.disks[i].vdev : "?") +
                                   "): the clones would share it; give the guest read-only disks or none");
    }
    f.clones.clear();
    std::vector<unsigned> per_host(opt_.hosts.size(), 0);
    for (unsigned i = 1; i <= f.granted; ++i) {
      Clone c;
      c.id = i;
      c.name = f.name + "-sf" + std::to_string(i);
      c.mac = f.nodes[i].mac;
      c.host = placement(i);
      c.status.set_id(i);
      if (c.host >= 0) ++per_host[static_cast<std::size_t>(c.host)];
      f.clones.push_back(c);
    }
    // The other hosts first: an unreachable one fails the clone before the parent is paused.
    f.links.clear();
    f.links.resize(opt_.hosts.size());
    for (std::size_t k = 0; k < opt_.hosts.size(); ++k) {
      if (per_host[k] == 0) continue;
      auto link = connect_host(k);
      if (!link) return fail_clone(f, link.error().message);
      f.links[k] = std::move(*link);
    }
    const FileDescriptor saved(::open(opt_.save_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    const int img = saved.fd;
    if (img < 0) return fail_clone(f, "cannot make the save image in " + opt_.save_dir + ": " + std::strerror(errno) +
                                          " (sfd-xen --save-dir names another directory)");
    // A PV guest acknowledges the suspend itself, so it must be running here, not paused.
    if (libxl_domain_suspend(ctx_, f.domid, img, 0, nullptr) != 0) {
      libxl_domain_resume(ctx_, f.domid, 1, nullptr);
      return fail_clone(f, "libxl could not save this domain (see sfd-xen's log)");
    }
    struct stat st {};
    ::fstat(img, &st);
    const auto t_saved = now_ms();
    if (libxl_domain_resume(ctx_, f.domid, 1, nullptr) != 0) log("%s: libxl could not resume the parent after the save", f.name.c_str());
    log("%s: saved in %lld ms (%lld MiB); the parent goes on", f.name.c_str(), t_saved - t0,
        static_cast<long long>(st.st_size >> 20));
    f.cloned = true;
    // The other hosts' agents join the image's multicast stream; it runs while this host
    // restores its own clones.
    MappedImage image;
    std::unique_ptr<sf::mcdist::MulticastSender> sender;
    unsigned receivers = 0;
    for (auto& l : f.links) receivers += l.open();
    if (receivers > 0) {
      auto s = start_multicast(f, cfg, img, static_cast<std::uint64_t>(st.st_size), image);
      if (!s) return fail_clone(f, s.error().message);
      sender = std::move(*s);
    }
    for (auto& c : f.clones) {
      if (c.host >= 0) continue;
      if (!restore(cfg, img, c)) return fail_clone(f, "cannot restore clone " + std::to_string(c.id) + " (" + c.name + ") with libxl (see sfd-xen's log)");
      VLOG("%s: restored clone %u as %s (domain %" PRIu32 ")", f.name.c_str(), c.id, c.name.c_str(), c.domid);
    }
    if (sender) {
      const bool sent = sender->wait_done(receivers, 3s, 300s);
      const auto stats = sender->stats();
      sender->stop();
      if (!sent)
        return fail_clone(f, "the image did not reach every other host within 300 s (" + std::to_string(stats.receivers_complete) + " of " +
                                 std::to_string(receivers) + "); see the hosts' sfd-xen logs");
      log("%s: image of %lld MiB multicast once to %u host(s): %.1f MiB sent, %llu reported it complete", f.name.c_str(),
          static_cast<long long>(st.st_size >> 20), receivers, static_cast<double>(stats.bytes_sent) / (1 << 20),
          static_cast<unsigned long long>(stats.receivers_complete));
      for (std::size_t k = 0; k < f.links.size(); ++k) {
        if (!f.links[k].open()) continue;
        if (auto r = await_restored(f, k); !r) return fail_clone(f, r.error().message);
      }
      for (auto& l : f.links) {
        if (l.open()) (void)l.send({{"op", "unpause"}});
      }
    }
    for (auto& c : f.clones) {
      if (c.host < 0 && libxl_domain_unpause(ctx_, c.domid, nullptr) != 0) log("%s: cannot unpause %s", f.name.c_str(), c.name.c_str());
    }
    log("%s: %u clone(s) running %lld ms after the request (%s)", f.name.c_str(), f.granted, now_ms() - t0, clone_list(f).c_str());
    gc::HostMessage m = gc::make_host_message();
    m.mutable_clone()->set_id(0);
    send(f.domid, m);
  }

  // A clone request that failed: what runs is destroyed (here; the other hosts' agents
  // destroy theirs when the link closes) and the parent learns why.
  void fail_clone(Family& f, const std::string& why) {
    kill_clones(f);
    reset(f);
    refuse(f.domid, why);
  }

  // Connects to --host k and proves the shared key.
  sf::sfd::Result<hl::HostLink> connect_host(std::size_t k) {
    const std::string& ep = opt_.hosts[k];
    auto fd = hl::connect_to(ep, 10s);
    if (!fd) return sf::sfd::make_error("cannot reach Xen host " + ep + ": " + fd.error().message);
    hl::HostLink link(*fd);
    link.set_peer("Xen host " + ep);
    auto hello = link.receive(10s);
    if (!hello) return hello.error();
    if (!hello->contains("sfd-xen-host") || (*hello)["sfd-xen-host"] != hl::kHostProtocolVersion || !(*hello)["nonce"].is_string())
      return sf::sfd::make_error(link.peer() + " is not an sfd-xen host agent of protocol version " +
                                 std::to_string(hl::kHostProtocolVersion) + " (it said " + hello->dump() + ")");
    if (auto s = link.send({{"op", "auth"}, {"proof", hl::auth_proof(opt_.key, (*hello)["nonce"].get<std::string>())}}); !s)
      return s.error();
    auto ready = link.receive(10s);
    if (!ready) return ready.error();
    if ((*ready)["op"] != "ready")
      return sf::sfd::make_error(link.peer() + " refused: " + text(*ready, "message", ready->dump()));
    return link;
  }

  // Sends each linked host its restore request, waits until it has joined the stream, and
  // starts multicasting the image.
  sf::sfd::Result<std::unique_ptr<sf::mcdist::MulticastSender>> start_multicast(Family& f, libxl_domain_config& cfg, int img,
                                                                                  std::uint64_t bytes, MappedImage& image) {
    void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_SHARED, img, 0);
    if (p == MAP_FAILED) return sf::sfd::make_error(std::string("cannot map the save image: ") + std::strerror(errno));
    image.data = static_cast<const std::uint8_t*>(p);
    image.size = bytes;
    char* cj = libxl_domain_config_to_json(ctx_, &cfg);
    if (!cj) return sf::sfd::make_error("libxl could not write this domain's configuration as JSON");
    json config = json::parse(cj, nullptr, false);
    std::free(cj);
    auto group = hl::parse_endpoint(opt_.mcast);
    std::uint64_t cluster = 0;
    while (cluster == 0)
      if (!sf::random_bytes(&cluster, sizeof cluster)) return sf::sfd::make_error(std::string("no random cluster ID: ") + std::strerror(errno));
    for (std::size_t k = 0; k < f.links.size(); ++k) {
      if (!f.links[k].open()) continue;
      hl::RestoreRequest req;
      req.family = f.name;
      req.group = group->first;
      req.port = group->second;
      req.cluster = cluster;
      req.receiver = static_cast<std::uint32_t>(k + 1);
      req.image_bytes = bytes;
      req.config = config;
      for (const auto& c : f.clones) {
        if (c.host == static_cast<int>(k)) req.clones.push_back({c.id, c.name, c.mac});
      }
      if (auto s = f.links[k].send(hl::encode_restore(req)); !s) return s.error();
    }
    for (auto& l : f.links) {
      if (!l.open()) continue;
      auto m = l.receive(30s);
      if (!m) return m.error();
      if ((*m)["op"] != "joined") return sf::sfd::make_error(l.peer() + ": " + text(*m, "message", m->dump()));
    }
    sf::mcdist::SenderConfig sc;
    sc.interface = opt_.host_iface;
    sc.group = group->first;
    sc.port = group->second;
    sc.cluster_id = cluster;
    sc.key = opt_.key;
    sc.image_bytes = bytes;
    sc.page_size = 4096;
    sc.push = true;
    const std::uint8_t* base = image.data;
    auto sender = sf::mcdist::MulticastSender::start(sc, [base, bytes](std::uint64_t page) {
      const std::uint64_t off = page * 4096;
      return std::span<const std::uint8_t>(base + off, std::min<std::uint64_t>(4096, bytes - off));
    });
    if (!sender) return sf::sfd::make_error("cannot multicast the image on " + opt_.host_iface + ": " + sender.error().message);
    return std::move(*sender);
  }

  // Reads host k's answers until it has restored every clone placed there.
  sf::sfd::Status await_restored(Family& f, std::size_t k) {
    hl::HostLink& l = f.links[k];
    unsigned left = 0;
    for (const auto& c : f.clones) left += c.host == static_cast<int>(k);
    while (left > 0) {
      auto m = l.receive(300s);
      if (!m) return m.error();
      const std::string op = (*m)["op"];
      if (op == "received") continue;
      if (op == "failed") return sf::sfd::make_error(l.peer() + ": " + text(*m, "message", "failed"));
      if (op != "restored") return sf::sfd::make_error(l.peer() + " sent '" + op + "' while restoring");
      Clone* c = remote_clone(f, k, *m);
      if (!c || !(*m)["domid"].is_number_unsigned()) return sf::sfd::make_error(l.peer() + " restored a clone it was not given");
      c->domid = (*m)["domid"].get<std::uint32_t>();
      VLOG("%s: %s restored clone %u as %s (domain %" PRIu32 " there)", f.name.c_str(), l.peer().c_str(), c->id, c->name.c_str(), c->domid);
      --left;
    }
    return sf::ok_status();
  }

  // The clone of f on host k that message m names by "id".
  static Clone* remote_clone(Family& f, std::size_t k, const json& m) {
    if (!hl::field(m, "id").is_number_unsigned()) return nullptr;
    const auto id = hl::field(m, "id").get<unsigned>();
    if (id == 0 || id > f.clones.size() || f.clones[id - 1].host != static_cast<int>(k)) return nullptr;
    return &f.clones[id - 1];
  }

  // Origin: a message (or the end) on the link to host k after the clones run.
  void host_readable(Family& f, std::size_t k) {
    hl::HostLink& l = f.links[k];
    auto msgs = l.read_available();
    if (msgs) {
      for (const auto& m : *msgs) {
        Clone* c = remote_clone(f, k, m);
        const json& end = hl::field(m, "end");
        const json& value = hl::field(m, "value");
        if (hl::field(m, "op") == "ended" && c && end.is_number_integer() && gc::CloneEnd_IsValid(end.get<int>())) {
          end_clone(f, *c, static_cast<gc::CloneEnd>(end.get<int>()), value.is_number_integer() ? value.get<int>() : 0);
        } else {
          log("%s: %s sent an unexpected message: %s", f.name.c_str(), l.peer().c_str(), m.dump().c_str());
        }
      }
      return;
    }
    // The host (or the link) is gone: its clones are lost.
    log("%s: %s", f.name.c_str(), msgs.error().message.c_str());
    l.close();
    for (auto& c : f.clones) {
      if (c.host == static_cast<int>(k) && !c.ended) end_clone(f, c, gc::CLONE_END_LOST, 0);
    }
  }

  // Restores the image in img as clone c (paused), with its name, a new UUID and its MAC, and
  // writes its clone ID where it will read it.
  bool restore(const libxl_domain_config& parent, int img, Clone& c) {
    DomainConfig config;
    libxl_domain_config& cfg = config.c;
    libxl_domain_config_copy(ctx_, &cfg, &parent);
    std::free(cfg.c_info.name);
    cfg.c_info.name = strdup(c.name.c_str());
    libxl_uuid_generate(&cfg.c_info.uuid);
    for (int j = 0; j < cfg.num_nics; ++j) {
      std::free(cfg.nics[j].ifname);
      cfg.nics[j].ifname = nullptr;
      // NIC 0 gets the clone's cluster MAC; others a random one from libxl (all zeros).
      std::memset(cfg.nics[j].mac, 0, sizeof cfg.nics[j].mac);
      if (j == 0) {
        if (auto mac = sf::parse_mac(c.mac)) std::memcpy(cfg.nics[j].mac, mac->data(), mac->size());
      }
    }
    libxl_domain_restore_params params;
    libxl_domain_restore_params_init(&params);
    params.checkpointed_stream = LIBXL_CHECKPOINTED_STREAM_NONE;
    params.stream_version = 2;
    const int fd = ::open(("/proc/self/fd/" + std::to_string(img)).c_str(), O_RDONLY | O_CLOEXEC);
    std::uint32_t domid = static_cast<std::uint32_t>(INVALID_DOMID);
    int rc = fd < 0 ? -1 : libxl_domain_create_restore(ctx_, &cfg, &domid, fd, -1, &params, nullptr, nullptr);
    if (fd >= 0) ::close(fd);
    libxl_domain_restore_params_dispose(&params);
    if (domid != static_cast<std::uint32_t>(INVALID_DOMID) && domid != 0) {
      c.domid = domid;
      lifeline_.tell('+', domid);
    }
    if (rc != 0) return false;
    pin_first_vif(c, parent.num_nics > 0 ? parent.nics[0].devid : -1);
    if (!start_member(domid)) return false;
    gc::HostMessage m = gc::make_host_message();
    m.mutable_clone()->set_id(c.id);
    send(domid, m);
    return true;
  }

  // Until its guest side has applied the clone's own MAC, a restored clone still sends with
  // its parent's: a bridge that learned from those frames would send the parent's traffic to
  // the clone. So, before it is unpaused, the clone's first vif (libxl names it
  // vif<domid>.<devid>) gets a static FDB entry for the clone's MAC and no learning, as sfd
  // does for a VM clone's tap. A NIC on something other than a Linux bridge is left alone.
  void pin_first_vif(const Clone& c, int devid) {
    if (devid < 0) return;
    auto mac = sf::parse_mac(c.mac);
    if (!mac) return;
    if (!nl_.get()) {
      auto s = sf::netlink::Socket::open();
      if (!s) {
        log("%s: cannot open a netlink socket to pin its vif: %s", c.name.c_str(), s.error().message.c_str());
        return;
      }
      nl_ = std::move(*s);
    }
    const std::string vif = "vif" + std::to_string(c.domid) + "." + std::to_string(devid);
    auto index = sf::netlink::link_index(nl_, vif);
    auto pinned = index ? sf::netlink::pin_bridge_port(nl_, *index, *mac, vif) : sf::Status(index.error());
    if (!pinned) log("%s: its vif %s keeps MAC learning: %s", c.name.c_str(), vif.c_str(), pinned.error().message.c_str());
    else VLOG("%s: %s pinned to %s, learning off", c.name.c_str(), c.mac.c_str(), vif.c_str());
  }

  // Clone c ended: destroyed if it runs here (a kill is passed on to the host it runs on), and
  // reported to the parent (an agent reports to its origin instead).
  void end_clone(Family& f, Clone& c, gc::CloneEnd end, int value) {
    if (c.ended) return;
    c.ended = true;
    c.status.set_end(end);
    c.status.set_value(value);
    if (c.host < 0 && c.domid != 0) {  // 0: never restored (and dom0 is never destroyed)
      stop_member(c.domid, false);
      libxl_domain_destroy(ctx_, c.domid, nullptr);
      lifeline_.tell('-', c.domid);
    } else if (end == gc::CLONE_END_KILLED && c.domid != 0) {
      auto& l = f.links[static_cast<std::size_t>(c.host)];
      if (l.open()) (void)l.send({{"op", "kill"}, {"id", c.id}});
    }
    log("%s: clone %u (%s) ended: %s %d", f.name.c_str(), c.id, c.name.c_str(),
        sf::clone_end_name(*gc::from_wire(end)), value);
    if (f.agent) {
      if (f.origin.open()) (void)f.origin.send({{"op", "ended"}, {"id", c.id}, {"end", static_cast<int>(end)}, {"value", value}});
      return;
    }
    gc::HostMessage m = gc::make_host_message();
    *m.mutable_ended() = c.status;
    send(f.domid, m);
    if (f.pending_join && f.all_ended()) join_reply(f);
  }

  void join_reply(Family& f) {
    gc::HostMessage m = gc::make_host_message();
    for (const auto& c : f.clones) *m.mutable_join()->add_statuses() = c.status;
    if (f.clones.empty()) m.mutable_join();
    f.pending_join = false;
    send(f.domid, m);
    reset(f);
  }

  void reset(Family& f) {
    f.granted = 0;
    f.cloned = false;
    f.pending_join = false;
    f.nodes.clear();
    for (auto& l : f.links) l.close();  // the hosts' agents end what is left of the ticket
  }

  void kill_clones(Family& f) {
    for (auto& c : f.clones) {
      if (c.ended) continue;
      if (c.domid == 0) {
        c.ended = true;
        c.status.set_end(gc::CLONE_END_KILLED);
        c.status.set_value(9);
        continue;
      }
      end_clone(f, c, gc::CLONE_END_KILLED, 9);
    }
  }

  // After @releaseDomain: a clone that shut down, crashed or vanished is lost; a served
  // domain that went away takes its clones with it.
  void check_domains() {
    std::vector<std::uint32_t> gone;
    for (auto& [domid, f] : families_) {
      if (!f.agent && !alive(domid)) {
        gone.push_back(domid);
        continue;
      }
      for (auto& c : f.clones) {
        if (!c.ended && c.host < 0 && c.domid != 0 && !alive(c.domid)) end_clone(f, c, gc::CLONE_END_LOST, 0);
      }
    }
    for (auto domid : gone) {
      Family& f = families_[domid];
      log("served domain %s (%" PRIu32 ") is gone: destroying its clones", f.name.c_str(), domid);
      kill_clones(f);
      stop_member(domid, true);
      families_.erase(domid);
    }
  }

  bool alive(std::uint32_t domid) {
    libxl_dominfo info;
    libxl_dominfo_init(&info);
    const int rc = libxl_domain_info(ctx_, &info, domid);
    const bool ok = rc == 0 && !info.shutdown && !info.dying;
    libxl_dominfo_dispose(&info);
    return ok;
  }

  std::string clone_list(const Family& f) const {
    std::string s;
    for (const auto& c : f.clones)
      s += (s.empty() ? "domains " : ",") + std::to_string(c.domid) + (c.host < 0 ? "" : " on " + opt_.hosts[static_cast<std::size_t>(c.host)]);
    return s;
  }
  static long long now_ms() {
    timespec ts{};
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
  }

  Options opt_;
  Lifeline& lifeline_;
  xentoollog_logger_stdiostream* logger_ = nullptr;
  libxl_ctx* ctx_ = nullptr;
  xs_handle* xs_ = nullptr;
  std::map<std::uint32_t, Family> families_;
  std::map<std::uint32_t, std::uint32_t> seq_;
  sf::netlink::Socket nl_;  // opened at the first clone
  int listen_fd_ = -1;  // host agent
  int netns_fd_ = -1;
  std::uint32_t next_agent_ = 0;
};

void usage(FILE* out) {
  std::fputs(
      "usage: sfd-xen serve [--subnet CIDR] [--save-dir DIR] [--max-clones N]\n"
      "                     [--host ADDR:PORT]... [--host-iface IFACE --host-key-file FILE] [--mcast GROUP:PORT]\n"
      "                     [-v] DOMAIN...\n"
      "       sfd-xen host --listen ADDR:PORT --iface IFACE --key-file FILE [--save-dir DIR] [--netns PATH] [-v]\n"
      "serve: serves clone requests of the named Xen guests (run as root in dom0). Inside a served\n"
      "guest the clone API and mpirun-sf pick the xen driver; see docs/xen.md.\n"
      "  --subnet CIDR       the clusters' network (default 10.213.0.0/24)\n"
      "  --save-dir DIR      where the save image is written while cloning (default $TMPDIR or /var/tmp)\n"
      "  --max-clones N      most clones per ticket (default 32)\n"
      "  --host ADDR:PORT    another Xen host's `sfd-xen host` agent: clones are placed round robin on\n"
      "                      this host and the others (repeatable, up to 16)\n"
      "  --host-iface IFACE  the link toward the other hosts: the image is multicast there, once\n"
      "  --host-key-file F   the hosts' shared key (64 hex digits), the same as each agent's --key-file\n"
      "  --mcast GROUP:PORT  the image's multicast group (default 239.255.78.1:7790)\n"
      "host: restores the clones other hosts' sfd-xen place here (run as root in this host's dom0).\n"
      "  --listen ADDR:PORT  where the origins connect\n"
      "  --iface IFACE       the link on which the images arrive by multicast\n"
      "  --key-file FILE     the hosts' shared key (64 hex digits)\n"
      "  --netns PATH        open the agent's sockets in this network namespace (a test bed's host)\n"
      "  -v                  log every request and libxl's progress\n",
      out);
}

[[noreturn]] void usage_error(const std::string& what) {
  std::fprintf(stderr, "sfd-xen: %s\n", what.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  const char* tmp = std::getenv("TMPDIR");
  opt.save_dir = tmp && *tmp ? tmp : "/var/tmp";
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    usage(args.empty() ? stderr : stdout);
    return args.empty() ? 2 : 0;
  }
  const bool agent = args[0] == "host";
  if (args[0] != "serve" && !agent) {
    std::fprintf(stderr, "sfd-xen: unknown command '%s'\n", args[0].c_str());
    usage(stderr);
    return 2;
  }
  std::string key_file;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* what) -> std::string {
      if (i + 1 >= args.size()) usage_error(std::string(what) + " needs a value");
      return args[++i];
    };
    if (a == "-v") g_verbose = true;
    else if (a == "--save-dir") opt.save_dir = value("--save-dir");
    else if (!agent && a == "--subnet") opt.subnet = value("--subnet");
    else if (!agent && a == "--max-clones") {
      const std::string v = value("--max-clones");
      char* end = nullptr;
      const unsigned long n = std::strtoul(v.c_str(), &end, 10);
      if (v.empty() || *end || n == 0 || n > 32) usage_error("--max-clones " + v + ": expected 1 to 32");
      opt.max_clones = static_cast<unsigned>(n);
    } else if (!agent && a == "--host") opt.hosts.push_back(value("--host"));
    else if (!agent && a == "--host-iface") opt.host_iface = value("--host-iface");
    else if (!agent && a == "--host-key-file") key_file = value("--host-key-file");
    else if (!agent && a == "--mcast") opt.mcast = value("--mcast");
    else if (agent && a == "--listen") opt.listen = value("--listen");
    else if (agent && a == "--iface") opt.iface = value("--iface");
    else if (agent && a == "--key-file") key_file = value("--key-file");
    else if (agent && a == "--netns") opt.netns = value("--netns");
    else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "sfd-xen: unknown option %s for sfd-xen %s\n", a.c_str(), args[0].c_str());
      usage(stderr);
      return 2;
    } else if (!agent) {
      opt.domains.push_back(a);
    } else {
      usage_error("host: takes no domain names (" + a + "); the origins say what to restore");
    }
  }
  if (agent) {
    if (opt.listen.empty() || opt.iface.empty() || key_file.empty()) usage_error("host: needs --listen ADDR:PORT, --iface IFACE and --key-file FILE");
    if (auto ep = hl::parse_endpoint(opt.listen); !ep) usage_error("--listen: " + ep.error().message);
  } else {
    if (opt.domains.empty()) usage_error("serve: name the guest domain(s) to serve");
    if (auto n = sf::sfd::vm_node_identity(1, "check", opt.subnet); !n) usage_error("--subnet " + opt.subnet + ": " + n.error().message);
    if (opt.hosts.size() > hl::kMaxHosts) usage_error("at most " + std::to_string(hl::kMaxHosts) + " --host");
    for (const auto& h : opt.hosts)
      if (auto ep = hl::parse_endpoint(h); !ep) usage_error("--host: " + ep.error().message);
    if (auto ep = hl::parse_endpoint(opt.mcast); !ep) usage_error("--mcast: " + ep.error().message);
    if (!opt.hosts.empty() && (opt.host_iface.empty() || key_file.empty()))
      usage_error("--host needs --host-iface (the link toward the other hosts) and --host-key-file (their shared key)");
    if (opt.hosts.empty() && (!opt.host_iface.empty() || !key_file.empty()))
      usage_error("--host-iface and --host-key-file are for clones on other hosts: name them with --host ADDR:PORT");
  }
  if (!key_file.empty()) {
    auto key = sf::mcdist::ClusterKey::from_file(key_file);
    if (!key) usage_error(key_file + ": " + key.error().message);
    opt.key = *key;
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  Lifeline lifeline;
  if (!lifeline.start()) {
    std::fprintf(stderr, "sfd-xen: cannot start the lifeline process: %s\n", std::strerror(errno));
    return 1;
  }
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  const int sigfd = signalfd(-1, &set, SFD_CLOEXEC);
  int rc = 1;
  {
    XenHost host(opt, lifeline);
    if (host.open() && (agent ? host.listen() : host.serve())) {
      rc = host.run(sigfd);
    } else {
      host.shut_down();
    }
  }
  lifeline.finish();
  return rc;
}
