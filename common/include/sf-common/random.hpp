// sf-common: secrets (job tokens, owner tokens) from the kernel's random source.
#pragma once

#include <sys/random.h>

#include <cerrno>
#include <cstddef>
#include <string>

namespace sf {

// Fills `len` bytes from getrandom(2). False (errno set) if the kernel cannot give them;
// never a partial or predictable result.
inline bool random_bytes(void* data, std::size_t len) {
  auto* p = static_cast<unsigned char*>(data);
  while (len > 0) {
    const ssize_t n = ::getrandom(p, len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

// Lower-case hex of `bytes`.
inline std::string to_hex(const unsigned char* bytes, std::size_t len) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (std::size_t i = 0; i < len; ++i) {
    out += kHex[bytes[i] >> 4];
    out += kHex[bytes[i] & 15];
  }
  return out;
}

}  // namespace sf
