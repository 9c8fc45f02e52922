// memtap FUSE export (see fuse_export.hpp): libfuse3's high-level API, multithreaded loop.
// The kernel page cache holds what was read (kernel_cache), so a page is fetched once as
// long as the cache keeps it; read-ahead is bounded by FuseExportOptions::readahead_pages.
#define FUSE_USE_VERSION 312
#include "memtap/fuse_export.hpp"

#include <fuse3/fuse.h>
#include <fuse3/fuse_lowlevel.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "memtap/stats.hpp"

namespace sf::memtap {
namespace {

constexpr const char* kImageName = "image";
constexpr const char* kStatsName = "stats";

struct FuseExport {
  std::shared_ptr<PageSource> source;
  FuseExportOptions options;
  ClientCounters counters;
  // Pages pushed by the source without a request (mcdist): kept until read once.
  std::mutex unsolicited_mutex;
  std::unordered_map<std::uint64_t, std::vector<std::byte>> unsolicited;
};

FuseExport* self() { return static_cast<FuseExport*>(fuse_get_context()->private_data); }

void* on_init(struct fuse_conn_info* conn, struct fuse_config* cfg) {
  FuseExport* fx = self();
  cfg->kernel_cache = 1;  // the image never changes: keep the page cache across opens
  cfg->entry_timeout = 3600;
  cfg->attr_timeout = 3600;
  cfg->negative_timeout = 3600;
  cfg->use_ino = 1;
  conn->max_readahead = fx->options.readahead_pages * 4096u;
  return fx;
}

int on_getattr(const char* path, struct stat* st, struct fuse_file_info*) {
  std::memset(st, 0, sizeof *st);
  st->st_uid = ::getuid();
  st->st_gid = ::getgid();
  if (std::strcmp(path, "/") == 0) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    st->st_ino = 1;
    return 0;
  }
  if (std::strcmp(path + 1, kImageName) == 0) {
    // Writable mode bits: a VMM opens guest RAM O_RDWR (and maps it MAP_PRIVATE).
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_ino = 2;
    st->st_size = static_cast<off_t>(self()->source->metadata().image_length());
    st->st_blksize = static_cast<blksize_t>(self()->source->metadata().page_size());
    st->st_blocks = (st->st_size + 511) / 512;
    return 0;
  }
  if (std::strcmp(path + 1, kStatsName) == 0) {
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_ino = 3;
    st->st_size = 0;  // generated on read (direct_io)
    return 0;
  }
  return -ENOENT;
}

int on_readdir(const char* path, void* buf, fuse_fill_dir_t filler, off_t, struct fuse_file_info*,
               enum fuse_readdir_flags) {
  if (std::strcmp(path, "/") != 0) return -ENOENT;
  filler(buf, ".", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  filler(buf, "..", nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  filler(buf, kImageName, nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  filler(buf, kStatsName, nullptr, 0, static_cast<fuse_fill_dir_flags>(0));
  return 0;
}

int on_open(const char* path, struct fuse_file_info* fi) {
  if (std::strcmp(path + 1, kImageName) == 0) {
    if (fi->flags & O_TRUNC) return -EPERM;
    fi->keep_cache = 1;
    return 0;
  }
  if (std::strcmp(path + 1, kStatsName) == 0) {
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EACCES;
    fi->direct_io = 1;
    return 0;
  }
  return -ENOENT;
}

int read_stats(char* buf, size_t size, off_t off) {
  std::string s = self()->counters.to_json();
  if (static_cast<std::size_t>(off) >= s.size()) return 0;
  std::size_t n = std::min(size, s.size() - static_cast<std::size_t>(off));
  std::memcpy(buf, s.data() + off, n);
  return static_cast<int>(n);
}

int on_read(const char* path, char* buf, size_t size, off_t off, struct fuse_file_info*) {
  if (std::strcmp(path + 1, kStatsName) == 0) return read_stats(buf, size, off);
  if (std::strcmp(path + 1, kImageName) != 0) return -ENOENT;
  FuseExport* fx = self();
  const auto t0 = std::chrono::steady_clock::now();
  const ImageMetadata& md = fx->source->metadata();
  const std::uint64_t length = md.image_length();
  if (off < 0) return -EINVAL;
  if (static_cast<std::uint64_t>(off) >= length) return 0;
  size = static_cast<size_t>(std::min<std::uint64_t>(size, length - static_cast<std::uint64_t>(off)));
  if (size == 0) return 0;
  const std::uint64_t ps = md.page_size();
  const std::uint64_t first = static_cast<std::uint64_t>(off) / ps;
  const std::uint64_t last = (static_cast<std::uint64_t>(off) + size - 1) / ps;
  fx->counters.faults.fetch_add(1, std::memory_order_relaxed);

  // Assemble whole pages into `pages`, then copy the requested slice out.
  std::vector<std::byte> pages((last - first + 1) * ps);
  std::vector<PageRange> ranges;
  std::vector<std::uint64_t> wanted;
  for (std::uint64_t p = first; p <= last; ++p) {
    std::byte* dst = pages.data() + (p - first) * ps;
    if (fx->options.use_no_fetch_map && md.no_fetch(p)) {
      fx->counters.pages_zero_served.fetch_add(1, std::memory_order_relaxed);
      continue;  // already zero
    }
    {
      std::lock_guard lock(fx->unsolicited_mutex);
      if (auto it = fx->unsolicited.find(p); it != fx->unsolicited.end()) {
        std::memcpy(dst, it->second.data(), ps);
        fx->unsolicited.erase(it);
        continue;
      }
    }
    wanted.push_back(p);
  }
  // Fetch the wanted pages in batches of at most max_batch_pages, into a scratch buffer.
  const std::size_t max_batch = fx->source->max_batch_pages();
  std::vector<std::byte> scratch;
  for (std::size_t i = 0; i < wanted.size();) {
    ranges.clear();
    std::size_t n = 0;
    std::size_t j = i;
    while (j < wanted.size() && n < max_batch) {
      if (!ranges.empty() && ranges.back().first + ranges.back().count == wanted[j]) {
        ++ranges.back().count;
      } else {
        ranges.push_back({wanted[j], 1});
      }
      ++n;
      ++j;
    }
    scratch.resize(n * ps);
    fx->counters.fetches.fetch_add(1, std::memory_order_relaxed);
    Status st = fx->source->fetch(ranges, scratch);
    for (std::size_t k = 0; st && k < n; ++k) {
      if (!md.verify_page(wanted[i + k], {scratch.data() + k * ps, ps})) {
        st = make_error(ErrorCode::kCorrupt, "page " + std::to_string(wanted[i + k]) + " does not match its checksum");
      }
    }
    if (!st) {
      fx->counters.fetch_errors.fetch_add(1, std::memory_order_relaxed);
      spdlog::error("memtap mount: read of pages {}..{} failed at page {} from {}: {}; returning EIO", first, last,
                    wanted[i], fx->source->describe(), st.error().message);
      return -EIO;
    }
    for (std::size_t k = 0; k < n; ++k) {
      std::memcpy(pages.data() + (wanted[i + k] - first) * ps, scratch.data() + k * ps, ps);
    }
    fx->counters.pages_fetched.fetch_add(n, std::memory_order_relaxed);
    fx->counters.bytes_fetched.fetch_add(n * ps, std::memory_order_relaxed);
    i = j;
  }
  std::memcpy(buf, pages.data() + (static_cast<std::uint64_t>(off) - first * ps), size);
  fx->counters.fault_latency.record(
      static_cast<std::uint64_t>((std::chrono::steady_clock::now() - t0).count()));
  return static_cast<int>(size);
}

int on_write(const char*, const char*, size_t, off_t, struct fuse_file_info*) {
  // The image is frozen: clones keep their changes in private mappings.
  return -EPERM;
}

int on_truncate(const char* path, off_t size, struct fuse_file_info*) {
  if (std::strcmp(path + 1, kImageName) == 0 &&
      static_cast<std::uint64_t>(size) == self()->source->metadata().image_length()) {
    return 0;  // a VMM may "resize" guest RAM to the size it already has
  }
  return -EPERM;
}

}  // namespace

Status run_fuse_export(std::shared_ptr<PageSource> source, const std::string& mountpoint,
                       const FuseExportOptions& options) {
  FuseExport fx;
  fx.source = std::move(source);
  fx.options = options;
  fx.source->set_unsolicited_sink([&fx](std::uint64_t page, std::span<const std::byte> data) {
    const auto& md = fx.source->metadata();
    if (page >= md.page_count() || !md.verify_page(page, data)) return;
    std::lock_guard lock(fx.unsolicited_mutex);
    fx.unsolicited.emplace(page, std::vector<std::byte>(data.begin(), data.begin() + md.page_size()));
    fx.counters.pages_unsolicited.fetch_add(1, std::memory_order_relaxed);
  });

  struct fuse_operations ops {};
  ops.init = on_init;
  ops.getattr = on_getattr;
  ops.readdir = on_readdir;
  ops.open = on_open;
  ops.read = on_read;
  ops.write = on_write;
  ops.truncate = on_truncate;

  std::vector<std::string> argv_s{"memtap", "-o", "fsname=memtap,subtype=memtap,default_permissions"};
  if (options.auto_unmount) {
    argv_s.push_back("-o");
    argv_s.push_back("auto_unmount");
  }
  if (options.debug) argv_s.push_back("-d");
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  struct fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  Status result = ok_status();
  struct fuse* f = fuse_new(&args, &ops, sizeof ops, &fx);
  if (!f) {
    fuse_opt_free_args(&args);
    fx.source->set_unsolicited_sink({});
    return make_error(ErrorCode::kIo, "fuse_new failed (bad FUSE options?)");
  }
  if (fuse_mount(f, mountpoint.c_str()) != 0) {
    fuse_destroy(f);
    fuse_opt_free_args(&args);
    fx.source->set_unsolicited_sink({});
    return make_error(ErrorCode::kIo, "cannot mount FUSE at " + mountpoint +
                                          " (does the directory exist, is /dev/fuse usable, is fusermount3 installed?)");
  }
  struct fuse_session* se = fuse_get_session(f);
  fuse_set_signal_handlers(se);
  spdlog::info("memtap mount: {} mounted at {}/{} ({} bytes, read-ahead {} pages)", fx.source->describe(), mountpoint,
               kImageName, fx.source->metadata().image_length(), options.readahead_pages);
  struct fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, std::max(1u, options.max_threads));
  fuse_loop_cfg_set_idle_threads(cfg, std::max(1u, options.max_threads / 2));
  int rc = fuse_loop_mt(f, cfg);
  fuse_loop_cfg_destroy(cfg);
  // libfuse returns the number of the signal that ended the loop (SIGTERM: 15) for a clean
  // stop, a negative errno for a failure.
  if (rc < 0) result = make_error(ErrorCode::kIo, "FUSE loop failed: " + std::string(std::strerror(-rc)));
  fuse_remove_signal_handlers(se);
  fuse_unmount(f);
  fuse_destroy(f);
  fuse_opt_free_args(&args);
  fx.source->set_unsolicited_sink({});
  spdlog::info("memtap mount: unmounted {}", mountpoint);
  return result;
}

}  // namespace sf::memtap
