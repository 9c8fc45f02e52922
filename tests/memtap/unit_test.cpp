// memtap unit tests: the image metadata format, the wire header, tokens, the latency
// histogram and the local page source. No network, no userfaultfd, no processes.
#include <gtest/gtest.h>

#include <cstring>

#include "memtap/image.hpp"
#include "memtap/local_page_source.hpp"
#include "memtap/protocol.hpp"
#include "memtap/stats.hpp"
#include "memtap/tcp_page_source.hpp"
#include "sf-common/byte_order.hpp"
#include "test_support.hpp"

using namespace sf::memtap;
using sf::memtap::test::TempDir;

namespace {

OwnerToken test_token() {
  OwnerToken t{};
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<std::uint8_t>(i * 7 + 1);
  return t;
}

ImageMetadata build(const TempDir& dir, std::size_t pages, std::size_t zero_every, std::size_t tail = 0) {
  sf::memtap::test::make_image(dir / "img", pages, zero_every, tail);
  auto md = ImageMetadata::build(dir / "img", 4096, test_token(), true);
  EXPECT_TRUE(md.ok()) << (md.ok() ? "" : md.error().message);
  return std::move(md).value();
}

}  // namespace

TEST(MemtapImage, BuildMarksExactlyTheZeroPages) {
  TempDir dir;
  auto md = build(dir, 100, 4, 100);
  EXPECT_EQ(md.page_count(), 101u);
  EXPECT_EQ(md.image_length(), 100u * 4096 + 100);
  EXPECT_EQ(md.no_fetch_count(), 25u);
  for (std::uint64_t p = 0; p < 100; ++p) EXPECT_EQ(md.no_fetch(p), p % 4 == 0) << p;
  EXPECT_FALSE(md.no_fetch(100));
  EXPECT_EQ(md.bytes_in_page(100), 100u);
}

TEST(MemtapImage, SerializeParseRoundTripKeepsEverything) {
  TempDir dir;
  auto md = build(dir, 37, 3);
  auto bytes = md.serialize(true);
  auto back = ImageMetadata::parse(bytes);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->page_count(), md.page_count());
  EXPECT_EQ(back->image_id(), md.image_id());
  EXPECT_TRUE(back->has_token());
  EXPECT_TRUE(tokens_equal(back->token(), test_token()));
  for (std::uint64_t p = 0; p < md.page_count(); ++p) {
    EXPECT_EQ(back->no_fetch(p), md.no_fetch(p));
    EXPECT_EQ(back->checksum(p), md.checksum(p));
  }
}

TEST(MemtapImage, WireCopyHasNoTokenButTheSameHeaderChecksum) {
  TempDir dir;
  auto md = build(dir, 10, 2);
  auto wire = md.serialize(false);
  auto back = ImageMetadata::parse(wire);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_FALSE(back->has_token());
  for (std::size_t i = 40; i < 72; ++i) EXPECT_EQ(wire[i], std::byte{0});
  EXPECT_EQ(back->header_checksum(), md.header_checksum());
}

TEST(MemtapImage, CorruptHeaderIsRefused) {
  TempDir dir;
  auto bytes = build(dir, 10, 2).serialize(true);
  for (std::size_t off : {0u, 9u, 17u, 25u, 33u, 81u, 121u}) {
    auto copy = bytes;
    copy[off] ^= std::byte{0x40};
    auto r = ImageMetadata::parse(copy);
    ASSERT_FALSE(r.ok()) << "flip at " << off << " accepted";
    EXPECT_EQ(r.error().code, ErrorCode::kFormat);
  }
}

TEST(MemtapImage, CorruptMapOrChecksumsAreRefused) {
  TempDir dir;
  auto bytes = build(dir, 20, 2).serialize(true);
  auto copy = bytes;
  copy[128] ^= std::byte{1};  // the no-fetch bitmap
  auto r = ImageMetadata::parse(copy);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("body checksum"), std::string::npos) << r.error().message;
  copy = bytes;
  copy.back() ^= std::byte{1};  // a page checksum
  EXPECT_FALSE(ImageMetadata::parse(copy).ok());
}

TEST(MemtapImage, TruncatedOrOversizedIsRefused) {
  TempDir dir;
  auto bytes = build(dir, 20, 2).serialize(true);
  auto r = ImageMetadata::parse(std::span(bytes).first(bytes.size() - 8));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("truncated"), std::string::npos) << r.error().message;
  EXPECT_FALSE(ImageMetadata::parse(std::span(bytes).first(100)).ok());
  auto longer = bytes;
  longer.resize(bytes.size() + 8);
  EXPECT_FALSE(ImageMetadata::parse(longer).ok());
}

TEST(MemtapImage, SaveLoadAndFrozenImageServePaddedLastPage) {
  TempDir dir;
  auto md = build(dir, 5, 0, 10);
  ASSERT_TRUE(md.save(dir / "img.memtap").ok());
  EXPECT_EQ(std::filesystem::status(dir / "img.memtap").permissions() & std::filesystem::perms::others_read,
            std::filesystem::perms::none);
  auto img = FrozenImage::open(dir / "img");
  ASSERT_TRUE(img.ok()) << img.error().message;
  auto last = img->page(5);
  ASSERT_EQ(last.size(), 4096u);
  EXPECT_TRUE(img->metadata().verify_page(5, last));
  EXPECT_EQ(last[10], std::byte{0});
}

