// Runs a job: checks, plans, (clones,) starts the node agent(s) and the coordinator, and
// returns mpirun's exit status.
#pragma once

#include "mpirun-sf/job_spec.hpp"

namespace sf::mpirun {

int run_job(const JobSpec& spec);

}  // namespace sf::mpirun
