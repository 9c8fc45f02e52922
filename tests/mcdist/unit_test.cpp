// mcdist unit tests: the wire format, validation order, request ranges and the replay window.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "mcdist/packet.hpp"

using namespace sf::mcdist;

namespace {

ClusterKey key_of(std::uint8_t fill) {
  ClusterKey k;
  k.bytes.fill(fill);
  return k;
}

std::vector<std::uint8_t> data_packet(std::uint64_t cluster, const ClusterKey& key, std::uint64_t seq,
                                      std::uint8_t tweak = 0) {
  PacketAuthenticator auth(key);
  std::vector<std::uint8_t> page(4096);
  for (std::size_t i = 0; i < page.size(); ++i) page[i] = static_cast<std::uint8_t>(i * 7);
  page[0] ^= tweak;
  Header h;
  h.type = PacketType::kData;
  h.flags = flags::kPushActive;
  h.cluster_id = cluster;
  h.session_id = 99;
  h.sequence = seq;
  h.page_index = 5;
  h.page_count = 10;
  h.page_size = 4096;
  h.aux = 4096;
  std::vector<std::uint8_t> pkt(kHeaderSize + page.size());
  std::memcpy(pkt.data() + kHeaderSize, page.data(), page.size());
  encode_header(h, page, auth, std::span<std::uint8_t, kHeaderSize>(pkt.data(), kHeaderSize));
  return pkt;
}

TEST(McdistPacket, RoundTripAccepted) {
  auto key = key_of(1);
  auto pkt = data_packet(7, key, 3);
  PacketAuthenticator auth(key);
  Header h;
  ASSERT_EQ(validate(pkt, 7, auth, &h), Verdict::kAccepted);
  EXPECT_EQ(h.type, PacketType::kData);
  EXPECT_EQ(h.sequence, 3u);
  EXPECT_EQ(h.page_index, 5u);
  EXPECT_EQ(h.session_id, 99u);
  EXPECT_EQ(h.flags, flags::kPushActive);
  EXPECT_EQ(std::memcmp(pkt.data(), "MCDS", 4), 0);
}

TEST(McdistPacket, ForeignClusterIsDroppedBeforeAuthentication) {
  auto pkt = data_packet(8, key_of(2), 1);  // other cluster and other key
  PacketAuthenticator auth(key_of(1));
  Header h;
  EXPECT_EQ(validate(pkt, 7, auth, &h), Verdict::kForeign);
}

TEST(McdistPacket, FlippedPayloadBitIsCorrupt) {
  auto pkt = data_packet(7, key_of(1), 1);
  pkt[kHeaderSize + 100] ^= 0x10;
  PacketAuthenticator auth(key_of(1));
  Header h;
  EXPECT_EQ(validate(pkt, 7, auth, &h), Verdict::kCorrupt);
}

TEST(McdistPacket, WrongKeyIsUnauthenticated) {
  auto pkt = data_packet(7, key_of(2), 1);
  PacketAuthenticator auth(key_of(1));
  Header h;
  EXPECT_EQ(validate(pkt, 7, auth, &h), Verdict::kUnauthenticated);
}

TEST(McdistPacket, ForgedChecksumStillFailsTheMac) {
  // An attacker who changes the payload and recomputes the (unkeyed) checksum: the MAC catches it.
  auto good = data_packet(7, key_of(1), 1);
  auto forged = data_packet(7, key_of(3), 1, /*tweak=*/0x55);  // valid checksum, other payload
  std::memcpy(forged.data() + 80, good.data() + 80, kMacSize);  // the MAC of the real packet
  PacketAuthenticator auth(key_of(1));
  Header h;
  EXPECT_EQ(validate(forged, 7, auth, &h), Verdict::kUnauthenticated);
}

// Known answer, computed independently with Python (hmac, hashlib, cryptography's AESGCM):
//   sk  = HMAC-SHA256(key, b"mcdist v2 stream key" + le64(cluster) + le64(session) + le64(origin))
//   tag = AESGCM(sk).encrypt(le64(seq) + 4 zero bytes, b"", header80 + payload)
TEST(McdistMac, KnownAnswerAes256GmacWithDerivedStreamKey) {
  ClusterKey key;
  for (std::size_t i = 0; i < key.bytes.size(); ++i) key.bytes[i] = static_cast<std::uint8_t>(i);
  std::array<std::uint8_t, 80> h{};
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = static_cast<std::uint8_t>(i * 3);
  auto put64 = [&](std::size_t off, std::uint64_t v) {
    for (int i = 0; i < 8; ++i) h[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
  };
  put64(16, 42);                     // cluster
  put64(24, 0x1122334455667788ULL);  // session
  put64(32, 0);                      // origin (the server)
  put64(40, 7);                      // sequence
  std::vector<std::uint8_t> payload(4096);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(i * 7);
  auto hex = [](const std::array<std::uint8_t, kMacSize>& m) {
    std::string out;
    char b[3];
    for (auto c : m) std::snprintf(b, sizeof b, "%02x", c), out += b;
    return out;
  };
  PacketAuthenticator auth(key);
  EXPECT_EQ(hex(auth.mac(h, payload)), "657f4c39df966c8ccac21a82609ab94a");
  EXPECT_EQ(hex(auth.mac(h, {})), "0709a8e51700530413fa19b50a754019");
  // The cached stream context gives the same answer the second time.
  EXPECT_EQ(hex(auth.mac(h, payload)), "657f4c39df966c8ccac21a82609ab94a");
}

// Re-encodes the header of pkt (same payload) after `edit`, with the given key.
std::vector<std::uint8_t> reencode(std::vector<std::uint8_t> pkt, const ClusterKey& key,
                                   void (*edit)(Header&)) {
  auto h = parse_header(pkt);
  EXPECT_TRUE(h.ok());
  Header hh = h.value();
  edit(hh);
  PacketAuthenticator auth(key);
  std::span<const std::uint8_t> payload(pkt.data() + kHeaderSize, pkt.size() - kHeaderSize);
  std::array<std::uint8_t, kHeaderSize> head{};
  encode_header(hh, payload, auth, head);
  std::memcpy(pkt.data(), head.data(), kHeaderSize);
  return pkt;
}

TEST(McdistMac, TagIsBoundToTheStreamAndTheSequence) {
  auto key = key_of(1);
  auto pkt = data_packet(7, key, 3);
  PacketAuthenticator auth(key);
  Header h;
  // Another session / origin / sequence (checksum recomputed, the old tag kept): forged.
  for (auto edit : {+[](Header& x) { x.session_id = 100; }, +[](Header& x) { x.origin = 5; },
                    +[](Header& x) { x.sequence = 4; }, +[](Header& x) { x.flags = flags::kPushDone; }}) {
    auto other = reencode(pkt, key, edit);
    EXPECT_EQ(validate(other, 7, auth, &h), Verdict::kAccepted);  // honestly re-MACed: fine
    std::memcpy(other.data() + 80, pkt.data() + 80, kMacSize);    // the original tag: forged
    EXPECT_EQ(validate(other, 7, auth, &h), Verdict::kUnauthenticated);
  }
  // The same fields in two streams never share a tag.
  auto a = reencode(pkt, key, +[](Header& x) { x.session_id = 1; });
  auto b = reencode(pkt, key, +[](Header& x) { x.session_id = 2; });
  EXPECT_NE(std::memcmp(a.data() + 80, b.data() + 80, kMacSize), 0);
}

TEST(McdistMac, ForgedReplayedAndForeignPacketsAreDropped) {
  auto key = key_of(1);
  PacketAuthenticator auth(key);
  Header h;
  // Forged: a payload byte changed and the checksum recomputed, but no key for the MAC.
  auto forged = reencode(data_packet(7, key, 1), key_of(9), +[](Header&) {});
  forged[kHeaderSize + 7] ^= 0x40;
  forged = reencode(forged, key_of(9), +[](Header&) {});
  EXPECT_EQ(validate(forged, 7, auth, &h), Verdict::kUnauthenticated);
  // Corrupted in transit (checksum no longer matches): counted apart from forgeries.
  auto damaged = data_packet(7, key, 2);
  damaged[kHeaderSize + 9] ^= 0x01;
  EXPECT_EQ(validate(damaged, 7, auth, &h), Verdict::kCorrupt);
  // Replayed: an authentic packet passes the MAC again; the replay window drops it.
  auto pkt = data_packet(7, key, 3);
  ReplayWindow window;
  ASSERT_EQ(validate(pkt, 7, auth, &h), Verdict::kAccepted);
  EXPECT_TRUE(window.accept(h.sequence));
  ASSERT_EQ(validate(pkt, 7, auth, &h), Verdict::kAccepted);
  EXPECT_FALSE(window.accept(h.sequence));
  // Foreign: another cluster id (even with our key) is dropped before the MAC.
  EXPECT_EQ(validate(data_packet(8, key, 4), 7, auth, &h), Verdict::kForeign);
}

TEST(McdistMac, ManyStreamsBeyondTheKeyCacheStillVerify) {
  auto key = key_of(1);
  PacketAuthenticator sender(key), receiver(key);
  auto pkt = data_packet(7, key, 1);
  Header h;
  static std::uint64_t origin;
  for (origin = 1; origin <= 5000; ++origin) {  // more streams than the 4096 cached keys
    auto p = reencode(pkt, key, +[](Header& x) { x.origin = origin; });
    ASSERT_EQ(validate(p, 7, receiver, &h), Verdict::kAccepted) << origin;
  }
  origin = 3;  // long evicted or still cached: either way the same answer
  auto p = reencode(pkt, key, +[](Header& x) { x.origin = origin; });
  EXPECT_EQ(validate(p, 7, receiver, &h), Verdict::kAccepted);
}

TEST(McdistPacket, SizeCapsAndVersionAreEnforced) {
  auto key = key_of(1);
  PacketAuthenticator auth(key);
  Header h;
  auto pkt = data_packet(7, key, 1);
  std::vector<std::uint8_t> shortp(pkt.begin(), pkt.begin() + 50);
  EXPECT_EQ(validate(shortp, 7, auth, &h), Verdict::kMalformed);
  auto truncated = pkt;
  truncated.resize(pkt.size() - 1);
  EXPECT_EQ(validate(truncated, 7, auth, &h), Verdict::kMalformed);
  auto version = pkt;
  version[4] = 1;  // the previous (HMAC-SHA256) version
  EXPECT_EQ(validate(version, 7, auth, &h), Verdict::kMalformed);
  auto oversize = pkt;
  oversize.resize(kHeaderSize + kMaxPayload + 1);
  EXPECT_EQ(validate(oversize, 7, auth, &h), Verdict::kMalformed);
  EXPECT_FALSE(parse_header(version).ok());
}

// A server packet's geometry sizes the receiver's tables and the image: an empty image (whose
// size would underflow), one beyond 1 TiB, or a last page of 0 or more than page_size bytes is
// malformed even when it is authenticated.
TEST(McdistPacket, ImageGeometryIsBounded) {
  auto key = key_of(1);
  PacketAuthenticator auth(key);
  Header h;
  auto heartbeat = [&](void (*edit)(Header&)) {
    Header x;
    x.type = PacketType::kHeartbeat;
    x.cluster_id = 7;
    x.session_id = 99;
    x.sequence = 1;
    x.page_count = 10;
    x.page_size = 4096;
    x.aux = 100;
    edit(x);
    std::vector<std::uint8_t> pkt(kHeaderSize);
    encode_header(x, {}, auth, std::span<std::uint8_t, kHeaderSize>(pkt.data(), kHeaderSize));
    return pkt;
  };
  EXPECT_EQ(validate(heartbeat(+[](Header&) {}), 7, auth, &h), Verdict::kAccepted);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.aux = 4096; }), 7, auth, &h), Verdict::kAccepted);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.page_count = kMaxImageBytes / 4096; }), 7, auth, &h),
            Verdict::kAccepted);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.page_count = 0; }), 7, auth, &h), Verdict::kMalformed);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.page_count = kMaxImageBytes / 4096 + 1; }), 7, auth, &h),
            Verdict::kMalformed);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.page_count = ~0ull; }), 7, auth, &h), Verdict::kMalformed);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.aux = 0; }), 7, auth, &h), Verdict::kMalformed);
  EXPECT_EQ(validate(heartbeat(+[](Header& x) { x.aux = 4097; }), 7, auth, &h), Verdict::kMalformed);
  auto data = reencode(data_packet(7, key, 1), key, +[](Header& x) { x.aux = 0; });
  EXPECT_EQ(validate(data, 7, auth, &h), Verdict::kMalformed);
}

