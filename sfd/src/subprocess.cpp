// sfd: run_to_completion (see subprocess.hpp). posix_spawn rather than Boost.Process: Boost
// 1.74's Process needs Boost.Filesystem linked in, which is not among our dependencies.
#include "sfd/subprocess.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>

extern char** environ;

namespace sf::sfd {

Result<int> run_to_completion(const std::vector<std::string>& argv) {
  if (argv.empty()) return make_error("run: empty command");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return make_error("run " + argv[0] + ": " + std::strerror(rc) + "; is it installed?");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return make_error("run " + argv[0] + ": waitpid: " + std::strerror(errno));
  }
  if (WIFSIGNALED(status))
    return make_error("run " + argv[0] + ": killed by signal " + std::to_string(WTERMSIG(status)));
  return WEXITSTATUS(status);
}

}  // namespace sf::sfd
