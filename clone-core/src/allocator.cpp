// clone-core: the local allocator (see allocator.hpp).
#include "clone-core/allocator.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

namespace sf {

HostResources probe_host_resources() {
  HostResources host;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    host.cores = static_cast<unsigned>(CPU_COUNT(&set));
  } else {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    host.cores = n > 0 ? static_cast<unsigned>(n) : 1;
  }
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (meminfo >> key >> kib) {
    std::getline(meminfo, unit);
    if (key == "MemAvailable:") {
      host.memory_available = kib * 1024;
      break;
    }
  }
  return host;
}

Result<Allocation> LocalAllocator::grant(const AllocationRequest& r) const {
  if (r.clones == 0)
    return make_error(Errc::invalid_argument, "clone-core: a ticket must ask for at least 1 clone");
  if (r.procs_per_clone == 0)
    return make_error(Errc::invalid_argument, "clone-core: procs_per_clone must be at least 1");
  if (r.min_clones > r.clones)
    return make_error(Errc::invalid_argument, "clone-core: min_clones (" + std::to_string(r.min_clones) +
                                                  ") is larger than clones (" + std::to_string(r.clones) + ")");
  unsigned minimum = r.min_clones == 0 ? r.clones : r.min_clones;
  Allocation a;
  a.procs_per_clone = r.procs_per_clone;
  a.clones = r.clones;
  auto limit = [&](unsigned cap, const char* why) {
    if (cap < a.clones) {
      a.clones = cap;
      a.limited_by = why;
    }
  };
  limit(r.max_clones, "addresses");
  if (!r.oversubscribe) {
    // The parent is node 0 and runs procs_per_clone processes too.
    unsigned machines = host_.cores / r.procs_per_clone;
    limit(machines > 0 ? machines - 1 : 0, "cores");
  }
  if (r.memory_per_clone > 0) {
    std::uint64_t by_memory = host_.memory_available / r.memory_per_clone;
    limit(static_cast<unsigned>(std::min<std::uint64_t>(by_memory, ~0u)), "memory");
  }
  if (a.clones < minimum) {
    std::ostringstream m;
    m << "clone-core: cannot grant " << minimum << " clone(s) of " << r.procs_per_clone
      << " process(es): this host allows " << a.clones << " (limited by " << a.limited_by << "; "
      << host_.cores << " cores, " << (host_.memory_available >> 20) << " MiB available, "
      << (r.memory_per_clone >> 20) << " MiB per clone"
      << (r.oversubscribe ? "" : ", no oversubscription") << "); ask for fewer or lower min_clones";
    return make_error(Errc::insufficient_resources, m.str());
  }
  return a;
}

}  // namespace sf
