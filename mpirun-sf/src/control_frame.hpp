// The control protocol's TCP framing (docs/protocols/control.md): a 4-byte big-endian length,
// then one serialized Envelope of at most kMaxFrame bytes. Pure functions, used by TcpLink and
// by the fuzz target tests/fuzz/control_frame_fuzz.cpp.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>

#include "control.pb.h"
#include "sf-common/byte_order.hpp"

namespace sf::mpirun {

inline constexpr std::uint32_t kMaxControlFrame = 64u << 20;

// The body length a frame header announces, whatever it is.
inline std::uint32_t announced_frame_length(const std::array<unsigned char, 4>& header) {
  return sf::get_be32(header.data());
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
  sf::put_be32(frame.data(), static_cast<std::uint32_t>(body.size()));
  frame += body;
  return frame;
}

}  // namespace sf::mpirun
