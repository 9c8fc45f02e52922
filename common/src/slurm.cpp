// sf-common's Slurm helpers; see sf-common/slurm.hpp.
#include "sf-common/slurm.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <utility>

extern char** environ;

namespace sf::common::slurm {
namespace {

Error error(std::string message) { return Error{Errc::general, std::move(message)}; }

// Starts argv with stdin from `in` (or /dev/null), stdout into `out` and stderr into `err`
// (each or /dev/null), default signal dispositions and an empty signal mask (callers such as
// sfd block the signals they read by signalfd); `new_session`: in a session of its own, out of
// reach of the terminal's signals. Returns the pid or posix_spawn's error number (negated).
pid_t spawn(const std::vector<std::string>& argv, int in, int out, int err, bool new_session) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (in >= 0) posix_spawn_file_actions_adddup2(&fa, in, 0);
  else posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (out >= 0) posix_spawn_file_actions_adddup2(&fa, out, 1);
  else posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  if (err >= 0) posix_spawn_file_actions_adddup2(&fa, err, 2);
  else posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (new_session) flags |= POSIX_SPAWN_SETSID;
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  return rc == 0 ? pid : -rc;
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return status;
}

Result<pid_t> spawn_tool(const std::vector<std::string>& argv, int output) {
  const pid_t pid = spawn(argv, -1, output, output, false);
  if (pid < 0)
    return error("cannot run " + argv[0] + ": " + std::strerror(-pid) +
                 "; are Slurm's client tools (slurm-client) installed?");
  return pid;
}

RequestOptions with_environment(RequestOptions given,
                                const std::function<const char*(const char*)>& getenv) {
  for (auto [field, name] : {std::pair{&given.partition, "SF_SLURM_PARTITION"},
                             std::pair{&given.account, "SF_SLURM_ACCOUNT"},
                             std::pair{&given.time_limit, "SF_SLURM_TIME_LIMIT"}})
    if (const char* v = getenv(name); v && *v && field->empty()) *field = v;
  return given;
}

std::vector<std::string> request_flags(const RequestOptions& options) {
  std::vector<std::string> flags;
  if (!options.partition.empty()) flags.push_back("--partition=" + options.partition);
  if (!options.account.empty()) flags.push_back("--account=" + options.account);
  if (!options.time_limit.empty()) flags.push_back("--time=" + options.time_limit);
  return flags;
}

Result<std::string> run_tool(const std::vector<std::string>& argv) {
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) return error(argv[0] + ": pipe: " + std::strerror(errno));
  if (pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    return error(argv[0] + ": pipe: " + std::strerror(errno));
  }
  const pid_t pid = spawn(argv, -1, out[1], err[1], false);
  ::close(out[1]);
  ::close(err[1]);
  if (pid < 0) {
    ::close(out[0]);
    ::close(err[0]);
    return error("cannot run " + argv[0] + ": " + std::strerror(-pid) +
                 "; are Slurm's client tools (slurm-client) installed?");
  }
  // Both pipes at once, so that neither fills while the other is read.
  std::string text[2];
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  for (int open = 2; open > 0;) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      char buf[4096];
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n > 0) {
        text[i].append(buf, static_cast<size_t>(n));
      } else {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  const int st = wait_for(pid);
  if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    std::string why = trimmed(text[1].empty() ? text[0] : text[1]);
    return error(argv[0] + " failed" + (why.empty() ? std::string() : ": " + why));
  }
  return text[0];
}

Result<std::vector<std::string>> expand_hostlist(const std::string& hostlist) {
  auto out = run_tool({"scontrol", "show", "hostnames", hostlist});
  if (!out) return out.error();
  std::vector<std::string> names;
  std::istringstream in(*out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) names.push_back(line);
  return names;
}

Result<Watchdog> Watchdog::start(const std::string& job_name) {
  int life[2];
  if (pipe2(life, O_CLOEXEC) != 0) return error(std::string("slurm watchdog: pipe: ") + std::strerror(errno));
  // Lines on its stdin: "p<pid>" names the job's process, "d" disarms. At the end of its
  // stdin (the owner closed it or died) it cancels by name and ends the job's process.
  static const char* const kScript =
      "job=; while read -r line; do case $line in p*) job=${line#p} ;; d) exit 0 ;; esac; done; "
      "scancel --quiet --name=\"$0\" --user=\"$1\"; "
      "if [ -n \"$job\" ]; then kill -TERM \"$job\" 2>/dev/null; fi; exit 0";
  const pid_t pid =
      spawn({"/bin/sh", "-c", kScript, job_name, std::to_string(getuid())}, life[0], -1, -1, true);
  ::close(life[0]);
  if (pid < 0) {
    ::close(life[1]);
    return error(std::string("slurm watchdog: cannot run /bin/sh: ") + std::strerror(-pid));
  }
  return Watchdog(pid, life[1]);
}

Watchdog::Watchdog(Watchdog&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)), lifeline_(std::exchange(other.lifeline_, -1)) {}

Watchdog& Watchdog::operator=(Watchdog&& other) noexcept {
  if (this != &other) {
    finish();
    pid_ = std::exchange(other.pid_, -1);
    lifeline_ = std::exchange(other.lifeline_, -1);
  }
  return *this;
}

Watchdog::~Watchdog() { finish(); }

void Watchdog::say(const std::string& line) {
  if (lifeline_ < 0) return;
  const std::string text = line + "\n";
  (void)!::write(lifeline_, text.data(), text.size());
}

void Watchdog::name_job_process(pid_t pid) { say("p" + std::to_string(pid)); }

void Watchdog::disarm() { say("d"); }

void Watchdog::finish() {
  if (lifeline_ >= 0) {
    ::close(lifeline_);
    lifeline_ = -1;
  }
  if (pid_ > 0) {
    (void)wait_for(pid_);
    pid_ = -1;
  }
}

}  // namespace sf::common::slurm
