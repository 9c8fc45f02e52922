// The launch sequence of a job on node 0; see launcher.hpp and ARCHITECTURE.md §4.
#include "mpirun-sf/launcher.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <semaphore>
#include <thread>

#include "coordinator.hpp"
#include "launch_context.hpp"
#include "mpirun-sf/exit_status.hpp"
#include "mpirun-sf/plan.hpp"
#include "node_agent.hpp"

extern char** environ;

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace sf::mpirun {
namespace {

// A failure before any rank runs: a one-line message and an exit status.
struct SetupError {
  std::string message;
  int exit_code;
};

int host_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)) > 0
             ? static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN))
             : 1;
}

std::string this_hostname() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

// The program as execve needs it: a path with a '/' is taken relative to the working
// directory (as Open MPI does); a bare name is searched in PATH.
std::string resolve_program(const std::string& program, const std::string& wdir,
                            const char* path_env) {
  auto executable = [](const fs::path& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(p.c_str(), X_OK) == 0;
  };
  if (program.find('/') != std::string::npos) {
    fs::path p = fs::path(program).is_absolute() ? fs::path(program) : fs::path(wdir) / program;
    if (!executable(p)) {
      int err = access(p.c_str(), F_OK) == 0 ? EACCES : ENOENT;
      throw SetupError{"cannot execute '" + program + "': " + strerror(err), kExitCannotExecute};
    }
    return p.lexically_normal().string();
  }
  std::string path = path_env ? path_env : "/usr/local/bin:/usr/bin:/bin";
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t end = path.find(':', pos);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(pos, end - pos);
    fs::path p = fs::path(dir.empty() ? "." : dir) / program;
    if (!p.is_absolute()) p = fs::path(wdir) / p;
    if (executable(p)) return p.lexically_normal().string();
    pos = end + 1;
  }
  throw SetupError{"cannot execute '" + program + "': not found in PATH", kExitCannotExecute};
}

std::string check_wdir(const std::string& wdir, const std::string& cwd) {
  fs::path p = wdir.empty() ? fs::path(cwd) : fs::path(wdir);
  if (!p.is_absolute()) p = fs::path(cwd) / p;
  struct stat st;
  if (stat(p.c_str(), &st) != 0)
    throw SetupError{"cannot use working directory " + p.string() + ": " + strerror(errno),
                     kExitBadWdir};
  if (!S_ISDIR(st.st_mode))
    throw SetupError{"cannot use working directory " + p.string() + ": not a directory",
                     kExitBadWdir};
  if (access(p.c_str(), X_OK) != 0)
    throw SetupError{"cannot use working directory " + p.string() + ": " + strerror(errno),
                     kExitBadWdir};
  return p.lexically_normal().string();
}

void put_env(std::vector<std::string>& env, const std::string& key, const std::string& value) {
  std::string prefix = key + "=";
  for (auto& e : env)
    if (e.compare(0, prefix.size(), prefix) == 0) {
      e = prefix + value;
      return;
    }
  env.push_back(prefix + value);
}

std::vector<std::string> rank_environment(const JobSpec& spec) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
  for (const auto& x : spec.exports) {
    auto eq = x.find('=');
    if (eq != std::string::npos) {
      put_env(env, x.substr(0, eq), x.substr(eq + 1));
    } else if (const char* v = getenv(x.c_str())) {
      put_env(env, x, v);
    } else {
      spdlog::warn("-x {}: the variable is not set here; not exported", x);
    }
  }
  for (const auto& [k, v] : spec.mca) put_env(env, "OMPI_MCA_" + k, v);
  // Open MPI 4.1 ranks launched by a PMIx server that is not ORTE's start as singletons
  // unless ORTE's schizo component is excluded (PMIX-NOTES.md).
  put_env(env, "OMPI_MCA_schizo", "^orte");
  put_env(env, "OMPI_MCA_orte_externally_bound", "1");
  put_env(env, "OMPI_MCA_hwloc_base_binding_policy", "none");
  // PMIx's shared-memory data store shows up as hangs here; the hash store does not.
  put_env(env, "PMIX_MCA_gds", "hash");
  return env;
}

