// Test support: fork/exec/poll command runner and /proc process listing (see run_command.hpp).
// Hand-written rather than Boost.Process: the tests need process groups, a pipe kept open for
// interactive stdin, SIGPIPE-safe writes and "output still held open after exit" detection,
// which are a few lines each here and awkward to get from Boost.Process v1.
#include "run_command.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

extern char** environ;

namespace sf::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

void close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

std::string name_of(const std::string& entry) { return entry.substr(0, entry.find('=')); }

std::vector<std::string> child_environment(const CommandOptions& options) {
  std::vector<std::string> result;
  auto overridden = [&](const std::string& name) {
    for (const auto& unset : options.unset_environment)
      if (unset == name) return true;
    for (const auto& entry : options.environment)
      if (name_of(entry) == name) return true;
    return false;
  };
  if (options.inherit_environment)
    for (char** e = environ; e != nullptr && *e != nullptr; ++e)
      if (!overridden(name_of(*e))) result.emplace_back(*e);
  for (const auto& entry : options.environment) result.push_back(entry);
  return result;
}

// execvpe is not async-signal-safe, so the program is found before fork.
std::string resolve_program(const std::string& program, const std::vector<std::string>& env) {
  if (program.find('/') != std::string::npos) return program;
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& entry : env)
    if (entry.rfind("PATH=", 0) == 0) path = entry.substr(5);
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Reads what is available; closes fd at EOF or on error.
void drain(int& fd, std::string& into) {
  char buffer[65536];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      into.append(buffer, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    close_fd(fd);
    return;
  }
}

// What can be read of a /proc file; "" when it cannot be opened. Plain read(2): a process that
// exits while its file is read makes read fail with ESRCH, which std::ifstream turns into an
// exception (libstdc++'s filebuf::underflow), and a process that is gone is simply not there.
std::string read_file(const std::string& path) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

std::optional<ProcessEntry> read_process(pid_t pid) {
  const std::string base = "/proc/" + std::to_string(pid);
  std::string stat = read_file(base + "/stat");
  auto close_paren = stat.rfind(')');
  if (stat.empty() || close_paren == std::string::npos || close_paren + 4 > stat.size())
    return std::nullopt;  // gone meanwhile
  ProcessEntry entry;
  entry.pid = pid;
  entry.state = stat[close_paren + 2];
  entry.parent = static_cast<pid_t>(std::atoi(stat.c_str() + close_paren + 4));
  auto open_paren = stat.find('(');
  entry.name = stat.substr(open_paren + 1, close_paren - open_paren - 1);
  std::string cmdline = read_file(base + "/cmdline");
  while (!cmdline.empty() && cmdline.back() == '\0') cmdline.pop_back();
  for (char& c : cmdline)
    if (c == '\0') c = ' ';
  entry.command_line = cmdline;
  return entry;
}

std::vector<ProcessEntry> processes_matching(const std::function<bool(pid_t, const ProcessEntry&)>& keep) {
  std::vector<ProcessEntry> result;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return result;
  const pid_t self = ::getpid();
  while (dirent* d = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(d->d_name, &end, 10);
    if (end == d->d_name || *end != '\0' || pid == self) continue;
    auto entry = read_process(static_cast<pid_t>(pid));
    if (entry && keep(entry->pid, *entry)) result.push_back(*entry);
  }
  ::closedir(proc);
  return result;
}

}  // namespace

std::string CommandResult::describe() const {
  std::ostringstream out;
  if (!start_error.empty()) {
    out << "could not start: " << start_error << "\n";
    return out.str();
  }
  out << "exit_code=" << exit_code << " term_signal=" << term_signal
      << " timed_out=" << (timed_out ? "yes" : "no")
      << " output_held_open_after_exit=" << (output_held_open_after_exit ? "yes" : "no") << "\n"
      << "--- stdout ---\n" << stdout_text << "\n--- stderr ---\n" << stderr_text << "\n--- end ---";
  return out.str();
}

