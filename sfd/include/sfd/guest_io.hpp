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

namespace sf::sfd::guest_io {

// The virtio-serial port's name (QEMU `virtserialport,name=...`).
inline constexpr const char* kIoPort = "sf.io";
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

// The payloads (JSON) of the frames. Each side reads what the other wrote, so none of these may
// throw on a malformed payload; the fuzz target tests/fuzz/guest_io_fuzz.cpp feeds them garbage.

// exit (guest -> host): {"code": N, "signal": S}, both optional (0). nullopt if the payload is
// not a JSON object or code or signal is not an integer that fits an int.
struct ExitStatus {
  int code = 0;
  int signal = 0;
};
std::optional<ExitStatus> parse_exit(const std::string& payload);

// error (guest -> host): {"message": "..."}; the payload itself when it is not such an object.
std::string parse_error_message(const std::string& payload);

// spec (host -> guest): the command and its surroundings.
struct NetSpec {
  std::string interface = "sf0";
  std::string mac, address, hostname;  // hostname: the spec's when absent
};
struct CommandSpec {
  std::vector<std::string> argv, env;
  std::string cwd = "/";
  std::string work_dir;  // empty: no shared working directory
  std::string hostname = "sf-vm";
  bool forward_stdin = false;
  std::optional<NetSpec> net;  // "net", if it is an object
};
// An Error if the payload is not a JSON object or a field has the wrong type.
Result<CommandSpec> parse_spec(const std::string& payload);

}  // namespace sf::sfd::guest_io
