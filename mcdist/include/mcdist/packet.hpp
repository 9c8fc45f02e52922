// mcdist: the version-2 wire format (docs/protocols/mcdist.md): header layout, encoding,
// validation in the documented order, and the replay window. Pure functions, no sockets, so
// the unit tests and the `mcdist decode` printer use exactly what the sender and receivers use.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mcdist/result.hpp"

namespace sf::mcdist {

inline constexpr std::uint32_t kMagic = 0x5344434D;  // "MCDS" in little-endian byte order
inline constexpr std::uint8_t kVersion = 2;
inline constexpr std::size_t kHeaderSize = 96;
inline constexpr std::size_t kMaxPayload = 16384;
inline constexpr std::size_t kMaxRanges = 64;
inline constexpr std::size_t kRangeSize = 16;
inline constexpr std::size_t kStatusPayload = 16;
inline constexpr std::size_t kMacSize = 16;
inline constexpr std::size_t kKeySize = 32;
inline constexpr std::uint32_t kMinPageSize = 512;
// The largest image a session carries (1 TiB): a bound on what a server packet's page_count can
// make a receiver allocate.
inline constexpr std::uint64_t kMaxImageBytes = 1ull << 40;
inline constexpr std::uint32_t kMaxPageSize = 16384;
// Bytes an Ethernet link carries per datagram beyond the UDP payload: 14 Ethernet + 20 IPv4 +
// 8 UDP. The pacer counts these so that a rate of R bit/s fits a link of R bit/s.
inline constexpr std::size_t kWireOverhead = 42;

enum class PacketType : std::uint8_t { kData = 1, kHeartbeat = 2, kRequest = 3, kStatus = 4 };

namespace flags {
inline constexpr std::uint16_t kPushActive = 0x0001;
inline constexpr std::uint16_t kPushDone = 0x0002;
inline constexpr std::uint16_t kAnswer = 0x0004;
inline constexpr std::uint16_t kClosing = 0x0008;
inline constexpr std::uint16_t kDemand = 0x0010;
inline constexpr std::uint16_t kComplete = 0x0020;
}  // namespace flags

struct Header {
  PacketType type = PacketType::kData;
  std::uint16_t flags = 0;
  std::uint32_t payload_len = 0;
  std::uint64_t cluster_id = 0;
  std::uint64_t session_id = 0;
  std::uint64_t origin = 0;
  std::uint64_t sequence = 0;
  std::uint64_t page_index = 0;
  std::uint64_t page_count = 0;
  std::uint32_t page_size = 0;
  std::uint32_t aux = 0;
  std::uint64_t checksum = 0;  // filled by encode, checked by validate
};

struct PageRange {
  std::uint64_t first = 0;
  std::uint32_t count = 0;
};

struct StatusReport {
  std::uint64_t lost = 0;
  std::uint64_t received = 0;
};

// The cluster's shared secret (32 bytes). Parsed from 64 hex digits.
struct ClusterKey {
  std::array<std::uint8_t, kKeySize> bytes{};
  static Result<ClusterKey> from_hex(std::string_view hex);
  static Result<ClusterKey> from_file(const std::string& path);  // a file holding the hex
};

// Why a packet was dropped; one counter each (docs/protocols/mcdist.md section 3).
enum class Verdict { kAccepted, kMalformed, kForeign, kCorrupt, kUnauthenticated };
const char* to_string(Verdict v);
const char* to_string(PacketType t);

// Computes a packet's 16-byte AES-256-GMAC (docs/protocols/mcdist.md section 3): the key of the
// packet's stream (cluster, session, origin) is derived from the cluster key with HMAC-SHA256
// once and cached; the nonce is the packet's sequence number. One instance per thread.
class PacketAuthenticator {
 public:
  explicit PacketAuthenticator(const ClusterKey& key);
  ~PacketAuthenticator();
  PacketAuthenticator(const PacketAuthenticator&) = delete;
  PacketAuthenticator& operator=(const PacketAuthenticator&) = delete;
  std::array<std::uint8_t, kMacSize> mac(std::span<const std::uint8_t> header80,
                                         std::span<const std::uint8_t> payload);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes header (with checksum and MAC) into out[0..96). out must hold kHeaderSize bytes; the
// payload is separate so DATA pages can be sent with scatter/gather without a copy.
void encode_header(Header& header, std::span<const std::uint8_t> payload,
                   PacketAuthenticator& auth, std::span<std::uint8_t, kHeaderSize> out);

// Parses without checking checksum or MAC (for the printer). Fails on sizes/magic/version.
Result<Header> parse_header(std::span<const std::uint8_t> datagram);

// Full validation in the documented order. On kAccepted, *out holds the header.
Verdict validate(std::span<const std::uint8_t> datagram, std::uint64_t cluster_id,
                 PacketAuthenticator& auth, Header* out);

std::vector<std::uint8_t> encode_ranges(std::span<const PageRange> ranges);
Result<std::vector<PageRange>> decode_ranges(std::span<const std::uint8_t> payload);
// Coalesces sorted or unsorted page indices into ranges.
std::vector<PageRange> to_ranges(std::vector<std::uint64_t> pages);

std::vector<std::uint8_t> encode_status(const StatusReport& report);
StatusReport decode_status(std::span<const std::uint8_t> payload);

// One line describing a packet (for `mcdist dump` / `mcdist decode`).
std::string describe(const Header& h, std::span<const std::uint8_t> payload);

// Sliding replay window over one origin's sequence numbers (IPsec-style, 4096 wide).
class ReplayWindow {
 public:
  static constexpr std::uint64_t kWidth = 4096;
  // True if seq is new (and records it); false if seen before or older than the window.
  bool accept(std::uint64_t seq);
  std::uint64_t highest() const { return highest_; }

 private:
  std::uint64_t highest_ = 0;
  std::array<std::uint64_t, kWidth / 64> bits_{};
};

}  // namespace sf::mcdist
