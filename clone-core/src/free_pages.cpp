// clone-core: the guest's free-page report from /proc/kpageflags (see free_pages.hpp).
#include "clone-core/free_pages.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace sf {

namespace {

bool has(std::uint64_t flags, unsigned bit) { return ((flags >> bit) & 1u) != 0; }

void add_range(std::vector<PageRange>& out, std::uint64_t first, std::uint64_t count) {
  if (count == 0) return;
  if (!out.empty() && out.back().first + out.back().count == first) {
    out.back().count += count;
  } else {
    out.push_back({first, count});
  }
}

}  // namespace

FreePageReport free_pages_from_flags(std::span<const std::uint64_t> flags) {
  FreePageReport r;
  r.frames_scanned = flags.size();
  std::uint64_t i = 0;
  while (i < flags.size()) {
    const std::uint64_t f = flags[i];
    if (has(f, kKpfHwpoison)) ++r.hwpoison_pages;
    if (has(f, kKpfNopage) || has(f, kKpfHwpoison)) {
      ++i;
      continue;
    }
    if (has(f, kKpfBuddy)) {
      ++r.buddy_blocks;
      // The largest block this head can start: its natural alignment, at most 2^MAX_ORDER.
      const std::uint64_t align = i == 0 ? kMaxBuddyBlockPages
                                         : std::min<std::uint64_t>(kMaxBuddyBlockPages, std::uint64_t{1} << std::countr_zero(i));
      std::uint64_t n = 1;
      while (n < align && i + n < flags.size() && flags[i + n] == 0) ++n;
      add_range(r.ranges, i, n);
      r.free_pages += n;
      i += n;
      continue;
    }
    if (has(f, kKpfZeroPage)) {
      add_range(r.ranges, i, 1);
      ++r.free_pages;
    }
    ++i;
  }
  return r;
}

Result<FreePageReport> scan_free_pages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return make_error(Errc::system, "free pages: cannot open " + path + ": " + std::strerror(errno) +
                                        " (needs root and a kernel with CONFIG_PROC_PAGE_MONITOR)");
  }
  // /proc/kpageflags reports size 0; read until EOF in chunks.
  std::vector<std::uint64_t> flags;
  std::vector<std::uint64_t> buf(1u << 15);
  std::size_t carry = 0;  // bytes of a partial word at the end of the last read
  for (;;) {
    auto* bytes = reinterpret_cast<char*>(buf.data());
    const ssize_t n = ::read(fd, bytes + carry, buf.size() * sizeof(std::uint64_t) - carry);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int e = errno;
      ::close(fd);
      return make_error(Errc::system, "free pages: reading " + path + ": " + std::strerror(e));
    }
    if (n == 0) break;
    const std::size_t total = carry + static_cast<std::size_t>(n);
    const std::size_t words = total / sizeof(std::uint64_t);
    flags.insert(flags.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(words));
    carry = total % sizeof(std::uint64_t);
    if (carry != 0) std::memmove(bytes, bytes + words * sizeof(std::uint64_t), carry);
  }
  ::close(fd);
  if (carry != 0) return make_error(Errc::system, "free pages: " + path + " is not a whole number of 8-byte words");
  if (flags.empty()) return make_error(Errc::system, "free pages: " + path + " is empty");
  // kpageflags is in the kernel's byte order; x86-64 is little-endian.
  static_assert(std::endian::native == std::endian::little, "kpageflags words are read as little-endian");
  return free_pages_from_flags(flags);
}

std::string encode_page_ranges(std::span<const PageRange> ranges) {
  std::string out;
  out.reserve(ranges.size() * 10);
  char buf[40];
  for (const auto& r : ranges) {
    if (!out.empty()) out += ',';
    auto res = std::to_chars(buf, buf + sizeof buf, r.first, 16);
    out.append(buf, res.ptr);
    out += '+';
    res = std::to_chars(buf, buf + sizeof buf, r.count, 16);
    out.append(buf, res.ptr);
  }
  return out;
}

Result<std::vector<PageRange>> decode_page_ranges(const std::string& text, std::size_t max_ranges) {
  std::vector<PageRange> out;
  const char* p = text.data();
  const char* end = p + text.size();
  auto bad = [&](const std::string& why) {
    return make_error(Errc::invalid_argument, "free pages: bad range list at offset " +
                                                  std::to_string(p - text.data()) + ": " + why);
  };
  while (p < end) {
    if (out.size() >= max_ranges) return bad("more than " + std::to_string(max_ranges) + " ranges");
    PageRange r;
    auto a = std::from_chars(p, end, r.first, 16);
    if (a.ec != std::errc() || a.ptr == end || *a.ptr != '+') return bad("expected FIRST+COUNT in hex");
    p = a.ptr + 1;
    auto b = std::from_chars(p, end, r.count, 16);
    if (b.ec != std::errc()) return bad("expected a hex COUNT");
    p = b.ptr;
    if (r.count == 0) return bad("empty range");
    if (r.first + r.count < r.first) return bad("range overflows");
    if (!out.empty() && r.first < out.back().first + out.back().count) return bad("ranges overlap or are unsorted");
    out.push_back(r);
    if (p < end) {
      if (*p != ',') return bad("expected ','");
      ++p;
      if (p == end) return bad("trailing ','");
    }
  }
  return out;
}

}  // namespace sf