void print_map(const LaunchContext& ctx, const std::string& jobid) {
  std::string out = "\n ========================   JOB MAP   ========================\n";
  for (size_t n = 0; n < ctx.map.nodes.size(); ++n) {
    const auto& node = ctx.map.nodes[n];
    out += "\n Data for node: " + node.hostname + "\tNum slots: " +
           std::to_string(ctx.plan.procs_per_machine) + "\tMax slots: 0\tNum procs: " +
           std::to_string(node.ranks.size()) + "\n";
    for (int r : node.ranks)
      out += " \tProcess jobid: " + jobid + " App: " +
             std::to_string(ctx.map.ranks[static_cast<size_t>(r)].appnum) +
             " Process rank: " + std::to_string(r) + " Bound: N/A\n";
  }
  out += "\n =============================================================\n";
  fputs(out.c_str(), stdout);
  fflush(stdout);
}

void write_all(int fd, const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + off, bytes.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // stdout gone: drop, as mpirun does
    off += static_cast<size_t>(n);
  }
}

// Reads our stdin on a thread (it may be a terminal, a pipe or a file; only a thread can
// block on all three) and hands each chunk to the loop, one at a time, so a rank that does not
// read cannot make us buffer the whole input.
class StdinPump {
 public:
  using Deliver = std::function<void(std::string data, bool eof, std::function<void()> done)>;
  StdinPump(asio::io_context& io, Deliver deliver)
      : shared_(std::make_shared<Shared>()) {
    shared_->io = &io;
    shared_->deliver = std::move(deliver);
    std::thread([s = shared_] { run(s); }).detach();
  }
  ~StdinPump() {
    std::lock_guard lock(shared_->mutex);
    shared_->alive = false;  // the thread may stay blocked in read(); it exits with us
    shared_->credit.release();
  }

 private:
  struct Shared {
    std::mutex mutex;
    bool alive = true;
    asio::io_context* io = nullptr;
    Deliver deliver;
    std::binary_semaphore credit{0};
  };
  static void run(std::shared_ptr<Shared> s) {
    std::string buf(65536, '\0');
    for (;;) {
      ssize_t n = ::read(0, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      bool eof = n <= 0;
      {
        std::lock_guard lock(s->mutex);
        if (!s->alive) return;
        asio::post(*s->io, [s, data = std::string(buf.data(), eof ? 0 : static_cast<size_t>(n)),
                            eof]() mutable {
          s->deliver(std::move(data), eof, [s] { s->credit.release(); });
        });
      }
      if (eof) return;
      s->credit.acquire();
    }
  }
  std::shared_ptr<Shared> shared_;
};

}  // namespace

