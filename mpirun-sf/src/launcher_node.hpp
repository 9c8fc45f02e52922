// mpirun-sf: the launcher's own node, where a job runs from start to end: the coordinator,
// the agent of the launcher's node (if it runs ranks), the acceptor of the other nodes'
// control links, signals, stdin, and the teardown. launcher.cpp decides where the nodes are
// (clones, a Slurm allocation, or this machine alone) and then calls run_launcher_node.
#pragma once

#include <string>

#include "launch_context.hpp"
#include "remote_node.hpp"
#include "remote_nodes.hpp"

namespace sf::mpirun {

// Where the other nodes' agents find the coordinator.
struct Rendezvous {
  CoordinatorAddress coordinator;
  int listen_fd = -1;  // listening; run_launcher_node takes it over
};

// Runs the job: the coordinator, the agent of node `local_node` (-1: the launcher runs no
// ranks, as in salloc on a login node) and, with `remote` nodes, the acceptor of their links
// on `rv`'s socket. Returns mpirun's exit status for the job (its closing message already
// printed); everything it made (the session directory, links, the remote nodes) is released.
int run_launcher_node(LaunchContext& ctx, int local_node, RemoteNodes* remote, Rendezvous* rv);

}  // namespace sf::mpirun
