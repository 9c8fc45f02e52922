// memtap userfaultfd region: maps an anonymous region the size of an image and fills it on
// demand: a missing-page fault fetches the page (and a prefetch window after it) from a
// PageSource and installs it with UFFDIO_COPY; pages in the no-fetch map are installed with
// UFFDIO_ZEROPAGE without a fetch. If a fetch fails or times out, the faulting thread gets
// SIGBUS (never a hang) and a log line names the page and the source.
//
// Hazards: the region is MADV_DONTFORK (a fork()ed child would otherwise see the pages that
// were never fetched as silent zeros); the caller needs CAP_SYS_PTRACE (root) or
// vm.unprivileged_userfaultfd=1 for faults from the kernel (e.g. read(2) into the region).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "memtap/page_source.hpp"
#include "memtap/stats.hpp"

namespace sf::memtap {

struct UffdRegionOptions {
  std::uint32_t prefetch_pages = 8;  // window: the faulting page and the pages after it
  unsigned handler_threads = 2;
  bool use_no_fetch_map = true;
  // After a fault, poll the userfaultfd this long before sleeping; 0 disables.
  unsigned spin_us = 0;
};

class UffdRegion {
 public:
  static Result<std::unique_ptr<UffdRegion>> create(std::shared_ptr<PageSource> source,
                                                    const UffdRegionOptions& options = {});
  virtual ~UffdRegion() = default;
  virtual std::byte* data() = 0;
  virtual std::size_t size() const = 0;
  virtual const ClientCounters& counters() const = 0;
};

}  // namespace sf::memtap
