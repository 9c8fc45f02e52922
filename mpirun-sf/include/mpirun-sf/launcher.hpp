// Runs a job: checks, plans, (clones,) starts the node agent(s) and the coordinator, and
// returns mpirun's exit status.
#pragma once

#include "mpirun-sf/job_spec.hpp"

namespace sf::mpirun {

int run_job(const JobSpec& spec);

// `mpirun-sf --cleanup`: removes what crashed runs left (clusters: bridges, veths, clone
// processes, locks; session directories of launchers that no longer run). Prints what it did.
int cleanup_leftovers(bool quiet);

}  // namespace sf::mpirun
