// What scripts/slurm-testbed and the jobs on it can leave on this machine: namespaces and
// links named sfsl*, and Slurm's and munge's daemons. Shared by the Slurm tests.
#pragma once

#include <sstream>
#include <string>

#include "run_command.hpp"

namespace sf::test {

inline std::string slurm_testbed_leftovers() {
  std::string out;
  CommandResult ns = run_command({"ip", "netns", "list"}, {});
  CommandResult links = run_command({"ip", "-br", "link"}, {});
  for (const auto* r : {&ns, &links}) {
    std::istringstream in(r->stdout_text);
    for (std::string line; std::getline(in, line);)
      if (line.rfind("sfsl", 0) == 0) out += line + "\n";
  }
  for (const char* daemon : {"slurmctld", "slurmd", "munged", "slurmstepd"})
    for (const auto& p : processes_named(daemon))
      if (p.state != 'Z') out += p.name + " " + p.command_line + "\n";  // init reaps zombies late
  return out;
}

}  // namespace sf::test
