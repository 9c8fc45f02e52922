// `mpirun-sf --allocator slurm` outside an allocation: Slurm grants the machines, as SnowFlock's
// tickets were grants of its cluster's allocator. mpirun-sf asks salloc for them and runs the
// job inside the allocation (mpirun-sf again, as salloc's command, which then plans and
// launches as in any allocation). A watchdog process releases the allocation (scancel by the
// job's unique name) if the launcher dies without salloc releasing it, even by SIGKILL, also
// while the request still waits in the queue.
#pragma once

#include <string>
#include <vector>

#include "mpirun-sf/job_spec.hpp"

namespace sf::mpirun {

// Runs the job in a new allocation and returns its exit status (salloc's: the command's, or 1
// if the request failed, with salloc's message).
int run_in_new_allocation(const JobSpec& spec);

// Inside the allocation run_in_new_allocation asked for: tells the launcher outside that the
// job has started (so it stops reporting the wait and knows whom to pass signals to), and
// whether `--clones N` is the shape that was asked for (then it is no error inside).
void report_started_in_requested_allocation();
bool clones_were_requested(int clones);

}  // namespace sf::mpirun
