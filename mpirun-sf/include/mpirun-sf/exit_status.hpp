// The rules by which a job's outcome becomes mpirun's exit status and closing message.
//   0 when every rank exits 0; the MPI_Abort error code after an abort; after a failure, that
//   of the lowest rank that failed before the job was being torn down: its exit code, or
//   128+N for signal N; 110 (ETIMEDOUT) for --timeout; 1 after SIGINT/SIGTERM to mpirun-sf;
//   Open MPI's 132 / 135 when a program cannot be executed / its working directory entered.
#pragma once

#include <map>
#include <optional>
#include <string>

namespace sf::mpirun {

class JobOutcome {
 public:
  struct RankEnd {
    bool signaled = false;
    int code = 0;
    int signal = 0;
    long pid = 0;
    std::string host;
    bool during_teardown = false;
  };

  void launch_failed(int rank, int code, const std::string& reason, const std::string& host);
  void aborted(int rank, int status);
  void rank_ended(int rank, const RankEnd& end);
  void timed_out(int seconds);
  void interrupted(int signal);
  // Teardown began (ranks are being killed): later failures are consequences, not causes.
  void teardown_started() { tearing_down_ = true; }
  bool tearing_down() const { return tearing_down_; }

  // True once something happened that ends the whole job.
  bool failed() const;
  int exit_code() const;
  // The message mpirun-sf prints at the end (empty if none), in Open MPI's style.
  std::string closing_message(const std::string& jobid) const;

 private:
  struct LaunchFailure { int rank; int code; std::string reason; std::string host; };
  std::optional<LaunchFailure> launch_failure_;
  std::optional<std::pair<int, int>> abort_;  // rank, status
  std::optional<int> timeout_;
  std::optional<int> interrupt_;
  std::map<int, RankEnd> failures_;  // rank -> how it failed, before teardown
  bool tearing_down_ = false;
};

inline constexpr int kExitTimeout = 110;
inline constexpr int kExitCannotExecute = 132;
inline constexpr int kExitBadWdir = 135;

}  // namespace sf::mpirun
