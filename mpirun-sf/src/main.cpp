// mpirun-sf: the command-line entry point.
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "mpirun-sf/job_spec.hpp"
#include "mpirun-sf/launcher.hpp"

#ifndef SF_VERSION
#define SF_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  using namespace sf::mpirun;
  // Descriptors 0, 1 and 2 stay taken (by /dev/null where the caller closed one), so that no
  // pipe or terminal of ours lands there and is then overwritten when a rank's are set up.
  int spare;
  while ((spare = open("/dev/null", O_RDWR)) >= 0 && spare <= 2) {
  }
  if (spare > 2) close(spare);
  // A synchronous logger: no thread may exist when the launcher clones this process.
  auto logger = spdlog::stderr_logger_st("mpirun-sf");
  logger->set_pattern("mpirun-sf: %l: %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::warn);

  // srun starts mpirun-sf on each node of a Slurm allocation as that node's agent.
  const bool node_agent = argc > 1 && std::string(argv[1]) == kSlurmNodeAgentFlag;
  const int first = node_agent ? 2 : 1;
  JobSpec spec;
  try {
    spec = parse_command_line(std::vector<std::string>(argv + first, argv + argc), ::getenv);
  } catch (const UsageError& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    return e.exit_code();
  }
  if (spec.verbose) spdlog::set_level(spdlog::level::debug);
  if (node_agent) return run_slurm_node_agent(spec);
  switch (spec.action) {
    case Action::Help:
      fputs(help_text().c_str(), stdout);
      return 0;
    case Action::Version:
      printf("mpirun-sf (SnowFlock MPI) %s\nA drop-in mpirun for Open MPI 4.1 on impromptu clusters.\n",
             SF_VERSION);
      return 0;
    case Action::Cleanup:
      return cleanup_leftovers(spec.quiet);
    case Action::Run:
      break;
  }
  return run_job(spec);
}
