// Starting helper programs (srun, salloc) without a shell. Slurm's tools whose output is
// read (scontrol) go through sf::common::slurm::run_tool.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace sf::mpirun {

// A waitpid() status as a shell reports it: the exit code, or 128 + the signal.
int exit_status(int wait_status);

// Starts argv with `env` as its environment (KEY=VALUE), stdin from /dev/null, stdout and
// stderr ours, in a process group of its own (so a terminal's ^C reaches only the launcher,
// which ends the job in order). Returns its pid; throws std::runtime_error if it cannot start.
pid_t spawn_in_own_group(const std::vector<std::string>& argv, const std::vector<std::string>& env);

// Starts argv with `env` in our process group with our descriptors 0-2 (and any other
// descriptor that is not close-on-exec). Returns its pid; throws std::runtime_error.
pid_t spawn_in_our_group(const std::vector<std::string>& argv, const std::vector<std::string>& env);

}  // namespace sf::mpirun
