// Planning of machines and rank placement (by slot: node 0 fills first).
#include "mpirun-sf/plan.hpp"

#include <algorithm>

#include "clone-core/cluster_layout.hpp"

namespace sf::mpirun {
namespace {
int ceil_div(int a, int b) { return (a + b - 1) / b; }
}  // namespace

Plan make_plan(const JobSpec& spec, const HostFacts& host) {
  Plan plan;
  const bool cloning_wanted = spec.driver != "none";
  int per_machine = spec.procs_per_clone > 0 ? spec.procs_per_clone : std::max(1, host.cores);
  // Slots an application without -np fills: every slot of the machines asked for.
  const int asked_machines = spec.clones > 0 ? spec.clones : 1;
  for (const auto& app : spec.apps) {
    int n = app.np > 0 ? app.np : asked_machines * per_machine;
    plan.app_np.push_back(n);
    plan.np += n;
  }
  // `--clones C` without a per-machine count spreads the ranks over the C machines the user
  // chose: `-np 32 --clones 8` runs 4 on each, whatever the cores of one machine.
  if (spec.clones > 0 && spec.procs_per_clone == 0)
    per_machine = std::max(per_machine, ceil_div(plan.np, spec.clones));
  if (spec.clones > 1 && (!cloning_wanted || !host.can_clone))
    throw UsageError("--clones " + std::to_string(spec.clones) + " needs a clone driver, but " +
                     (cloning_wanted ? host.clone_denied : std::string("--driver none was given")) +
                     "; without --clones the job runs on this machine alone (add --oversubscribe if its ranks "
                     "outnumber the cores)");

  int machines;
  if (spec.clones > 0) {
    machines = spec.clones;
  } else if (plan.np <= per_machine || spec.oversubscribe.value_or(false) || !cloning_wanted ||
             !host.can_clone) {
    machines = 1;  // fits here, or the user chose to oversubscribe, or cannot clone
  } else {
    machines = ceil_div(plan.np, per_machine);  // fork the machine into a cluster
  }
  int slots = machines * per_machine;
  if (plan.np > slots) {
    if (!spec.oversubscribe.value_or(false)) {
      std::string why = "there are not enough slots available to satisfy the " +
                        std::to_string(plan.np) + " slots requested by the application " +
                        spec.apps.front().program + " (" + std::to_string(slots) + " slot" +
                        (slots == 1 ? "" : "s") + ")";
      if (spec.clones == 0 && cloning_wanted && !host.can_clone)
        why += "; cloning this machine is not possible: " + host.clone_denied;
      throw UsageError(why + "; request fewer processes, add --clones N, or use --oversubscribe");
    }
    plan.oversubscribed = true;
  }
  // Spread ranks over the machines asked for: `-np 8 --clones 4` puts 2 on each.
  plan.procs_per_machine = spec.procs_per_clone > 0 && !plan.oversubscribed
                               ? per_machine
                               : std::max(1, ceil_div(plan.np, machines));
  if (spec.clones == 0 && machines == 1) plan.procs_per_machine = std::max(1, plan.np);
  plan.machines = std::max(1, ceil_div(plan.np, plan.procs_per_machine));
  // MPI_UNIVERSE_SIZE is the slot count, as under mpirun (2 here even with -np 4 --oversubscribe).
  plan.universe_size = slots;
  plan.cores_oversubscribed = plan.np > std::max(1, host.cores);
  return plan;
}

Plan make_allocation_plan(const JobSpec& spec, const std::vector<int>& allocated) {
  Plan plan;
  if (allocated.empty()) throw UsageError("the allocation has no nodes");
  const int clones = std::max(1, spec.clones);  // machines per node
  std::vector<int> slots = allocated;
  if (spec.procs_per_clone > 0) std::fill(slots.begin(), slots.end(), spec.procs_per_clone * clones);
  int total = 0;
  for (int s : slots) total += s;
  for (const auto& app : spec.apps) {
    int n = app.np > 0 ? app.np : total;
    plan.app_np.push_back(n);
    plan.np += n;
  }
  const int nodes = static_cast<int>(slots.size());
  std::vector<int> ranks(slots.size(), 0);
  if (plan.np > total) {
    if (!spec.oversubscribe.value_or(false))
      throw UsageError("there are not enough slots available to satisfy the " +
                       std::to_string(plan.np) + " slots requested by the application " +
                       spec.apps.front().program + " (" + std::to_string(total) +
                       " slot" + (total == 1 ? "" : "s") + " on " + std::to_string(nodes) +
                       " node" + (nodes == 1 ? "" : "s") +
                       " of the allocation); request fewer processes, more tasks from Slurm, "
                       "or use --oversubscribe");
    plan.oversubscribed = true;
    const int extra = plan.np - total;
    for (int i = 0; i < nodes; ++i)
      ranks[static_cast<size_t>(i)] = slots[static_cast<size_t>(i)] + extra / nodes + (i < extra % nodes ? 1 : 0);
  } else {
    int left = plan.np;
    for (int i = 0; i < nodes && left > 0; ++i) {
      ranks[static_cast<size_t>(i)] = std::min(left, slots[static_cast<size_t>(i)]);
      left -= ranks[static_cast<size_t>(i)];
    }
  }
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] == 0) continue;  // nodes fill in order: the used ones come first
    if (clones == 1) {
      plan.node_ranks.push_back(ranks[i]);
      plan.node_slots.push_back(slots[i]);
      continue;
    }
    const int per = spec.procs_per_clone > 0 && !plan.oversubscribed
                        ? spec.procs_per_clone
                        : ceil_div(ranks[i], std::min(clones, ranks[i]));
    for (int left = ranks[i], clone = 0; left > 0; left -= per, ++clone) {
      plan.node_ranks.push_back(std::min(per, left));
      plan.node_slots.push_back(ceil_div(slots[i], clones));
      plan.machine_node.push_back(static_cast<int>(i));
      plan.machine_clone.push_back(clone);
    }
  }
  plan.machines = std::max<int>(1, static_cast<int>(plan.node_ranks.size()));
  plan.procs_per_machine = plan.node_ranks.empty() ? 1 : plan.node_ranks.front();
  plan.universe_size = total;
  return plan;
}

