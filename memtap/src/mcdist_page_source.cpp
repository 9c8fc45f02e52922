// memtap over mcdist: the multicast page source (client) and page server (server side).
// See docs/mcdist.md "How memtap plugs it in" and docs/memtap.md "Multicast".
#include "memtap/mcdist_page_source.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>
#include <unordered_map>
#include <vector>

#include "mcdist/receiver.hpp"
#include "mcdist/sender.hpp"

namespace sf::memtap {

namespace {

using Clock = std::chrono::steady_clock;

Result<sf::mcdist::ClusterKey> key_from(const MulticastOptions& o) {
  if (o.key_file.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "multicast needs a cluster key file (--mcast-key-file F, 64 hex digits)");
  }
  auto k = sf::mcdist::ClusterKey::from_file(o.key_file);
  if (!k) return make_error(ErrorCode::kInvalidArgument, k.error().message);
  return k.value();
}

std::string where(const MulticastOptions& o) {
  return "mcdist " + o.group + ":" + std::to_string(o.port) + " on " + o.interface;
}

}  // namespace

// Everything the receiver's callbacks touch lives here; the receiver is stopped before it dies.
struct McdistPageSource::State {
  ImageMetadata md;
  MulticastOptions options;
  std::string name;

  mutable std::mutex mutex;
  std::condition_variable arrived;
  // page_count * page_size in a memory file (memfd): pages are stored with pwrite and read
  // through a shared read-only mapping. Sparse, so only pages that arrived take memory (a
  // std::vector would zero-fill, and so touch, the whole image up front), and a whole-page
  // write into tmpfs is not zeroed first, which first touches of anonymous memory are (with
  // the push streaming the whole image into every clone's host, that zeroing was as much CPU
  // as the copy; see docs/benchmarks/mcdist.md).
  struct PageStore {
    int fd = -1;
    const std::byte* p = nullptr;
    std::size_t n = 0;
    PageStore() = default;
    PageStore(const PageStore&) = delete;
    PageStore& operator=(const PageStore&) = delete;
    ~PageStore() {
      if (p != nullptr) ::munmap(const_cast<std::byte*>(p), n);
      if (fd >= 0) ::close(fd);
    }
    const std::byte* data() const { return p; }
    bool write(std::size_t off, std::span<const std::byte> bytes) {
      while (!bytes.empty()) {
        ssize_t w = ::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        bytes = bytes.subspan(static_cast<std::size_t>(w));
        off += static_cast<std::size_t>(w);
      }
      return true;
    }
  } store;
  std::vector<std::uint8_t> present;   // 1: stored and verified; 2: arrived but failed its checksum; 3: could not be stored
  std::unordered_map<std::uint64_t, int> wanted;  // pages a fetch() waits for -> waiters
  std::optional<std::string> failure;
  std::uint64_t pages_stored = 0, pages_unsolicited = 0, pages_corrupt = 0, fetch_timeouts = 0;

  std::mutex sink_mutex;
  UnsolicitedPageSink sink;

  std::unique_ptr<sf::mcdist::MulticastReceiver> receiver;  // declared last: stopped first

  void on_image(const sf::mcdist::ImageInfo& info) {
    if (info.page_size == md.page_size() && info.image_bytes == md.image_length()) return;
    std::lock_guard lock(mutex);
    failure = name + " serves another image (" + std::to_string(info.image_bytes) + " bytes in pages of " +
              std::to_string(info.page_size) + ") than the one described (" + std::to_string(md.image_length()) +
              " bytes in pages of " + std::to_string(md.page_size()) + "): check the group, port and cluster id";
    arrived.notify_all();
  }

  void on_page(std::uint64_t page, std::span<const std::uint8_t> data) {
    const std::size_t ps = md.page_size();
    if (page >= md.page_count() || data.size() < ps) return;
    auto bytes = std::as_bytes(data.first(ps));
    // mcdist authenticated the packet; a mismatch here means the server multicasts another
    // image under this key: never install it, and make a fetch of it fail loudly.
    const bool good = md.verify_page(page, bytes);
    bool unsolicited = false;
    {
      std::lock_guard lock(mutex);
      if (present[page] != 0) return;
      if (!good) {
        present[page] = 2;
        ++pages_corrupt;
      } else if (store.write(page * ps, bytes)) {
        present[page] = 1;
        ++pages_stored;
      } else {
        present[page] = 3;  // no memory for it: a fetch of it fails naming the page
      }
      if (wanted.count(page)) {
        arrived.notify_all();
      } else if (good) {
        unsolicited = true;
        ++pages_unsolicited;
      }
    }
    if (unsolicited) {
      std::lock_guard lock(sink_mutex);
      if (sink) sink(page, bytes);
    }
  }

