// mcdist: the client side (see mcdist/receiver.hpp). One thread owns the sockets: it validates
// and delivers pages, sends demand requests, repairs after the end of the push, reports loss
// and watches the server's liveness.
#include "mcdist/receiver.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <thread>

#include "mcdist/net.hpp"

#ifndef UDP_GRO
#define UDP_GRO 104  // linux/udp.h; older libc headers lack it
#endif

namespace sf::mcdist {
namespace {
using Clock = std::chrono::steady_clock;
// GRO buffers per recvmmsg: 4 x 64 KiB, so the pages just copied in are still in the L2 cache
// when they are checked and stored (32 buffers, 2 MiB, cost ~30 % more CPU per receiver with
// 16 receivers on 2 cores).
constexpr std::size_t kRecvBatch = 4;
constexpr std::size_t kBufSize = 65536;  // a whole GRO batch (or one datagram)
constexpr auto kStatusEvery = std::chrono::milliseconds(100);
constexpr auto kRepairEvery = std::chrono::milliseconds(20);
// stats() is refreshed this often (waiters are woken at once on completion or failure).
constexpr auto kPublishEvery = std::chrono::milliseconds(10);
// While the stream flows and no fault waits, the thread lets this much of it collect in the
// socket buffer before it wakes again: one wakeup per ~60 pages instead of one per GSO batch
// (many clones share few cores). A request() wakes it at once.
constexpr auto kCoalesce = std::chrono::milliseconds(2);

std::uint64_t random64() {
  std::uint64_t v = 0;
  while (v == 0)
    if (getrandom(&v, sizeof v, 0) != sizeof v)
      v = static_cast<std::uint64_t>(Clock::now().time_since_epoch().count());
  return v;
}
}  // namespace

struct MulticastReceiver::Impl {
  ReceiverConfig cfg;
  PageCallback on_page;
  FailureCallback on_failure;
  net::InterfaceInfo iface;
  in_addr group{};
  int gfd = -1, ufd = -1, evfd = -1;
  std::unique_ptr<PacketAuthenticator> auth;
  std::uint64_t origin = random64();
  std::uint64_t req_seq = 0;

  // Server state, owned by the thread.
  bool session_known = false;
  std::uint64_t session = 0;
  ReplayWindow window;
  bool server_known = false;
  sockaddr_in server{};
  std::atomic<std::uint64_t> page_count{0};
  std::atomic<std::uint32_t> page_size{0};
  std::atomic<std::uint32_t> tail{0};
  bool push_done = false;
  std::vector<std::uint8_t> have;
  std::vector<std::int64_t> requested_ms;  // when a page was last requested (0 = never)
  std::uint64_t held = 0;
  std::vector<std::uint64_t> demand_outstanding;
  Clock::time_point start_time, last_server_packet, last_status, last_repair;
  std::uint64_t interval_lost = 0, interval_received = 0;

  std::mutex incoming_mu;
  std::vector<std::uint64_t> incoming;  // request() calls, handed to the thread

  ReceiverStats local;
  mutable std::mutex mu;
  std::condition_variable cv;
  ReceiverStats published;
  std::optional<Error> failure;
  std::atomic<bool> running{true};
  std::thread thread;

  static std::int64_t ms(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::time_point{}).count();
  }

  // Copies the thread's counters for stats(); `wake` also wakes wait_complete() (only on
  // completion and failure: waking the waiter on every packet batch costs a context switch).
  void publish(bool wake) {
    std::lock_guard lock(mu);
    published = local;
    if (wake) cv.notify_all();
  }

  void fail(std::string message) {
    if (local.failed || local.complete) return;
    local.failed = true;
    Error e = make_error(std::move(message));
    {
      std::lock_guard lock(mu);
      failure = e;
    }
    publish(true);
    if (on_failure) on_failure(e);
  }

  void send_client(PacketType type, std::uint16_t fl, std::span<const std::uint8_t> payload,
                   std::uint64_t page_index) {
    if (!server_known) return;
    Header h;
    h.type = type;
    h.flags = fl;
    h.cluster_id = cfg.cluster_id;
    h.session_id = session_known ? session : 0;
    h.origin = origin;
    h.sequence = ++req_seq;
    h.page_index = page_index;
    h.page_count = held;
    h.aux = cfg.receiver_id;
    std::array<std::uint8_t, kHeaderSize> head{};
    encode_header(h, payload, *auth, head);
    iovec iov[2] = {{head.data(), head.size()},
                    {const_cast<std::uint8_t*>(payload.data()), payload.size()}};
    msghdr m{};
    m.msg_name = &server;
    m.msg_namelen = sizeof server;
    m.msg_iov = iov;
    m.msg_iovlen = payload.empty() ? 1 : 2;
    sendmsg(ufd, &m, 0);  // loss of a request is handled by re-requesting
  }

