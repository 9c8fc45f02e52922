// Planning: how many machines (node 0 plus clones), how many ranks on each, and the job map
// every node registers. Pure functions of the job spec and the host, so every node computes
// the same answer.
#pragma once

#include <string>
#include <vector>

#include "mpirun-sf/job_spec.hpp"
#include "pmix-plugin/job_map.hpp"

namespace sf::mpirun {

struct HostFacts {
  int cores = 1;             // slots of one machine when --procs-per-clone is not given
  bool can_clone = false;    // a clone driver is usable here
  std::string clone_denied;  // why not, when !can_clone
};

struct Plan {
  int machines = 1;           // nodes with ranks, node 0 counted
  int procs_per_machine = 1;  // ranks on every node but possibly the last
  int np = 0;                 // ranks in all
  std::vector<int> app_np;    // per application context
  int universe_size = 0;      // slots of the whole cluster (MPI_UNIVERSE_SIZE), as mpirun counts
                              // them: not raised by --oversubscribe
  bool oversubscribed = false;  // more ranks than slots (allowed by --oversubscribe)
  // More ranks than this machine has cores. Every node of the job (node 0 and its clones,
  // whether namespaces or VMs) runs on this machine's cores, so all ranks count. Ranks are
  // told so (OMPI_MCA_mpi_oversubscribe=1, as mpirun tells the ranks of an oversubscribed
  // node) and then yield the processor while they wait instead of spinning.
  bool cores_oversubscribed = false;
};

// Throws UsageError (exit status 1) when the job cannot be placed, with mpirun's reasons.
Plan make_plan(const JobSpec& spec, const HostFacts& host);

// `hostnames[i]` is node i's hostname; there must be plan.machines of them.
pmix::JobMap make_job_map(const Plan& plan, const std::string& nspace,
                          const std::vector<std::string>& hostnames);

// The node a rank runs on.
int node_of_rank(const Plan& plan, int rank);

}  // namespace sf::mpirun
