// Runs a job: checks, plans, (clones,) starts the node agent(s) and the coordinator, and
// returns mpirun's exit status.
#pragma once

#include "mpirun-sf/job_spec.hpp"

namespace sf::mpirun {

int run_job(const JobSpec& spec);

// The first argument that starts mpirun-sf as the agent of one node of a Slurm allocation;
// the job's own arguments follow. Not for users: the launcher's srun passes it.
inline constexpr const char* kSlurmNodeAgentFlag = "--slurm-node-agent";

// mpirun-sf started by srun with kSlurmNodeAgentFlag: plans the job as the launcher did (from
// what the launcher passed in srun's environment), finds this node in it and runs its ranks
// with the coordinator at the launcher. Returns the agent's exit status.
int run_slurm_node_agent(const JobSpec& spec);

// `mpirun-sf --cleanup`: removes what crashed runs left (clusters: bridges, veths, clone
// processes, locks; session directories of launchers that no longer run). Prints what it did.
int cleanup_leftovers(bool quiet);

}  // namespace sf::mpirun
