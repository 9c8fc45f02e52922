// sfd unit tests of the remote-clone pieces that need no VM: the pc machine's RAM layout and
// the no-fetch map built from the guest's free-page report.
#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <vector>

#include "sfd/remote_clone.hpp"

namespace {

// A RAM image of `pages` 4 KiB pages where page i is all-zero iff zero[i].
sf::memtap::ImageMetadata image_with(const std::vector<bool>& zero) {
  char path[] = "/tmp/sft-rcu-XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  {
    std::ofstream out(path, std::ios::binary);
    std::vector<char> page(4096);
    for (bool z : zero) {
      std::fill(page.begin(), page.end(), z ? 0 : 'x');
      out.write(page.data(), static_cast<std::streamsize>(page.size()));
    }
  }
  auto token = sf::memtap::random_token();
  auto md = sf::memtap::ImageMetadata::build(path, 4096, *token, true);
  unlink(path);
  EXPECT_TRUE(md.ok());
  return std::move(md).value();
}

}  // namespace

TEST(RamLayout, PcMachineIsLinearBelow4GAndSplitAbove) {
  const auto small = sf::sfd::pc_ram_layout(256);
  EXPECT_EQ(small.below_4g, 256ull << 20);
  EXPECT_EQ(sf::sfd::ram_file_offset(small, 0x1000), 0x1000u);
  EXPECT_FALSE(sf::sfd::ram_file_offset(small, 256ull << 20).has_value());
  // 3.5 GiB - 1 MiB still fits below 4 GiB entirely.
  const auto mid = sf::sfd::pc_ram_layout(3583);
  EXPECT_EQ(mid.below_4g, 3583ull << 20);
  // From 3.5 GiB on QEMU keeps 3 GiB low and maps the rest from 4 GiB.
  const auto big = sf::sfd::pc_ram_layout(4096);
  EXPECT_EQ(big.below_4g, 3ull << 30);
  EXPECT_EQ(sf::sfd::ram_file_offset(big, (3ull << 30) - 4096), (3ull << 30) - 4096);
  EXPECT_FALSE(sf::sfd::ram_file_offset(big, 3ull << 30).has_value());  // the PCI hole
  EXPECT_EQ(sf::sfd::ram_file_offset(big, 4ull << 30), 3ull << 30);
  EXPECT_EQ(sf::sfd::ram_file_offset(big, (5ull << 30) - 4096), (4ull << 30) - 4096);
  EXPECT_FALSE(sf::sfd::ram_file_offset(big, 5ull << 30).has_value());
}

TEST(NoFetchMap, VerifyZeroKeepsTheZeroMapAndTrustAddsReportedPages) {
  // 256 pages = 1 MiB "guest": pages 0-9 data, 10-99 zero, 100-255 data.
  std::vector<bool> zero(256, false);
  for (int i = 10; i < 100; ++i) zero[i] = true;
  const std::vector<sf::PageRange> report = {{5, 10}, {200, 8}, {300, 4}};  // 300+: not RAM
  const auto layout = sf::sfd::pc_ram_layout(1);

  auto md = image_with(zero);
  auto v = sf::sfd::apply_free_page_report(md, report, layout, sf::sfd::FreeReportPolicy::verify_zero);
  ASSERT_TRUE(v.ok()) << v.error().message;
  EXPECT_EQ(v->zero_pages, 90u);
  EXPECT_EQ(v->reported_pages, 18u);
  EXPECT_EQ(v->reported_zero, 5u);  // 10..14
  EXPECT_EQ(v->reported_added, 0u);
  EXPECT_EQ(v->reported_outside, 4u);
  EXPECT_EQ(v->no_fetch_pages, 90u);
  EXPECT_FALSE(md.no_fetch(5));

  auto md2 = image_with(zero);
  auto t = sf::sfd::apply_free_page_report(md2, report, layout, sf::sfd::FreeReportPolicy::trust);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->reported_added, 13u);  // 5..9 and 200..207
  EXPECT_EQ(t->no_fetch_pages, 103u);
  EXPECT_TRUE(md2.no_fetch(5));
  EXPECT_TRUE(md2.no_fetch(207));
  EXPECT_FALSE(md2.no_fetch(208));

  // A report for a guest of another size is refused.
  auto wrong = sf::sfd::apply_free_page_report(md2, report, sf::sfd::pc_ram_layout(2), sf::sfd::FreeReportPolicy::trust);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(wrong.error().message.find("RAM"), std::string::npos);
}
