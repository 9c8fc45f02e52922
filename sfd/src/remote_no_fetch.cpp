// sfd: where a pc guest's RAM lives in its RAM file, and the no-fetch map of a remote clone's
// image from the guest's free-page report (remote_clone.hpp).
#include <algorithm>

#include "sfd/remote_clone.hpp"

namespace sf::sfd {

namespace {
constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t k4G = 4ull << 30;
}  // namespace

RamLayout pc_ram_layout(std::uint64_t mem_mib) {
  RamLayout l;
  l.ram_bytes = mem_mib << 20;
  // QEMU 7.2 pc_piix.c: lowmem = 0xe0000000, or 3 GiB (gigabyte_align) if RAM >= 0xe0000000.
  const std::uint64_t lowmem = l.ram_bytes >= 0xe0000000ull ? 0xc0000000ull : 0xe0000000ull;
  l.below_4g = std::min(l.ram_bytes, lowmem);
  return l;
}

std::optional<std::uint64_t> ram_file_offset(const RamLayout& l, std::uint64_t gpa) {
  if (gpa < l.below_4g) return gpa;
  if (gpa >= k4G && gpa - k4G < l.ram_bytes - l.below_4g) return l.below_4g + (gpa - k4G);
  return std::nullopt;
}

Result<NoFetchStats> apply_free_page_report(sf::memtap::ImageMetadata& md, std::span<const sf::PageRange> frames,
                                            const RamLayout& layout, FreeReportPolicy policy) {
  if (md.page_size() != kPage) return make_error("no-fetch map: the image's page size is " + std::to_string(md.page_size()) + ", not 4096");
  if (md.image_length() != layout.ram_bytes)
    return make_error("no-fetch map: the image is " + std::to_string(md.image_length()) + " bytes but the guest has " +
                      std::to_string(layout.ram_bytes) + " bytes of RAM");
  NoFetchStats s;
  s.pages = md.page_count();
  s.zero_pages = md.no_fetch_count();
  for (const auto& r : frames) {
    for (std::uint64_t f = r.first; f < r.first + r.count; ++f) {
      if (f > (~0ull >> 12)) {
        ++s.reported_outside;
        continue;
      }
      const auto off = ram_file_offset(layout, f * kPage);
      if (!off) {
        ++s.reported_outside;
        continue;
      }
      const std::uint64_t page = *off / kPage;
      ++s.reported_pages;
      if (md.no_fetch(page)) {
        ++s.reported_zero;
      } else if (policy == FreeReportPolicy::trust) {
        md.set_no_fetch(page, true);
        ++s.reported_added;
      }
    }
  }
  s.no_fetch_pages = md.no_fetch_count();
  return s;
}

}  // namespace sf::sfd
