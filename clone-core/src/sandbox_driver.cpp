// clone-core: the sandbox driver. A clone is the calling process forked into fresh PID,
// UTS, network and mount namespaces, joined to the cluster through a veth pair on the
// cluster's bridge. Process tree per clone (see docs/clone-core.md "Sandbox clones"):
//
//   parent ── init (pid 1 of a new PID namespace; reaps orphans, forwards SIGTERM/SIGINT/
//             │     SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2, reports its child's end, exits with it)
//             └── continuation (pid 2): returns from clone() with the clone's id
//
// The parent forks each init straight into a new PID namespace (clone(2) with CLONE_NEWPID),
// so the init is pid 1 at once and only two forks happen per clone. The clones' network
// namespaces, veths and addresses are made at prepare(); the init enters its own, unshares
// UTS and mount namespaces and mounts its private /dev/shm, /tmp and /proc.
//
// Without root the parent first moves into a user namespace and a network namespace of its
// own (user_namespace.hpp) and builds the same cluster there: one code path for both.
//
// With CloneNetwork::shared there is no bridge, veth or network namespace: every clone stays
// in the parent's network namespace (without root the parent enters a user namespace only),
// so it reaches whatever the parent reaches, e.g. the other nodes of a Slurm allocation.
#include "sandbox_driver.hpp"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <dirent.h>

#include "cluster_slots.hpp"
#include "clone-core/netlink_links.hpp"
#include "status_record.hpp"
#include "clone-core/user_namespace.hpp"
#include "sf-common/threads.hpp"

namespace sf {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

int pidfd_open_compat(pid_t pid) { return static_cast<int>(syscall(SYS_pidfd_open, pid, 0)); }

// fork() into a new PID namespace, whose pid 1 the child is. A raw clone(2) rather than
// unshare(CLONE_NEWPID) + fork(): unshare changes the namespace of all the caller's later
// children, and switching back (setns to the caller's own PID namespace) needs CAP_SYS_ADMIN
// in the user namespace that owns it, which an ordinary user in a user namespace of its own
// lacks. glibc's fork() bookkeeping (atfork handlers, lock resets) is not needed: clone()
// runs only in a single-threaded process, and the init forks the continuation with fork().
pid_t fork_into_new_pid_namespace() {
  return static_cast<pid_t>(syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, nullptr, nullptr, nullptr, nullptr));
}