  void send_request(std::vector<std::uint64_t> pages, bool demand) {
    auto ranges = to_ranges(std::move(pages));
    for (std::size_t i = 0; i < ranges.size(); i += kMaxRanges) {
      std::size_t n = std::min(kMaxRanges, ranges.size() - i);
      auto payload = encode_ranges({ranges.data() + i, n});
      send_client(PacketType::kRequest, demand ? flags::kDemand : 0, payload, 0);
      ++local.requests_sent;
    }
  }

  void send_status() {
    auto payload = encode_status({interval_lost, interval_received});
    send_client(PacketType::kStatus, local.complete ? flags::kComplete : 0, payload,
                window.highest());
    interval_lost = interval_received = 0;
    ++local.status_sent;
  }

  void set_geometry(const Header& h) {
    page_count = h.page_count;
    page_size = h.page_size;
    tail = h.aux;
    local.page_count = h.page_count;
    have.assign(h.page_count, 0);
    requested_ms.assign(h.page_count, 0);
    if (cfg.on_image)
      cfg.on_image({h.page_count, h.page_size, (h.page_count - 1) * h.page_size + h.aux});
  }

  void become_complete() {
    local.complete = true;
    for (int i = 0; i < 3; ++i) send_status();
    publish(true);
  }

  void handle(std::span<const std::uint8_t> d, const sockaddr_in& from) {
    Header h;
    switch (validate(d, cfg.cluster_id, *auth, &h)) {
      case Verdict::kMalformed: ++local.malformed; return;
      case Verdict::kForeign: ++local.foreign; return;
      case Verdict::kCorrupt: ++local.corrupt; return;
      case Verdict::kUnauthenticated: ++local.unauthenticated; return;
      case Verdict::kAccepted: break;
    }
    if (h.origin != 0 || (h.type != PacketType::kData && h.type != PacketType::kHeartbeat)) {
      ++local.malformed;  // client packets never go to the group
      return;
    }
    if (!session_known) {
      session_known = true;
      session = h.session_id;
      set_geometry(h);
      if (!server_known) {
        server = from;
        server_known = true;
      }
    } else if (h.session_id != session) {
      ++local.replayed;  // a recorded stream of an earlier session
      return;
    } else if (h.page_count != page_count || h.page_size != page_size) {
      ++local.malformed;
      return;
    }
    std::uint64_t before = window.highest();
    if (!window.accept(h.sequence)) {
      ++local.replayed;
      return;
    }
    if (h.sequence > before + 1 && before != 0) {
      local.sequence_gaps += h.sequence - before - 1;
      interval_lost += h.sequence - before - 1;
    } else if (h.sequence < before) {
      // A late packet fills a gap counted as lost.
      ++local.reordered;
      if (interval_lost) --interval_lost;
      if (local.sequence_gaps) --local.sequence_gaps;
    }
    ++interval_received;
    ++local.packets;
    last_server_packet = Clock::now();
    if ((h.flags & flags::kPushDone) || !(h.flags & flags::kPushActive)) push_done = true;
    if (h.type == PacketType::kHeartbeat) {
      ++local.heartbeats;
      if (h.flags & flags::kClosing) {
        bool wanting = cfg.fetch_all ? !local.complete : !demand_outstanding.empty();
        if (wanting)
          fail("mcdist receiver: the server closed the stream (group " + cfg.group + " on " +
               cfg.interface + ") while " + std::to_string(page_count - held) +
               " pages were still missing");
        else if (!cfg.fetch_all)
          fail("mcdist receiver: the server closed the stream (group " + cfg.group + " on " +
               cfg.interface + "); no further pages can be fetched");
      }
      return;
    }
    std::uint64_t p = h.page_index;
    if (have[p]) {
      ++local.duplicate_pages;
      return;
    }
    have[p] = 1;
    ++held;
    ++local.pages_received;
    if (on_page) on_page(p, d.subspan(kHeaderSize, h.page_size));
    if (cfg.fetch_all && held == page_count) become_complete();
  }

