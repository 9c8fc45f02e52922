// sf-common: writing a whole buffer to a descriptor (a pipe, a socket, a terminal, a file),
// retrying after EINTR and short writes.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace sf {

// True when every byte was written; false on the first error (errno tells which) or when the
// descriptor accepts nothing more.
inline bool write_all(int fd, const void* data, std::size_t len) {
  const auto* p = static_cast<const char*>(data);
  while (len > 0) {
    const ssize_t n = ::write(fd, p, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace sf
