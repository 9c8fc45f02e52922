// A node other than the launcher's: a clone, or a Slurm node's agent started by srun. It runs
// its node agent (PMIx server and ranks) with the coordinator at the other end of a TCP link.
#pragma once

#include <cstdint>
#include <string>

#include "launch_context.hpp"

namespace sf::mpirun {

// Where a node agent finds the coordinator, and the token that proves it belongs to the job.
struct CoordinatorAddress {
  std::string address;
  uint16_t port = 0;
  std::string token;
};

// Connects (retrying for up to 5 s), says Hello, runs the node's ranks until the coordinator
// says Shutdown or is lost, cleans up. `label` names the node in messages ("clone 2",
// "node node3"). Returns 0, or 1 if the coordinator was lost or the node could not start.
int run_remote_node(const LaunchContext& ctx, int node, const CoordinatorAddress& coordinator,
                    const std::string& label);

}  // namespace sf::mpirun