  // With UDP_GRO on the socket, one buffer may hold several datagrams of equal size
  // (the sender's GSO batch arrives whole); the control message says the segment size.
  // Returns the number of datagrams handled.
  std::size_t receive_all() {
    static thread_local std::vector<std::uint8_t> storage(kRecvBatch * kBufSize);
    std::array<iovec, kRecvBatch> iov;
    std::array<sockaddr_in, kRecvBatch> from;
    std::array<mmsghdr, kRecvBatch> msgs{};
    struct Control {
      alignas(cmsghdr) char bytes[CMSG_SPACE(sizeof(int))];
    };
    std::array<Control, kRecvBatch> control;
    std::size_t handled = 0;
    for (int rounds = 0; rounds < 64; ++rounds) {
      for (std::size_t i = 0; i < kRecvBatch; ++i) {
        iov[i] = {storage.data() + i * kBufSize, kBufSize};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
        msgs[i].msg_hdr.msg_control = control[i].bytes;
        msgs[i].msg_hdr.msg_controllen = sizeof control[i].bytes;
      }
      int n = recvmmsg(gfd, msgs.data(), kRecvBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) return handled;
      handled += static_cast<std::size_t>(n);
      for (int i = 0; i < n; ++i) {
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
          ++local.malformed;
          continue;
        }
        std::size_t len = msgs[i].msg_len, seg = len;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c)) {
          if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
            int size = 0;
            std::memcpy(&size, CMSG_DATA(c), sizeof size);
            if (size > 0) seg = static_cast<std::size_t>(size);
          }
        }
        const std::uint8_t* base = storage.data() + i * kBufSize;
        for (std::size_t off = 0; off < len; off += seg)
          handle({base + off, std::min(seg, len - off)}, from[i]);
      }
      if (n < static_cast<int>(kRecvBatch)) return handled;
    }
    return handled;
  }

  void serve_demand(Clock::time_point now) {
    {
      std::lock_guard lock(incoming_mu);
      demand_outstanding.insert(demand_outstanding.end(), incoming.begin(), incoming.end());
      incoming.clear();
    }
    std::uint64_t count = page_count;
    if (demand_outstanding.empty() || !server_known || count == 0) return;
    auto now_ms = ms(now);
    std::vector<std::uint64_t> to_send;
    std::erase_if(demand_outstanding, [&](std::uint64_t p) { return p >= count || have[p]; });
    for (auto p : demand_outstanding) {
      if (requested_ms[p] == 0 || now_ms - requested_ms[p] >= cfg.demand_retry.count()) {
        requested_ms[p] = now_ms;
        to_send.push_back(p);
      }
    }
    if (!to_send.empty()) {
      local.pages_requested += to_send.size();
      send_request(std::move(to_send), true);
    }
  }

  void repair(Clock::time_point now) {
    if (!cfg.fetch_all || local.complete || !push_done || !server_known || page_count == 0) return;
    auto now_ms = ms(now);
    std::size_t outstanding = 0;
    std::vector<std::uint64_t> to_send;
    for (std::uint64_t p = 0; p < page_count; ++p) {
      if (have[p]) continue;
      if (requested_ms[p] != 0 && now_ms - requested_ms[p] < cfg.repair_retry.count()) {
        ++outstanding;
        continue;
      }
      if (outstanding + to_send.size() >= cfg.repair_window) continue;
      to_send.push_back(p);
      requested_ms[p] = now_ms;
    }
    if (!to_send.empty()) {
      local.pages_requested += to_send.size();
      send_request(std::move(to_send), false);
    }
  }

  void run() {
    start_time = last_server_packet = last_status = last_repair = Clock::now();
    auto last_publish = start_time;
    while (running.load(std::memory_order_relaxed)) {
      pollfd pfd[2] = {{gfd, POLLIN, 0}, {evfd, POLLIN, 0}};
      poll(pfd, 2, 10);
      if (pfd[1].revents & POLLIN) {
        std::uint64_t v;
        [[maybe_unused]] auto r = read(evfd, &v, sizeof v);
      }
      std::size_t received = receive_all();
      auto now = Clock::now();
      if (!local.failed) {
        serve_demand(now);
        if (now - last_repair >= kRepairEvery) {
          repair(now);
          last_repair = now;
        }
        if (now - last_status >= kStatusEvery && server_known) {
          send_status();
          last_status = now;
        }
        bool done = cfg.fetch_all && local.complete;
        if (!done && session_known && now - last_server_packet > cfg.server_timeout)
          fail("mcdist receiver: no packet from the server for " +
               std::to_string(cfg.server_timeout.count()) + " ms (group " + cfg.group + ":" +
               std::to_string(cfg.port) + " on " + cfg.interface + ", " +
               std::to_string(page_count - held) +
               " pages missing): the server died or the link is down");
        if (!session_known && now - start_time > cfg.join_timeout)
          fail("mcdist receiver: heard no server on group " + cfg.group + ":" +
               std::to_string(cfg.port) + " on " + cfg.interface + " within " +
               std::to_string(cfg.join_timeout.count()) +
               " ms: is the sender running on this link with the same cluster id and key?");
      }
      if (now - last_publish >= kPublishEvery) {
        publish(false);
        last_publish = now;
      }
      // The stream is flowing and nothing waits for a particular page: let a few ms of it
      // collect (the socket buffer holds ~1 s). A request() ends the pause at once.
      bool streaming = received > 0 && !push_done && !local.failed && !local.complete;
      if (streaming && demand_outstanding.empty()) {
        pollfd ev{evfd, POLLIN, 0};
        poll(&ev, 1, static_cast<int>(kCoalesce.count()));
      }
    }
    publish(true);
  }
};