TEST(MemtapImage, ImageOfWrongLengthIsRefused) {
  TempDir dir;
  auto md = build(dir, 5, 0);
  ASSERT_TRUE(md.save(dir / "img.memtap").ok());
  std::filesystem::resize_file(dir / "img", 4 * 4096);
  auto img = FrozenImage::open(dir / "img");
  ASSERT_FALSE(img.ok());
  EXPECT_NE(img.error().message.find("truncated"), std::string::npos) << img.error().message;
}

TEST(MemtapImage, RebuildZeroMapFollowsTheImage) {
  TempDir dir;
  auto md = build(dir, 8, 0);
  EXPECT_EQ(md.no_fetch_count(), 0u);
  md.set_no_fetch(3, true);
  ASSERT_TRUE(md.rebuild_zero_map(dir / "img").ok());
  EXPECT_EQ(md.no_fetch_count(), 0u);
}

TEST(MemtapToken, HexRoundTripAndBadInput) {
  auto t = test_token();
  auto back = parse_token_hex(token_hex(t) + "\n");
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(tokens_equal(*back, t));
  EXPECT_FALSE(parse_token_hex("abc").ok());
  EXPECT_FALSE(parse_token_hex(std::string(64, 'g')).ok());
  auto other = t;
  other[31] ^= 1;
  EXPECT_FALSE(tokens_equal(t, other));
}

TEST(MemtapProtocol, HeaderRoundTripAndCorruptionRefused) {
  protocol::FrameHeader h;
  h.type = protocol::MessageType::kFetch;
  h.request_id = 42;
  h.body_length = 4096;
  h.body_checksum = 0x1234;
  auto bytes = protocol::encode_header(h);
  auto back = protocol::decode_header(bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->request_id, 42u);
  EXPECT_EQ(back->body_length, 4096u);
  for (std::size_t off : {0u, 4u, 6u, 8u, 16u}) {
    auto copy = bytes;
    copy[off] ^= std::byte{2};
    EXPECT_FALSE(protocol::decode_header(copy).ok()) << off;
  }
  h.body_length = protocol::kMaxBody + 1;
  EXPECT_FALSE(protocol::decode_header(protocol::encode_header(h)).ok());
}

TEST(MemtapProtocol, EndpointParsing) {
  auto e = parse_endpoint("127.0.0.1:7000");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->port, 7000);
  EXPECT_TRUE(parse_endpoint("[::1]:80").ok());
  EXPECT_FALSE(parse_endpoint("localhost:80").ok());  // no name lookup
  EXPECT_FALSE(parse_endpoint("127.0.0.1").ok());
  EXPECT_FALSE(parse_endpoint("127.0.0.1:99999").ok());
}

TEST(MemtapStats, HistogramPercentilesAreClose) {
  LatencyHistogram h;
  for (int i = 1; i <= 1000; ++i) h.record(static_cast<std::uint64_t>(i) * 1000);
  EXPECT_EQ(h.count(), 1000u);
  auto p50 = static_cast<double>(h.percentile_ns(0.5));
  auto p99 = static_cast<double>(h.percentile_ns(0.99));
  EXPECT_NEAR(p50, 500000, 500000 * 0.1);
  EXPECT_NEAR(p99, 990000, 990000 * 0.1);
}

TEST(MemtapLocalSource, FetchesRangesInOrder) {
  TempDir dir;
  auto data = sf::memtap::test::make_image(dir / "img", 16, 0);
  auto md = ImageMetadata::build(dir / "img", 4096, test_token(), true);
  ASSERT_TRUE(md.ok());
  ASSERT_TRUE(md->save(dir / "img.memtap").ok());
  auto img = FrozenImage::open(dir / "img");
  ASSERT_TRUE(img.ok());
  LocalPageSource src(std::make_shared<const FrozenImage>(std::move(img).value()));
  std::vector<PageRange> ranges{{5, 2}, {1, 1}};
  std::vector<std::byte> out(3 * 4096);
  ASSERT_TRUE(src.fetch(ranges, out).ok());
  EXPECT_EQ(std::memcmp(out.data(), &data[5 * 4096], 2 * 4096), 0);
  EXPECT_EQ(std::memcmp(out.data() + 2 * 4096, &data[1 * 4096], 4096), 0);
  std::vector<PageRange> bad{{15, 2}};
  std::vector<std::byte> out2(2 * 4096);
  EXPECT_FALSE(src.fetch(bad, out2).ok());
}

// The little-endian codecs shared by memtap's formats and sfd's remote-clone exchange give
// the same bytes for every byte type, whatever the host's byte order.
TEST(ByteOrder, FieldsAreLittleEndianForEveryByteType) {
  std::byte b[8];
  unsigned char u[8];
  sf::put_le32(b, 0x01020304u);
  sf::put_le32(u, 0x01020304u);
  EXPECT_EQ(std::to_integer<int>(b[0]), 0x04);
  EXPECT_EQ(std::to_integer<int>(b[3]), 0x01);
  EXPECT_EQ(u[0], 0x04);
  EXPECT_EQ(u[3], 0x01);
  EXPECT_EQ(sf::get_le32(b), 0x01020304u);
  EXPECT_EQ(sf::get_le32(u), 0x01020304u);
  sf::put_le64(b, 0x0102030405060708ull);
  EXPECT_EQ(std::to_integer<int>(b[0]), 0x08);
  EXPECT_EQ(std::to_integer<int>(b[7]), 0x01);
  EXPECT_EQ(sf::get_le64(b), 0x0102030405060708ull);
  sf::put_le16(u, 0xfffe);
  EXPECT_EQ(u[0], 0xfe);
  EXPECT_EQ(sf::get_le16(u), 0xfffe);
}
