// clone-core: the local allocator. A ticket asks for clones (machines besides the parent)
// times processes per clone (cores); the allocator grants it against this host's cores and
// memory, possibly fewer clones than asked, never fewer than the minimum the caller accepts.
// Host figures are passed in (HostResources) so planning is unit-testable with fake hosts.
#pragma once

#include <cstdint>
#include <string>

#include "clone-core/result.hpp"

namespace sf {

struct HostResources {
  unsigned cores = 1;                     // CPUs this process may run on (sched_getaffinity)
  std::uint64_t memory_available = 0;     // bytes, MemAvailable from /proc/meminfo
};

HostResources probe_host_resources();

struct AllocationRequest {
  unsigned clones = 1;            // machines besides the parent
  unsigned procs_per_clone = 1;   // processes (cores) each machine runs, the parent included
  unsigned min_clones = 0;        // grant fewer than `clones` down to this; 0 means all-or-nothing
  // Sandbox clones share the host's cores: with oversubscribe (the default) cores do not
  // limit the grant; without it (clones + 1) * procs_per_clone must fit in the host's cores.
  bool oversubscribe = true;
  // Memory reserved per clone (page tables, namespaces, a private /tmp and /dev/shm);
  // the grant keeps clones * memory_per_clone within MemAvailable.
  std::uint64_t memory_per_clone = 16ull << 20;
  unsigned max_clones = 253;      // driver limit (addresses in a /24 for the sandbox)
};

struct Allocation {
  unsigned clones = 0;            // granted
  unsigned procs_per_clone = 1;
  std::string limited_by;         // "" if granted in full, else "cores", "memory", "addresses"
};

class LocalAllocator {
 public:
  explicit LocalAllocator(HostResources host) : host_(host) {}
  Result<Allocation> grant(const AllocationRequest& request) const;
  const HostResources& host() const { return host_; }

 private:
  HostResources host_;
};

}  // namespace sf
