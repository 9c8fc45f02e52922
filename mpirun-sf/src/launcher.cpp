// The launch sequence of a job on node 0; see launcher.hpp and docs/architecture.md.
#include "mpirun-sf/launcher.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <optional>
#include <regex>

#include "clone-core/clone.hpp"
#include "environment.hpp"
#include "job_setup.hpp"
#include "launch_context.hpp"
#include "launcher_node.hpp"
#include "mpirun-sf/exit_status.hpp"
#include "mpirun-sf/plan.hpp"
#include "mpirun-sf/slurm_allocation.hpp"
#include "remote_node.hpp"
#include "remote_nodes.hpp"
#include "slurm_nodes.hpp"
#include "slurm_request.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace sf::mpirun {
namespace {

// Listens on `address` (an ephemeral port) and makes the job token: before cloning, so every
// clone inherits both; before srun, which passes them to the Slurm nodes' agents.
Rendezvous listen_for_nodes(const std::string& address) {
  Rendezvous r;
  r.coordinator.address = address;
  r.coordinator.token = random_token();
  r.listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (r.listen_fd < 0) throw std::runtime_error(std::string("socket: ") + strerror(errno));
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = 0;
  if (inet_pton(AF_INET, address.c_str(), &sa.sin_addr) != 1 ||
      bind(r.listen_fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 ||
      listen(r.listen_fd, 256) != 0) {
    std::string why = strerror(errno);
    ::close(r.listen_fd);
    throw std::runtime_error("cannot listen on " + address + " for the nodes' agents: " + why);
  }
  socklen_t len = sizeof sa;
  getsockname(r.listen_fd, reinterpret_cast<sockaddr*>(&sa), &len);
  r.coordinator.port = ntohs(sa.sin_port);
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

// The clones of a ticket: node n is clone n; node 0 is the launcher.
class ClonedNodes : public RemoteNodes {
 public:
  explicit ClonedNodes(sf::Ticket& ticket) : ticket_(ticket) {}
  void watch(asio::io_context& io, std::function<void(int, const std::string&)> lost) override {
    exits_.emplace(io, ticket_.exit_fd());
    lost_ = std::move(lost);
    wait_next();
  }
  void stop_watching() override {
    if (exits_) {
      exits_->cancel();
      exits_->release();  // the ticket owns that fd
      exits_.reset();
    }
  }
  void kill() override {
    if (auto st = ticket_.kill(); !st) spdlog::warn("killing the cluster: {}", st.error().message);
  }
  void release() override {
    auto joined = ticket_.join();
    if (!joined) spdlog::warn("tearing the cluster down: {}", joined.error().message);
  }
  std::string describe(int node) const override {
    const auto& info = ticket_.node(static_cast<unsigned>(node));
    return " \tMachine: " +
           std::string(node == 0 ? "launcher (node 0)" : "clone " + std::to_string(node)) +
           "\tAddress: " + info.address_text + "\tInterface: " + info.interface + "\n";
  }

 private:
  void wait_next() {
    exits_->async_wait(asio::posix::stream_descriptor::wait_read,
                       [this](const boost::system::error_code& ec) {
                         if (ec) return;
                         for (const auto& st : ticket_.poll_exited())
                           lost_(static_cast<int>(st.id), "clone " + std::to_string(st.id) +
                                                              " ended (status " +
                                                              std::to_string(st.value) + ")");
                         wait_next();
                       });
  }
  sf::Ticket& ticket_;
  std::optional<asio::posix::stream_descriptor> exits_;
  std::function<void(int, const std::string&)> lost_;
};

void print_map(const LaunchContext& ctx, const std::string& jobid, const RemoteNodes* remote) {
  std::string out = "\n ========================   JOB MAP   ========================\n";
  for (size_t n = 0; n < ctx.map.nodes.size(); ++n) {
    const auto& node = ctx.map.nodes[n];
    int slots = ctx.plan.node_slots.empty() ? ctx.plan.procs_per_machine : ctx.plan.node_slots[n];
    out += "\n Data for node: " + node.hostname + "\tNum slots: " + std::to_string(slots) +
           "\tMax slots: 0\tNum procs: " + std::to_string(node.ranks.size()) + "\n";
    if (remote) out += remote->describe(static_cast<int>(n));
    for (int r : node.ranks)
      out += " \tProcess jobid: " + jobid + " App: " +
             std::to_string(ctx.map.ranks[static_cast<size_t>(r)].appnum) +
             " Process rank: " + std::to_string(r) + " Bound: N/A\n";
  }
  out += "\n =============================================================\n";
  fputs(out.c_str(), stdout);
  fflush(stdout);
}

// This machine and, when the job needs them, its clones.
int run_on_clones(LaunchContext& ctx) {
  const JobSpec& spec = ctx.spec;
  // Fork the machine into an impromptu cluster when the job needs more than this one.
  std::optional<sf::Ticket> ticket;
  std::optional<ClonedNodes> clones;
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
    spdlog::debug("forking this machine with the {} driver: {} clone(s) on {}", ticket->driver_name(),
                  ticket->granted(), ticket->subnet_cidr());
    clones.emplace(*ticket);
    hostnames.clear();
    for (int n = 0; n < ctx.plan.machines; ++n)
      hostnames.push_back(ticket->node(static_cast<unsigned>(n)).hostname);
    try {
      rv = listen_for_nodes(ticket->node(0).address_text);
    } catch (const std::exception& e) {
      fprintf(stderr, "mpirun-sf: %s\n", e.what());
      (void)ticket->kill();  // the failure above is the one to report
      return 1;
    }
  }
  finish_context(ctx, "mpirun-sf." + std::to_string(getpid()), hostnames);
  if (ticket) {
    // Ranks on different machines talk TCP over the cluster network, and only there.
    put_env(ctx.base_env, "OMPI_MCA_btl_tcp_if_include=" + ticket->subnet_cidr());
  }
  if (spec.display_map)
    print_map(ctx, "[" + std::to_string(getpid() & 0xffff) + ",1]", clones ? &*clones : nullptr);
  if (ticket) {
    // fork() copies only the calling thread: no thread, event loop or PMIx server exists yet.
    fflush(stdout);
    fflush(stderr);
    auto id = ticket->clone();
    if (!id) {
      fprintf(stderr, "mpirun-sf: cloning this machine failed: %s\n", id.error().message.c_str());
      ::close(rv.listen_fd);
      (void)ticket->kill();  // the failure above is the one to report
      return 1;
    }
    if (*id > 0) {
      ::close(rv.listen_fd);
      int status = run_remote_node(ctx, static_cast<int>(*id), rv.coordinator,
                                   "clone " + std::to_string(*id));
      (void)ticket->sync(status);  // ends the clone
      _exit(status);
    }
  }
  return run_launcher_node(ctx, 0, clones ? &*clones : nullptr, ticket ? &rv : nullptr);
}

// The nodes of the Slurm allocation the launcher runs in: its own node's ranks here, the
// others' through node agents that one srun starts.
int run_on_allocation(LaunchContext& ctx, const SlurmAllocation& allocation) {
  JobSpec& spec = ctx.spec;
  // `--allocator slurm --clones N` asked Slurm for N nodes: here they are, not to be cloned.
  if (spec.clones > 0 && clones_were_requested(spec.clones)) spec.clones = 0;
  if (spec.clones > 1 && spec.driver != "auto" && spec.driver != "sandbox")
    throw SetupError{"--clones inside a Slurm allocation forks each node into sandbox clones that "
                     "share its network; --driver " + spec.driver + " cannot do that here: leave "
                     "--driver out, or add --allocator local to clone this node alone",
                     1};
  ctx.plan = make_allocation_plan(spec, allocation.slots);
  const bool cloned = !ctx.plan.machine_node.empty();
  std::vector<std::string> node_names(allocation.nodes.begin(),
                                      allocation.nodes.begin() + allocation_nodes_used(ctx.plan));
  std::vector<std::string> hostnames = machine_hostnames(ctx.plan, node_names);
  const std::string here = slurm_node_name(::getenv);
  // The launcher runs its own node's ranks, unless the nodes are cloned: then the agent srun
  // starts on this node forks it like every other node, and the launcher only coordinates.
  int local_node = -1;
  for (size_t n = 0; n < hostnames.size() && !cloned; ++n)
    if (hostnames[n] == here) local_node = static_cast<int>(n);
  ctx.plan.cores_oversubscribed =
      local_node >= 0 && ctx.plan.node_ranks[static_cast<size_t>(local_node)] > host_cores();
  const std::string nspace = "mpirun-sf." + std::to_string(getpid());
  finish_context(ctx, nspace, hostnames);
  std::vector<int> remote_nodes;
  for (int n = 0; n < ctx.plan.machines; ++n)
    if (n != local_node) remote_nodes.push_back(n);
  Rendezvous rv;
  std::unique_ptr<SlurmNodes> slurm;
  if (!remote_nodes.empty()) {
    rv = listen_for_nodes("0.0.0.0");
    try {
      slurm = SlurmNodes::start(ctx, allocation, remote_nodes, nspace, rv.coordinator);
    } catch (...) {
      ::close(rv.listen_fd);
      throw;
    }
  }
  if (spec.display_map)
    print_map(ctx, "[" + std::to_string(getpid() & 0xffff) + ",1]", slurm.get());
  return run_launcher_node(ctx, local_node, slurm.get(), slurm ? &rv : nullptr);
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
    check_apps(ctx);
    std::optional<SlurmAllocation> allocation;
    if (spec.allocator != "local") {
      try {
        allocation = read_slurm_allocation(::getenv, scontrol_show_hostnames);
      } catch (const std::runtime_error& e) {
        throw SetupError{e.what(), 1};
      }
      if (allocation) report_started_in_requested_allocation();
    }
    if (spec.output_filename.size()) {
      std::error_code ec;
      fs::create_directories(spec.output_filename, ec);
      if (ec)
        throw SetupError{"cannot create --output-filename directory " + spec.output_filename +
                             ": " + ec.message(),
                         1};
    }
    if (allocation) return run_on_allocation(ctx, *allocation);
    if (spec.allocator == "slurm") return run_in_new_allocation(spec);
    ctx.plan = make_plan(spec, probe_host(spec));
  } catch (const SetupError& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    return e.exit_code();
  } catch (const UsageError& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    return e.exit_code();
  } catch (const std::runtime_error& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    return 1;
  }
  return run_on_clones(ctx);
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
