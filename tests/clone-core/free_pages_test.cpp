// clone-core unit tests of the guest's free-page report over synthetic kpageflags files.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "clone-core/free_pages.hpp"

namespace {

constexpr std::uint64_t kBuddy = std::uint64_t{1} << sf::kKpfBuddy;
constexpr std::uint64_t kLru = std::uint64_t{1} << 5;
constexpr std::uint64_t kReserved = std::uint64_t{1} << 32;
constexpr std::uint64_t kNopage = std::uint64_t{1} << sf::kKpfNopage;
constexpr std::uint64_t kPoison = std::uint64_t{1} << sf::kKpfHwpoison;
constexpr std::uint64_t kZero = std::uint64_t{1} << sf::kKpfZeroPage;

std::string write_flags(const std::vector<std::uint64_t>& flags) {
  char path[] = "/tmp/sft-kpageflags-XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(flags.data()), static_cast<std::streamsize>(flags.size() * 8));
  return path;
}

}  // namespace

TEST(FreePages, BuddyBlocksExtendOverFlaglessTailsWithinTheirAlignment) {
  std::vector<std::uint64_t> f(64, kLru);
  // Reserved low pages, then an order-3 free block at 8 (8 pages, tails have no flags).
  f[0] = f[1] = kReserved;
  f[8] = kBuddy;
  for (int i = 9; i < 16; ++i) f[i] = 0;
  // A buddy head at 20 (aligned to 4): its flagless neighbours stop at 24 (alignment).
  f[20] = kBuddy;
  for (int i = 21; i < 30; ++i) f[i] = 0;
  // An allocated page with flags after a head at 32 ends the block at once.
  f[32] = kBuddy;
  f[33] = kLru;
  // Holes and poison are never free; the zero page is.
  f[40] = kNopage;
  f[41] = kPoison | kBuddy;
  f[50] = kZero;
  const auto path = write_flags(f);
  auto r = sf::scan_free_pages(path);
  std::remove(path.c_str());
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->frames_scanned, 64u);
  const std::vector<sf::PageRange> want = {{8, 8}, {20, 4}, {32, 1}, {50, 1}};
  EXPECT_EQ(r->ranges, want);
  EXPECT_EQ(r->free_pages, 14u);
  EXPECT_EQ(r->buddy_blocks, 3u);
  EXPECT_EQ(r->hwpoison_pages, 1u);
}

TEST(FreePages, AdjacentBlocksMergeAndBlocksStopAtMaxOrder) {
  std::vector<std::uint64_t> f(3000, 0);
  f[0] = kBuddy;     // pfn 0: any alignment, capped at 1024
  f[1024] = kBuddy;  // the next max-order block: merges into one range
  f[2048] = kLru;    // allocated (flags) after two full blocks
  for (std::size_t i = 2049; i < f.size(); ++i) f[i] = kLru;
  auto r = sf::free_pages_from_flags(f);
  const std::vector<sf::PageRange> want = {{0, 2048}};
  EXPECT_EQ(r.ranges, want);
  // Flagless pages not behind a buddy head are never free (allocated kernel pages look so).
  std::vector<std::uint64_t> g(16, 0);
  EXPECT_TRUE(sf::free_pages_from_flags(g).ranges.empty());
}

TEST(FreePages, MissingOrTruncatedFileIsAnError) {
  auto r = sf::scan_free_pages("/nonexistent/kpageflags");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("/nonexistent/kpageflags"), std::string::npos);
  char path[] = "/tmp/sft-kpageflags-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(write(fd, "12345", 5), 5);
  close(fd);
  auto t = sf::scan_free_pages(path);
  std::remove(path);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("8-byte"), std::string::npos);
}

TEST(FreePages, RangesRoundTripThroughTheTextForm) {
  const std::vector<sf::PageRange> ranges = {{0x100, 0x400}, {0x1a00, 2}, {0xffffffff0, 0x10}};
  const std::string text = sf::encode_page_ranges(ranges);
  EXPECT_EQ(text, "100+400,1a00+2,ffffffff0+10");
  auto back = sf::decode_page_ranges(text);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, ranges);
  EXPECT_TRUE(sf::decode_page_ranges("")->empty());
  for (const char* bad : {"10", "10+", "10+0", "10+5,12+1", "20+1,10+1", "10+1,", "x+1", "10+1;11+1"}) {
    EXPECT_FALSE(sf::decode_page_ranges(bad).ok()) << bad;
  }
  EXPECT_FALSE(sf::decode_page_ranges("1+1,3+1,5+1", 2).ok());
}

// The running kernel's own kpageflags (this host's, as a guest's would be read): free memory is
// found, ranges are sorted and disjoint, and the total is within MemTotal.
TEST(FreePages, TheRunningKernelHasFreeBuddyBlocks) {
  if (access("/proc/kpageflags", R_OK) != 0) GTEST_SKIP() << "/proc/kpageflags needs root";
  auto r = sf::scan_free_pages();
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_GT(r->buddy_blocks, 0u);
  EXPECT_GT(r->free_pages, 0u);
  EXPECT_LE(r->free_pages, r->frames_scanned);
  for (std::size_t i = 1; i < r->ranges.size(); ++i) {
    EXPECT_GT(r->ranges[i].first, r->ranges[i - 1].first + r->ranges[i - 1].count);  // merged: never adjacent
  }
  auto back = sf::decode_page_ranges(sf::encode_page_ranges(r->ranges));
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->size(), r->ranges.size());
}
