// sfd: encoder and decoder of the guest I/O frames (see guest_io.hpp, docs/sfd.md).
#include "sfd/guest_io.hpp"

#include <xxhash.h>

#include <cstring>
#include <string>

namespace sfd::guest_io {
namespace {

void put_le(std::vector<std::uint8_t>& out, std::uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}

std::uint64_t get_le(const std::uint8_t* p, int bytes) {
  std::uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

}  // namespace

std::vector<std::uint8_t> encode(FrameType type, std::span<const std::uint8_t> payload) {
  std::vector<std::uint8_t> out;
  out.reserve(kHeaderSize + payload.size());
  put_le(out, kMagic, 2);
  put_le(out, kVersion, 1);
  put_le(out, static_cast<std::uint8_t>(type), 1);
  put_le(out, payload.size(), 4);
  put_le(out, XXH32(payload.data(), payload.size(), 0), 4);
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<std::uint8_t> encode(FrameType type, const std::string& payload) {
  return encode(type, std::span<const std::uint8_t>(
                          reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size()));
}

void FrameDecoder::feed(std::span<const std::uint8_t> bytes) {
  // Compact lazily so a long stream does not grow the buffer without bound.
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  } else if (pos_ > (1u << 16)) {
    buf_.erase(buf_.begin(), buf_.begin() + static_cast<std::ptrdiff_t>(pos_));
    pos_ = 0;
  }
  buf_.insert(buf_.end(), bytes.begin(), bytes.end());
}

Result<std::optional<Frame>> FrameDecoder::next() {
  if (buffered() < kHeaderSize) return std::optional<Frame>{};
  const std::uint8_t* h = buf_.data() + pos_;
  if (get_le(h, 2) != kMagic)
    return make_error("guest I/O: bad frame magic; the guest agent and sfd do not match (rebuild)");
  if (h[2] != kVersion)
    return make_error("guest I/O: frame version " + std::to_string(h[2]) + " (this sfd speaks " +
                      std::to_string(kVersion) + "); use the same sfd build on both sides");
  const auto type = h[3];
  if (type < 1 || type > 6) return make_error("guest I/O: unknown frame type " + std::to_string(type));
  const auto len = static_cast<std::uint32_t>(get_le(h + 4, 4));
  if (len > kMaxPayload)
    return make_error("guest I/O: frame of " + std::to_string(len) + " bytes exceeds the cap of " +
                      std::to_string(kMaxPayload));
  if (buffered() < kHeaderSize + len) return std::optional<Frame>{};
  const auto sum = static_cast<std::uint32_t>(get_le(h + 8, 4));
  const std::uint8_t* p = h + kHeaderSize;
  if (XXH32(p, len, 0) != sum) return make_error("guest I/O: frame checksum mismatch");
  Frame f;
  f.type = static_cast<FrameType>(type);
  f.payload.assign(p, p + len);
  pos_ += kHeaderSize + len;
  return std::optional<Frame>{std::move(f)};
}

}  // namespace sfd::guest_io
