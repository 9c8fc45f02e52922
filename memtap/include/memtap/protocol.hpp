// memtap wire protocol, version 1: frame header encoding and message constants.
// The protocol is written down in docs/protocols/memtap.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "memtap/result.hpp"
#include "memtap/page_source.hpp"

namespace sf::memtap::protocol {

constexpr std::uint32_t kMagic = 0x3150544D;  // "MTP1"
constexpr std::uint16_t kVersion = 1;
constexpr std::size_t kHeaderSize = 32;
constexpr std::uint32_t kMaxBody = (64u << 20) + (64u << 10);
constexpr std::uint32_t kMaxRanges = 4096;
constexpr std::uint32_t kDefaultMaxBatchPages = 1024;
constexpr std::size_t kHelloBodySize = 36;
constexpr std::size_t kHelloReplySize = 32;

enum class MessageType : std::uint16_t { kHello = 1, kGetMetadata = 2, kFetch = 3, kStats = 4 };

enum class WireStatus : std::uint32_t {
  kOk = 0,
  kBadRequest = 1,
  kBadToken = 2,
  kNotAuthenticated = 3,
  kOutOfRange = 4,
  kTooLarge = 5,
  kCorruptImage = 6,
  kInternal = 7,
};
const char* to_string(WireStatus s);
ErrorCode error_code_for(WireStatus s);

struct FrameHeader {
  MessageType type{};
  std::uint32_t request_id = 0;
  WireStatus status = WireStatus::kOk;
  std::uint32_t body_length = 0;
  std::uint64_t body_checksum = 0;
};

std::uint64_t body_checksum(std::span<const std::byte> body);
std::array<std::byte, kHeaderSize> encode_header(const FrameHeader& h);
// Validates magic, version, header check and the body-size cap.
Result<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> bytes);

struct HelloReply {
  std::uint32_t page_size = 0;
  std::uint32_t max_batch_pages = 0;
  std::uint64_t image_length = 0;
  std::uint64_t page_count = 0;
  std::uint64_t image_id = 0;
};
std::vector<std::byte> encode_hello_reply(const HelloReply& r);
Result<HelloReply> decode_hello_reply(std::span<const std::byte> body);

// A FETCH body: the range count (u32), then per range first (u64), count (u32), reserved (u32).
std::vector<std::byte> encode_fetch_request(std::span<const PageRange> ranges);

// A FETCH body as the server checks it against an image of `page_count` pages and its batch
// cap: status kOk with the ranges and their page total, or the status and message it refuses with.
struct FetchRequest {
  WireStatus status = WireStatus::kOk;
  std::string error;
  std::vector<PageRange> ranges;
  std::uint64_t pages = 0;
};
FetchRequest decode_fetch_request(std::span<const std::byte> body, std::uint64_t page_count,
                                  std::uint32_t max_batch_pages);

}  // namespace sf::memtap::protocol
