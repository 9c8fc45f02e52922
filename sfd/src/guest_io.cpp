// sfd: encoder and decoder of the guest I/O frames (see guest_io.hpp, docs/sfd.md).
#include "sfd/guest_io.hpp"

#include <xxhash.h>

#include <limits>
#include <nlohmann/json.hpp>

#include <cstring>
#include <string>

namespace sf::sfd::guest_io {
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

namespace {

using json = nlohmann::json;

// An integer field that fits an int: the value, `fallback` when absent, nullopt otherwise.
std::optional<int> int_field(const json& j, const char* key, int fallback) {
  const auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_number_integer()) {
    const auto v = it->get<std::int64_t>();
    if (v >= std::numeric_limits<int>::min() && v <= std::numeric_limits<int>::max()) return static_cast<int>(v);
  } else if (it->is_number_unsigned()) {
    const auto v = it->get<std::uint64_t>();
    if (v <= static_cast<std::uint64_t>(std::numeric_limits<int>::max())) return static_cast<int>(v);
  }
  return std::nullopt;
}

}  // namespace

std::optional<ExitStatus> parse_exit(const std::string& payload) {
  const json j = json::parse(payload, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return std::nullopt;
  const auto code = int_field(j, "code", 0);
  const auto signal = int_field(j, "signal", 0);
  if (!code || !signal) return std::nullopt;
  return ExitStatus{*code, *signal};
}

std::string parse_error_message(const std::string& payload) {
  const json j = json::parse(payload, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return payload;
  const auto it = j.find("message");
  if (it == j.end() || !it->is_string()) return payload;
  return it->get<std::string>();
}

Result<CommandSpec> parse_spec(const std::string& payload) {
  const json j = json::parse(payload, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("the command spec is not JSON");
  try {
    CommandSpec s;
    s.argv = j.value("argv", std::vector<std::string>{});
    s.env = j.value("env", std::vector<std::string>{});
    s.cwd = j.value("cwd", s.cwd);
    s.work_dir = j.value("work_dir", s.work_dir);
    s.hostname = j.value("hostname", s.hostname);
    s.forward_stdin = j.value("stdin", false);
    if (const auto net = j.find("net"); net != j.end() && net->is_object()) {
      NetSpec n;
      n.interface = net->value("interface", n.interface);
      n.mac = net->value("mac", std::string());
      n.address = net->value("address", std::string());
      n.hostname = net->value("hostname", s.hostname);
      s.net = std::move(n);
    }
    return s;
  } catch (const json::exception& e) {
    return make_error(std::string("the command spec is malformed: ") + e.what());
  }
}

}  // namespace sf::sfd::guest_io