  void on_failure(const sf::mcdist::Error& e) {
    std::lock_guard lock(mutex);
    failure = e.message;  // mcdist's message names the group and interface already
    arrived.notify_all();  // a dead server must not leave a faulting thread waiting
  }
};

McdistPageSource::McdistPageSource(std::unique_ptr<State> state) : state_(std::move(state)) {}

McdistPageSource::~McdistPageSource() {
  if (state_->receiver) state_->receiver->stop();
  state_->receiver.reset();
}

Result<std::shared_ptr<McdistPageSource>> McdistPageSource::start(ImageMetadata metadata,
                                                                  const MulticastOptions& options) {
  if (options.interface.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "multicast needs an explicit interface (--mcast-iface IF)");
  }
  auto key = key_from(options);
  if (!key) return key.error();
  auto state = std::make_unique<State>();
  state->md = std::move(metadata);
  state->options = options;
  state->name = where(options);
  state->store.n = state->md.page_count() * state->md.page_size();
  state->store.fd = ::memfd_create("memtap-mcdist-pages", MFD_CLOEXEC);
  if (state->store.fd < 0 || ::ftruncate(state->store.fd, static_cast<off_t>(state->store.n)) != 0)
    return make_error(ErrorCode::kIo, "cannot make a memory file of " + std::to_string(state->store.n) +
                                          " bytes for the page store: " + std::strerror(errno));
  void* mem = ::mmap(nullptr, state->store.n, PROT_READ, MAP_SHARED, state->store.fd, 0);
  if (mem == MAP_FAILED) return make_error(ErrorCode::kIo, "cannot map " + std::to_string(state->store.n) + " bytes for the page store: " + std::strerror(errno));
  state->store.p = static_cast<const std::byte*>(mem);
  state->present.assign(state->md.page_count(), 0);

  sf::mcdist::ReceiverConfig c;
  c.interface = options.interface;
  c.group = options.group;
  c.port = options.port;
  c.cluster_id = options.cluster_id.value_or(state->md.image_id());
  c.key = key.value();
  c.receiver_id = options.receiver_id;
  c.fetch_all = false;  // memtap is lazy: only faulted pages are requested
  c.server_timeout = options.server_timeout;
  c.join_timeout = std::max(options.timeout, std::chrono::milliseconds(10000));
  State* s = state.get();
  c.on_image = [s](const sf::mcdist::ImageInfo& info) { s->on_image(info); };
  auto r = sf::mcdist::MulticastReceiver::start(
      std::move(c), [s](std::uint64_t page, std::span<const std::uint8_t> data) { s->on_page(page, data); },
      [s](const sf::mcdist::Error& e) { s->on_failure(e); });
  if (!r) return make_error(ErrorCode::kIo, s->name + ": " + r.error().message);
  state->receiver = std::move(r.value());
  return std::shared_ptr<McdistPageSource>(new McdistPageSource(std::move(state)));
}

const ImageMetadata& McdistPageSource::metadata() const { return state_->md; }

std::string McdistPageSource::describe() const { return state_->name; }

void McdistPageSource::set_unsolicited_sink(UnsolicitedPageSink sink) {
  std::lock_guard lock(state_->sink_mutex);
  state_->sink = std::move(sink);
}

Status McdistPageSource::fetch(std::span<const PageRange> ranges, std::span<std::byte> out) {
  State& s = *state_;
  const std::size_t ps = s.md.page_size();
  std::vector<std::uint64_t> pages;
  for (const auto& r : ranges) {
    if (r.first > s.md.page_count() || r.count > s.md.page_count() - r.first) {
      return make_error(ErrorCode::kOutOfRange, "fetch of pages outside the image");
    }
    for (std::uint32_t i = 0; i < r.count; ++i) pages.push_back(r.first + i);
  }
  if (out.size() != pages.size() * ps) return make_error(ErrorCode::kInvalidArgument, "fetch buffer has the wrong size");
  const auto deadline = Clock::now() + s.options.timeout;

  std::unique_lock lock(s.mutex);
  std::vector<std::uint64_t> missing;
  for (auto p : pages) {
    if (s.present[p] == 0) missing.push_back(p);
  }
  for (auto p : missing) ++s.wanted[p];
  if (!missing.empty() && !s.failure) {
    lock.unlock();
    s.receiver->request(missing);  // once: mcdist re-requests lost answers itself
    lock.lock();
    s.arrived.wait_until(lock, deadline, [&] {
      if (s.failure) return true;
      for (auto p : missing) {
        if (s.present[p] == 0) return false;
      }
      return true;
    });
  }
  for (auto p : missing) {
    if (--s.wanted[p] == 0) s.wanted.erase(p);
  }
  std::size_t still = 0;
  for (auto p : missing) still += s.present[p] == 0 ? 1 : 0;
  if (still > 0) {
    if (s.failure) return make_error(ErrorCode::kUnavailable, *s.failure);
    ++s.fetch_timeouts;
    return make_error(ErrorCode::kTimeout, s.name + " did not deliver " + std::to_string(still) + " of " +
                                               std::to_string(pages.size()) + " pages within " +
                                               std::to_string(s.options.timeout.count()) + " ms");
  }
  for (std::size_t i = 0; i < pages.size(); ++i) {
    if (s.present[pages[i]] == 2) {
      return make_error(ErrorCode::kCorrupt, s.name + ": page " + std::to_string(pages[i]) +
                                                 " does not match its checksum (the server multicasts another image "
                                                 "under this key and cluster id)");
    }
    if (s.present[pages[i]] == 3) {
      return make_error(ErrorCode::kIo, s.name + ": page " + std::to_string(pages[i]) +
                                            " arrived but could not be stored (no memory left for the page store)");
    }
    std::memcpy(out.data() + i * ps, s.store.data() + pages[i] * ps, ps);
  }
  return ok_status();
}

