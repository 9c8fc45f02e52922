// Exit status and closing message of a job; see the header for the rules.
#include "mpirun-sf/exit_status.hpp"

#include <cstring>

namespace sf::mpirun {
namespace {
const std::string kRule(74, '-');

std::string box(const std::string& body) { return kRule + "\n" + body + kRule + "\n"; }
}  // namespace

void JobOutcome::launch_failed(int rank, int code, const std::string& reason,
                               const std::string& host) {
  if (!launch_failure_) launch_failure_ = LaunchFailure{rank, code, reason, host};
}

void JobOutcome::aborted(int rank, int status) {
  if (!abort_) abort_ = std::make_pair(rank, status);
}

void JobOutcome::rank_ended(int rank, const RankEnd& end) {
  bool failure = end.signaled || end.code != 0;
  if (!failure) return;
  if (tearing_down_ || end.during_teardown) return;
  failures_.emplace(rank, end);
}

void JobOutcome::timed_out(int seconds) {
  if (!timeout_ && !tearing_down_) timeout_ = seconds;
}

void JobOutcome::interrupted(int signal) {
  if (!interrupt_) interrupt_ = signal;
}

bool JobOutcome::failed() const {
  return launch_failure_ || abort_ || timeout_ || interrupt_ || !failures_.empty();
}

int JobOutcome::exit_code() const {
  if (launch_failure_) return launch_failure_->code;
  if (abort_) return abort_->second;
  if (timeout_) return kExitTimeout;
  if (!failures_.empty()) {
    const RankEnd& e = failures_.begin()->second;  // lowest failing rank
    return e.signaled ? 128 + e.signal : e.code;
  }
  if (interrupt_) return 1;
  return 0;
}

std::string JobOutcome::closing_message(const std::string& jobid) const {
  if (launch_failure_) return "";  // reported on one line when it happened
  if (abort_) return "";           // the aborting rank prints Open MPI's MPI_ABORT message
  if (timeout_)
    return box("The user-provided time limit for job execution has been reached:\n\n"
               "  Timeout: " + std::to_string(*timeout_) + " seconds\n\n"
               "The job will now be aborted.  Please check your code and/or\n"
               "adjust/remove the job execution time limit (as specified by --timeout\n"
               "command line option or MPIEXEC_TIMEOUT environment variable).\n");
  if (!failures_.empty()) {
    auto [rank, e] = *failures_.begin();
    std::string head = box("Primary job  terminated normally, but 1 process returned\n"
                           "a non-zero exit code. Per user-direction, the job has been aborted.\n");
    if (e.signaled) {
      const char* name = strsignal(e.signal);
      return head + box("mpirun-sf noticed that process rank " + std::to_string(rank) +
                        " with PID " + std::to_string(e.pid) + " on node " + e.host +
                        " exited on signal " + std::to_string(e.signal) + " (" +
                        (name ? name : "unknown signal") + ").\n");
    }
    return head + box("mpirun-sf detected that one or more processes exited with non-zero "
                      "status, thus causing\nthe job to be terminated. The first process to "
                      "do so was:\n\n  Process name: [" + jobid + "," + std::to_string(rank) +
                      "]\n  Exit code:    " + std::to_string(e.code) + "\n");
  }
  return "";
}

}  // namespace sf::mpirun
