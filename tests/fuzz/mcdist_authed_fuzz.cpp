// Fuzz target: an mcdist packet after authentication (docs/protocols/mcdist.md), i.e. what a
// peer holding the cluster key can send: the input is a header's fields and a payload, which
// are encoded and MAC'd with the key (encode_header) and then validated and decoded as a
// sender or receiver does: validate, the REQUEST ranges, the STATUS report, describe, and the
// replay window over the sequence numbers. An authenticated packet is still checked for
// sizes and bounds; whatever passes must decode without going out of bounds.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "mcdist/packet.hpp"

namespace {

sf::mcdist::ClusterKey fuzz_key() {
  auto k = sf::mcdist::ClusterKey::from_hex("f0e1d2c3b4a5968778695a4b3c2d1e0f00112233445566778899aabbccddeeff");
  if (!k) std::abort();
  return k.value();
}

template <typename T>
T take(const std::uint8_t*& p, const std::uint8_t* end) {
  T v{};
  const std::size_t n = std::min<std::size_t>(sizeof v, static_cast<std::size_t>(end - p));
  std::memcpy(&v, p, n);
  p += n;
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static sf::mcdist::PacketAuthenticator auth(fuzz_key());
  const std::uint8_t* p = data;
  const std::uint8_t* end = data + size;
  sf::mcdist::Header h;
  h.type = static_cast<sf::mcdist::PacketType>(take<std::uint8_t>(p, end));
  h.flags = take<std::uint16_t>(p, end);
  h.cluster_id = take<std::uint8_t>(p, end);  // small: a few clusters
  h.session_id = take<std::uint64_t>(p, end);
  h.origin = take<std::uint8_t>(p, end);
  h.sequence = take<std::uint64_t>(p, end);
  h.page_index = take<std::uint64_t>(p, end);
  h.page_count = take<std::uint64_t>(p, end);
  h.page_size = take<std::uint32_t>(p, end);
  h.aux = take<std::uint32_t>(p, end);
  const std::span<const std::uint8_t> payload(p, static_cast<std::size_t>(end - p));
  if (payload.size() > sf::mcdist::kMaxPayload) return 0;
  h.payload_len = static_cast<std::uint32_t>(payload.size());
  std::vector<std::uint8_t> datagram(sf::mcdist::kHeaderSize + payload.size());
  sf::mcdist::encode_header(h, payload, auth, std::span<std::uint8_t, sf::mcdist::kHeaderSize>(datagram.data(), sf::mcdist::kHeaderSize));
  if (!payload.empty()) std::memcpy(datagram.data() + sf::mcdist::kHeaderSize, payload.data(), payload.size());

  sf::mcdist::Header got;
  const auto verdict = sf::mcdist::validate(datagram, h.cluster_id, auth, &got);
  if (verdict == sf::mcdist::Verdict::kForeign || verdict == sf::mcdist::Verdict::kCorrupt ||
      verdict == sf::mcdist::Verdict::kUnauthenticated)
    std::abort();  // the right key, cluster and checksum: only the shape may be refused
  if (verdict != sf::mcdist::Verdict::kAccepted) return 0;
  if (sf::mcdist::validate(datagram, h.cluster_id + 1, auth, &got) != sf::mcdist::Verdict::kForeign) std::abort();
  const auto body = std::span<const std::uint8_t>(datagram).subspan(sf::mcdist::kHeaderSize);
  switch (got.type) {
    case sf::mcdist::PacketType::kRequest: {
      auto ranges = sf::mcdist::decode_ranges(body);
      if (!ranges || ranges.value().empty() || ranges.value().size() > sf::mcdist::kMaxRanges) std::abort();
      if (sf::mcdist::encode_ranges(ranges.value()).size() != body.size()) std::abort();
      break;
    }
    case sf::mcdist::PacketType::kStatus:
      (void)sf::mcdist::decode_status(body);
      break;
    case sf::mcdist::PacketType::kData:
      if (got.page_index >= got.page_count || body.size() != got.page_size) std::abort();
      break;
    case sf::mcdist::PacketType::kHeartbeat:
      if (!body.empty()) std::abort();
      break;
  }
  (void)sf::mcdist::describe(got, body);
  // The replay window of one origin: a sequence is new once.
  sf::mcdist::ReplayWindow window;
  const bool first = window.accept(got.sequence);
  if (first && window.accept(got.sequence)) std::abort();
  if (got.sequence > 1) (void)window.accept(got.sequence - 1);
  (void)window.accept(got.sequence + sf::mcdist::ReplayWindow::kWidth);
  return 0;
}