std::string McdistPageSource::stats_json() const {
  auto r = state_->receiver->stats();
  nlohmann::json j;
  {
    std::lock_guard lock(state_->mutex);
    j["pages_stored"] = state_->pages_stored;
    j["pages_unsolicited"] = state_->pages_unsolicited;
    j["pages_corrupt"] = state_->pages_corrupt;
    j["fetch_timeouts"] = state_->fetch_timeouts;
  }
  j["packets"] = r.packets;
  j["pages_received"] = r.pages_received;
  j["duplicate_pages"] = r.duplicate_pages;
  j["requests_sent"] = r.requests_sent;
  j["pages_requested"] = r.pages_requested;
  j["dropped"] = {{"malformed", r.malformed},
                  {"foreign", r.foreign},
                  {"corrupt", r.corrupt},
                  {"unauthenticated", r.unauthenticated},
                  {"replayed", r.replayed}};
  j["sequence_gaps"] = r.sequence_gaps;
  j["failed"] = r.failed;
  return j.dump();
}

struct MulticastPageServer::State {
  std::shared_ptr<const FrozenImage> image;
  std::unique_ptr<sf::mcdist::MulticastSender> sender;
};

MulticastPageServer::MulticastPageServer(std::unique_ptr<State> state) : state_(std::move(state)) {}

MulticastPageServer::~MulticastPageServer() { stop(); }

Result<std::unique_ptr<MulticastPageServer>> MulticastPageServer::start(std::shared_ptr<const FrozenImage> image,
                                                                        const MulticastOptions& options) {
  if (options.interface.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "multicast needs an explicit interface (--mcast-iface IF)");
  }
  auto key = key_from(options);
  if (!key) return key.error();
  const auto& md = image->metadata();
  sf::mcdist::SenderConfig c;
  c.interface = options.interface;
  c.group = options.group;
  c.port = options.port;
  c.cluster_id = options.cluster_id.value_or(md.image_id());
  c.key = key.value();
  c.image_bytes = md.image_length();
  c.page_size = md.page_size();
  c.push = options.push;
  c.max_rate_bps = options.max_rate_bps;
  auto state = std::make_unique<State>();
  state->image = std::move(image);
  // The frozen image is mapped read-only for the server's lifetime: spans into it stay valid.
  const FrozenImage* img = state->image.get();
  auto s = sf::mcdist::MulticastSender::start(std::move(c), [img](std::uint64_t page) {
    auto p = img->page(page);
    return std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(p.data()), p.size());
  });
  if (!s) return make_error(ErrorCode::kIo, where(options) + ": " + s.error().message);
  state->sender = std::move(s.value());
  return std::unique_ptr<MulticastPageServer>(new MulticastPageServer(std::move(state)));
}

void MulticastPageServer::stop() {
  if (state_->sender) state_->sender->stop();
}

std::uint16_t MulticastPageServer::request_port() const { return state_->sender->request_port(); }

std::string MulticastPageServer::stats_json() const {
  auto s = state_->sender->stats();
  nlohmann::json j;
  j["packets_sent"] = s.packets_sent;
  j["bytes_sent"] = s.bytes_sent;
  j["pages_pushed"] = s.pages_pushed;
  j["pages_answered"] = s.pages_answered;
  j["requests"] = s.requests;
  j["pages_requested"] = s.pages_requested;
  j["requests_deduplicated"] = s.requests_deduplicated;
  j["requests_suppressed"] = s.requests_suppressed;
  j["backoffs"] = s.backoffs;
  j["receivers_seen"] = s.receivers_seen;
  j["push_done"] = s.push_done;
  return j.dump();
}

}  // namespace sf::memtap
