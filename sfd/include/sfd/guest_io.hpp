// sfd: the framed byte protocol on the guest's "sf.io" virtio-serial port (docs/sfd.md,
// "Guest I/O protocol"). One port carries the command spec (host -> guest) and the command's
// stdout, stderr and exit status (guest -> host). One ordered stream is what makes the exit
// status arrive strictly after the last byte of output; separate ports give no such order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sfd/result.hpp"

namespace sfd::guest_io {

inline constexpr std::uint16_t kMagic = 0x4653;  // "SF" little-endian on the wire
inline constexpr std::uint8_t kVersion = 1;
inline constexpr std::size_t kHeaderSize = 12;
inline constexpr std::uint32_t kMaxPayload = 1u << 20;  // size cap on read

enum class FrameType : std::uint8_t {
  spec = 1,    // host -> guest: JSON {argv, env, cwd, hostname}
  stdout_data = 2,
  stderr_data = 3,
  exit = 4,    // guest -> host: JSON {code, signal}
  error = 5,   // guest -> host: JSON {message}; the agent could not run the command
  stdin_data = 6,  // host -> guest: bytes for the command's stdin; an empty payload ends it
};

struct Frame {
  FrameType type{};
  std::vector<std::uint8_t> payload;
  std::string text() const { return std::string(payload.begin(), payload.end()); }
};

// Encodes one frame: magic u16, version u8, type u8, length u32, xxh32(payload) u32, payload.
std::vector<std::uint8_t> encode(FrameType type, std::span<const std::uint8_t> payload);
std::vector<std::uint8_t> encode(FrameType type, const std::string& payload);

// Incremental decoder: feed bytes as they arrive, take whole frames out.
class FrameDecoder {
 public:
  void feed(std::span<const std::uint8_t> bytes);
  // A frame, nothing yet (nullopt), or an Error for a corrupt stream (bad magic, version,
  // oversize length, checksum mismatch); after an error the stream is unusable.
  Result<std::optional<Frame>> next();
  std::size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::vector<std::uint8_t> buf_;
  std::size_t pos_ = 0;
};

}  // namespace sfd::guest_io
