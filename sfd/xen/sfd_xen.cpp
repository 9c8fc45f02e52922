// sfd-xen: the host side of the xen driver, run in dom0 (docs/xen.md,
// docs/protocols/xen-clone.md). It serves the named guests: their clone API writes sf.ctl
// requests into xenstore; sfd-xen answers there. A clone is a save/restore clone made with
// libxl: the parent is suspended once into an image, resumed (it goes on), and the image is
// restored N times as new domains with new names, UUIDs and MACs; each copy learns its clone
// ID from its own xenstore keys before it is unpaused. Clones that sync, exit, crash or
// vanish are destroyed and reported to the parent; nothing outlives sfd-xen: a lifeline
// process destroys the clones and removes the served keys even when sfd-xen is killed.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
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
#include <map>
#include <set>
#include <string>
#include <vector>

#include "clone-core/guest_control.hpp"
#include "clone-core/vm_identity.hpp"
#include "sfd/vm_network.hpp"

namespace {

namespace gc = sf::guest_control;

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
  std::uint32_t domid = 0;
  std::string name;
  bool ended = false;
  gc::CloneStatus status;
};

// A served domain and the clones of its ticket.
struct Family {
  std::uint32_t domid = 0;
  std::string name;
  unsigned granted = 0;
  bool cloned = false;
  bool pending_join = false;
  std::vector<sf::sfd::NodeIdentity> nodes;
  std::vector<Clone> clones;  // index id - 1
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
};

