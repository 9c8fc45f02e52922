// Test support: run a real command with a deadline and capture what it did, and find processes
// that a test left behind. Shared by the example tests and the mpirun-sf end-to-end tests.
//
// API in brief (namespace sf::test; link the static library target `sf_test_support`):
//
//   CommandResult run_command(argv, CommandOptions{})
//       Starts argv (argv[0] looked up in PATH unless it has a '/'), feeds options.stdin_data
//       (or /dev/null), captures stdout and stderr separately, waits for it to exit. After
//       options.timeout the whole process group is killed with SIGKILL and timed_out is set.
//       Never throws for a failing command: a command that cannot start gets start_error.
//
//   RunningCommand cmd(argv, options)     the same, step by step, for interactive tests:
//       cmd.pid(), cmd.wait_for_output("text", deadline) (stdout; wait_for_error_output for
//       stderr), cmd.stdout_so_far(), cmd.write_stdin(...) / cmd.close_stdin() (with
//       options.keep_stdin_open), cmd.send_signal(SIGTERM), cmd.wait(deadline) -> CommandResult.
//       The destructor kills (SIGKILL, whole group) and reaps a command that is still running,
//       so a failed ASSERT never leaves a process behind.
//
//   Leftover processes (read from /proc; the caller itself is never listed):
//       processes_named("hello")                     comm or basename(argv[0]) equals the name
//       processes_with_environment("SF_TEST_MARKER", marker)  environment contains NAME=value
//       wait_for_no_processes(query, deadline)       polls query() until empty or deadline;
//                                                    returns what is still there
//       unique_marker()                              a value unique to this call ("sft-...")
//       describe(processes)                          one line per process, for failure messages
//   Prefer the environment marker: other tests on this machine run programs with the same
//   names at the same time, while a marker put into CommandOptions::environment is inherited by
//   every descendant (launcher and ranks) and by nothing else.
//
//   build_path("examples/hello")  ->  "$SF_BUILD_DIR/examples/hello",
//   source_path("examples/mpi4py/allreduce.py") -> "$SF_SOURCE_DIR/..."; without the variable,
//   the build and source directories this library was configured with.
//
// Signals: writing to a child's stdin after it closed it yields EPIPE, not a SIGPIPE that
// would kill the test (SIGPIPE is blocked around the write and a pending one is consumed).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sf::test {

struct CommandOptions {
  // Deadline for run_command() (RunningCommand::wait() takes its own).
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  // "NAME=value" entries added to (and overriding) the environment.
  std::vector<std::string> environment;
  // Names removed from the inherited environment.
  std::vector<std::string> unset_environment;
  bool inherit_environment = true;
  // Empty: the caller's working directory.
  std::string working_directory;
  // nullopt and !keep_stdin_open: stdin is /dev/null. Otherwise stdin is a pipe; stdin_data is
  // written to it and it is closed afterwards unless keep_stdin_open.
  std::optional<std::string> stdin_data;
  bool keep_stdin_open = false;
  // The child leads its own process group, so a timeout kill reaches its descendants too.
  bool own_process_group = true;
  // After the command exited, how long to keep reading its stdout/stderr while a descendant
  // still holds them open (see CommandResult::output_held_open_after_exit).
  std::chrono::milliseconds drain_after_exit{std::chrono::seconds(2)};
};

struct CommandResult {
  std::string stdout_text;
  std::string stderr_text;
  int exit_code = -1;     // the exit status when it exited normally, otherwise -1
  int term_signal = 0;    // the signal that killed it, otherwise 0
  bool timed_out = false; // it was killed because the deadline passed
  // Its stdout or stderr was still open drain_after_exit after it exited: some descendant
  // (an orphaned rank, say) is still alive and holding them.
  bool output_held_open_after_exit = false;
  std::string start_error; // non-empty when the command could not be started

  bool exited_with(int code) const { return start_error.empty() && !timed_out && exit_code == code; }
  // Everything above in a few lines, for test failure messages.
  std::string describe() const;
};

class RunningCommand {
 public:
  RunningCommand(std::vector<std::string> argv, CommandOptions options = {});
  ~RunningCommand();
  RunningCommand(const RunningCommand&) = delete;
  RunningCommand& operator=(const RunningCommand&) = delete;

  bool started() const { return pid_ > 0; }
  const std::string& start_error() const { return result_.start_error; }
  pid_t pid() const { return pid_; }

  // Reads output until `text` appears in all stdout (stderr) captured so far, the command's
  // output ends, or the deadline passes. Returns whether the text appeared.
  bool wait_for_output(std::string_view text, std::chrono::milliseconds deadline);
  bool wait_for_error_output(std::string_view text, std::chrono::milliseconds deadline);
  const std::string& stdout_so_far() const { return result_.stdout_text; }
  const std::string& stderr_so_far() const { return result_.stderr_text; }

  // Only with a stdin pipe (stdin_data or keep_stdin_open). Queues data and writes what the
  // pipe takes now (the rest while waiting). Returns false once a write failed (EPIPE) or
  // when stdin is closed.
  bool write_stdin(std::string_view data);
  void close_stdin();

  // Signals the child itself (not its group). Returns false when it is already reaped.
  bool send_signal(int signal_number);

  // Waits for exit and end of output; past the deadline kills the group with SIGKILL and sets
  // timed_out. Idempotent: later calls return the same result.
  CommandResult wait(std::chrono::milliseconds deadline);

 private:
  enum class Stop { never, stdout_text, stderr_text };
  // One round of poll + read + reap; returns false when nothing more can happen.
  bool pump(std::chrono::milliseconds slice);
  bool pump_until(std::chrono::steady_clock::time_point deadline, Stop stop, std::string_view text);
  void kill_and_reap();
  void try_reap();

  CommandOptions options_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  bool finished_ = false;
  int stdin_fd_ = -1;
  bool stdin_failed_ = false;  // a write to stdin failed (EPIPE: nobody reads it any more)
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  std::string pending_stdin_;
  std::optional<std::chrono::steady_clock::time_point> exited_at_;
  CommandResult result_;
};

CommandResult run_command(const std::vector<std::string>& argv, const CommandOptions& options = {});

struct ProcessEntry {
  pid_t pid = 0;
  pid_t parent = 0;
  char state = '?';          // from /proc/PID/stat: R, S, D, Z, T, ...
  std::string name;          // /proc/PID/comm (at most 15 characters)
  std::string command_line;  // /proc/PID/cmdline, arguments joined with spaces
};

std::vector<ProcessEntry> processes_named(std::string_view name);
std::vector<ProcessEntry> processes_with_environment(std::string_view name, std::string_view value);
std::vector<ProcessEntry> wait_for_no_processes(const std::function<std::vector<ProcessEntry>()>& query,
                                                std::chrono::milliseconds deadline);
std::string unique_marker();
std::string describe(const std::vector<ProcessEntry>& processes);

std::string build_path(std::string_view relative);
std::string source_path(std::string_view relative);

}  // namespace sf::test