int allocation_node_of(const Plan& plan, int machine) {
  return plan.machine_node.empty() ? machine : plan.machine_node.at(static_cast<size_t>(machine));
}

int allocation_nodes_used(const Plan& plan) { return allocation_node_of(plan, plan.machines - 1) + 1; }

std::vector<std::string> machine_hostnames(const Plan& plan, const std::vector<std::string>& node_names) {
  std::vector<std::string> out;
  for (int m = 0; m < plan.machines; ++m) {
    const std::string& node = node_names.at(static_cast<size_t>(allocation_node_of(plan, m)));
    const int clone = plan.machine_clone.empty() ? 0 : plan.machine_clone[static_cast<size_t>(m)];
    out.push_back(clone == 0 ? node : sf::derive_hostname(node, static_cast<unsigned>(clone)));
  }
  return out;
}

int ranks_on_allocation_node(const Plan& plan, int node) {
  int n = 0;
  for (int m = 0; m < plan.machines; ++m)
    if (allocation_node_of(plan, m) == node) n += plan.node_ranks.at(static_cast<size_t>(m));
  return n;
}

int node_of_rank(const Plan& plan, int rank) {
  if (plan.node_ranks.empty()) return rank / plan.procs_per_machine;
  int node = 0;
  for (int n : plan.node_ranks) {
    if (rank < n) return node;
    rank -= n;
    ++node;
  }
  return node - 1;
}

pmix::JobMap make_job_map(const Plan& plan, const std::string& nspace,
                          const std::vector<std::string>& hostnames) {
  pmix::JobMap map;
  map.nspace = nspace;
  map.universe_size = plan.universe_size;
  for (int i = 0; i < plan.machines; ++i)
    map.nodes.push_back(pmix::NodeSlot{hostnames.at(static_cast<size_t>(i)), {}});
  int rank = 0;
  for (size_t a = 0; a < plan.app_np.size(); ++a) {
    map.apps.push_back(pmix::AppContext{rank, plan.app_np[a]});
    for (int i = 0; i < plan.app_np[a]; ++i, ++rank) {
      int node = node_of_rank(plan, rank);
      auto& slot = map.nodes[static_cast<size_t>(node)];
      pmix::RankPlacement p;
      p.node = node;
      p.appnum = static_cast<int>(a);
      p.app_rank = i;
      p.local_rank = p.node_rank = static_cast<int>(slot.ranks.size());
      slot.ranks.push_back(rank);
      map.ranks.push_back(p);
    }
  }
  return map;
}

}  // namespace sf::mpirun
