// memtap userfaultfd region (see uffd_region.hpp). The pattern follows CRIU's criu/uffd.c:
// one feature mask, errnos sorted into recoverable (EAGAIN, EEXIST) and fatal, and a fault
// that cannot be served is failed loudly (SIGBUS) rather than left waiting.
#include "memtap/uffd_region.hpp"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <vector>

namespace sf::memtap {
namespace {

// Every userfaultfd feature memtap relies on, declared in one place. THREAD_ID: the log line
// of a failed fault names the faulting thread. Nothing else: missing-page faults on private
// anonymous memory need no feature bit.
constexpr std::uint64_t kUffdFeatures = UFFD_FEATURE_THREAD_ID;

enum PageState : std::uint8_t { kMissing = 0, kInFlight = 1, kPresent = 2, kFailed = 3 };

using Clock = std::chrono::steady_clock;

std::string errno_text(int e) { return std::strerror(e); }

// A page-aligned buffer (UFFDIO_COPY wants a page-aligned source).
class AlignedBuffer {
 public:
  explicit AlignedBuffer(std::size_t bytes) : size_(bytes) {
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data_ = p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
  }
  ~AlignedBuffer() {
    if (data_) ::munmap(data_, size_);
  }
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  std::byte* data() { return data_; }

 private:
  std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

class UffdRegionImpl;

// Lets a source's unsolicited-page callback outlive the region safely.
struct SinkGuard {
  std::shared_mutex mutex;
  UffdRegionImpl* region = nullptr;
};

class UffdRegionImpl final : public UffdRegion {
 public:
  UffdRegionImpl(std::shared_ptr<PageSource> source, const UffdRegionOptions& options)
      : source_(std::move(source)), options_(options), md_(source_->metadata()) {}

  ~UffdRegionImpl() override {
    {
      std::unique_lock lock(guard_->mutex);
      guard_->region = nullptr;
    }
    stopping_.store(true);
    if (stop_fd_ >= 0) {
      std::uint64_t one = 1;
      [[maybe_unused]] auto n = ::write(stop_fd_, &one, sizeof one);
    }
    for (auto& t : threads_) t.join();
    if (uffd_ >= 0) ::close(uffd_);
    if (base_) ::munmap(base_, length_);
    if (stop_fd_ >= 0) ::close(stop_fd_);
    if (sigbus_fd_ >= 0) ::close(sigbus_fd_);
  }

  Status init() {
    page_size_ = md_.page_size();
    const auto sys_page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    if (page_size_ % sys_page != 0) {
      return make_error(ErrorCode::kInvalidArgument, "image page size " + std::to_string(page_size_) +
                                                         " is not a multiple of the system page size");
    }
    page_count_ = md_.page_count();
    length_ = page_count_ * page_size_;
    window_ = std::max<std::uint32_t>(1, std::min(options_.prefetch_pages, source_->max_batch_pages()));
    state_ = std::make_unique<std::atomic<std::uint8_t>[]>(page_count_);
    for (std::uint64_t i = 0; i < page_count_; ++i) state_[i].store(kMissing, std::memory_order_relaxed);

    void* p = ::mmap(nullptr, length_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return make_error(ErrorCode::kIo, "cannot map a region of " + std::to_string(length_) + " bytes: " + errno_text(errno));
    base_ = static_cast<std::byte*>(p);
    // A fork()ed child would keep the region without the userfaultfd registration and read
    // every page that was never fetched as zeros, silently. Better no region at all.
    ::madvise(base_, length_, MADV_DONTFORK);
    ::madvise(base_, length_, MADV_NOHUGEPAGE);

    uffd_ = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK));
    if (uffd_ < 0 && errno == EPERM) {
      // Without CAP_SYS_PTRACE only user-mode faults may be handled; kernel accesses to
      // the region (read(2) into it) would then fail with EFAULT.
      uffd_ = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
      if (uffd_ >= 0) spdlog::warn("memtap: userfaultfd limited to user-mode faults (not root and vm.unprivileged_userfaultfd=0)");
    }
    if (uffd_ < 0) {
      return make_error(ErrorCode::kIo, "userfaultfd unavailable: " + errno_text(errno) +
                                            " (run as root or set vm.unprivileged_userfaultfd=1)");
    }
    uffdio_api api{};
    api.api = UFFD_API;
    api.features = kUffdFeatures;
    if (::ioctl(uffd_, UFFDIO_API, &api) != 0) {
      return make_error(ErrorCode::kIo, "UFFDIO_API with features " + fmt::format("{:#x}", kUffdFeatures) +
                                            " failed: " + errno_text(errno) + " (kernel too old?)");
    }
    uffdio_register reg{};
    reg.range.start = reinterpret_cast<std::uint64_t>(base_);
    reg.range.len = length_;
    reg.mode = UFFDIO_REGISTER_MODE_MISSING;
    if (::ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) {
      return make_error(ErrorCode::kIo, "UFFDIO_REGISTER failed: " + errno_text(errno));
    }
    const std::uint64_t needed = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) | (1ull << _UFFDIO_WAKE);
    if ((reg.ioctls & needed) != needed) {
      return make_error(ErrorCode::kIo, "the kernel offers no UFFDIO_COPY/ZEROPAGE/WAKE on this region");
    }
    // A file of size 0: mapping it over a page that cannot be served turns the next access
    // into a real SIGBUS (with si_addr) instead of a silent zero page.
    sigbus_fd_ = ::memfd_create("memtap-unservable", MFD_CLOEXEC);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC);
    if (sigbus_fd_ < 0 || stop_fd_ < 0) return make_error(ErrorCode::kIo, "memfd_create/eventfd failed: " + errno_text(errno));

