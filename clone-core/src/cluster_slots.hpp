// clone-core (sandbox driver): named, locked host resources of a cluster. Slot k of the
// subnet pool is owned by whoever holds flock(LOCK_EX) on /run/snowflock/cluster-<k>.lock;
// its bridge is sfbr<k>, its veths sfv<k>_<i> (netdev group kLinkGroupBase + k), and its
// state file /run/snowflock/cluster-<k>.json (docs/formats/cluster-state.md) names the clone
// init processes. A slot whose lock is free but whose links or state file exist was left by
// a crashed run and is cleaned before reuse. The kernel drops the lock when the owner dies.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "clone-core/clone.hpp"
#include "clone-core/result.hpp"
#include "clone-core/netlink_links.hpp"

namespace sf::slots {

std::string lock_path(unsigned slot);
std::string state_path(unsigned slot);
std::string scratch_dir();  // an empty directory a clone mounts its private tmpfs on
Status ensure_run_dir();
// "<prefix><k>..." -> k (digits right after the prefix); false if not one of ours.
bool parse_slot_suffix(const std::string& name, const std::string& prefix, unsigned& slot);

class SlotLock {
 public:
  SlotLock() = default;
  SlotLock(unsigned slot, int fd) : slot_(slot), fd_(fd) {}
  SlotLock(SlotLock&& o) noexcept : slot_(o.slot_), fd_(o.fd_) { o.fd_ = -1; }
  SlotLock& operator=(SlotLock&& o) noexcept;
  ~SlotLock();
  unsigned slot() const { return slot_; }
  bool held() const { return fd_ >= 0; }
  void unlock();
  // After fork, in the child: close our copy so a surviving child cannot keep the slot locked.
  void forget_in_child();

 private:
  unsigned slot_ = 0;
  int fd_ = -1;
};

// Locks the first free slot of [0, count), cleaning a stale one before taking it.
Result<SlotLock> acquire(unsigned count, netlink::Socket& host);
// Tries to lock `slot` without waiting; nullopt if a live cluster holds it.
std::optional<SlotLock> try_lock(unsigned slot);

struct InitProcess {
  unsigned id = 0;
  pid_t pid = 0;
  unsigned long long start_time = 0;  // /proc/<pid>/stat field 22, guards against pid reuse
};
struct ClusterState {
  unsigned slot = 0;
  std::string subnet;
  std::string bridge;
  pid_t parent_pid = 0;
  std::vector<InitProcess> inits;
};

unsigned long long process_start_time(pid_t pid);  // 0 if the process is gone
Status write_state(const ClusterState& state);
Result<ClusterState> read_state(const std::string& path);
std::string format_state(const ClusterState& state);  // the JSON text, checksum included

// Removes a slot's leftovers; the caller holds the slot's lock. Its links too, through `host`,
// unless that is null (a caller that does not administer the host network leaves them alone).
void clean_slot(unsigned slot, netlink::Socket* host, CleanupReport& report);

}  // namespace sf::slots
