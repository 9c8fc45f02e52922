// clone-core: the guest side's free-page report for the no-fetch map.
// Inside a qemu-driver VM, just before it asks sfd for a clone, the guest reads
// /proc/kpageflags (one 64-bit little-endian flags word per page frame, Documentation/
// admin-guide/mm/pagemap.rst) and reports which guest-physical pages are free, as ranges of
// page frame numbers. sfd turns the report into memtap's no-fetch map (sfd/remote_clone.hpp,
// apply_free_page_report), so remote clones never fetch those pages.
//
// What counts as free: a page with KPF_BUDDY (bit 10) heads a free buddy block; the kernel
// sets the flag on the block's first page only. The block's other pages carry no flags at all,
// so the scan extends a block over the following pages whose flags word is 0, within the
// head's natural alignment (a buddy block of order k is 2^k pages, 2^k-aligned) and at most
// 2^10 pages (MAX_ORDER). kpageflags does not give the order, so the extension can also cover
// an allocated page that happens to carry no flags: the report is a HINT, and the host checks
// it against the frozen image (see docs/sfd.md, "Remote clones", for what makes a page served
// as zeros correct). KPF_ZERO_PAGE (bit 24, the kernel's shared zero page) is reported too;
// KPF_HWPOISON (19) and KPF_NOPAGE (20, a hole) pages never are.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "clone-core/result.hpp"

namespace sf {

inline constexpr unsigned kKpfBuddy = 10;
inline constexpr unsigned kKpfHwpoison = 19;
inline constexpr unsigned kKpfNopage = 20;
inline constexpr unsigned kKpfZeroPage = 24;
inline constexpr std::uint64_t kMaxBuddyBlockPages = 1024;  // 2^MAX_ORDER (10)

// Guest page frames [first, first + count).
struct PageRange {
  std::uint64_t first = 0;
  std::uint64_t count = 0;
  bool operator==(const PageRange&) const = default;
};

struct FreePageReport {
  std::vector<PageRange> ranges;  // sorted, disjoint, adjacent ranges merged
  std::uint64_t frames_scanned = 0;
  std::uint64_t free_pages = 0;     // pages in `ranges`
  std::uint64_t buddy_blocks = 0;   // KPF_BUDDY heads seen
  std::uint64_t hwpoison_pages = 0;
};

// Reads a kpageflags file (default: the running kernel's; needs root) and returns its free
// ranges. The guest page size is 4 KiB (x86-64).
Result<FreePageReport> scan_free_pages(const std::string& kpageflags_path = "/proc/kpageflags");
// The same over flags words already read (one per frame, frame i at index i).
FreePageReport free_pages_from_flags(std::span<const std::uint64_t> flags);

// Compact text form for a JSON message: "first+count,first+count,..." in lowercase hex,
// e.g. "100+400,1a00+2" (a 256 MiB guest's report is typically a few KiB).
std::string encode_page_ranges(std::span<const PageRange> ranges);
// Parses encode_page_ranges' output; refuses malformed, overlapping or unsorted ranges and
// more than `max_ranges` of them.
Result<std::vector<PageRange>> decode_page_ranges(const std::string& text, std::size_t max_ranges = 1u << 20);

}  // namespace sf