    guard_->region = this;
    source_->set_unsolicited_sink([guard = guard_](std::uint64_t page, std::span<const std::byte> data) {
      std::shared_lock lock(guard->mutex);
      if (guard->region) guard->region->install_unsolicited(page, data);
    });
    for (unsigned i = 0; i < std::max(1u, options_.handler_threads); ++i) {
      threads_.emplace_back([this] { handler_loop(); });
    }
    return ok_status();
  }

  std::byte* data() override { return base_; }
  std::size_t size() const override { return length_; }
  const ClientCounters& counters() const override { return counters_; }

 private:
  std::byte* page_addr(std::uint64_t page) const { return base_ + page * page_size_; }

  void handler_loop() {
    AlignedBuffer buffer(static_cast<std::size_t>(window_) * page_size_);
    pollfd fds[2] = {{uffd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
    const auto spin = std::chrono::microseconds(options_.spin_us);
    auto last_fault = Clock::now();
    for (;;) {
      // Busy-poll for a while after a fault: the next fault of a sequential toucher usually
      // follows within microseconds, and waking a sleeping handler costs more than that.
      if (Clock::now() - last_fault < spin && !stopping_.load(std::memory_order_relaxed)) {
        uffd_msg msg{};
        ssize_t n = ::read(uffd_, &msg, sizeof msg);
        if (n == sizeof msg && msg.event == UFFD_EVENT_PAGEFAULT) {
          handle_fault(msg.arg.pagefault.address, msg.arg.pagefault.feat.ptid, buffer.data());
          last_fault = Clock::now();
        } else {
          ::sched_yield();  // the faulting thread we just woke may need this CPU
        }
        continue;
      }
      int r = ::poll(fds, 2, -1);
      if (r < 0) {
        if (errno == EINTR) continue;
        spdlog::error("memtap: poll on userfaultfd failed: {}; fault handler stops", errno_text(errno));
        return;
      }
      if (fds[1].revents) return;
      uffd_msg msg{};
      ssize_t n = ::read(uffd_, &msg, sizeof msg);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;  // another handler took the message
        spdlog::error("memtap: read from userfaultfd failed: {}; fault handler stops", errno_text(errno));
        return;
      }
      if (n != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) continue;
      handle_fault(msg.arg.pagefault.address, msg.arg.pagefault.feat.ptid, buffer.data());
      last_fault = Clock::now();
    }
  }

  // Returns 0, or the errno of a failed ioctl other than EEXIST (page already there).
  int copy_pages(std::uint64_t first, std::uint32_t count, const std::byte* src) {
    for (;;) {
      uffdio_copy c{};
      c.dst = reinterpret_cast<std::uint64_t>(page_addr(first));
      c.src = reinterpret_cast<std::uint64_t>(src);
      c.len = static_cast<std::uint64_t>(count) * page_size_;
      if (::ioctl(uffd_, UFFDIO_COPY, &c) == 0) return 0;
      int e = errno;
      if (e == EAGAIN) continue;  // the address space changed under us: retry
      if (e == EEXIST) {
        // Some page of the run is present already (the application dropped and re-touched
        // it, or a racing install): copy the rest one page at a time.
        if (count == 1) return wake(first, 1), 0;
        for (std::uint32_t i = 0; i < count; ++i) {
          if (int r = copy_pages(first + i, 1, src + static_cast<std::size_t>(i) * page_size_); r != 0) return r;
        }
        return 0;
      }
      return e;
    }
  }

  int zero_page(std::uint64_t page) {
    for (;;) {
      uffdio_zeropage z{};
      z.range.start = reinterpret_cast<std::uint64_t>(page_addr(page));
      z.range.len = page_size_;
      if (::ioctl(uffd_, UFFDIO_ZEROPAGE, &z) == 0) return 0;
      if (errno == EAGAIN) continue;
      if (errno == EEXIST) return wake(page, 1), 0;
      return errno;
    }
  }

  void wake(std::uint64_t page, std::uint32_t count) {
    uffdio_range r{};
    r.start = reinterpret_cast<std::uint64_t>(page_addr(page));
    r.len = static_cast<std::uint64_t>(count) * page_size_;
    ::ioctl(uffd_, UFFDIO_WAKE, &r);
  }

  void handle_fault(std::uint64_t addr, std::uint32_t tid, std::byte* buffer) {
    const auto t0 = Clock::now();
    counters_.faults.fetch_add(1, std::memory_order_relaxed);
    const std::uint64_t page = (addr - reinterpret_cast<std::uint64_t>(base_)) / page_size_;
    if (page >= page_count_) return;
    std::uint8_t expected = kMissing;
    if (!state_[page].compare_exchange_strong(expected, kInFlight)) {
      if (expected == kPresent) {
        // A stale message (another handler installed the page) or the application dropped
        // the page (MADV_DONTNEED): anonymous memory then reads as zeros again.
        zero_page(page);
      } else if (expected == kFailed) {
        wake(page, 1);
      }
      // kInFlight: the handler that owns the page wakes this thread when it installs it.
      return;
    }
    if (options_.use_no_fetch_map && md_.no_fetch(page)) {
      if (int e = zero_page(page); e != 0) return fail_page(page, tid, "UFFDIO_ZEROPAGE failed: " + errno_text(e));
      state_[page].store(kPresent);
      counters_.pages_zero_served.fetch_add(1, std::memory_order_relaxed);
      counters_.fault_latency.record(static_cast<std::uint64_t>((Clock::now() - t0).count()));
      return;
    }
    // Claim the prefetch window: the faulting page and the missing pages after it.
    std::vector<std::uint64_t> fetch{page};
    std::vector<std::uint64_t> zeros;
    for (std::uint64_t q = page + 1; q < page_count_ && q < page + window_; ++q) {
      std::uint8_t m = kMissing;
      if (!state_[q].compare_exchange_strong(m, kInFlight)) continue;
      if (options_.use_no_fetch_map && md_.no_fetch(q)) {
        zeros.push_back(q);
      } else {
        fetch.push_back(q);
      }
    }
    std::vector<PageRange> ranges;
    for (auto q : fetch) {
      if (!ranges.empty() && ranges.back().first + ranges.back().count == q) {
        ++ranges.back().count;
      } else {
        ranges.push_back({q, 1});
      }
    }
    const std::size_t bytes = fetch.size() * page_size_;
    counters_.fetches.fetch_add(1, std::memory_order_relaxed);
    Status st = source_->fetch(ranges, {buffer, bytes});
    if (st) {
      for (std::size_t i = 0; i < fetch.size(); ++i) {
        if (!md_.verify_page(fetch[i], {buffer + i * page_size_, page_size_})) {
          st = make_error(ErrorCode::kCorrupt, "page " + std::to_string(fetch[i]) + " from " + source_->describe() +
                                                   " does not match its checksum");
          break;
        }
      }
    }
    if (!st) {
      counters_.fetch_errors.fetch_add(1, std::memory_order_relaxed);
      // Release the claimed prefetch pages and wake any thread that faulted on one of them
      // meanwhile: it faults again and its page gets a fetch of its own.
      for (std::size_t i = 1; i < fetch.size(); ++i) {
        state_[fetch[i]].store(kMissing);
        wake(fetch[i], 1);
      }
      for (auto q : zeros) {
        state_[q].store(kMissing);
        wake(q, 1);
      }
      return fail_page(page, tid, st.error().message);
    }
    std::size_t off = 0;
    for (const auto& r : ranges) {
      if (int e = copy_pages(r.first, r.count, buffer + off); e != 0) {
        for (std::uint32_t i = 0; i < r.count; ++i) {
          state_[r.first + i].store(kMissing);
          wake(r.first + i, 1);
        }
        if (r.first == page) return fail_page(page, tid, "UFFDIO_COPY failed: " + errno_text(e));
        spdlog::warn("memtap: UFFDIO_COPY of prefetched pages {}+{} failed: {}", r.first, r.count, errno_text(e));
      } else {
        for (std::uint32_t i = 0; i < r.count; ++i) state_[r.first + i].store(kPresent);
      }
      off += static_cast<std::size_t>(r.count) * page_size_;
    }
    for (auto q : zeros) {
      if (zero_page(q) == 0) {
        state_[q].store(kPresent);
        counters_.pages_zero_served.fetch_add(1, std::memory_order_relaxed);
      } else {
        state_[q].store(kMissing);
        wake(q, 1);
      }
    }
    counters_.pages_fetched.fetch_add(fetch.size(), std::memory_order_relaxed);
    counters_.bytes_fetched.fetch_add(bytes, std::memory_order_relaxed);
    counters_.fault_latency.record(static_cast<std::uint64_t>((Clock::now() - t0).count()));
  }

  // The page cannot be served: replace it with a mapping that raises SIGBUS on access and
  // wake the faulting thread, which then gets the SIGBUS instead of waiting forever.
  void fail_page(std::uint64_t page, std::uint32_t tid, const std::string& why) {
    spdlog::error("memtap: cannot serve page {} (address {}) to thread {} from {}: {}; the thread gets SIGBUS", page,
                  static_cast<const void*>(page_addr(page)), tid, source_->describe(), why);
    state_[page].store(kFailed);
    void* p = ::mmap(page_addr(page), page_size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, sigbus_fd_, 0);
    if (p == MAP_FAILED) {
      spdlog::critical("memtap: cannot remap failed page {}: {}; aborting rather than hanging", page, errno_text(errno));
      std::abort();
    }
    wake(page, 1);
  }

  void install_unsolicited(std::uint64_t page, std::span<const std::byte> data) {
    if (page >= page_count_ || data.size() < page_size_ || !md_.verify_page(page, data)) return;
    std::uint8_t expected = kMissing;
    if (!state_[page].compare_exchange_strong(expected, kInFlight)) return;
    thread_local std::unique_ptr<AlignedBuffer> buf;
    thread_local std::size_t buf_size = 0;
    if (!buf || buf_size < page_size_) {
      buf = std::make_unique<AlignedBuffer>(page_size_);
      buf_size = page_size_;
    }
    std::memcpy(buf->data(), data.data(), page_size_);
    if (copy_pages(page, 1, buf->data()) == 0) {
      state_[page].store(kPresent);
      counters_.pages_unsolicited.fetch_add(1, std::memory_order_relaxed);
    } else {
      state_[page].store(kMissing);
    }
  }

  std::shared_ptr<PageSource> source_;
  UffdRegionOptions options_;
  const ImageMetadata& md_;
  std::size_t page_size_ = 0;
  std::uint64_t page_count_ = 0;
  std::size_t length_ = 0;
  std::uint32_t window_ = 1;
  std::byte* base_ = nullptr;
  int uffd_ = -1;
  int stop_fd_ = -1;
  int sigbus_fd_ = -1;
  std::unique_ptr<std::atomic<std::uint8_t>[]> state_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};
  ClientCounters counters_;
  std::shared_ptr<SinkGuard> guard_ = std::make_shared<SinkGuard>();
};

}  // namespace

Result<std::unique_ptr<UffdRegion>> UffdRegion::create(std::shared_ptr<PageSource> source,
                                                       const UffdRegionOptions& options) {
  auto region = std::make_unique<UffdRegionImpl>(std::move(source), options);
  if (auto s = region->init(); !s) return s.error();
  return std::unique_ptr<UffdRegion>(std::move(region));
}

}  // namespace sf::memtap