int run_job(const JobSpec& spec) {
  LaunchContext ctx;
  ctx.spec = spec;
  try {
    if (geteuid() == 0 && !spec.allow_run_as_root)
      throw SetupError{"refusing to run as root, as mpirun does; add --allow-run-as-root, or set "
                       "OMPI_ALLOW_RUN_AS_ROOT=1 and OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1",
                       1};
    std::string cwd = fs::current_path().string();
    for (const auto& app : spec.apps) {
      ctx.app_wdirs.push_back(check_wdir(app.wdir, cwd));
      ctx.program_paths.push_back(resolve_program(app.program, ctx.app_wdirs.back(), getenv("PATH")));
    }
    HostFacts host;
    host.cores = host_cores();
    host.can_clone = false;
    host.clone_denied = "no clone driver is built into this mpirun-sf";
    ctx.plan = make_plan(spec, host);
    if (spec.output_filename.size()) {
      std::error_code ec;
      fs::create_directories(spec.output_filename, ec);
      if (ec)
        throw SetupError{"cannot create --output-filename directory " + spec.output_filename +
                             ": " + ec.message(),
                         1};
    }
  } catch (const SetupError& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.message.c_str());
    return e.exit_code;
  } catch (const UsageError& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    return e.exit_code();
  }

  std::vector<std::string> hostnames{this_hostname()};
  ctx.map = make_job_map(ctx.plan, "mpirun-sf." + std::to_string(getpid()), hostnames);
  ctx.base_env = rank_environment(spec);
  if (const char* g = getenv("SF_KILL_GRACE_MS")) ctx.kill_grace_ms = std::max(0, atoi(g));
  setenv("PMIX_MCA_gds", "hash", 1);

  // The session directory of this node: PMIx rendezvous files and Open MPI session dirs.
  const char* tmp = getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/mpirun-sf." +
                        std::to_string(getpid()) + ".XXXXXX";
  if (!mkdtemp(pattern.data())) {
    fprintf(stderr, "mpirun-sf: cannot create a session directory %s: %s\n", pattern.c_str(),
            strerror(errno));
    return 1;
  }
  const std::string session_dir = pattern;

  int exit_code = 0;
  std::string closing;
  {
    asio::io_context io;
    OutputOptions oo{spec.tag_output, spec.timestamp_output, spec.merge_stderr_to_stdout,
                     spec.output_filename};
    OutputSink sink(oo, write_all, [] { return std::time(nullptr); });
    if (std::string err = sink.prepare_files(ctx.plan.np); !err.empty()) {
      fprintf(stderr, "mpirun-sf: %s\n", err.c_str());
      fs::remove_all(session_dir);
      return 1;
    }
    Coordinator coordinator(io, ctx, sink);
    LocalLink to_coordinator(io), to_agent(io);
    NodeAgent agent(io, ctx, 0, to_coordinator);
    to_coordinator.set_handler([&](Envelope m) { coordinator.handle(0, std::move(m)); });
    to_agent.set_handler([&](Envelope m) { agent.deliver(std::move(m)); });
    coordinator.connect_node(0, &to_agent);

    signal(SIGPIPE, SIG_IGN);
    asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);
    asio::signal_set forwarded(io, SIGUSR1, SIGUSR2);
    int interrupts = 0;
    std::function<void(const boost::system::error_code&, int)> on_signal =
        [&](const boost::system::error_code& ec, int sig) {
          if (ec) return;
          if (++interrupts == 1) {
            coordinator.interrupt(sig);
          } else {
            agent.kill_now();  // a second interrupt: no more grace
          }
          signals.async_wait(on_signal);
        };
    signals.async_wait(on_signal);
    std::function<void(const boost::system::error_code&, int)> on_forward =
        [&](const boost::system::error_code& ec, int sig) {
          if (ec) return;
          coordinator.forward_signal(sig);
          forwarded.async_wait(on_forward);
        };
    forwarded.async_wait(on_forward);

    if (spec.display_map) print_map(ctx, coordinator.jobid());
    std::unique_ptr<StdinPump> stdin_pump;
    try {
      agent.start(session_dir);
      const auto& target = spec.stdin_target;
      if (target.kind != StdinTarget::Kind::None &&
          (target.kind == StdinTarget::Kind::All || target.rank < ctx.plan.np)) {
        stdin_pump = std::make_unique<StdinPump>(
            io, [&](std::string data, bool eof, std::function<void()> done) {
              if (target.kind == StdinTarget::Kind::All) {
                for (int r = 0; r < ctx.plan.np; ++r) coordinator.stdin_data(r, data, eof);
                done();
              } else if (ctx.map.ranks[static_cast<size_t>(target.rank)].node == 0) {
                agent.write_stdin(target.rank, std::move(data), eof, std::move(done));
              } else {
                coordinator.stdin_data(target.rank, std::move(data), eof);
                done();
              }
            });
      }
      coordinator.start_timeout();
      while (!coordinator.done()) io.run_one();
    } catch (const std::exception& e) {
      fprintf(stderr, "mpirun-sf: %s\n", e.what());
      agent.kill_now();
      exit_code = 1;
    }
    stdin_pump.reset();
    signals.cancel();
    forwarded.cancel();
    if (exit_code == 0) {
      exit_code = coordinator.outcome().exit_code();
      if (!spec.quiet || exit_code != 0) closing = coordinator.outcome().closing_message(coordinator.jobid());
    }
  }
  std::error_code ec;
  fs::remove_all(session_dir, ec);
  if (!closing.empty()) fputs(closing.c_str(), stderr);
  return exit_code;
}

}  // namespace sf::mpirun
