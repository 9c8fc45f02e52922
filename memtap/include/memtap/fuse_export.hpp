// memtap FUSE export: shows an image as the regular file MOUNTPOINT/image (mode 0644: a VMM
// opens guest RAM read-write and maps it MAP_PRIVATE) and the client's counters as
// MOUNTPOINT/stats. Reads fetch on demand through a PageSource; no-fetch pages read as zeros
// without a fetch; a failed or timed-out fetch makes the read fail with EIO. write(2) and
// truncation are refused with EPERM: the image is frozen, private mappings keep their
// writes to themselves.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "memtap/page_source.hpp"

namespace sf::memtap {

struct FuseExportOptions {
  std::uint32_t readahead_pages = 8;  // kernel read-ahead for the file (max_readahead)
  bool use_no_fetch_map = true;
  unsigned max_threads = 8;
  bool auto_unmount = true;  // fusermount3 unmounts if this process dies
  bool debug = false;
};

// Mounts, serves until unmounted or SIGINT/SIGTERM/SIGHUP, unmounts. Returns 0 on a clean
// exit; on a setup failure returns the error (with the message logged).
Status run_fuse_export(std::shared_ptr<PageSource> source, const std::string& mountpoint,
                       const FuseExportOptions& options = {});

}  // namespace sf::memtap
