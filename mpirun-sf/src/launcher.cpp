// The launch sequence of a job on node 0; see launcher.hpp and docs/architecture.md.
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

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <optional>
#include <regex>

#include "clone-core/clone.hpp"
#include "coordinator.hpp"
#include "environment.hpp"
#include "tcp_link.hpp"
#include "launch_context.hpp"
#include "mpirun-sf/exit_status.hpp"
#include "mpirun-sf/plan.hpp"
#include "node_agent.hpp"
#include "sf-common/fd_io.hpp"
#include "sf-common/random.hpp"

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
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(online) : 1;
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


std::vector<std::string> rank_environment(const JobSpec& spec) {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
  for (const auto& x : spec.exports) {
    auto eq = x.find('=');
    if (eq != std::string::npos) {
      put_env(env, x);
    } else if (const char* v = getenv(x.c_str())) {
      put_env(env, x + "=" + v);
    } else {
      spdlog::warn("-x {}: the variable is not set here; not exported", x);
    }
  }
  for (const auto& [k, v] : spec.mca) put_env(env, "OMPI_MCA_" + k + "=" + v);
  // Open MPI 4.1 ranks launched by a PMIx server that is not ORTE's start as singletons
  // unless ORTE's schizo component is excluded (docs/architecture.md).
  put_env(env, "OMPI_MCA_schizo=^orte");
  put_env(env, "OMPI_MCA_orte_externally_bound=1");
  put_env(env, "OMPI_MCA_hwloc_base_binding_policy=none");
  // PMIx's shared-memory data store shows up as hangs here; the hash store does not.
  put_env(env, "PMIX_MCA_gds=hash");
  return env;
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


// 128 random bits as hex. Throws: a job token must never be predictable.
std::string random_token() {
  unsigned char raw[16];
  if (!sf::random_bytes(raw, sizeof raw))
    throw std::runtime_error(std::string("cannot make a job token: getrandom: ") + strerror(errno));
  return sf::to_hex(raw, sizeof raw);
}

// This node's session directory: PMIx rendezvous files and Open MPI session directories.
// Every node makes its own (a clone's /tmp is private to it).
std::string make_session_dir() {
  const char* tmp = getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/mpirun-sf." +
                        std::to_string(getpid()) + ".XXXXXX";
  if (!mkdtemp(pattern.data()))
    throw std::runtime_error("cannot create a session directory " + pattern + ": " +
                             strerror(errno));
  return pattern;
}

// Where clones find the coordinator.
struct Rendezvous {
  std::string address;
  uint16_t port = 0;
  std::string token;  // proves a connecting agent belongs to this job
  int listen_fd = -1;
};

// Listens on node 0's cluster address before cloning, so every clone inherits the port.
Rendezvous listen_for_clones(const std::string& address) {
  Rendezvous r;
  r.address = address;
  r.token = random_token();
  r.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (r.listen_fd < 0) throw std::runtime_error(std::string("socket: ") + strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (inet_pton(AF_INET, address.c_str(), &sa.sin_addr) != 1 ||
      bind(r.listen_fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      listen(r.listen_fd, 256) != 0)
    throw std::runtime_error("cannot listen on the cluster address " + address + ": " +
                             strerror(errno));
  socklen_t len = sizeof sa;
  getsockname(r.listen_fd, reinterpret_cast<sockaddr*>(&sa), &len);
  r.port = ntohs(sa.sin_port);
  return r;
}

HostFacts probe_host(const JobSpec& spec) {
  HostFacts host;
  host.cores = host_cores();
  if (spec.driver == "none") {
    host.clone_denied = "--driver none was given";
    return host;
  }
  auto driver = sf::make_driver(spec.driver);
  if (!driver) {
    host.clone_denied = driver.error().message;
    return host;
  }
  sf::Probe p = (*driver)->probe();
  host.can_clone = p.available;
  host.clone_denied = p.reason;
  return host;
}

void print_map(const LaunchContext& ctx, const std::string& jobid, const sf::Ticket* ticket) {
  std::string out = "\n ========================   JOB MAP   ========================\n";
  for (size_t n = 0; n < ctx.map.nodes.size(); ++n) {
    const auto& node = ctx.map.nodes[n];
    out += "\n Data for node: " + node.hostname + "\tNum slots: " +
           std::to_string(ctx.plan.procs_per_machine) + "\tMax slots: 0\tNum procs: " +
           std::to_string(node.ranks.size()) + "\n";
    if (ticket) {
      const auto& info = ticket->node(static_cast<unsigned>(n));
      out += " \tMachine: " + std::string(n == 0 ? "launcher (node 0)" : "clone " + std::to_string(n)) +
             "\tAddress: " + info.address_text + "\tInterface: " + info.interface + "\n";
    }
    for (int r : node.ranks)
      out += " \tProcess jobid: " + jobid + " App: " +
             std::to_string(ctx.map.ranks[static_cast<size_t>(r)].appnum) +
             " Process rank: " + std::to_string(r) + " Bound: N/A\n";
  }
  out += "\n =============================================================\n";
  fputs(out.c_str(), stdout);
  fflush(stdout);
}

// A clone's part of the job: run the node agent for its ranks, with the coordinator on node 0
// at the other end of a TCP link. Returns the clone's status for sf::sync.
int run_clone_node(const LaunchContext& ctx, unsigned id, const Rendezvous& rv) {
  if (rv.listen_fd >= 0) ::close(rv.listen_fd);
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) {
    dup2(devnull, 0);  // node 0 owns the user's stdin
    ::close(devnull);
  }
  signal(SIGINT, SIG_IGN);  // ^C reaches node 0, which tears the whole cluster down
  signal(SIGPIPE, SIG_IGN);
  std::string session_dir;
  int status = 0;
  try {
    session_dir = make_session_dir();
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    asio::ip::tcp::endpoint coordinator(asio::ip::make_address(rv.address), rv.port);
    boost::system::error_code ec;
    for (int attempt = 0; attempt < 100; ++attempt) {  // the bridge may still be settling
      socket.connect(coordinator, ec);
      if (!ec) break;
      socket.close();
      usleep(50000);
    }
    if (ec) throw std::runtime_error("cannot reach the coordinator at " + rv.address + ":" +
                                     std::to_string(rv.port) + ": " + ec.message());
    auto link = std::make_shared<TcpLink>(std::move(socket));
    NodeAgent agent(io, ctx, static_cast<int>(id), *link);
    bool stop = false;
    link->start(
        [&](Envelope m) {
          if (m.has_shutdown())
            stop = true;
          else
            agent.deliver(std::move(m));
        },
        [&](const std::string& why) {
          if (!stop) spdlog::error("clone {}: lost the coordinator: {}", id, why);
          agent.kill_now();
          stop = true;
          status = 1;
        });
    Envelope hello;
    auto* h = hello.mutable_hello();
    h->set_node(id);
    h->set_hostname(ctx.map.nodes.at(id).hostname);
    h->set_version(TcpLink::kProtocolVersion);
    h->set_job_token(rv.token);
    link->send(std::move(hello));
    asio::signal_set term(io, SIGTERM, SIGHUP);
    term.async_wait([&](const boost::system::error_code& e, int) {
      if (e) return;
      agent.kill_now();
      stop = true;
    });
    agent.start(session_dir);
    while (!stop && io.run_one()) {
    }
    term.cancel();
    agent.kill_now();
    // Let the last messages (node finished) leave before the clone ends.
    for (int i = 0; i < 100 && !link->idle(); ++i) io.run_for(std::chrono::milliseconds(10));
    link->close();
  } catch (const std::exception& e) {
    fprintf(stderr, "mpirun-sf: clone %u: %s\n", id, e.what());
    status = 1;
  }
  std::error_code fec;
  if (!session_dir.empty()) fs::remove_all(session_dir, fec);
  return status;
}

// Node 0: the coordinator, node 0's agent, and (with clones) the acceptor for their links.
int run_launcher_node(LaunchContext& ctx, sf::Ticket* ticket, Rendezvous* rv) {
  const JobSpec& spec = ctx.spec;
  std::string session_dir;
  try {
    session_dir = make_session_dir();
  } catch (const std::exception& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    if (ticket) ticket->kill();
    return 1;
  }
  int exit_code = 0;
  std::string closing;
  {
    asio::io_context io;
    OutputOptions oo{spec.tag_output, spec.timestamp_output, spec.merge_stderr_to_stdout,
                     spec.output_filename};
    // Output that stdout does not take is dropped, as mpirun drops it.
    OutputSink sink(oo, [](int fd, const std::string& bytes) { sf::write_all(fd, bytes.data(), bytes.size()); },
                    [] { return std::time(nullptr); });
    Coordinator coordinator(io, ctx, sink);
    LocalLink to_coordinator(io), to_agent(io);
    NodeAgent agent(io, ctx, 0, to_coordinator);
    to_coordinator.set_handler([&](Envelope m) { coordinator.handle(0, std::move(m)); });
    to_agent.set_handler([&](Envelope m) { agent.deliver(std::move(m)); });
    coordinator.connect_node(0, &to_agent);

    // Clones connect, say Hello with the job token, then talk to the coordinator.
    std::map<int, std::shared_ptr<TcpLink>> clone_links;
    std::optional<asio::ip::tcp::acceptor> acceptor;
    std::optional<asio::posix::stream_descriptor> clone_exits;
    asio::steady_timer connect_deadline(io);
    std::function<void()> accept_next = [&] {
      acceptor->async_accept([&](const boost::system::error_code& ec, asio::ip::tcp::socket s) {
        if (ec) return;
        auto link = std::make_shared<TcpLink>(std::move(s));
        auto node = std::make_shared<int>(-1);
        std::weak_ptr<TcpLink> weak = link;
        link->start(
            [&, node, weak](Envelope m) {
              if (*node < 0) {
                const auto& h = m.hello();
                int n = static_cast<int>(h.node());
                if (!m.has_hello() || h.job_token() != rv->token ||
                    h.version() != TcpLink::kProtocolVersion || n < 1 ||
                    n >= static_cast<int>(ctx.map.nodes.size()) || coordinator.connected(n)) {
                  spdlog::warn("refused a control connection that is not one of this job's clones");
                  if (auto l = weak.lock()) l->close();
                  return;
                }
                *node = n;
                if (auto l = weak.lock()) {
                  clone_links[n] = l;
                  coordinator.connect_node(n, l.get());
                }
                return;
              }
              coordinator.handle(*node, std::move(m));
            },
            [&, node](const std::string& why) {
              if (*node > 0) coordinator.node_lost(*node, "control link: " + why);
            });
        accept_next();
      });
    };
    std::function<void()> watch_clones = [&] {
      clone_exits->async_wait(asio::posix::stream_descriptor::wait_read,
                              [&](const boost::system::error_code& ec) {
                                if (ec) return;
                                for (const auto& st : ticket->poll_exited())
                                  coordinator.node_lost(static_cast<int>(st.id),
                                                        "clone " + std::to_string(st.id) +
                                                            " ended (status " +
                                                            std::to_string(st.value) + ")");
                                watch_clones();
                              });
    };
    if (ticket) {
      acceptor.emplace(io);
      acceptor->assign(asio::ip::tcp::v4(), rv->listen_fd);
      rv->listen_fd = -1;
      accept_next();
      clone_exits.emplace(io, ticket->exit_fd());
      watch_clones();
      connect_deadline.expires_after(std::chrono::seconds(30));
      connect_deadline.async_wait([&](const boost::system::error_code& ec) {
        if (ec) return;
        for (size_t n = 1; n < ctx.map.nodes.size(); ++n)
          if (!coordinator.connected(static_cast<int>(n)))
            coordinator.node_lost(static_cast<int>(n), "its agent did not connect within 30 s");
      });
    }

    if (std::string err = sink.prepare_files(ctx.plan.np); !err.empty()) {
      fprintf(stderr, "mpirun-sf: %s\n", err.c_str());
      coordinator.interrupt(SIGTERM);
      exit_code = 1;
    }

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
            if (ticket) ticket->kill();
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

    std::unique_ptr<StdinPump> stdin_pump;
    try {
      if (exit_code == 0) {
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
      }
      while (!coordinator.done()) io.run_one();
    } catch (const std::exception& e) {
      fprintf(stderr, "mpirun-sf: %s\n", e.what());
      agent.kill_now();
      exit_code = 1;
    }
    stdin_pump.reset();
    signals.cancel();
    forwarded.cancel();
    connect_deadline.cancel();
    if (ticket) {
      // Tell the clones to end, let the messages leave, then reap them.
      coordinator.shutdown_nodes();
      for (int i = 0; i < 200; ++i) {
        bool idle = true;
        for (auto& [n, l] : clone_links) idle = idle && l->idle();
        if (idle) break;
        io.run_for(std::chrono::milliseconds(10));
      }
      if (acceptor) acceptor->close();
      if (clone_exits) clone_exits->release();  // the ticket owns that fd
    }
    if (exit_code == 0) {
      exit_code = coordinator.outcome().exit_code();
      if (!spec.quiet || exit_code != 0)
        closing = coordinator.outcome().closing_message(coordinator.jobid());
    }
    for (auto& [n, l] : clone_links) l->close();
  }
  if (ticket) {
    auto joined = ticket->join();
    if (!joined) spdlog::warn("tearing the cluster down: {}", joined.error().message);
  }
  std::error_code ec;
  fs::remove_all(session_dir, ec);
  if (!closing.empty()) fputs(closing.c_str(), stderr);
  return exit_code;
}

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
    ctx.plan = make_plan(spec, probe_host(spec));
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

  // Fork the machine into an impromptu cluster when the job needs more than this one.
  std::optional<sf::Ticket> ticket;
  Rendezvous rv;
  std::vector<std::string> hostnames{this_hostname()};
  if (ctx.plan.machines > 1) {
    sf::TicketRequest req;
    req.clones = static_cast<unsigned>(ctx.plan.machines - 1);
    req.procs_per_clone = static_cast<unsigned>(ctx.plan.procs_per_machine);
    req.driver = spec.driver;
    if (!spec.subnet.empty()) req.subnet_pool = spec.subnet;
    auto t = sf::Ticket::request(req);
    if (!t) {
      fprintf(stderr, "mpirun-sf: cannot fork this machine into %d machines: %s\n",
              ctx.plan.machines, t.error().message.c_str());
      return 1;
    }
    ticket.emplace(std::move(*t));
    hostnames.clear();
    for (int n = 0; n < ctx.plan.machines; ++n)
      hostnames.push_back(ticket->node(static_cast<unsigned>(n)).hostname);
    try {
      rv = listen_for_clones(ticket->node(0).address_text);
    } catch (const std::exception& e) {
      fprintf(stderr, "mpirun-sf: %s\n", e.what());
      ticket->kill();
      return 1;
    }
  }
  ctx.map = make_job_map(ctx.plan, "mpirun-sf." + std::to_string(getpid()), hostnames);
  ctx.base_env = rank_environment(spec);
  // As mpirun: 1 when the ranks outnumber the cores they share, else 0, whatever the user's
  // environment says (Open MPI then yields while idle; mpi_yield_when_idle still overrides it).
  put_env(ctx.base_env,
          std::string("OMPI_MCA_mpi_oversubscribe=") + (ctx.plan.cores_oversubscribed ? "1" : "0"));
  ctx.terminal_size = launcher_terminal_size();
  if (ticket) {
    // Ranks on different machines talk TCP over the cluster network, and only there.
    put_env(ctx.base_env, "OMPI_MCA_btl_tcp_if_include=" + ticket->subnet_cidr());
  }
  if (const char* g = getenv("SF_KILL_GRACE_MS")) ctx.kill_grace_ms = std::max(0, atoi(g));
  setenv("PMIX_MCA_gds", "hash", 1);

  if (spec.display_map)
    print_map(ctx, "[" + std::to_string(getpid() & 0xffff) + ",1]", ticket ? &*ticket : nullptr);
  if (ticket) {
    // fork() copies only the calling thread: no thread, event loop or PMIx server exists yet.
    fflush(stdout);
    fflush(stderr);
    auto id = ticket->clone();
    if (!id) {
      fprintf(stderr, "mpirun-sf: cloning this machine failed: %s\n", id.error().message.c_str());
      ::close(rv.listen_fd);
      ticket->kill();
      return 1;
    }
    if (*id > 0) {
      int status = run_clone_node(ctx, *id, rv);
      ticket->sync(status);  // ends the clone
      _exit(status);
    }
  }
  return run_launcher_node(ctx, ticket ? &*ticket : nullptr, ticket ? &rv : nullptr);
}

namespace {
// Removes PARENT/mpirun-sf.<pid>.XXXXXX directories whose launcher <pid> no longer runs.
unsigned remove_dead_launcher_dirs(const std::string& parent) {
  static const std::regex ours(R"(mpirun-sf\.([0-9]+)\.[A-Za-z0-9]{6})");
  unsigned removed = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    std::string name = entry.path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, ours) || !entry.is_directory()) continue;
    struct stat st {};
    if (lstat(entry.path().c_str(), &st) != 0 || st.st_uid != geteuid()) continue;  // only our own
    long pid = atol(m[1].str().c_str());
    if (kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
      std::error_code rm;
      fs::remove_all(entry.path(), rm);
      if (!rm) ++removed;
    }
  }
  return removed;
}
}  // namespace

int cleanup_leftovers(bool quiet) {
  int status = 0;
  auto report = sf::cleanup_stale_clusters();
  if (!report) {
    fprintf(stderr, "mpirun-sf: --cleanup: %s\n", report.error().message.c_str());
    status = 1;
  } else if (!quiet) {
    for (const auto& note : report->notes) printf("mpirun-sf: cleanup: %s\n", note.c_str());
  }
  // Session directories (in TMPDIR) and shared-memory directories (in /dev/shm) are named
  // mpirun-sf.<pid>.XXXXXX: remove those whose launcher is gone.
  const char* tmp = getenv("TMPDIR");
  unsigned dirs = remove_dead_launcher_dirs(tmp && *tmp ? tmp : "/tmp") +
                  remove_dead_launcher_dirs("/dev/shm");
  if (!quiet)
    printf("mpirun-sf: cleanup: %u stale cluster(s), %u link(s), %u process(es), %u session "
           "director%s removed\n",
           report ? report->clusters : 0, report ? report->links : 0,
           report ? report->processes : 0, dirs, dirs == 1 ? "y" : "ies");
  return status;
}

}  // namespace sf::mpirun