class XenHost {
 public:
  XenHost(Options opt, Lifeline& lifeline) : opt_(std::move(opt)), lifeline_(lifeline) {}
  ~XenHost() {
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

  // The event loop: until every served domain is gone or a signal ends it.
  int run(int sigfd) {
    for (;;) {
      pollfd p[2] = {{xs_fileno(xs_), POLLIN, 0}, {sigfd, POLLIN, 0}};
      if (::poll(p, 2, -1) < 0) {
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
      if (families_.empty()) {
        log("no served domain is left: stopping");
        return 0;
      }
    }
  }

  void shut_down() {
    for (auto& [domid, f] : families_) {
      kill_clones(f);
      stop_member(domid, true);
    }
    families_.clear();
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
        if (c.domid == domid && !c.ended) {
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
    std::uint64_t free_kb = 0;
    if (libxl_get_free_memory(ctx_, &free_kb) == 0 && free_kb < mem_kb * want)
      return refuse(f.domid, "cannot clone this domain " + std::to_string(want) + " times: " + std::to_string(want) + " x " +
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

  // Saves the parent once, resumes it, restores the image as each clone.
  void clone(Family& f) {
    const auto t0 = now_ms();
    libxl_domain_config cfg;
    libxl_domain_config_init(&cfg);
    struct ConfigGuard {
      libxl_domain_config* c;
      ~ConfigGuard() { libxl_domain_config_dispose(c); }
    } guard{&cfg};
    if (libxl_retrieve_domain_configuration(ctx_, f.domid, &cfg, nullptr) != 0)
      return refuse(f.domid, "cannot read this domain's configuration from libxl");
    for (int i = 0; i < cfg.num_disks; ++i) {
      if (cfg.disks[i].readwrite)
        return refuse(f.domid, std::string("cannot clone a domain with a writable disk (") +
                                   (cfg.disks[i].vdev ? cfg.disks[i].vdev : "?") +
                                   "): the clones would share it; give the guest read-only disks or none");
    }
    const int img = ::open(opt_.save_dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (img < 0) return refuse(f.domid, "cannot make the save image in " + opt_.save_dir + ": " + std::strerror(errno) +
                                     " (sfd-xen --save-dir names another directory)");
    struct FdGuard {
      int fd;
      ~FdGuard() { ::close(fd); }
    } img_guard{img};
    // A PV guest acknowledges the suspend itself, so it must be running here, not paused.
    if (libxl_domain_suspend(ctx_, f.domid, img, 0, nullptr) != 0) {
      libxl_domain_resume(ctx_, f.domid, 1, nullptr);
      return refuse(f.domid, "libxl could not save this domain (see sfd-xen's log)");
    }
    struct stat st {};
    ::fstat(img, &st);
    const auto t_saved = now_ms();
    if (libxl_domain_resume(ctx_, f.domid, 1, nullptr) != 0) log("%s: libxl could not resume the parent after the save", f.name.c_str());
    log("%s: saved in %lld ms (%lld MiB); the parent goes on", f.name.c_str(), t_saved - t0,
        static_cast<long long>(st.st_size >> 20));
    f.cloned = true;
    f.clones.clear();
    for (unsigned i = 1; i <= f.granted; ++i) {
      Clone c;
      c.id = i;
      c.name = f.name + "-sf" + std::to_string(i);
      c.status.set_id(i);
      if (!restore(f, cfg, img, c)) {
        // What is already running is destroyed; the parent learns why.
        f.clones.push_back(c);
        kill_clones(f);
        reset(f);
        return refuse(f.domid, "cannot restore clone " + std::to_string(i) + " (" + c.name + ") with libxl (see sfd-xen's log)");
      }
      f.clones.push_back(c);
    }
    for (auto& c : f.clones) {
      if (libxl_domain_unpause(ctx_, c.domid, nullptr) != 0) log("%s: cannot unpause %s", f.name.c_str(), c.name.c_str());
    }
    log("%s: %u clone(s) running %lld ms after the request (domains %s)", f.name.c_str(), f.granted, now_ms() - t0,
        clone_list(f).c_str());
    gc::HostMessage m = gc::make_host_message();
    m.mutable_clone()->set_id(0);
    send(f.domid, m);
  }

  bool restore(Family& f, const libxl_domain_config& parent, int img, Clone& c) {
    libxl_domain_config cfg;
    libxl_domain_config_init(&cfg);
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
        if (auto mac = sf::parse_mac(f.nodes[c.id].mac)) std::memcpy(cfg.nics[j].mac, mac->data(), mac->size());
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
    libxl_domain_config_dispose(&cfg);
    if (domid != static_cast<std::uint32_t>(INVALID_DOMID) && domid != 0) {
      c.domid = domid;
      lifeline_.tell('+', domid);
    }
    if (rc != 0) return false;
    if (!start_member(domid)) return false;
    gc::HostMessage m = gc::make_host_message();
    m.mutable_clone()->set_id(c.id);
    send(domid, m);
    VLOG("%s: restored clone %u as %s (domain %" PRIu32 ")", f.name.c_str(), c.id, c.name.c_str(), domid);
    return true;
  }

  void end_clone(Family& f, Clone& c, gc::CloneEnd end, int value) {
    if (c.ended) return;
    c.ended = true;
    c.status.set_end(end);
    c.status.set_value(value);
    stop_member(c.domid, false);
    libxl_domain_destroy(ctx_, c.domid, nullptr);
    lifeline_.tell('-', c.domid);
    log("%s: clone %u (%s) ended: %s %d", f.name.c_str(), c.id, c.name.c_str(),
        sf::clone_end_name(*gc::from_wire(end)), value);
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
      if (!alive(domid)) {
        gone.push_back(domid);
        continue;
      }
      for (auto& c : f.clones) {
        if (!c.ended && c.domid != 0 && !alive(c.domid)) end_clone(f, c, gc::CLONE_END_LOST, 0);
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

  static std::string clone_list(const Family& f) {
    std::string s;
    for (const auto& c : f.clones) s += (s.empty() ? "" : ",") + std::to_string(c.domid);
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
};

void usage(FILE* out) {
  std::fputs(
      "usage: sfd-xen serve [--subnet CIDR] [--save-dir DIR] [--max-clones N] [-v] DOMAIN...\n"
      "Serves clone requests of the named Xen guests (run as root in dom0). Inside a served guest\n"
      "the clone API and mpirun-sf pick the xen driver; see sfd-xen(8) in docs/xen.md.\n"
      "  --subnet CIDR     the clusters' network (default 10.213.0.0/24)\n"
      "  --save-dir DIR    where the save image is written while cloning (default $TMPDIR or /var/tmp)\n"
      "  --max-clones N    most clones per ticket (default 32)\n"
      "  -v                log every request and libxl's progress\n",
      out);
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
  if (args[0] != "serve") {
    std::fprintf(stderr, "sfd-xen: unknown command '%s'\n", args[0].c_str());
    usage(stderr);
    return 2;
  }
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&](const char* what) -> std::string {
      if (i + 1 >= args.size()) {
        std::fprintf(stderr, "sfd-xen: %s needs a value\n", what);
        std::exit(2);
      }
      return args[++i];
    };
    if (a == "-v") g_verbose = true;
    else if (a == "--subnet") opt.subnet = value("--subnet");
    else if (a == "--save-dir") opt.save_dir = value("--save-dir");
    else if (a == "--max-clones") {
      const std::string v = value("--max-clones");
      char* end = nullptr;
      const unsigned long n = std::strtoul(v.c_str(), &end, 10);
      if (v.empty() || *end || n == 0 || n > 32) {
        std::fprintf(stderr, "sfd-xen: --max-clones %s: expected 1 to 32\n", v.c_str());
        return 2;
      }
      opt.max_clones = static_cast<unsigned>(n);
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "sfd-xen: unknown option %s\n", a.c_str());
      usage(stderr);
      return 2;
    } else {
      opt.domains.push_back(a);
    }
  }
  if (opt.domains.empty()) {
    std::fprintf(stderr, "sfd-xen: serve: name the guest domain(s) to serve\n");
    return 2;
  }
  if (auto n = sf::sfd::vm_node_identity(1, "check", opt.subnet); !n) {
    std::fprintf(stderr, "sfd-xen: --subnet %s: %s\n", opt.subnet.c_str(), n.error().message.c_str());
    return 2;
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
  const int sigfd = signalfd(-1, &set, SFD_CLOEXEC);
  int rc = 1;
  {
    XenHost host(opt, lifeline);
    if (host.open() && host.serve()) {
      rc = host.run(sigfd);
    } else {
      host.shut_down();
    }
  }
  lifeline.finish();
  return rc;
}
