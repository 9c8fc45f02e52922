// memtap wire protocol: frame header encoding/decoding (docs/protocols/memtap.md).
#include "memtap/protocol.hpp"

#include <xxhash.h>

#include "byte_order.hpp"

namespace sf::memtap::protocol {

const char* to_string(WireStatus s) {
  switch (s) {
    case WireStatus::kOk: return "OK";
    case WireStatus::kBadRequest: return "BAD_REQUEST";
    case WireStatus::kBadToken: return "BAD_TOKEN";
    case WireStatus::kNotAuthenticated: return "NOT_AUTHENTICATED";
    case WireStatus::kOutOfRange: return "OUT_OF_RANGE";
    case WireStatus::kTooLarge: return "TOO_LARGE";
    case WireStatus::kCorruptImage: return "CORRUPT_IMAGE";
    case WireStatus::kInternal: return "INTERNAL";
  }
  return "UNKNOWN";
}

ErrorCode error_code_for(WireStatus s) {
  switch (s) {
    case WireStatus::kBadToken:
    case WireStatus::kNotAuthenticated: return ErrorCode::kBadToken;
    case WireStatus::kOutOfRange: return ErrorCode::kOutOfRange;
    case WireStatus::kCorruptImage: return ErrorCode::kCorrupt;
    case WireStatus::kInternal: return ErrorCode::kInternal;
    default: return ErrorCode::kProtocol;
  }
}

std::uint64_t body_checksum(std::span<const std::byte> body) {
  return XXH3_64bits(body.data(), body.size());
}

std::array<std::byte, kHeaderSize> encode_header(const FrameHeader& h) {
  std::array<std::byte, kHeaderSize> out{};
  std::byte* p = out.data();
  put_le32(p, kMagic);
  put_le16(p + 4, kVersion);
  put_le16(p + 6, static_cast<std::uint16_t>(h.type));
  put_le32(p + 8, h.request_id);
  put_le32(p + 12, static_cast<std::uint32_t>(h.status));
  put_le32(p + 16, h.body_length);
  put_le32(p + 20, static_cast<std::uint32_t>(XXH3_64bits(p, 20)));
  put_le64(p + 24, h.body_checksum);
  return out;
}

Result<FrameHeader> decode_header(std::span<const std::byte, kHeaderSize> bytes) {
  const std::byte* p = bytes.data();
  if (get_le32(p) != kMagic) return make_error(ErrorCode::kProtocol, "frame has a wrong magic (not a memtap peer)");
  if (get_le16(p + 4) != kVersion) {
    return make_error(ErrorCode::kProtocol,
                      "frame has protocol version " + std::to_string(get_le16(p + 4)) + ", this memtap speaks 1");
  }
  if (get_le32(p + 20) != static_cast<std::uint32_t>(XXH3_64bits(p, 20))) {
    return make_error(ErrorCode::kCorrupt, "frame header check mismatch (corrupt header)");
  }
  FrameHeader h;
  h.type = static_cast<MessageType>(get_le16(p + 6));
  h.request_id = get_le32(p + 8);
  h.status = static_cast<WireStatus>(get_le32(p + 12));
  h.body_length = get_le32(p + 16);
  h.body_checksum = get_le64(p + 24);
  if (h.body_length > kMaxBody) {
    return make_error(ErrorCode::kProtocol, "frame body of " + std::to_string(h.body_length) + " bytes exceeds the cap");
  }
  return h;
}

std::vector<std::byte> encode_hello_reply(const HelloReply& r) {
  std::vector<std::byte> b(kHelloReplySize);
  put_le32(b.data(), r.page_size);
  put_le32(b.data() + 4, r.max_batch_pages);
  put_le64(b.data() + 8, r.image_length);
  put_le64(b.data() + 16, r.page_count);
  put_le64(b.data() + 24, r.image_id);
  return b;
}

Result<HelloReply> decode_hello_reply(std::span<const std::byte> b) {
  if (b.size() != kHelloReplySize) return make_error(ErrorCode::kProtocol, "HELLO reply has a wrong size");
  HelloReply r;
  r.page_size = get_le32(b.data());
  r.max_batch_pages = get_le32(b.data() + 4);
  r.image_length = get_le64(b.data() + 8);
  r.page_count = get_le64(b.data() + 16);
  r.image_id = get_le64(b.data() + 24);
  if (r.max_batch_pages == 0) return make_error(ErrorCode::kProtocol, "HELLO reply allows no pages per batch");
  return r;
}

std::vector<std::byte> encode_fetch_request(std::span<const PageRange> ranges) {
  std::vector<std::byte> body(4 + 16 * ranges.size());
  put_le32(body.data(), static_cast<std::uint32_t>(ranges.size()));
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    put_le64(body.data() + 4 + 16 * i, ranges[i].first);
    put_le32(body.data() + 12 + 16 * i, ranges[i].count);
    put_le32(body.data() + 16 + 16 * i, 0);
  }
  return body;
}

FetchRequest decode_fetch_request(std::span<const std::byte> body, std::uint64_t page_count,
                                  std::uint32_t max_batch_pages) {
  FetchRequest r;
  auto refuse = [&](WireStatus status, std::string message) {
    r.status = status;
    r.error = std::move(message);
    r.ranges.clear();
    r.pages = 0;
    return r;
  };
  if (body.size() < 4) return refuse(WireStatus::kBadRequest, "FETCH body too short");
  const std::uint32_t n = get_le32(body.data());
  if (n > kMaxRanges) return refuse(WireStatus::kTooLarge, "too many ranges");
  if (body.size() != 4 + 16ull * n) return refuse(WireStatus::kBadRequest, "FETCH body has a wrong size");
  r.ranges.reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint64_t first = get_le64(body.data() + 4 + 16 * i);
    const std::uint32_t count = get_le32(body.data() + 12 + 16 * i);
    if (first >= page_count || count > page_count - first) {
      return refuse(WireStatus::kOutOfRange, "pages " + std::to_string(first) + "+" + std::to_string(count) +
                                                 " lie outside the image of " + std::to_string(page_count) + " pages");
    }
    r.ranges.push_back({first, count});
    r.pages += count;
  }
  if (r.pages > max_batch_pages) return refuse(WireStatus::kTooLarge, "more than " + std::to_string(max_batch_pages) + " pages");
  return r;
}

}  // namespace sf::memtap::protocol
