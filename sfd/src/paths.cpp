// sfd: host paths and the stale-file sweep (see paths.hpp).
#include "sfd/paths.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <string>
#include <system_error>

namespace sf::sfd {
namespace fs = std::filesystem;

namespace {
const char* env(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && *v != '\0') ? v : nullptr;
}
}  // namespace

fs::path cache_dir() {
  if (const char* v = env("SF_CACHE_DIR")) return v;
  if (const char* v = env("XDG_CACHE_HOME")) return fs::path(v) / "snowflock";
  if (geteuid() == 0) return "/var/cache/snowflock";
  if (const char* v = env("HOME")) return fs::path(v) / ".cache" / "snowflock";
  return fs::path("/tmp") / ("snowflock-cache-" + std::to_string(geteuid()));
}

fs::path runtime_dir() {
  if (const char* v = env("SF_RUNTIME_DIR")) return v;
  if (geteuid() == 0) return "/run/snowflock";
  if (const char* v = env("XDG_RUNTIME_DIR")) return fs::path(v) / "snowflock";
  return fs::path("/tmp") / ("snowflock-" + std::to_string(geteuid()));
}

std::error_code create_runtime_dir() {
  std::error_code ec;
  const fs::path dir = runtime_dir();
  if (fs::create_directories(dir, ec); ec) return ec;
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && st.st_uid == geteuid() && (st.st_mode & 077) != 0)
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
  return ec;
}

fs::path ram_dir() {
  if (const char* v = env("SF_RAM_DIR")) return v;
  return "/dev/shm";
}

int owner_pid_of(const std::string& name) {
  const std::string prefix = kVmPrefix;
  if (name.rfind(prefix, 0) != 0) return 0;
  std::size_t i = prefix.size();
  int pid = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && pid < 100000000) {
    pid = pid * 10 + (name[i] - '0');
    ++i;
  }
  return (i < name.size() && name[i] == '-') ? pid : 0;
}

int sweep_stale_vm_files() {
  int removed = 0;
  for (const fs::path& dir : {ram_dir(), runtime_dir()}) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      const int pid = owner_pid_of(entry.path().filename().string());
      if (pid <= 0) continue;
      // kill(pid, 0) == ESRCH: the owner is gone. A recycled pid only delays the sweep.
      if (kill(pid, 0) == 0 || errno != ESRCH) continue;
      std::error_code rm_ec;
      if (fs::remove_all(entry.path(), rm_ec) > 0) ++removed;
    }
  }
  return removed;
}

}  // namespace sf::sfd
