// The steps every node takes before its ranks start: checking working directories and
// programs, the ranks' environment, the session directory, the job token. Shared by the
// launcher and the node agents it starts on other machines (clones, Slurm nodes).
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

#include "launch_context.hpp"
#include "mpirun-sf/job_spec.hpp"

namespace sf::mpirun {

// A failure before any rank runs: what() is the one-line message (without the "mpirun-sf: "
// prefix), exit_code() the status mpirun-sf ends with (as mpirun's for the same failure).
// Internal to mpirun-sf, like UsageError: thrown by the setup steps below and by run_job's
// own checks, caught by run_job (the launcher) and run_slurm_node_agent (a Slurm node's
// agent), which print it and return its exit code.
class SetupError : public std::runtime_error {
 public:
  SetupError(const std::string& what, int exit_code) : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Cores in this process's CPU affinity.
int host_cores();
std::string this_hostname();

// Whether the machine under `root` has a device of a high-speed fabric that Open MPI reaches
// through UCX, PSM/PSM2 or libfabric rather than TCP: an RDMA device (InfiniBand, RoCE,
// Omni-Path, EFA, iWARP: /sys/class/infiniband), an HPE Slingshot NIC (/sys/class/cxi), or a
// PSM2/PSM character device (/dev/hfi1_*, /dev/ipath*).
bool has_fabric_devices(const std::string& root = "/");

// The program as execve needs it: a path with a '/' is taken relative to the working
// directory (as Open MPI does); a bare name is searched in PATH. Throws SetupError (132).
std::string resolve_program(const std::string& program, const std::string& wdir,
                            const char* path_env);
// The absolute working directory of an application context. Throws SetupError (135).
std::string check_wdir(const std::string& wdir, const std::string& cwd);

// The ranks' base environment: ours, with -x and --mca applied and what Open MPI 4.1 ranks
// need under our PMIx server (docs/architecture.md, section 6).
std::vector<std::string> rank_environment(const JobSpec& spec);

// This node's session directory $TMPDIR/mpirun-sf.<pid>.XXXXXX: PMIx rendezvous files and
// Open MPI session directories. Every node makes its own. Throws std::runtime_error.
std::string make_session_dir();

// Fills ctx.app_wdirs and ctx.program_paths from ctx.spec. Throws SetupError.
void check_apps(LaunchContext& ctx);

// Everything of the context that follows from the plan and the node names: the job map, the
// ranks' environment (with OMPI_MCA_mpi_oversubscribe from ctx.plan.cores_oversubscribed),
// the terminal size, the kill grace. Also puts PMIx's hash data store in our own environment.
void finish_context(LaunchContext& ctx, const std::string& nspace,
                    const std::vector<std::string>& hostnames);

// The path of this mpirun-sf executable (what node agents and salloc run again). Throws
// std::runtime_error.
std::string self_executable();

// 128 random bits as hex. Throws: a job token must never be predictable.
std::string random_token();

}  // namespace sf::mpirun
