// The control protocol's TCP framing (docs/protocols/control.md): a 4-byte big-endian length,
// then one serialized Envelope of at most kMaxFrame bytes. Pure functions, used by TcpLink and
// by the fuzz target tests/fuzz/control_frame_fuzz.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "control.pb.h"

namespace sf::mpirun {

inline constexpr std::uint32_t kMaxControlFrame = 64u << 20;

// The body length a frame header announces, whatever it is.
inline std::uint32_t announced_frame_length(const std::array<unsigned char, 4>& header) {
  return (std::uint32_t{header[0]} << 24) | (std::uint32_t{header[1]} << 16) | (std::uint32_t{header[2]} << 8) |
         header[3];
}

// The body length a frame header announces; nullopt when it exceeds kMaxControlFrame.
inline std::optional<std::uint32_t> decode_frame_length(const std::array<unsigned char, 4>& header) {
  const std::uint32_t size = announced_frame_length(header);
  if (size > kMaxControlFrame) return std::nullopt;
  return size;
}

// One frame: the header and the serialized message.
inline std::string encode_frame(const sf::control::Envelope& message) {
  std::string body = message.SerializeAsString();
  std::string frame(4, '\0');
  const auto n = static_cast<std::uint32_t>(body.size());
  frame[0] = static_cast<char>(n >> 24);
  frame[1] = static_cast<char>(n >> 16);
  frame[2] = static_cast<char>(n >> 8);
  frame[3] = static_cast<char>(n);
  frame += body;
  return frame;
}

}  // namespace sf::mpirun
