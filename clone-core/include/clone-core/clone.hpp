// clone-core: the SnowFlock clone API in C++ (the C API sf.h is built on it).
//
//   auto ticket = sf::Ticket::request({.clones = 3});   // allocate; may grant fewer
//   auto id = ticket->clone();                           // fork: 0 in the parent, 1..3 in clones
//   if (*id > 0) { work(*id); ticket->sync(0); }         // a clone reports and ends
//   auto statuses = ticket->join();                      // parent: wait, reap, remove all
//
// A Ticket owns the whole cluster: if the parent drops it without join(), the destructor
// kills the clones and removes bridge, veths and locks. If the parent process dies, the
// clones die too (their PID-namespace init has PR_SET_PDEATHSIG=SIGKILL), and the next
// request, or cleanup_stale_clusters(), removes what the crashed run left.
//
// clone() MUST be called while the process is single-threaded: fork() copies only the
// calling thread. It refuses (Errc::not_single_threaded) when /proc/self/task has more than
// one entry. The parent must not reap children it does not know (wait(), waitpid(-1)) while
// a ticket is live: the clones' init processes are its children.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "clone-core/allocator.hpp"
#include "clone-core/cluster_layout.hpp"
#include "clone-core/driver.hpp"
#include "clone-core/result.hpp"

namespace sf {

struct TicketRequest {
  unsigned clones = 1;            // machines besides the parent
  unsigned procs_per_clone = 1;   // processes (cores) per machine
  unsigned min_clones = 0;        // accept a grant down to this many; 0 = all or nothing
  std::string driver = "auto";    // "sandbox" | "auto" | "fake"
  std::string subnet_pool = kDefaultSubnetPool;  // carved into one /24 per cluster
  TmpMode tmp_mode = TmpMode::overlay;
  bool oversubscribe = true;      // see AllocationRequest
  std::uint64_t memory_per_clone = 16ull << 20;
  CloneNetwork network = CloneNetwork::cluster;  // shared: sandbox driver only (driver.hpp)
  std::string parent_hostname = {};  // the clones' hostnames derive from it; empty: gethostname()
};

class Ticket {
 public:
  // Ask the allocator and the driver; on success the cluster's subnet slot is locked and
  // node 0's address is up on the bridge (sandbox), so the parent can bind to it.
  // Stale clusters of crashed runs are cleaned first (see cleanup_stale_clusters()).
  static Result<Ticket> request(const TicketRequest& request);
  // The same with a given driver (unit tests inject a FakeDriver).
  static Result<Ticket> request(const TicketRequest& request, std::unique_ptr<Driver> driver,
                                const HostResources& host);

  Ticket(Ticket&&) noexcept;
  Ticket& operator=(Ticket&&) noexcept;
  Ticket(const Ticket&) = delete;
  Ticket& operator=(const Ticket&) = delete;
  ~Ticket();  // parent: kill() if clones are still up; clone: nothing

  unsigned granted() const;           // clones granted (nodes are 0..granted)
  unsigned requested() const;
  unsigned procs_per_clone() const;
  std::string_view driver_name() const;

  // Fork semantics: 0 in the parent (after every clone is running), i in clone i.
  Result<unsigned> clone();
  unsigned id() const { return id_; }  // 0 in the parent (also before clone()), i in clone i
  bool is_clone() const { return id_ != 0; }

  // The cluster network, identical on every node.
  const ClusterLayout& layout() const;
  const NodeInfo& node(unsigned id) const;          // 0..granted(); throws std::out_of_range
  std::string subnet_cidr() const;                  // e.g. "10.213.0.0/24"; empty: shared network
  const std::string& interface_name() const;        // this node's: sfbr<k> or sf0; empty: shared

  // Clone side: report `status` and end this clone (flushes stdio, then _exit). Returns an
  // error only if called in the parent.
  Status sync(int status);
  // Parent side: wait for every clone; statuses[i - 1] is clone i's. Tears everything down.
  Result<std::vector<CloneStatus>> join();
  // Parent side: end every clone now and tear everything down. Idempotent.
  Status kill();
  // Parent side: a pollable fd, readable when a clone may have ended; then poll_exited()
  // returns (once each) the clones that ended. Lets a caller stop the job when one crashes.
  int exit_fd() const;
  std::vector<CloneStatus> poll_exited();

 private:
  Ticket() = default;
  std::unique_ptr<Driver> driver_;
  std::unique_ptr<ClusterInstance> instance_;
  unsigned requested_ = 0, procs_per_clone_ = 1, id_ = 0;
  bool cloned_ = false, finished_ = false;
};

// In a clone: report `status` to the parent and end the clone, whichever Ticket cloned it.
// Returns Errc::wrong_side if this process is not a clone.
Status sync(int status);
// 0 in a parent or an unrelated process, i in clone i.
unsigned current_clone_id();

// What cleanup found and removed.
struct CleanupReport {
  unsigned clusters = 0;          // stale clusters cleaned
  unsigned links = 0;             // bridges and veths removed
  unsigned processes = 0;         // leftover clone inits killed
  std::vector<std::string> notes; // one line per removed thing or per failure
};
// Remove what crashed runs left: for every slot whose lock is free, its state file, bridge,
// veths and leftover clone processes. Live clusters (lock held) are not touched. Only the
// caller's own run_dir() is looked at, and host links only by a caller that administers the
// host network (an ordinary user's links die with its own network namespace). This is what
// `mpirun-sf --cleanup` runs; Ticket::request() runs it too.
Result<CleanupReport> cleanup_stale_clusters();

// Where the sandbox driver keeps its locks and state files: /run/snowflock for root; for
// anyone else $XDG_RUNTIME_DIR/snowflock when XDG_RUNTIME_DIR is the caller's own directory,
// else /tmp/snowflock-<uid>. Always a 0700 directory of the caller's own: one user's
// clusters are invisible to, and cannot be cleaned by, another.
std::string run_dir();

}  // namespace sf