pid_t proc_ppid_host_view() {
  // /proc is still the host's here, so this is the parent's pid as the parent knows it
  // (getppid() returns 0 in a new PID namespace).
  std::ifstream in("/proc/self/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto p = text.rfind(')');
  if (p == std::string::npos) return -1;
  char state = 0;
  int ppid = -1;
  if (std::sscanf(text.c_str() + p + 1, " %c %d", &state, &ppid) != 2) return -1;
  return ppid;
}

// Fault injection (docs/clone-core.md "Fault injection"): SF_CLONE_FAULT=setup_fail:<id>
// makes clone <id>'s init report a setup failure; init_die:<id> makes it die silently.
bool fault_requested(const char* kind, unsigned id) {
  const char* spec = std::getenv("SF_CLONE_FAULT");
  if (!spec) return false;
  std::string want = std::string(kind) + ":" + std::to_string(id);
  std::string s = spec;
  std::size_t start = 0;
  while (start <= s.size()) {
    std::size_t comma = s.find(',', start);
    if (s.substr(start, comma == std::string::npos ? std::string::npos : comma - start) == want) return true;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return false;
}

// SF_CLONE_TRACE=1: each clone's init prints how long each setup step took (to stderr).
struct StepTrace {
  bool on = std::getenv("SF_CLONE_TRACE") != nullptr;
  timespec last{};
  std::string line;
  StepTrace() { clock_gettime(CLOCK_MONOTONIC, &last); }
  void step(const char* name) {
    if (!on) return;
    timespec t{};
    clock_gettime(CLOCK_MONOTONIC, &t);
    double us = (t.tv_sec - last.tv_sec) * 1e6 + (t.tv_nsec - last.tv_nsec) / 1e3;
    line += std::string(" ") + name + "=" + std::to_string(static_cast<int>(us)) + "us";
    last = t;
  }
  void flush(unsigned id) {
    if (on) std::fprintf(stderr, "clone-core: clone %u setup:%s\n", id, line.c_str());
  }
};

// The init's child pid, for the signal forwarder.
volatile pid_t g_continuation_pid = 0;
void forward_signal(int sig) {
  if (g_continuation_pid > 0) ::kill(g_continuation_pid, sig);
}
constexpr int kForwardedSignals[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

struct CloneSlot {
  pid_t init_pid = -1;
  int pidfd = -1;
  bool running = false;                   // a ready record arrived
  std::optional<status::Record> end;      // first terminal record
  std::optional<int> init_wait_status;    // from waitpid on the init
  bool init_gone = false;                 // reaped (or unreapable: ECHILD)
  bool reported = false;                  // returned by poll_exited() already
  bool killed_by_us = false;
};

class SandboxCluster final : public ClusterInstance {
 public:
  SandboxCluster(ClusterSpec spec, ClusterLayout layout, slots::SlotLock lock, netlink::Socket host, int bridge_ifindex)
      : spec_(std::move(spec)), layout_(std::move(layout)), lock_(std::move(lock)), host_(std::move(host)),
        bridge_ifindex_(bridge_ifindex) {}

  ~SandboxCluster() override {
    // A clone's copy, or any other forked child's (e.g. a rank forked by the parent, or a
    // clone of a second ticket): nothing of the cluster is ours to touch.
    if (id_ != 0 || getpid() != owner_pid_) return;
    if (!torn_down_) {
      if (cloned_) (void)kill();
      else teardown();
    }
  }

  const ClusterLayout& layout() const override { return layout_; }

  Result<unsigned> clone() override;
  Status sync(int status) override;
  Result<std::vector<CloneStatus>> join() override;
  Status kill() override;
  int exit_fd() const override { return id_ == 0 ? epoll_fd_ : -1; }
  std::vector<CloneStatus> poll_exited() override;

 private:
  void run_init(unsigned id, pid_t parent_pid);  // returns only in the continuation
  Status setup_clone_side(unsigned id, pid_t parent_pid);

 public:
  Status build_networks();  // at prepare(): one configured netns per clone

 private:
  [[noreturn]] void init_fail(unsigned id, Errc code, const std::string& message);
  void close_parent_fds_in_child();
  void drain_records();
  void check_inits(bool block);
  bool all_ended() const;
  Status wait_running();
  CloneStatus final_status(unsigned id) const;
  void teardown();
  std::vector<CloneStatus> collect_all_blocking();

  ClusterSpec spec_;
  ClusterLayout layout_;
  slots::SlotLock lock_;
  netlink::Socket host_;
  int bridge_ifindex_ = 0;
  pid_t owner_pid_ = getpid();  // the parent; only it may join, kill or tear down
  unsigned id_ = 0;
  bool cloned_ = false, torn_down_ = false;
  int status_read_ = -1, status_write_ = -1, epoll_fd_ = -1;
  std::vector<CloneSlot> clones_;  // index id - 1
  std::vector<int> netns_fds_;     // index id - 1; the clones' network namespaces until clone()
};

Result<unsigned> SandboxCluster::clone() {
  if (cloned_) return make_error(Errc::bad_state, "clone-core: this cluster was already cloned");
  if (torn_down_) return make_error(Errc::bad_state, "clone-core: this cluster was already torn down");
  int threads = thread_count();
  if (threads > 1)
    return make_error(Errc::not_single_threaded,
                      "clone-core: clone() needs a single-threaded process but /proc/self/task has " +
                          std::to_string(threads) +
                          " entries; fork() copies only the calling thread, so clone before starting any thread");
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return make_error(Errc::system, "clone-core: pipe2: " + errno_text(errno));
  status_read_ = fds[0];
  status_write_ = fds[1];
  // Room for every clone's records even if the parent reads late (253 clones x 2 x 224 B).
  fcntl(status_write_, F_SETPIPE_SZ, 1 << 18);
  const pid_t parent_pid = getpid();
  cloned_ = true;
  clones_.assign(layout_.clones(), CloneSlot{});
  // Buffered output would otherwise be written once per clone.
  std::fflush(nullptr);
  StepTrace trace;
  Status failure = ok_status();
  for (unsigned id = 1; id <= layout_.clones(); ++id) {
    pid_t pid = fork_into_new_pid_namespace();
    if (pid == 0) {
      run_init(id, parent_pid);  // the init never returns; the continuation does
      return id_;
    }
    if (pid < 0) {
      int err = errno;
      failure = make_error(err == EPERM ? Errc::missing_privilege : Errc::clone_failed,
                           "clone-core: fork into a new PID namespace for clone " + std::to_string(id) + ": " +
                               errno_text(err));
      break;
    }
    clones_[id - 1].init_pid = pid;
    clones_[id - 1].pidfd = pidfd_open_compat(pid);
  }
  for (auto& c : clones_)
    if (c.init_pid <= 0) c.init_gone = true;  // never forked
  for (int& fd : netns_fds_)
    if (fd >= 0) close(fd), fd = -1;  // each init holds its namespace now
  close(status_write_);
  status_write_ = -1;
  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u32 = 0;
  epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, status_read_, &ev);
  fcntl(status_read_, F_SETFL, O_NONBLOCK);
  for (unsigned i = 0; i < clones_.size(); ++i) {
    if (clones_[i].pidfd < 0) continue;
    ev.data.u32 = i + 1;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, clones_[i].pidfd, &ev);
  }
  trace.step("fork_inits");
  if (failure) failure = wait_running();
  trace.step("wait_running");
  if (trace.on) std::fprintf(stderr, "clone-core: clone():%s\n", trace.line.c_str());
  if (!failure) {
    (void)kill();  // tears down what was made; the first failure is the one to report
    return failure.error();
  }
  slots::ClusterState state;
  state.slot = layout_.slot;
  state.subnet = layout_.subnet_cidr();
  state.bridge = layout_.bridge;
  state.parent_pid = parent_pid;
  for (unsigned i = 0; i < clones_.size(); ++i)
    state.inits.push_back({i + 1, clones_[i].init_pid, slots::process_start_time(clones_[i].init_pid)});
  (void)slots::write_state(state);  // diagnostics and crash cleanup only; failure is not fatal
  return 0u;
}

Status SandboxCluster::wait_running() {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(spec_.start_timeout_ms);
  for (;;) {
    // Reap first, then read: a record written before an init's exit is in the pipe by the
    // time waitpid() reports that exit, so this order never misses one.
    check_inits(false);
    drain_records();
    unsigned running = 0;
    for (unsigned i = 0; i < clones_.size(); ++i) {
      const CloneSlot& c = clones_[i];
      if (c.end && c.end->kind == static_cast<std::uint16_t>(status::Kind::setup_failed))
        return make_error(static_cast<Errc>(c.end->error_code), c.end->message);
      if (c.running) {
        ++running;
      } else if (c.end || c.init_gone) {
        return make_error(Errc::clone_failed, "clone-core: clone " + std::to_string(i + 1) +
                                                  " ended before it was running (" +
                                                  clone_end_name(final_status(i + 1).end) + ", init wait status " +
                                                  std::to_string(c.init_wait_status.value_or(-1)) + ")");
      }
    }
    if (running == clones_.size()) return ok_status();
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0)
      return make_error(Errc::clone_failed, "clone-core: only " + std::to_string(running) + " of " +
                                                std::to_string(clones_.size()) + " clones were running after " +
                                                std::to_string(spec_.start_timeout_ms) + " ms");
    epoll_event events[16];
    epoll_wait(epoll_fd_, events, 16, static_cast<int>(left));
  }
}