TEST(McdistPacket, RangesRoundTripAndCoalesce) {
  auto ranges = to_ranges({9, 3, 4, 5, 100, 3});
  ASSERT_EQ(ranges.size(), 3u);
  EXPECT_EQ(ranges[0].first, 3u);
  EXPECT_EQ(ranges[0].count, 3u);
  EXPECT_EQ(ranges[1].first, 9u);
  EXPECT_EQ(ranges[2].first, 100u);
  auto bytes = encode_ranges(ranges);
  auto back = decode_ranges(bytes);
  ASSERT_TRUE(back.ok());
  ASSERT_EQ(back.value().size(), 3u);
  EXPECT_EQ(back.value()[2].first, 100u);
  std::vector<std::uint8_t> too_many(kRangeSize * (kMaxRanges + 1));
  EXPECT_FALSE(decode_ranges(too_many).ok());
}

TEST(McdistReplayWindow, AcceptsNewRejectsSeenAndTooOld) {
  ReplayWindow w;
  EXPECT_TRUE(w.accept(1));
  EXPECT_TRUE(w.accept(3));
  EXPECT_FALSE(w.accept(3));
  EXPECT_TRUE(w.accept(2));  // reordered, within the window
  EXPECT_FALSE(w.accept(2));
  EXPECT_TRUE(w.accept(10000));
  EXPECT_FALSE(w.accept(4));  // older than the window
  EXPECT_TRUE(w.accept(10000 - 100));
  EXPECT_FALSE(w.accept(0));
}

TEST(McdistKey, ParsesHexAndRejectsGarbage) {
  auto k = ClusterKey::from_hex(std::string(64, 'a') + "\n");
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k.value().bytes[0], 0xAA);
  EXPECT_FALSE(ClusterKey::from_hex("abc").ok());
  EXPECT_FALSE(ClusterKey::from_hex(std::string(64, 'z')).ok());
}

TEST(McdistPacket, DescribeNamesTheFields) {
  auto pkt = data_packet(7, key_of(1), 3);
  auto h = parse_header(pkt);
  ASSERT_TRUE(h.ok());
  auto text = describe(h.value(), std::span<const std::uint8_t>(pkt).subspan(kHeaderSize));
  EXPECT_NE(text.find("DATA"), std::string::npos);
  EXPECT_NE(text.find("page=5/10"), std::string::npos);
  EXPECT_NE(text.find("PUSH_ACTIVE"), std::string::npos);
}

}  // namespace
