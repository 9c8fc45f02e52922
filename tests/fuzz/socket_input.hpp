// Fuzz targets of stream readers: the input as what a peer said and then closed.
#pragma once

#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>

// One end of a socketpair holding the whole input, the other end closed. Inputs must fit the
// socket buffer (the targets take up to 32 KiB), so no writer thread is needed.
inline int socket_with_input(const std::uint8_t* data, std::size_t size) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) std::abort();
  std::size_t off = 0;
  while (off < size) {
    const ssize_t n = write(sv[1], data + off, size - off);
    if (n <= 0) std::abort();
    off += static_cast<std::size_t>(n);
  }
  close(sv[1]);
  return sv[0];
}