void SandboxCluster::close_parent_fds_in_child() {
  lock_.forget_in_child();
  host_.release();
  if (status_read_ >= 0) close(status_read_);
  status_read_ = -1;
  for (auto& c : clones_)
    if (c.pidfd >= 0) close(c.pidfd);
  clones_.clear();
}

void SandboxCluster::init_fail(unsigned id, Errc code, const std::string& message) {
  status::write_record(status_write_, status::make(status::Kind::setup_failed, id, 0, static_cast<int>(code), message));
  _exit(127);
}

Status SandboxCluster::build_networks() {
  // One network namespace per clone, made now (at ticket request) rather than in clone():
  // creating a netns costs milliseconds and the kernel serializes it, so it dominated clone
  // time. The parent enters each new namespace just long enough to keep a handle on it and a
  // netlink socket inside it, then returns to its own.
  int own_net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (own_net < 0) return make_error(Errc::namespace_setup, "clone-core: open /proc/self/ns/net: " + errno_text(errno));
  Status e = ok_status();
  netns_fds_.assign(layout_.clones(), -1);
  for (unsigned id = 1; id <= layout_.clones() && e; ++id) {
    if (unshare(CLONE_NEWNET) != 0) {
      int err = errno;
      e = make_error(err == EPERM ? Errc::missing_privilege : Errc::namespace_setup,
                     "clone-core: new network namespace for clone " + std::to_string(id) + ": " + errno_text(err) +
                         (err == EPERM ? "; the sandbox driver needs CAP_SYS_ADMIN over its network namespace" : ""));
      break;
    }
    netns_fds_[id - 1] = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    auto inside = netlink::Socket::open();
    if (setns(own_net, CLONE_NEWNET) != 0) {
      // Stuck in the clone's namespace: nothing sensible can continue.
      std::fprintf(stderr, "clone-core: cannot return to the parent's network namespace: %s\n", errno_text(errno).c_str());
      std::abort();
    }
    if (netns_fds_[id - 1] < 0) {
      e = make_error(Errc::namespace_setup, "clone-core: open new network namespace: " + errno_text(errno));
      break;
    }
    if (!inside) {
      e = inside.error();
      break;
    }
    if (!(e = netlink::create_veth_into(host_, veth_name(layout_.slot, id), bridge_ifindex_, kLinkGroupBase + layout_.slot,
                                        kCloneInterface, netns_fds_[id - 1])))
      break;
    if (!(e = netlink::set_up(*inside, 1, "lo"))) break;  // lo is always ifindex 1 in a new netns
    auto sf0 = netlink::link_index(*inside, kCloneInterface);
    if (!sf0) {
      e = sf0.error();
      break;
    }
    if (!(e = netlink::add_ipv4(*inside, *sf0, layout_.nodes[id].address, layout_.subnet.prefix, kCloneInterface))) break;
    if (!(e = netlink::set_up(*inside, *sf0, kCloneInterface))) break;
  }
  close(own_net);
  return e;
}

