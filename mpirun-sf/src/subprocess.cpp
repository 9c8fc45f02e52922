// Helper programs; see subprocess.hpp.
#include "subprocess.hpp"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

extern char** environ;

namespace sf::mpirun {
namespace {

std::vector<char*> c_strings(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

// File actions shared by both: stdin from /dev/null.
struct Actions {
  posix_spawn_file_actions_t fa;
  Actions() {
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  }
  ~Actions() { posix_spawn_file_actions_destroy(&fa); }
};

int wait_status(pid_t pid) {
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  return exit_status(st);
}

}  // namespace

int exit_status(int wait_status) {
  return WIFEXITED(wait_status) ? WEXITSTATUS(wait_status) : 128 + WTERMSIG(wait_status);
}

Captured capture_output(const std::vector<std::string>& argv) {
  Captured c;
  int out[2], err[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    c.error = strerror(errno);
    return c;
  }
  if (pipe2(err, O_CLOEXEC) != 0) {
    c.error = strerror(errno);
    ::close(out[0]);
    ::close(out[1]);
    return c;
  }
  Actions a;
  posix_spawn_file_actions_adddup2(&a.fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&a.fa, err[1], 2);
  pid_t pid = -1;
  auto args = c_strings(argv);
  int rc = posix_spawnp(&pid, args[0], &a.fa, nullptr, args.data(), environ);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    c.error = strerror(rc);
    ::close(out[0]);
    ::close(err[0]);
    return c;
  }
  c.started = true;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[4096];
  while (open_fds > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      } else {
        (i == 0 ? c.output : c.error).append(buf, static_cast<size_t>(n));
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) ::close(f.fd);
  c.status = wait_status(pid);
  while (!c.error.empty() && c.error.back() == '\n') c.error.pop_back();
  if (auto nl = c.error.rfind('\n'); nl != std::string::npos) c.error.erase(0, nl + 1);
  return c;
}

pid_t spawn_in_own_group(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  Actions a;
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(&attr, 0);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);  // SIGPIPE/SIGINT ignored here are not inherited
  auto args = c_strings(argv);
  auto envp = c_strings(env);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &a.fa, &attr, args.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot run " + argv[0] + ": " + strerror(rc));
  return pid;
}

pid_t spawn_in_our_group(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  auto args = c_strings(argv);
  auto envp = c_strings(env);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], nullptr, &attr, args.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  if (rc != 0) throw std::runtime_error("cannot run " + argv[0] + ": " + strerror(rc));
  return pid;
}

}  // namespace sf::mpirun
