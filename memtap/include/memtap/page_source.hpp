// memtap page sources: where a client's pages come from. The userfaultfd region and the
// FUSE export depend only on this interface, so a TCP page server, a local file, or an
// mcdist multicast receiver can feed them unchanged.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "memtap/result.hpp"
#include "memtap/image.hpp"

namespace sf::memtap {

struct PageRange {
  std::uint64_t first = 0;
  std::uint32_t count = 0;
};

// Called by a source for a page nobody asked for (multicast push, another clone's fetch):
// `data` is one full page. The sink must be thread-safe and must not block for long.
using UnsolicitedPageSink = std::function<void(std::uint64_t page, std::span<const std::byte> data)>;

class PageSource {
 public:
  virtual ~PageSource() = default;

  // Geometry, no-fetch map and page checksums of the image this source serves.
  virtual const ImageMetadata& metadata() const = 0;

  // Fetches the pages of `ranges`, in order, into `out` (sum of counts * page_size bytes).
  // Thread-safe; bounded by the source's deadline: it returns kTimeout rather than hang.
  // The caller checks checksums (end to end) with metadata().verify_page.
  virtual Status fetch(std::span<const PageRange> ranges, std::span<std::byte> out) = 0;

  // Largest number of pages one fetch() may ask for.
  virtual std::uint32_t max_batch_pages() const = 0;

  // Installs the sink for unsolicited pages; a source that never pushes ignores it.
  virtual void set_unsolicited_sink(UnsolicitedPageSink sink) { (void)sink; }

  // Names the source for log lines, e.g. "tcp 127.0.0.1:7000".
  virtual std::string describe() const = 0;
};

}  // namespace sf::memtap
