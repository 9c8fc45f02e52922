// The Slurm allocation mpirun-sf runs in (a batch script, salloc, or an srun shell): its
// nodes and their slots, read from the environment Slurm gives every job, as mpirun reads it.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "mpirun-sf/job_spec.hpp"

namespace sf::mpirun {

struct SlurmAllocation {
  std::string job_id;
  std::vector<std::string> nodes;  // in the allocation's order (SLURM_JOB_NODELIST)
  std::vector<int> slots;          // per node: SLURM_TASKS_PER_NODE, as mpirun counts slots
};

// Expands Slurm's compressed per-node counts: "2(x3),1" is 2, 2, 2, 1. Throws
// std::invalid_argument naming the text.
std::vector<int> expand_node_counts(const std::string& text);

// Expands a Slurm host list ("node[1-3],gpu7") into names. Throws std::runtime_error.
using HostlistExpander = std::function<std::vector<std::string>(const std::string& hostlist)>;

// Slurm's own expansion: `scontrol show hostnames LIST`.
std::vector<std::string> scontrol_show_hostnames(const std::string& hostlist);

// nullopt when not inside an allocation (SLURM_JOB_ID unset). Throws std::runtime_error when
// the allocation's variables are missing or do not agree with each other.
std::optional<SlurmAllocation> read_slurm_allocation(
    const std::function<const char*(const char*)>& getenv, const HostlistExpander& expand);

// This machine's name as Slurm knows it: SLURMD_NODENAME inside a job step or batch script,
// else the hostname up to its first dot.
std::string slurm_node_name(const std::function<const char*(const char*)>& getenv);

// Whether the cluster's task plugin binds tasks to CPUs, from slurm.conf's TaskPlugin line
// (`conf_text`; nullopt when no slurm.conf is readable here, as on a configless cluster: then
// binding is assumed). The node agents are started with --cpu-bind=none where it does, so the
// ranks they fork are not all bound to the agent's one CPU; where it does not, srun would
// print an error for the option.
bool task_plugin_binds(const std::optional<std::string>& conf_text);

// The text of this machine's slurm.conf: $SLURM_CONF, /etc/slurm/slurm.conf or the configless
// cache /run/slurm/conf/slurm.conf; nullopt if none is readable.
std::optional<std::string> read_slurm_conf(const std::function<const char*(const char*)>& getenv);

// salloc's options for the job: its shape (--nodes from --clones, --ntasks-per-node from
// --procs-per-clone, --ntasks from -np), partition, account, time limit and `job_name`.
// Throws UsageError when the shape cannot be known (neither -np for every program nor
// --clones).
std::vector<std::string> salloc_options(const JobSpec& spec, const std::string& job_name);

}  // namespace sf::mpirun