RunningCommand::RunningCommand(std::vector<std::string> argv, CommandOptions options)
    : options_(std::move(options)) {
  finished_ = true;  // until the child really runs
  if (argv.empty()) {
    result_.start_error = "empty command line";
    return;
  }
  const std::vector<std::string> env = child_environment(options_);
  const std::string program = resolve_program(argv[0], env);
  if (program.empty()) {
    result_.start_error = argv[0] + ": not found in PATH";
    return;
  }
  // Everything the child needs is built before fork: after fork only async-signal-safe calls.
  std::vector<char*> child_argv;
  for (auto& a : argv) child_argv.push_back(a.data());
  child_argv.push_back(nullptr);
  std::vector<std::string> env_storage = env;
  std::vector<char*> child_envp;
  for (auto& e : env_storage) child_envp.push_back(e.data());
  child_envp.push_back(nullptr);
  const char* cwd = options_.working_directory.empty() ? nullptr : options_.working_directory.c_str();
  const bool stdin_pipe = options_.stdin_data.has_value() || options_.keep_stdin_open;

  int in_pipe[2] = {-1, -1}, out_pipe[2] = {-1, -1}, err_pipe[2] = {-1, -1}, exec_pipe[2] = {-1, -1};
  auto fail = [&](const char* what) {
    result_.start_error = std::string(what) + ": " + std::strerror(errno);
    for (int* p : {in_pipe, out_pipe, err_pipe, exec_pipe}) {
      close_fd(p[0]);
      close_fd(p[1]);
    }
  };
  if ((stdin_pipe ? ::pipe2(in_pipe, O_CLOEXEC) : 0) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0 ||
      ::pipe2(err_pipe, O_CLOEXEC) != 0 || ::pipe2(exec_pipe, O_CLOEXEC) != 0)
    {
    fail("pipe2");
    return;
  }
  if (!stdin_pipe) {
    in_pipe[0] = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in_pipe[0] < 0) {
      fail("open /dev/null");
      return;
    }
  }

  const bool own_group = options_.own_process_group;
  pid_t pid = ::fork();
  if (pid < 0) {
    fail("fork");
    return;
  }
  if (pid == 0) {
    if (own_group) ::setpgid(0, 0);
    // The test may block or ignore signals; the command must start with the defaults.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    int err = 0;
    if (::dup2(in_pipe[0], 0) < 0 || ::dup2(out_pipe[1], 1) < 0 || ::dup2(err_pipe[1], 2) < 0)
      err = errno;
    if (err == 0 && cwd != nullptr && ::chdir(cwd) != 0) err = errno;
    if (err == 0) {
      ::execve(program.c_str(), child_argv.data(), child_envp.data());
      err = errno;
    }
    ssize_t ignored = ::write(exec_pipe[1], &err, sizeof err);
    (void)ignored;
    ::_exit(127);
  }
  // Also from the parent, so the group exists before we might signal it (no race with exec).
  if (own_group) ::setpgid(pid, pid);
  pid_ = pid;
  close_fd(in_pipe[0]);
  close_fd(out_pipe[1]);
  close_fd(err_pipe[1]);
  close_fd(exec_pipe[1]);
  int exec_errno = 0;
  ssize_t n;
  do n = ::read(exec_pipe[0], &exec_errno, sizeof exec_errno);
  while (n < 0 && errno == EINTR);
  close_fd(exec_pipe[0]);
  if (n == static_cast<ssize_t>(sizeof exec_errno)) {
    result_.start_error = program + ": cannot execute (or chdir to '" + options_.working_directory +
                          "'): " + std::strerror(exec_errno);
    close_fd(in_pipe[1]);
    close_fd(out_pipe[0]);
    close_fd(err_pipe[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    pid_ = -1;
    return;
  }
  finished_ = false;
  stdin_fd_ = in_pipe[1];
  stdout_fd_ = out_pipe[0];
  stderr_fd_ = err_pipe[0];
  set_nonblocking(stdout_fd_);
  set_nonblocking(stderr_fd_);
  if (stdin_fd_ >= 0) {
    set_nonblocking(stdin_fd_);
    if (options_.stdin_data) pending_stdin_ = *options_.stdin_data;
    if (pending_stdin_.empty() && !options_.keep_stdin_open) close_fd(stdin_fd_);
  }
}

RunningCommand::~RunningCommand() {
  if (!finished_) kill_and_reap();
  close_fd(stdin_fd_);
  close_fd(stdout_fd_);
  close_fd(stderr_fd_);
}

bool RunningCommand::write_stdin(std::string_view data) {
  if (stdin_fd_ < 0) return false;
  pending_stdin_.append(data);
  pump(milliseconds(0));
  return !stdin_failed_;
}

void RunningCommand::close_stdin() {
  options_.keep_stdin_open = false;
  if (pending_stdin_.empty()) close_fd(stdin_fd_);
}

bool RunningCommand::send_signal(int signal_number) {
  if (pid_ <= 0 || reaped_) return false;
  return ::kill(pid_, signal_number) == 0;
}

void RunningCommand::try_reap() {
  if (pid_ <= 0 || reaped_) return;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    exited_at_ = Clock::now();
    if (WIFEXITED(status)) result_.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result_.term_signal = WTERMSIG(status);
  }
}

