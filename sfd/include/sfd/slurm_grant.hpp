// sfd: Slurm as the ticket allocator (`sfd run --allocator slurm`). A clone request's ticket
// becomes a grant of Slurm nodes, as SnowFlock's tickets were grants of its cluster's
// allocator: sfd asks `salloc --no-shell` for one node per clone, places each clone on its
// node through `srun --jobid J --overlap -N1 -n1 -w NODE` (the remote-member path), and
// cancels the allocation when the clones have ended, when sfd ends, and (a watchdog) when sfd
// is killed, even by SIGKILL, also while the request still waits in the queue.
// See docs/sfd.md, "Clones on Slurm nodes".
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sf-common/slurm.hpp"
#include "sfd/result.hpp"

namespace sf::sfd {

// What a grant asks Slurm for besides the node count (partition, account, time limit; the
// command line's options completed from SF_SLURM_*: sf::common::slurm::with_environment).
using SlurmOptions = sf::common::slurm::RequestOptions;

// salloc's arguments for `nodes` nodes, one task each, under the unique `job_name`.
std::vector<std::string> salloc_grant_argv(unsigned nodes, const SlurmOptions& options, const std::string& job_name);

// "salloc: Granted job allocation 42" -> "42" (salloc's stderr, any line); nullopt if absent.
std::optional<std::string> granted_job_id(const std::string& salloc_output);

// The agent (command prefix) that runs a command on `node` inside allocation `job_id`.
std::vector<std::string> srun_agent(const std::string& job_id, const std::string& node);

class SlurmGrant {
 public:
  // Starts salloc and the watchdog; the grant progresses as fd() becomes readable (step()).
  static Result<std::unique_ptr<SlurmGrant>> request(unsigned nodes, const SlurmOptions& options);
  ~SlurmGrant();  // release()
  SlurmGrant(const SlurmGrant&) = delete;
  SlurmGrant& operator=(const SlurmGrant&) = delete;

  // Readable when salloc printed something or ended; -1 once decided.
  int fd() const { return out_; }
  // Reads what salloc printed; once it ended, decides: granted (nodes()) or failed (failure()).
  // Returns true once decided.
  bool step();
  bool decided() const { return decided_; }
  bool granted() const { return decided_ && failure_.empty(); }
  const std::string& failure() const { return failure_; }
  const std::string& job_id() const { return job_id_; }
  const std::string& job_name() const { return job_name_; }
  const std::vector<std::string>& nodes() const { return nodes_; }
  unsigned asked() const { return asked_; }
  std::chrono::steady_clock::duration waited() const { return std::chrono::steady_clock::now() - started_; }
  // Cancels the allocation (or the request still in the queue); idempotent.
  void release();

 private:
  SlurmGrant() = default;
  void decide(int wait_status);

  unsigned asked_ = 0;
  std::string job_name_;
  pid_t salloc_ = -1;
  int out_ = -1;  // salloc's stdout and stderr
  std::optional<sf::common::slurm::Watchdog> watchdog_;  // cancels by job name when sfd dies
  std::string output_;
  std::size_t shown_ = 0;  // output_ up to here was passed on (whole lines)
  bool decided_ = false;
  bool released_ = false;
  std::string failure_;
  std::string job_id_;
  std::vector<std::string> nodes_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace sf::sfd
