// Starting helper programs (Slurm's scontrol and srun) without a shell.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace sf::mpirun {

struct Captured {
  bool started = false;  // false: could not be run at all (`error` says why)
  int status = -1;       // exit status, or 128+signal
  std::string output;    // its stdout
  std::string error;     // its stderr (last line kept), or why it did not start
};

// A waitpid() status as a shell reports it: the exit code, or 128 + the signal.
int exit_status(int wait_status);

// Runs argv (argv[0] looked up in PATH) with stdin from /dev/null, collects stdout and stderr
// and waits for it.
Captured capture_output(const std::vector<std::string>& argv);

// Starts argv with `env` as its environment (KEY=VALUE), stdin from /dev/null, stdout and
// stderr ours, in a process group of its own (so a terminal's ^C reaches only the launcher,
// which ends the job in order). Returns its pid; throws std::runtime_error if it cannot start.
pid_t spawn_in_own_group(const std::vector<std::string>& argv, const std::vector<std::string>& env);

// Starts argv with `env` in our process group with our descriptors 0-2 (and any other
// descriptor that is not close-on-exec). Returns its pid; throws std::runtime_error.
pid_t spawn_in_our_group(const std::vector<std::string>& argv, const std::vector<std::string>& env);

}  // namespace sf::mpirun
