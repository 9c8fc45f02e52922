// sf-cluster-state: shows the sandbox driver's clusters on this host (the state files under
// /run/snowflock, docs/formats/cluster-state.md) and removes what crashed runs left.
//   sf-cluster-state            list clusters: slot, live or stale, subnet, processes
//   sf-cluster-state FILE       print one state file (validated)
//   sf-cluster-state --cleanup  remove stale clusters (what `mpirun-sf --cleanup` does)
#include <dirent.h>

#include <cstdio>
#include <string>

#include "clone-core/clone.hpp"
#include "cluster_slots.hpp"

int main(int argc, char** argv) {
  std::string arg = argc > 1 ? argv[1] : "";
  if (arg == "-h" || arg == "--help") {
    std::puts("usage: sf-cluster-state [--cleanup | STATE_FILE]");
    return 0;
  }
  if (arg == "--cleanup") {
    auto report = sf::cleanup_stale_clusters();
    if (!report) {
      std::fprintf(stderr, "%s\n", report.error().message.c_str());
      return 1;
    }
    for (const auto& n : report->notes) std::printf("%s\n", n.c_str());
    std::printf("cleaned %u stale cluster(s): %u link(s), %u process(es)\n", report->clusters, report->links,
                report->processes);
    return 0;
  }
  if (!arg.empty()) {
    auto state = sf::slots::read_state(arg);
    if (!state) {
      std::fprintf(stderr, "%s\n", state.error().message.c_str());
      return 1;
    }
    std::fputs(sf::slots::format_state(*state).c_str(), stdout);
    return 0;
  }
  const std::string run_dir = sf::run_dir();
  DIR* dir = opendir(run_dir.c_str());
  if (!dir) {
    std::printf("no clusters (%s does not exist)\n", run_dir.c_str());
    return 0;
  }
  unsigned shown = 0;
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name.size() < 6 || name.compare(name.size() - 5, 5, ".json") != 0) continue;
    auto state = sf::slots::read_state(run_dir + "/" + name);
    if (!state) {
      std::printf("%s: %s\n", name.c_str(), state.error().message.c_str());
      continue;
    }
    bool live = !sf::slots::try_lock(state->slot).has_value();
    std::printf("slot %u %s subnet %s bridge %s parent %d clones %zu\n", state->slot, live ? "live" : "stale",
                state->subnet.c_str(), state->bridge.c_str(), state->parent_pid, state->inits.size());
    ++shown;
  }
  closedir(dir);
  if (shown == 0) std::puts("no clusters");
  return 0;
}
