// clone-core: the guest control channel `sf.ctl` (docs/protocols/vm-clone.md), one module for
// both ends: the qemu driver inside a SnowFlock VM and sfd on the host. The messages are
// protobuf (clone-core/proto/guest_control.proto, lite runtime); this adds what the schema
// does not say: the framing (a 4-byte big-endian body length, then the body, at most
// kMaxFrame bytes), the protocol version, the port's name and the clone ends on the wire.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "clone-core/driver.hpp"
#include "clone-core/result.hpp"
#include "guest_control.pb.h"  // generated from clone-core/proto/guest_control.proto

namespace sf::guest_control {

// 1 was the JSON-lines protocol before this module; 2 is protobuf frames.
inline constexpr std::uint32_t kVersion = 2;
// The virtio-serial port's name (QEMU `virtserialport,name=...`; the guest finds it in sysfs).
inline constexpr const char* kControlPort = "sf.ctl";
// Under Xen the same messages travel as xenstore values below the guest's own domain path
// (docs/protocols/xen-clone.md): sfd-xen writes its version when it serves the domain, the
// guest writes one request at a time, sfd-xen writes numbered messages and the guest removes
// each one it has read.
inline constexpr const char* kXenDir = "data/sf-ctl";
inline constexpr const char* kXenVersionKey = "data/sf-ctl/version";
inline constexpr const char* kXenRequestKey = "data/sf-ctl/request";
inline constexpr const char* kXenHostDir = "data/sf-ctl/host";
// A xenstore value holds at most this many bytes of a message (4096 less room for the path).
inline constexpr std::size_t kXenMaxMessage = 3900;
inline constexpr std::size_t kHeaderBytes = 4;
// The largest body. The free-page report is the only big field (a few KiB for a 256 MiB
// guest); the guest leaves it out rather than send a frame above this.
inline constexpr std::size_t kMaxFrame = 1u << 20;

// A message with `version` = kVersion, for the caller to fill in.
Request make_request();
HostMessage make_host_message();

// The frame of one message; an Error if its body exceeds kMaxFrame.
Result<std::string> encode_frame(const Request& message);
Result<std::string> encode_frame(const HostMessage& message);

// One side's frames out of its byte stream, fed in chunks of any size.
class FrameReader {
 public:
  void feed(const void* data, std::size_t size);
  // The next frame's body; nullopt while it is incomplete. An Error when a header announces
  // more than kMaxFrame: the stream is unusable from there and every later call says so.
  Result<std::optional<std::string>> next();
  // At the end of the stream: an Error if it stopped inside a frame.
  Status finish() const;
  std::size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  std::size_t pos_ = 0;  // start of the first unread byte in buf_
  std::optional<Error> broken_;
};

// A body as the message it must be; an Error if it does not parse.
Result<Request> decode_request(std::string_view body);
Result<HostMessage> decode_host_message(std::string_view body);

// What both sides say when the versions differ (sfd in its refusal, the guest when a reply
// carries another version).
std::string version_mismatch(std::uint32_t sfd_version, std::uint32_t program_version);

// The clone ends on the wire; from_wire refuses a value this version does not know.
CloneEnd to_wire(sf::CloneEnd end);
Result<sf::CloneEnd> from_wire(int end);

// A request's name for messages ("ticket", "clone", ...; "empty" when no op is set).
const char* op_name(const Request& request);

}  // namespace sf::guest_control
