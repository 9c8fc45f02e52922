// sfd: the shared part of the remote clone's two roles (remote_common.hpp).
#include "remote_common.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "sfd/paths.hpp"

namespace sf::sfd::remote {

namespace fs = std::filesystem;

namespace {
std::atomic<int> dir_counter{0};
}  // namespace

std::string hex64(std::uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

Result<fs::path> make_private_dir(const std::string& kind) {
  std::error_code ec;
  ec = create_runtime_dir();
  const fs::path d = runtime_dir() / (std::string(kVmPrefix) + std::to_string(getpid()) + "-" + kind + "-" +
                                      std::to_string(dir_counter++));
  if (::mkdir(d.c_str(), 0700) != 0)
    return make_error("remote clone: cannot create " + d.string() + ": " + std::strerror(errno) + "; set SF_RUNTIME_DIR");
  return d;
}

Status write_private_file(const fs::path& p, const std::string& text) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("cannot write " + p.string() + ": " + std::strerror(errno));
  std::size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return make_error("cannot write " + p.string() + ": " + std::strerror(errno));
    }
    off += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return ok_status();
}

}  // namespace sf::sfd::remote
