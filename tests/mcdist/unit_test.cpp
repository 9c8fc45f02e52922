// mcdist unit tests: the wire format, validation order, request ranges and the replay window.
#include <gtest/gtest.h>

#include <cstring>

#include "mcdist/packet.hpp"

using namespace mcdist;

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
  version[4] = 2;
  EXPECT_EQ(validate(version, 7, auth, &h), Verdict::kMalformed);
  auto oversize = pkt;
  oversize.resize(kHeaderSize + kMaxPayload + 1);
  EXPECT_EQ(validate(oversize, 7, auth, &h), Verdict::kMalformed);
  EXPECT_FALSE(parse_header(version).ok());
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
