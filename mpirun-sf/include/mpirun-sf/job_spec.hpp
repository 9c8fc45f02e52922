// What the user asked for on the command line: the job spec. Produced by parse_command_line,
// consumed by planning and the launcher. Option names follow Open MPI 4.1's mpirun.
#pragma once

#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sf::mpirun {

// One MPMD application context (`-np 2 ./a : -np 3 ./b` has two).
struct AppSpec {
  int np = -1;  // -1: not given (one per slot); 0: as Open MPI, one per slot too
  std::string program;
  std::vector<std::string> args;
  std::string wdir;  // empty: the launcher's working directory
};

struct StdinTarget {
  enum class Kind { Rank, All, None } kind = Kind::Rank;
  int rank = 0;
};

enum class Action { Run, Help, Version, Cleanup };

struct JobSpec {
  Action action = Action::Run;
  std::vector<AppSpec> apps;
  std::vector<std::string> exports;                       // -x VAR or -x VAR=value
  std::vector<std::pair<std::string, std::string>> mca;  // --mca key value
  bool tag_output = false;
  bool timestamp_output = false;
  bool merge_stderr_to_stdout = false;
  std::string output_filename;  // --output-filename DIR
  StdinTarget stdin_target;
  int timeout_seconds = 0;               // --timeout or MPIEXEC_TIMEOUT; 0: none
  std::optional<bool> oversubscribe;     // --oversubscribe / --nooversubscribe
  bool allow_run_as_root = false;        // flag or the two OMPI_ALLOW_RUN_AS_ROOT* variables
  bool display_map = false;
  bool quiet = false;
  int verbose = 0;
  // Impromptu cluster.
  int clones = 0;            // --clones N: machines in all, the launching one counted; 0: plan
  int procs_per_clone = 0;   // --procs-per-clone P or --map-by ppr:P:node; 0: the cores
  std::string driver = "auto";  // --driver sandbox|qemu|auto|none
  std::string subnet;           // --cluster-subnet CIDR; empty: the driver's default
  // Where the machines come from: "auto" (the Slurm allocation the launcher runs in, if any,
  // else this machine and its clones), "local" (this machine and its clones, even inside an
  // allocation) or "slurm" (the allocation; outside one, a new one from salloc).
  std::string allocator = "auto";
  // What --allocator slurm asks salloc for (--partition, --account, --time-limit, or
  // SF_SLURM_PARTITION, SF_SLURM_ACCOUNT, SF_SLURM_TIME_LIMIT); empty: Slurm's defaults.
  std::string slurm_partition, slurm_account, slurm_time_limit;
  // The arguments as given (argv without argv[0]): node agents started on other machines
  // parse the same ones.
  std::vector<std::string> command_line;
};

// A command-line error; what() is the one-line message (without the "mpirun-sf: " prefix).
// Internal to mpirun-sf (nothing else links it): thrown by parse_command_line and by the
// planning steps (plan.hpp, slurm_allocation.hpp); caught by main (parsing) and run_job
// (planning), which print it and return exit_code(), as mpirun does for a usage error. In a
// Slurm node's agent (run_slurm_node_agent) a planning UsageError is that node's failure
// (status 1).
class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Parses argv (argv[0] excluded). `getenv` looks up MPIEXEC_TIMEOUT and OMPI_ALLOW_RUN_AS_ROOT*.
// Throws UsageError.
JobSpec parse_command_line(const std::vector<std::string>& args,
                           const std::function<const char*(const char*)>& getenv);

// The text of --help.
std::string help_text();

}  // namespace sf::mpirun
