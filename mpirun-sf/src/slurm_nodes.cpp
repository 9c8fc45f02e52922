// Node agents on a Slurm allocation; see slurm_nodes.hpp and docs/user-guide.md,
// "On a Slurm cluster".
#include "slurm_nodes.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <thread>

#include "environment.hpp"
#include "job_setup.hpp"
#include "clone-core/clone.hpp"
#include "mpirun-sf/plan.hpp"
#include "subprocess.hpp"

namespace sf::mpirun {
namespace {

// What the launcher tells the agents, in srun's environment (which only the job's owner can
// read, unlike the command line). The agents remove these before their ranks start.
constexpr const char* kToken = "SF_AGENT_TOKEN";
constexpr const char* kPort = "SF_AGENT_PORT";
constexpr const char* kNspace = "SF_AGENT_NSPACE";
constexpr const char* kNodes = "SF_AGENT_NODES";  // the job's nodes, comma-separated
constexpr const char* kSlots = "SF_AGENT_SLOTS";  // the allocation's slots per node
constexpr const char* kClones = "SF_AGENT_CLONES";  // machines per node (the launcher's --clones)

std::string join(const std::vector<std::string>& items, char sep) {
  std::string out;
  for (const auto& s : items) {
    if (!out.empty()) out += sep;
    out += s;
  }
  return out;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(sep, pos);
    if (end == std::string::npos) end = text.size();
    out.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

std::string status_text(int status) {
  return status > 128 ? "killed by signal " + std::to_string(status - 128)
                      : "exit status " + std::to_string(status);
}

// Nodes x clones: forks this allocated node into its machines (the node and sandbox clones
// that share its network, so that they reach the coordinator and the other nodes as it does)
// and runs each machine's node agent. Returns the node's status once its clones are joined.
int run_cloned_node(const LaunchContext& ctx, int node, const std::string& node_name,
                    const CoordinatorAddress& coordinator, const std::string& label) {
  const Plan& plan = ctx.plan;
  int first = -1, count = 0;
  for (size_t m = 0; m < plan.machine_node.size(); ++m)
    if (plan.machine_node[m] == node) {
      if (first < 0) first = static_cast<int>(m);
      ++count;
    }
  if (count <= 1) return run_remote_node(ctx, first, coordinator, label);
  sf::TicketRequest req;
  req.clones = static_cast<unsigned>(count - 1);
  req.procs_per_clone = static_cast<unsigned>(plan.node_ranks.at(static_cast<size_t>(first)));
  req.driver = "sandbox";
  req.network = sf::CloneNetwork::shared;
  req.parent_hostname = node_name;
  auto ticket = sf::Ticket::request(req);
  if (!ticket) {
    fprintf(stderr, "mpirun-sf: %s: cannot fork this node into %d machines: %s\n", label.c_str(), count,
            ticket.error().message.c_str());
    return 1;
  }
  spdlog::debug("{}: forked into {} machines with the sandbox driver (network shared)", label, count);
  fflush(stdout);
  fflush(stderr);
  auto id = ticket->clone();
  if (!id) {
    fprintf(stderr, "mpirun-sf: %s: cloning this node failed: %s\n", label.c_str(), id.error().message.c_str());
    return 1;
  }
  if (*id > 0) {
    int status = run_remote_node(ctx, first + static_cast<int>(*id), coordinator,
                                 label + " clone " + std::to_string(*id));
    (void)ticket->sync(status);  // ends the clone
    _exit(status);
  }
  int status = run_remote_node(ctx, first, coordinator, label);
  // The clones end with the job as this node does; if this node lost the job, end them now.
  if (status != 0) {
    (void)ticket->kill();
    return status;
  }
  auto joined = ticket->join();
  if (!joined) {
    fprintf(stderr, "mpirun-sf: %s: %s\n", label.c_str(), joined.error().message.c_str());
    return 1;
  }
  for (const auto& st : *joined)
    if (!st.success() && status == 0) status = 1;
  return status;
}

}  // namespace

std::unique_ptr<SlurmNodes> SlurmNodes::start(const LaunchContext& ctx,
                                               const SlurmAllocation& allocation,
                                               const std::vector<int>& nodes,
                                               const std::string& nspace,
                                               const CoordinatorAddress& coordinator) {
  // The allocated nodes of the machines (with clones, several machines share one).
  std::vector<std::string> job_nodes(allocation.nodes.begin(),
                                     allocation.nodes.begin() + allocation_nodes_used(ctx.plan));
  std::vector<std::string> names, slots;
  for (int n : nodes) {
    const std::string& name = job_nodes.at(static_cast<size_t>(allocation_node_of(ctx.plan, n)));
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
  }
  for (int s : allocation.slots) slots.push_back(std::to_string(s));
  const std::string count = std::to_string(names.size());
  // One task per node, not bound to a CPU (the agent's ranks use the node's CPUs), output
  // ours, no stdin (the launcher forwards it), and every agent killed if one fails.
  std::vector<std::string> argv = {"srun", "--overlap", "--quiet", "--mpi=none", "--input=none",
                                   "--kill-on-bad-exit=1", "--export=ALL",
                                   "--job-name=mpirun-sf", "--nodes=" + count,
                                   "--ntasks=" + count, "--ntasks-per-node=1",
                                   "--nodelist=" + join(names, ',')};
  if (task_plugin_binds(read_slurm_conf(::getenv))) argv.push_back("--cpu-bind=none");
  argv.push_back(self_executable());
  argv.push_back(kSlurmNodeAgentFlag);
  argv.insert(argv.end(), ctx.spec.command_line.begin(), ctx.spec.command_line.end());
  std::vector<std::string> env = current_environment();
  put_env(env, std::string(kToken) + "=" + coordinator.token);
  put_env(env, std::string(kPort) + "=" + std::to_string(coordinator.port));
  put_env(env, std::string(kNspace) + "=" + nspace);
  put_env(env, std::string(kNodes) + "=" + join(job_nodes, ','));
  put_env(env, std::string(kSlots) + "=" + join(slots, ','));
  put_env(env, std::string(kClones) + "=" + std::to_string(ctx.spec.clones));
  pid_t pid = spawn_in_own_group(argv, env);
  spdlog::debug("started node agents on {} with srun (pid {})", join(names, ','), pid);
  return std::unique_ptr<SlurmNodes>(new SlurmNodes(pid, nodes, allocation.job_id, ctx));
}

SlurmNodes::SlurmNodes(pid_t srun, std::vector<int> nodes, std::string job_id,
                       const LaunchContext& ctx)
    : srun_(srun), nodes_(std::move(nodes)), job_id_(std::move(job_id)), ctx_(ctx) {
  pidfd_ = static_cast<int>(syscall(SYS_pidfd_open, srun_, 0));
}

SlurmNodes::~SlurmNodes() {
  if (!status_) {
    ::kill(srun_, SIGKILL);
    reap(true);
  }
  if (pidfd_ >= 0) ::close(pidfd_);
}

std::optional<int> SlurmNodes::reap(bool block) {
  if (status_) return status_;
  int st = 0;
  pid_t got;
  do got = waitpid(srun_, &st, block ? 0 : WNOHANG);
  while (got < 0 && errno == EINTR);
  if (got == srun_) status_ = exit_status(st);
  return status_;
}

void SlurmNodes::watch(boost::asio::io_context& io,
                       std::function<void(int, const std::string&)> lost) {
  if (pidfd_ < 0) return;  // without pidfds a dead agent still breaks its control link
  exit_watch_.emplace(io, ::dup(pidfd_));
  exit_watch_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                          [this, lost = std::move(lost)](const boost::system::error_code& ec) {
                            if (ec) return;
                            auto status = reap(false);
                            std::string why = "srun, which ran the node agents, ended (" +
                                              status_text(status.value_or(-1)) + ")";
                            for (int n : nodes_) lost(n, why);
                          });
}

void SlurmNodes::stop_watching() {
  if (exit_watch_) {
    exit_watch_->cancel();
    exit_watch_.reset();
  }
}

void SlurmNodes::kill() {
  if (!reap(false)) ::kill(srun_, SIGTERM);  // srun passes it to the agents, which kill at once
}

void SlurmNodes::release() {
  using namespace std::chrono;
  // The agents end on Shutdown and srun with them; give it time, then end it.
  auto wait_for = [this](milliseconds limit) {
    auto deadline = steady_clock::now() + limit;
    while (!reap(false)) {
      auto left = duration_cast<milliseconds>(deadline - steady_clock::now());
      if (left <= milliseconds(0)) break;
      if (pidfd_ >= 0) {
        pollfd exited{pidfd_, POLLIN, 0};  // readable once srun has exited
        ::poll(&exited, 1, static_cast<int>(left.count()));
      } else {
        std::this_thread::sleep_for(std::min(left, milliseconds(5)));
      }
    }
    return status_.has_value();
  };
  if (wait_for(milliseconds(ctx_.kill_grace_ms + 5000))) return;
  spdlog::warn("srun (pid {}) did not end after the job; terminating it", srun_);
  ::kill(srun_, SIGTERM);
  if (wait_for(milliseconds(5000))) return;
  ::kill(srun_, SIGKILL);
  reap(true);
}

std::string SlurmNodes::describe(int node) const {
  const Plan& plan = ctx_.plan;
  if (!plan.machine_clone.empty() && plan.machine_clone.at(static_cast<size_t>(node)) > 0)
    return " \tMachine: Slurm job " + job_id_ + ", clone " +
           std::to_string(plan.machine_clone[static_cast<size_t>(node)]) +
           " of its node, forked by the node agent\n";
  for (int n : nodes_)
    if (n == node) return " \tMachine: Slurm job " + job_id_ + ", node agent started by srun\n";
  return " \tMachine: Slurm job " + job_id_ + ", launcher\n";
}

int run_slurm_node_agent(const JobSpec& spec) {
  auto take = [](const char* name) {
    const char* v = getenv(name);
    std::string value = v ? v : "";
    unsetenv(name);
    return value;
  };
  CoordinatorAddress coordinator;
  coordinator.token = take(kToken);
  std::string port = take(kPort), nspace = take(kNspace), nodes = take(kNodes),
              slots = take(kSlots), clones = take(kClones);
  const std::string here = slurm_node_name(::getenv);
  const std::string label = "node " + here;
  const char* launch_address = getenv("SLURM_LAUNCH_NODE_IPADDR");
  if (coordinator.token.empty() || port.empty() || nspace.empty() || nodes.empty() ||
      slots.empty() || !launch_address) {
    fprintf(stderr, "mpirun-sf: %s: %s is for node agents that mpirun-sf starts with srun\n",
            label.c_str(), kSlurmNodeAgentFlag);
    return 1;
  }
  coordinator.address = launch_address;
  coordinator.port = static_cast<uint16_t>(atoi(port.c_str()));
  LaunchContext ctx;
  ctx.spec = spec;
  ctx.spec.clones = atoi(clones.c_str());  // as the launcher read its --clones
  int node = -1;
  try {
    check_apps(ctx);
    std::vector<int> slot_counts;
    for (const auto& s : split(slots, ',')) slot_counts.push_back(atoi(s.c_str()));
    ctx.plan = make_allocation_plan(ctx.spec, slot_counts);
    std::vector<std::string> node_names = split(nodes, ',');
    if (static_cast<int>(node_names.size()) != allocation_nodes_used(ctx.plan))
      throw std::runtime_error("the job's plan differs from the launcher's (" +
                               std::to_string(allocation_nodes_used(ctx.plan)) + " nodes here, " +
                               std::to_string(node_names.size()) + " there)");
    for (size_t n = 0; n < node_names.size(); ++n)
      if (node_names[n] == here) node = static_cast<int>(n);
    if (node < 0) throw std::runtime_error("this node is not one of the job's nodes " + nodes);
    // This node's machines (itself and, with --clones, its clones) share its cores.
    ctx.plan.cores_oversubscribed = ranks_on_allocation_node(ctx.plan, node) > host_cores();
    finish_context(ctx, nspace, machine_hostnames(ctx.plan, node_names));
  } catch (const SetupError& e) {
    fprintf(stderr, "mpirun-sf: %s: %s\n", label.c_str(), e.what());
    return e.exit_code();
  } catch (const std::exception& e) {
    fprintf(stderr, "mpirun-sf: %s: %s\n", label.c_str(), e.what());
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  if (ctx.plan.machine_node.empty()) return run_remote_node(ctx, node, coordinator, label);
  return run_cloned_node(ctx, node, here, coordinator, label);
}

}  // namespace sf::mpirun
