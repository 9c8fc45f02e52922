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
  // On the nodes of a Slurm allocation (make_allocation_plan): the ranks and the slots of each
  // node used, in node order. Empty for this machine and its clones, where every node but
  // possibly the last has procs_per_machine ranks.
  std::vector<int> node_ranks;
  std::vector<int> node_slots;
  // Nodes x clones (--clones C inside a Slurm allocation): each allocated node forks up to C
  // machines, itself and sandbox clones sharing its network. Per machine (index as in
  // node_ranks): the allocated node it runs on (an index into the allocation's nodes) and its
  // clone id there (0: the node itself). Empty when the allocation's nodes are not cloned.
  std::vector<int> machine_node;
  std::vector<int> machine_clone;
};

// Throws UsageError (exit status 1) when the job cannot be placed, with mpirun's reasons.
Plan make_plan(const JobSpec& spec, const HostFacts& host);

// The placement of a job on the nodes of an allocation with `slots[i]` slots on node i (for
// Slurm: SLURM_TASKS_PER_NODE), as mpirun maps by slot: ranks fill node 0's slots, then node
// 1's, ...; with --oversubscribe the ranks beyond the slots are spread evenly, the first nodes
// taking one more. --npernode P (or ppr:P:node) makes every node's slots P. Nodes left
// without ranks are not part of the plan. cores_oversubscribed is left false: whether a
// node's ranks outnumber its cores is known on that node. Throws UsageError.
//
// With --clones C (C > 1) every node used is forked into C machines (fewer if it has fewer
// ranks) and its ranks go by block onto them, ceil(ranks / C) each, as --clones spreads them
// on one machine; --procs-per-clone P then means P per machine, so C x P slots per node.
Plan make_allocation_plan(const JobSpec& spec, const std::vector<int>& slots);

// The allocated node machine m runs on: machine_node[m] with clones, else m itself.
int allocation_node_of(const Plan& plan, int machine);

// The allocated nodes a plan uses (the first ones of the allocation).
int allocation_nodes_used(const Plan& plan);

// Every machine's hostname: node_names[i] for allocated node i itself, "<node>-sf<j>" for its
// clone j (as the clones' own hostnames are derived). node_names must name at least the
// allocation_nodes_used(plan) nodes.
std::vector<std::string> machine_hostnames(const Plan& plan, const std::vector<std::string>& node_names);

// The ranks the plan puts on allocated node `node`, its clones' included.
int ranks_on_allocation_node(const Plan& plan, int node);

// `hostnames[i]` is node i's hostname; there must be plan.machines of them.
pmix::JobMap make_job_map(const Plan& plan, const std::string& nspace,
                          const std::vector<std::string>& hostnames);

// The node a rank runs on.
int node_of_rank(const Plan& plan, int rank);

}  // namespace sf::mpirun
