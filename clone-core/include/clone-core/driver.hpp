// clone-core: the driver interface. A driver knows what a "machine" is and how to clone it
// (sandbox: a process tree in fresh namespaces; qemu: the guest side inside an `sfd` VM). It is picked at run time
// by name or by probe() ("auto"), like Cloud Hypervisor's hypervisor trait. A driver
// prepares a ClusterInstance for a granted ticket; the instance forks the clones (fork
// semantics), collects their statuses and tears everything down.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "clone-core/cluster_layout.hpp"
#include "clone-core/result.hpp"

namespace sf {

// What a clone's /tmp is. overlay: a copy-on-write overlay of the parent's /tmp (files the
// parent had are there, writes stay private); empty: a fresh empty tmpfs.
enum class TmpMode { overlay, empty };

// The clones' network. cluster: a private cluster network of their own (the sandbox driver's
// bridge with one address per clone, the VM drivers' private bridge). shared: the clones keep
// the parent's network namespace, its interfaces and addresses, and only get their own PID,
// UTS (hostname) and mount namespaces: for clones of a machine that already sits on a cluster
// network, such as a node of a Slurm allocation, whose clones must reach the other nodes.
// Sandbox driver only.
enum class CloneNetwork { cluster, shared };

struct ClusterSpec {
  unsigned clones = 0;            // granted clones
  unsigned procs_per_clone = 1;
  std::string subnet_pool = kDefaultSubnetPool;
  std::string parent_hostname;
  TmpMode tmp_mode = TmpMode::overlay;
  CloneNetwork network = CloneNetwork::cluster;
  // How long clone() waits for every clone to report it is running before giving up.
  int start_timeout_ms = 30000;
};

// How a clone ended, as the parent learns it.
enum class CloneEnd {
  synced,        // the clone called sync(value)
  exited,        // the clone's process exited with code `value` without sync
  signaled,      // the clone's process died of signal `value` (a crash) without sync
  killed,        // torn down by kill() (value = SIGKILL) or by the destructor
  lost,          // vanished without any report (its init was killed from outside)
};
const char* clone_end_name(CloneEnd end) noexcept;

struct CloneStatus {
  unsigned id = 0;
  CloneEnd end = CloneEnd::lost;
  int value = 0;
  bool success() const { return (end == CloneEnd::synced || end == CloneEnd::exited) && value == 0; }
};

struct Probe {
  bool available = false;
  std::string reason;  // why not (what is missing, what to do), or a short description
};

class ClusterInstance {
 public:
  virtual ~ClusterInstance() = default;  // tears down whatever is still up (parent side)

  virtual const ClusterLayout& layout() const = 0;
  // Fork semantics: returns 0 in the parent once every clone is running, 1..clones in each
  // clone. Must be called by a single-threaded process.
  virtual Result<unsigned> clone() = 0;
  // Clone side: report `status` to the parent and end this clone. Returns only on error.
  virtual Status sync(int status) = 0;
  // Parent side: wait for every clone, reap, remove everything; statuses indexed by id - 1.
  virtual Result<std::vector<CloneStatus>> join() = 0;
  // Parent side: end every clone now and remove everything. Idempotent.
  virtual Status kill() = 0;
  // Parent side: readable (poll/epoll) when a clone may have ended; -1 before clone().
  virtual int exit_fd() const = 0;
  // Parent side, non-blocking: clones that ended since the last call (each reported once).
  virtual std::vector<CloneStatus> poll_exited() = 0;
};

class Driver {
 public:
  virtual ~Driver() = default;
  virtual std::string_view name() const = 0;
  virtual Probe probe() const = 0;
  // Reserve what the cluster needs before cloning (sandbox: a locked subnet slot, the
  // bridge with the parent's address, so node 0's address is usable at once).
  virtual Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) = 0;
  // Largest cluster this driver can build.
  virtual unsigned max_clones() const = 0;
  // Whether the clones run on this machine's cores and memory (sandbox), so that the local
  // allocator limits them; a VM driver's clones are new VMs, which the host grants or refuses.
  virtual bool clones_share_this_machine() const { return true; }
};

// "sandbox", "qemu", "fake", or "auto" (qemu inside a SnowFlock VM, where its sf.ctl port
// exists, else sandbox, whichever probes ok first). The fake driver forks nothing (see
// fake_driver.hpp); it is registered for tests and planning dry runs.
Result<std::unique_ptr<Driver>> make_driver(const std::string& name);

}  // namespace sf