Result<std::unique_ptr<MulticastReceiver>> MulticastReceiver::start(ReceiverConfig cfg,
                                                                    PageCallback on_page,
                                                                    FailureCallback on_failure) {
  auto impl = std::make_unique<Impl>();
  auto iface = net::resolve_interface(cfg.interface);
  if (!iface) return iface.error();
  auto group = net::parse_multicast_group(cfg.group);
  if (!group) return group.error();
  if (cfg.port == 0) return make_error("mcdist receiver: no group port given");
  if (!cfg.server.empty()) {
    auto ep = net::parse_endpoint(cfg.server);
    if (!ep) return ep.error();
    impl->server = ep.value();
    impl->server_known = true;
  }
  auto gfd = net::open_group_socket(iface.value(), group.value(), cfg.port);
  if (!gfd) return gfd.error();
  impl->gfd = gfd.value();
  // Optional: receive the sender's GSO batches whole (fewer socket operations per page).
  int one = 1;
  setsockopt(impl->gfd, SOL_UDP, UDP_GRO, &one, sizeof one);
  auto ufd = net::open_unicast_socket(iface.value());
  if (!ufd) {
    ::close(impl->gfd);
    return ufd.error();
  }
  impl->ufd = ufd.value();
  impl->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  impl->iface = iface.value();
  impl->group = group.value();
  impl->auth = std::make_unique<PacketAuthenticator>(cfg.key);
  impl->cfg = std::move(cfg);
  impl->on_page = std::move(on_page);
  impl->on_failure = std::move(on_failure);
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<MulticastReceiver>(new MulticastReceiver(std::move(impl)));
}

MulticastReceiver::MulticastReceiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MulticastReceiver::~MulticastReceiver() { stop(); }

void MulticastReceiver::stop() {
  if (!impl_ || impl_->gfd < 0) return;
  impl_->running = false;
  if (impl_->thread.joinable()) impl_->thread.join();
  ::close(impl_->gfd);
  ::close(impl_->ufd);
  ::close(impl_->evfd);
  impl_->gfd = -1;
}

void MulticastReceiver::request(std::span<const std::uint64_t> pages) {
  {
    std::lock_guard lock(impl_->incoming_mu);
    impl_->incoming.insert(impl_->incoming.end(), pages.begin(), pages.end());
  }
  std::uint64_t one = 1;
  [[maybe_unused]] auto r = write(impl_->evfd, &one, sizeof one);
}

Status MulticastReceiver::wait_complete(std::chrono::milliseconds timeout) {
  std::unique_lock lock(impl_->mu);
  bool finished = impl_->cv.wait_for(lock, timeout, [&] {
    return impl_->published.complete || impl_->published.failed;
  });
  if (impl_->published.complete) return Ok{};
  if (impl_->failure) return *impl_->failure;
  if (!finished)
    return make_error("mcdist receiver: image not complete after " + std::to_string(timeout.count()) +
                      " ms (" + std::to_string(impl_->published.pages_received) + " of " +
                      std::to_string(impl_->published.page_count) + " pages)");
  return make_error("mcdist receiver: stopped");
}

std::optional<std::uint64_t> MulticastReceiver::page_count() const {
  auto n = impl_->page_count.load();
  if (n == 0) return std::nullopt;
  return n;
}
std::uint32_t MulticastReceiver::page_size() const { return impl_->page_size.load(); }
std::uint64_t MulticastReceiver::image_bytes() const {
  auto n = impl_->page_count.load();
  return n == 0 ? 0 : (n - 1) * impl_->page_size.load() + impl_->tail.load();
}
ReceiverStats MulticastReceiver::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->published;
}

}  // namespace sf::mcdist
