// A job on the nodes of a Slurm allocation. The launcher runs its own node's ranks and starts
// a node agent on every other node with one `srun` (SlurmNodes); each agent is mpirun-sf again,
// in node-agent mode (run_slurm_node_agent), and joins the coordinator over TCP as a clone does.
// With --clones (nodes x clones) the launcher runs no ranks: srun starts an agent on every node
// used, its own included, and each agent forks its node into sandbox clones that share the
// node's network; every machine joins the coordinator on its own.
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launch_context.hpp"
#include "mpirun-sf/launcher.hpp"
#include "mpirun-sf/slurm_allocation.hpp"
#include "remote_node.hpp"
#include "remote_nodes.hpp"

namespace sf::mpirun {

class SlurmNodes : public RemoteNodes {
 public:
  // Starts `srun` with one agent on each allocated node that runs one of `nodes` (indexes into
  // ctx.map.nodes: the machines, which are the nodes themselves or, with --clones, the nodes
  // and their clones, which each node's agent forks). Throws std::runtime_error if srun cannot
  // be started.
  static std::unique_ptr<SlurmNodes> start(const LaunchContext& ctx,
                                           const SlurmAllocation& allocation,
                                           const std::vector<int>& nodes,
                                           const std::string& nspace,
                                           const CoordinatorAddress& coordinator);
  ~SlurmNodes() override;

  void watch(boost::asio::io_context& io,
             std::function<void(int node, const std::string& why)> lost) override;
  void stop_watching() override;
  void kill() override;
  void release() override;
  std::string describe(int node) const override;
  int connect_seconds() const override { return 60; }  // srun may wait for the nodes' prologs

 private:
  SlurmNodes(pid_t srun, std::vector<int> nodes, std::string job_id, const LaunchContext& ctx);
  // Reaps srun if it has ended; its status (exit code, or 128+signal).
  std::optional<int> reap(bool block);

  pid_t srun_;
  int pidfd_ = -1;
  std::optional<int> status_;
  std::vector<int> nodes_;
  std::string job_id_;
  const LaunchContext& ctx_;
  std::optional<boost::asio::posix::stream_descriptor> exit_watch_;
};

}  // namespace sf::mpirun