Status SandboxCluster::setup_clone_side(unsigned id, pid_t parent_pid) {
  StepTrace trace;
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
    return make_error(Errc::namespace_setup, "clone-core: prctl(PR_SET_PDEATHSIG): " + errno_text(errno));
  // The parent may have died before the prctl; then nobody would kill us.
  if (proc_ppid_host_view() != parent_pid) _exit(1);
  if (fault_requested("init_die", id)) _exit(1);
  if (fault_requested("setup_fail", id))
    return make_error(Errc::namespace_setup, "clone-core: clone " + std::to_string(id) + ": injected setup failure (SF_CLONE_FAULT)");

  if (!layout_.shared_network && setns(netns_fds_[id - 1], CLONE_NEWNET) != 0)
    return make_error(Errc::namespace_setup, "clone-core: entering clone " + std::to_string(id) + "'s network namespace: " + errno_text(errno));
  for (int& fd : netns_fds_)
    if (fd >= 0) close(fd), fd = -1;
  if (unshare(CLONE_NEWUTS | CLONE_NEWNS) != 0)
    return make_error(Errc::namespace_setup, "clone-core: unshare(uts, mount) for clone " + std::to_string(id) +
                                                 ": " + errno_text(errno));
  trace.step("namespaces");
  const NodeInfo& node = layout_.nodes[id];
  if (sethostname(node.hostname.data(), node.hostname.size()) != 0)
    return make_error(Errc::namespace_setup, "clone-core: sethostname " + node.hostname + ": " + errno_text(errno));
  trace.step("hostname");

  // Mounts: first stop propagation back to the host, then private /dev/shm, /tmp, /proc.
  Status e = ok_status();
  auto mount_or = [&](const char* src, const char* target, const char* type, unsigned long flags,
                      const char* data) -> Status {
    if (mount(src, target, type, flags, data) != 0)
      return make_error(Errc::namespace_setup, std::string("clone-core: clone ") + std::to_string(id) + ": mount " +
                                                   (type ? type : "(flags)") + " on " + target + ": " +
                                                   errno_text(errno));
    return ok_status();
  };
  if (!(e = mount_or(nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr))) return e;
  if (!(e = mount_or("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"))) return e;
  trace.step("shm");
  if (spec_.tmp_mode == TmpMode::overlay) {
    // /tmp becomes a copy-on-write overlay of the parent's /tmp: the clone sees the files
    // the parent had (fork semantics), its writes land in a private tmpfs upper layer.
    std::string scratch = slots::scratch_dir();
    if (!(e = mount_or("tmpfs", scratch.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755"))) return e;
    std::string upper = scratch + "/upper", work = scratch + "/work";
    if (mkdir(upper.c_str(), 01777) != 0 || mkdir(work.c_str(), 0700) != 0 || chmod(upper.c_str(), 01777) != 0)
      return make_error(Errc::namespace_setup, "clone-core: overlay dirs in " + scratch + ": " + errno_text(errno));
    std::string options = "lowerdir=/tmp,upperdir=" + upper + ",workdir=" + work;
    if (!(e = mount_or("overlay", "/tmp", "overlay", MS_NOSUID | MS_NODEV, options.c_str()))) return e;
    // The scratch tmpfs stays mounted at /run/snowflock/scratch inside the clone: unmounting
    // it costs an RCU grace period per clone (measured: it dominated clone time).
  } else {
    if (!(e = mount_or("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777"))) return e;
  }
  trace.step("tmp");
  if (!(e = mount_or("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr))) return e;
  trace.step("proc");
  trace.flush(id);
  return ok_status();
}

void SandboxCluster::run_init(unsigned id, pid_t parent_pid) {
  id_ = id;
  close_parent_fds_in_child();
  if (Status st = setup_clone_side(id, parent_pid); !st) init_fail(id, st.error().code, st.error().message);

  // Block the forwarded signals around fork so none is lost between fork and handler setup.
  sigset_t forwarded, old;
  sigemptyset(&forwarded);
  for (int s : kForwardedSignals) sigaddset(&forwarded, s);
  sigprocmask(SIG_BLOCK, &forwarded, &old);
  pid_t child = fork();
  if (child < 0) init_fail(id, Errc::clone_failed, "clone-core: fork of clone " + std::to_string(id) + ": " + errno_text(errno));
  if (child == 0) {
    sigprocmask(SIG_SETMASK, &old, nullptr);
    status::write_record(status_write_, status::make(status::Kind::ready, id, 0));
    return;  // back into clone(), which returns id_ in the continuation
  }
  // The init. It runs no library code from here on: signal forwarding and reaping only.
  g_continuation_pid = child;
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : kForwardedSignals) sigaction(s, &sa, nullptr);
  sigprocmask(SIG_SETMASK, &old, nullptr);
  for (;;) {
    int st = 0;
    pid_t p = waitpid(-1, &st, 0);
    if (p < 0) {
      if (errno == EINTR) continue;
      _exit(1);  // ECHILD: cannot happen while the continuation lives
    }
    if (p != child) continue;  // a reaped orphan
    if (WIFEXITED(st)) {
      status::write_record(status_write_, status::make(status::Kind::exited, id, WEXITSTATUS(st)));
      _exit(WEXITSTATUS(st));
    }
    if (WIFSIGNALED(st)) {
      status::write_record(status_write_, status::make(status::Kind::signaled, id, WTERMSIG(st)));
      _exit(128 + WTERMSIG(st));
    }
  }
}

Status SandboxCluster::sync(int status) {
  if (id_ == 0) return make_error(Errc::wrong_side, "clone-core: sync() called in the parent; the parent calls join()");
  status::write_record(status_write_, status::make(status::Kind::synced, id_, status));
  std::fflush(nullptr);
  _exit(0);
}

void SandboxCluster::drain_records() {
  if (status_read_ < 0) return;
  for (;;) {
    status::Record buf;
    ssize_t n = read(status_read_, &buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    auto r = status::decode(&buf, static_cast<std::size_t>(n));
    if (!r || r->clone_id < 1 || r->clone_id > clones_.size()) continue;  // not ours: ignore
    CloneSlot& c = clones_[r->clone_id - 1];
    if (r->kind == static_cast<std::uint16_t>(status::Kind::ready)) c.running = true;
    else if (!c.end) c.end = *r;  // the first terminal record wins (sync precedes the exit)
  }
}

void SandboxCluster::check_inits(bool block) {
  for (auto& c : clones_) {
    if (c.init_gone || c.init_pid <= 0) continue;
    int st = 0;
    pid_t p = waitpid(c.init_pid, &st, block ? 0 : WNOHANG);
    if (p == c.init_pid) {
      c.init_wait_status = st;
      c.init_gone = true;
    } else if (p < 0 && errno == ECHILD) {
      c.init_gone = true;  // someone else reaped it; rely on the records
    } else if (p < 0 && errno == EINTR && block) {
      continue;
    }
  }
}

bool SandboxCluster::all_ended() const {
  for (const auto& c : clones_)
    if (!c.init_gone) return false;
  return true;
}

CloneStatus SandboxCluster::final_status(unsigned id) const {
  const CloneSlot& c = clones_[id - 1];
  CloneStatus s;
  s.id = id;
  if (c.end) {
    switch (static_cast<status::Kind>(c.end->kind)) {
      case status::Kind::synced: s.end = CloneEnd::synced; break;
      case status::Kind::exited: s.end = CloneEnd::exited; break;
      case status::Kind::signaled: s.end = CloneEnd::signaled; break;
      default: s.end = CloneEnd::lost; break;
    }
    s.value = c.end->value;
    return s;
  }
  if (c.killed_by_us) {
    s.end = CloneEnd::killed;
    s.value = SIGKILL;
    return s;
  }
  s.end = CloneEnd::lost;
  if (c.init_wait_status) s.value = WIFSIGNALED(*c.init_wait_status) ? WTERMSIG(*c.init_wait_status) : WEXITSTATUS(*c.init_wait_status);
  return s;
}

std::vector<CloneStatus> SandboxCluster::collect_all_blocking() {
  while (!all_ended()) {
    epoll_event events[16];
    epoll_wait(epoll_fd_, events, 16, 1000);
    check_inits(false);
    drain_records();
  }
  drain_records();
  std::vector<CloneStatus> out;
  for (unsigned id = 1; id <= clones_.size(); ++id) out.push_back(final_status(id));
  return out;
}

Result<std::vector<CloneStatus>> SandboxCluster::join() {
  if (id_ != 0 || getpid() != owner_pid_) return make_error(Errc::wrong_side, "clone-core: join() called in a clone");
  if (!cloned_ || torn_down_) return make_error(Errc::bad_state, "clone-core: join() without live clones");
  StepTrace trace;
  auto statuses = collect_all_blocking();
  trace.step("wait");
  teardown();
  trace.step("teardown");
  if (trace.on) std::fprintf(stderr, "clone-core: join:%s\n", trace.line.c_str());
  return statuses;
}

Status SandboxCluster::kill() {
  if (id_ != 0 || getpid() != owner_pid_) return make_error(Errc::wrong_side, "clone-core: kill() called in a clone");
  if (torn_down_) return ok_status();
  drain_records();
  check_inits(false);
  for (auto& c : clones_) {
    if (c.init_gone || c.init_pid <= 0) continue;
    // Not yet reaped, so the pid cannot have been reused. SIGKILL to a PID namespace's
    // init from outside kills the whole namespace.
    if (::kill(c.init_pid, SIGKILL) == 0 && !c.end) c.killed_by_us = true;
  }
  if (epoll_fd_ >= 0) collect_all_blocking();
  teardown();
  return ok_status();
}

std::vector<CloneStatus> SandboxCluster::poll_exited() {
  std::vector<CloneStatus> out;
  if (id_ != 0 || !cloned_) return out;
  check_inits(false);  // reap before reading (see wait_running)
  drain_records();
  for (unsigned i = 0; i < clones_.size(); ++i) {
    CloneSlot& c = clones_[i];
    // Reported as soon as its record is in, even while its init is still exiting (reaped later).
    if (c.reported || !(c.init_gone || c.end)) continue;
    c.reported = true;
    out.push_back(final_status(i + 1));
    // An exited pidfd stays readable; take it out so exit_fd() goes quiet again.
    if (c.init_gone && c.pidfd >= 0) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.pidfd, nullptr);
      close(c.pidfd);
      c.pidfd = -1;
    }
  }
  // Reported clones whose init was still exiting: drop their pidfds once it is gone.
  for (auto& c : clones_) {
    if (c.reported && c.init_gone && c.pidfd >= 0) {
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, c.pidfd, nullptr);
      close(c.pidfd);
      c.pidfd = -1;
    }
  }
  return out;
}

void SandboxCluster::teardown() {
  if (torn_down_) return;
  torn_down_ = true;
  // The veths die with their namespaces too, but asynchronously (netns cleanup runs in a
  // kernel worker); deleting the group now makes join() leave nothing behind when it returns.
  if (host_.get() && !layout_.shared_network) (void)netlink::delete_group(host_, kLinkGroupBase + layout_.slot);
  for (int& fd : netns_fds_)
    if (fd >= 0) close(fd), fd = -1;
  for (auto& c : clones_)
    if (c.pidfd >= 0) {
      close(c.pidfd);
      c.pidfd = -1;
    }
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (status_read_ >= 0) close(status_read_);
  if (status_write_ >= 0) close(status_write_);
  epoll_fd_ = status_read_ = status_write_ = -1;
  unlink(slots::state_path(layout_.slot).c_str());
  lock_.unlock();
}

class SandboxDriver final : public Driver {
 public:
  std::string_view name() const override { return "sandbox"; }
  unsigned max_clones() const override { return kMaxClonesPerCluster; }

  Probe probe() const override {
    for (const char* ns : {"/proc/self/ns/pid", "/proc/self/ns/net", "/proc/self/ns/uts", "/proc/self/ns/mnt",
                           "/proc/self/ns/user"})
      if (access(ns, F_OK) != 0) return {false, std::string("the kernel lacks ") + ns + " (namespaces)"};
    if (userns::administers_network())
      return {true, "sandbox: fork into PID/UTS/net/mount namespaces, cluster bridge and veths"};
    if (std::string why = userns::refusal(); !why.empty()) return {false, why};
    return {true, "sandbox in a user namespace of its own: fork into PID/UTS/net/mount namespaces, cluster "
                  "bridge and veths"};
  }

  Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) override {
    auto pool = parse_ipv4_net(spec.subnet_pool);
    if (!pool) return pool.error();
    if (slot_count(*pool) == 0)
      return make_error(Errc::invalid_argument, "clone-core: subnet pool " + pool->to_string() + " is smaller than a /24");
    const bool shared = spec.network == CloneNetwork::shared;
    // Without root: the whole cluster, the parent's side included, in namespaces of our own;
    // clones that share the parent's network leave it where it is.
    if (!userns::administers_network())
      if (Status st = userns::enter(/*new_network=*/!shared); !st) return st.error();
    if (Status st = slots::ensure_run_dir(); !st) return st.error();
    // Stale clusters of crashed runs go first (their locks are free). Best effort: what it
    // cannot remove stays for `mpirun-sf --cleanup`, and does not stop this cluster.
    (void)cleanup_stale_clusters();
    auto host = netlink::Socket::open();
    if (!host) return host.error();
    auto lock = slots::acquire(slot_count(*pool), *host);
    if (!lock) return lock.error();
    auto layout = plan_layout(*pool, lock->slot(), spec.clones, spec.parent_hostname);
    if (!layout) return layout.error();
    int bridge_index = 0;  // none when the clones share the parent's network
    if (shared) {
      share_parent_network(*layout);
    } else {
      const std::uint8_t mac[6] = {0x02, 0x5f, 0x53, 0x46, 0x00, static_cast<std::uint8_t>(lock->slot())};
      auto bridge = netlink::create_bridge(*host, layout->bridge, kLinkGroupBase + layout->slot, mac);
      if (!bridge) return bridge.error();
      if (Status st = netlink::add_ipv4(*host, *bridge, layout->nodes[0].address, layout->subnet.prefix, layout->bridge); !st) {
        (void)netlink::delete_group(*host, kLinkGroupBase + layout->slot);
        return st.error();
      }
      bridge_index = *bridge;
    }
    slots::ClusterState state;
    state.slot = layout->slot;
    state.subnet = layout->subnet_cidr();
    state.bridge = layout->bridge;
    state.parent_pid = getpid();
    (void)slots::write_state(state);
    auto cluster = std::make_unique<SandboxCluster>(spec, std::move(*layout), std::move(*lock), std::move(*host), bridge_index);
    if (!shared)
      if (Status st = cluster->build_networks(); !st) return st.error();  // the destructor removes what was built
    return std::unique_ptr<ClusterInstance>(std::move(cluster));
  }
};

}  // namespace

std::unique_ptr<Driver> make_sandbox_driver() { return std::make_unique<SandboxDriver>(); }

}  // namespace sf