bool RunningCommand::pump(milliseconds slice) {
  // Write pending stdin with SIGPIPE blocked: a closed reader gives EPIPE, and a SIGPIPE left
  // pending for this thread is consumed unless one was already pending before.
  if (stdin_fd_ >= 0 && !pending_stdin_.empty()) {
    sigset_t pipe_set, old_set, pending;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    sigpending(&pending);
    const bool was_pending = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    ssize_t n = ::write(stdin_fd_, pending_stdin_.data(), pending_stdin_.size());
    const int write_errno = errno;
    if (n < 0 && write_errno == EPIPE && !was_pending) {
      const timespec zero{0, 0};
      while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
    if (n > 0) pending_stdin_.erase(0, static_cast<size_t>(n));
    if (n < 0 && write_errno != EAGAIN && write_errno != EINTR) {
      stdin_failed_ = true;
      pending_stdin_.clear();
      close_fd(stdin_fd_);
    } else if (pending_stdin_.empty() && !options_.keep_stdin_open) {
      close_fd(stdin_fd_);
    }
  }

  pollfd fds[3];
  nfds_t count = 0;
  if (stdout_fd_ >= 0) fds[count++] = {stdout_fd_, POLLIN, 0};
  if (stderr_fd_ >= 0) fds[count++] = {stderr_fd_, POLLIN, 0};
  if (stdin_fd_ >= 0 && !pending_stdin_.empty()) fds[count++] = {stdin_fd_, POLLOUT, 0};
  // The child's exit is not a poll event, so wake up at least every 10 ms to reap it.
  const int wait_ms = static_cast<int>(std::min<long long>(slice.count(), 10));
  if (count > 0)
    ::poll(fds, count, wait_ms);
  else if (wait_ms > 0)
    std::this_thread::sleep_for(milliseconds(wait_ms));
  if (stdout_fd_ >= 0) drain(stdout_fd_, result_.stdout_text);
  if (stderr_fd_ >= 0) drain(stderr_fd_, result_.stderr_text);
  try_reap();

  if (reaped_ && stdout_fd_ < 0 && stderr_fd_ < 0) return false;
  if (reaped_ && Clock::now() - *exited_at_ >= options_.drain_after_exit) {
    result_.output_held_open_after_exit = true;
    close_fd(stdout_fd_);
    close_fd(stderr_fd_);
    return false;
  }
  return true;
}

bool RunningCommand::pump_until(Clock::time_point deadline, Stop stop, std::string_view text) {
  auto found = [&] {
    if (stop == Stop::stdout_text) return result_.stdout_text.find(text) != std::string::npos;
    if (stop == Stop::stderr_text) return result_.stderr_text.find(text) != std::string::npos;
    return false;
  };
  while (!found()) {
    const auto now = Clock::now();
    if (now >= deadline) return false;
    if (finished_ || !pump(std::chrono::duration_cast<milliseconds>(deadline - now))) {
      finished_ = finished_ || reaped_;
      return found();
    }
  }
  return true;
}

bool RunningCommand::wait_for_output(std::string_view text, milliseconds deadline) {
  return pump_until(Clock::now() + deadline, Stop::stdout_text, text);
}

bool RunningCommand::wait_for_error_output(std::string_view text, milliseconds deadline) {
  return pump_until(Clock::now() + deadline, Stop::stderr_text, text);
}

void RunningCommand::kill_and_reap() {
  if (pid_ > 0 && !reaped_) {
    ::kill(options_.own_process_group ? -pid_ : pid_, SIGKILL);
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
    if (WIFEXITED(status)) result_.exit_code = WEXITSTATUS(status);
    if (WIFSIGNALED(status)) result_.term_signal = WTERMSIG(status);
  }
  finished_ = true;
}

CommandResult RunningCommand::wait(milliseconds deadline) {
  if (finished_) return result_;
  pump_until(Clock::now() + deadline, Stop::never, {});
  if (!reaped_) {
    result_.timed_out = true;
    kill_and_reap();
    // Collect what the killed group had written; the pipes close once all of it is gone.
    const auto drain_deadline = Clock::now() + milliseconds(500);
    while ((stdout_fd_ >= 0 || stderr_fd_ >= 0) && Clock::now() < drain_deadline) {
      pollfd fds[2];
      nfds_t count = 0;
      if (stdout_fd_ >= 0) fds[count++] = {stdout_fd_, POLLIN, 0};
      if (stderr_fd_ >= 0) fds[count++] = {stderr_fd_, POLLIN, 0};
      ::poll(fds, count, 10);
      if (stdout_fd_ >= 0) drain(stdout_fd_, result_.stdout_text);
      if (stderr_fd_ >= 0) drain(stderr_fd_, result_.stderr_text);
    }
  }
  finished_ = true;
  close_fd(stdin_fd_);
  close_fd(stdout_fd_);
  close_fd(stderr_fd_);
  return result_;
}

CommandResult run_command(const std::vector<std::string>& argv, const CommandOptions& options) {
  RunningCommand command(argv, options);
  if (!command.started()) {
    CommandResult result;
    result.start_error = command.start_error();
    return result;
  }
  return command.wait(options.timeout);
}

std::vector<ProcessEntry> processes_named(std::string_view name) {
  return processes_matching([&](pid_t, const ProcessEntry& e) {
    std::string argv0 = e.command_line.substr(0, e.command_line.find(' '));
    std::string base = argv0.substr(argv0.rfind('/') + 1);
    return e.name == name || base == name;
  });
}

std::vector<ProcessEntry> processes_with_environment(std::string_view name, std::string_view value) {
  std::string wanted = std::string(name) + "=" + std::string(value);
  return processes_matching([&](pid_t pid, const ProcessEntry&) {
    std::string environment = read_file("/proc/" + std::to_string(pid) + "/environ");
    size_t start = 0;
    while (start < environment.size()) {
      size_t end = environment.find('\0', start);
      if (end == std::string::npos) end = environment.size();
      if (environment.compare(start, end - start, wanted) == 0) return true;
      start = end + 1;
    }
    return false;
  });
}

std::vector<ProcessEntry> wait_for_no_processes(const std::function<std::vector<ProcessEntry>()>& query,
                                                milliseconds deadline) {
  const auto until = Clock::now() + deadline;
  for (;;) {
    auto remaining = query();
    if (remaining.empty() || Clock::now() >= until) return remaining;
    std::this_thread::sleep_for(milliseconds(20));
  }
}

std::string unique_marker() {
  static std::atomic<unsigned> counter{0};
  const auto now = std::chrono::system_clock::now().time_since_epoch().count();
  return "sft-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
         std::to_string(now);
}

std::string describe(const std::vector<ProcessEntry>& processes) {
  std::ostringstream out;
  for (const auto& p : processes)
    out << "pid " << p.pid << " ppid " << p.parent << " state " << p.state << " [" << p.name
        << "] " << p.command_line << "\n";
  return out.str();
}

static std::string under(const char* variable, const char* fallback, std::string_view relative) {
  const char* base = std::getenv(variable);
  return std::string(base != nullptr && *base != '\0' ? base : fallback) + "/" + std::string(relative);
}

std::string build_path(std::string_view relative) {
  return under("SF_BUILD_DIR", SF_DEFAULT_BUILD_DIR, relative);
}
std::string source_path(std::string_view relative) {
  return under("SF_SOURCE_DIR", SF_DEFAULT_SOURCE_DIR, relative);
}

}  // namespace sf::test
