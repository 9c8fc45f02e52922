// What every node of a job knows before it starts: the spec, the plan, the job map and the
// environment the ranks inherit. Built on node 0 before cloning, so clones inherit it.
#pragma once

#include <string>
#include <vector>

#include "mpirun-sf/job_spec.hpp"
#include "mpirun-sf/plan.hpp"
#include "pmix-plugin/job_map.hpp"
#include "rank_stdio.hpp"

namespace sf::mpirun {

struct LaunchContext {
  JobSpec spec;
  Plan plan;
  pmix::JobMap map;
  std::vector<std::string> base_env;       // KEY=VALUE: ours with -x and --mca applied
  std::vector<std::string> program_paths;  // per application context, resolved
  std::vector<std::string> app_wdirs;      // per application context, absolute
  int kill_grace_ms = 2000;                // SIGTERM, then SIGKILL after this
  int teardown_margin_ms = 10000;          // after the grace: a node still running is lost
  TerminalSize terminal_size;              // of the launcher's terminal: the ranks' get it
};

}  // namespace sf::mpirun
