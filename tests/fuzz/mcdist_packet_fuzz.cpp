// Fuzz target: an mcdist datagram before authentication (docs/protocols/mcdist.md, section 3),
// as a sender or receiver reads any UDP packet that reaches its port: parse_header, then
// validate (sizes, type, cluster, MAC) under a fixed cluster key. The seeds are packets MAC'd
// with that key; a mutated packet must not be accepted: whatever validate accepts must be
// exactly what encode_header makes of its fields (the MAC covers every header byte and the
// payload). What parse_header accepts must print (describe).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include "mcdist/packet.hpp"

namespace {

sf::mcdist::ClusterKey fuzz_key() {
  auto k = sf::mcdist::ClusterKey::from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
  if (!k) std::abort();
  return k.value();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static sf::mcdist::PacketAuthenticator auth(fuzz_key());
  const std::span<const std::uint8_t> d(data, size);
  auto h = sf::mcdist::parse_header(d);
  if (h) {
    auto payload = d.subspan(sf::mcdist::kHeaderSize);
    if (payload.size() != h.value().payload_len) std::abort();
    (void)sf::mcdist::describe(h.value(), payload);
  }
  sf::mcdist::Header out;
  const std::uint64_t cluster = h ? h.value().cluster_id : 7;
  const auto verdict = sf::mcdist::validate(d, cluster, auth, &out);
  (void)sf::mcdist::to_string(verdict);
  if (verdict == sf::mcdist::Verdict::kAccepted) {
    // A forgery that passes the 128-bit MAC is not something a fuzzer finds; if it does, the
    // MAC is not checked.
    std::uint8_t again[sf::mcdist::kHeaderSize];
    sf::mcdist::encode_header(out, d.subspan(sf::mcdist::kHeaderSize), auth, again);
    if (std::memcmp(again, data, sf::mcdist::kHeaderSize) != 0) std::abort();
  }
  if (!h && verdict != sf::mcdist::Verdict::kMalformed) std::abort();
  return 0;
}
