// sf-common: what mpirun-sf and sfd both do with Slurm's own tools: the options of an
// allocation request, host list expansion, and the watchdog that cancels a request or
// allocation whose owner died. Slurm's tools do the work (salloc, scontrol, scancel); this is
// how they are called, in one place.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "sf-common/result.hpp"

namespace sf::common::slurm {

enum class Errc {
  general,
};
using Error = sf::common::Error<Errc>;
template <typename T>
using Result = sf::common::Result<T, Error>;

// What a request for an allocation asks Slurm for besides its shape; empty: Slurm's default.
struct RequestOptions {
  std::string partition;   // --partition, or SF_SLURM_PARTITION
  std::string account;     // --account, or SF_SLURM_ACCOUNT
  std::string time_limit;  // --time-limit, or SF_SLURM_TIME_LIMIT (Slurm's syntax: 30, 1:00:00)
};

// The options given on a command line, each empty one taken from its SF_SLURM_* variable
// (unset or empty variables are ignored): the options win.
RequestOptions with_environment(RequestOptions given,
                                const std::function<const char*(const char*)>& getenv);

// salloc's flags for them: --partition=P, --account=A, --time=T (only those given).
std::vector<std::string> request_flags(const RequestOptions& options);

// Runs a Slurm tool (argv[0] looked up in PATH) with stdin from /dev/null and waits for it:
// its stdout, or an error with what it printed on stderr (or why it could not start).
Result<std::string> run_tool(const std::vector<std::string>& argv);

// Starts a Slurm tool (salloc, say) with stdin from /dev/null and its stdout and stderr into
// `output`, for the caller to read and reap (wait_for). Returns its pid.
Result<pid_t> spawn_tool(const std::vector<std::string>& argv, int output);

// waitpid() through EINTR: the wait status, or -1.
int wait_for(pid_t pid);

// The host names of a Slurm host list ("node[1-3,7]"), by `scontrol show hostnames`.
Result<std::vector<std::string>> expand_hostlist(const std::string& hostlist);

// A process in a session of its own that outlives its owner: when the owner's end of its
// lifeline closes, by close() or by the owner's death (even SIGKILL), it cancels every job
// of the owner's user named `job_name` (scancel --name --user: the request still in the
// queue or the allocation granted since) and sends SIGTERM to the job's process, if the
// owner named one. disarm() first: it cancels nothing. A /bin/sh started with posix_spawn,
// so a multi-threaded owner may start one.
class Watchdog {
 public:
  // The lifeline is close-on-exec: no child of the owner holds it open.
  static Result<Watchdog> start(const std::string& job_name);
  Watchdog(Watchdog&& other) noexcept;
  Watchdog& operator=(Watchdog&& other) noexcept;
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  ~Watchdog();  // finish()

  // The process that runs the job (SIGTERM when the owner dies).
  void name_job_process(pid_t pid);
  // The allocation ended by itself: cancel nothing.
  void disarm();
  // Closes the lifeline and waits for the watchdog to have done its work. Idempotent.
  void finish();

 private:
  Watchdog(pid_t pid, int lifeline) : pid_(pid), lifeline_(lifeline) {}
  void say(const std::string& line);
  pid_t pid_ = -1;
  int lifeline_ = -1;
};

}  // namespace sf::common::slurm
