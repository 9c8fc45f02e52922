// mcdist: the server side (see mcdist/sender.hpp). One thread owns the socket: it drains
// requests, schedules demand > repair > push, paces with a token bucket and adapts the rate.
#include "mcdist/sender.hpp"

#include <poll.h>
#include <sys/random.h>
#include <netinet/udp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "mcdist/net.hpp"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103  // linux/udp.h; older libc headers lack it
#endif

namespace sf::mcdist {
namespace {
using Clock = std::chrono::steady_clock;
constexpr std::size_t kBatch = 16;        // packets per sendmmsg
// Token bucket depth (~2.3 ms at 1 Gbit/s): a sender descheduled on a busy host catches up
// in one burst instead of losing its share; a 1 Gbit/s NIC queue or tbf absorbs it.
constexpr std::size_t kBurstPackets = 64;
constexpr std::size_t kRecvBatch = 32;
constexpr std::size_t kMaxPeers = 4096;
constexpr auto kHeartbeatEvery = std::chrono::milliseconds(100);
constexpr auto kAdjustEvery = std::chrono::milliseconds(100);

std::int64_t micros(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
}

std::uint64_t random64() {
  std::uint64_t v = 0;
  while (v == 0)
    if (getrandom(&v, sizeof v, 0) != sizeof v) v = static_cast<std::uint64_t>(micros(Clock::now()));
  return v;
}
}  // namespace

struct MulticastSender::Impl {
  SenderConfig cfg;
  PageSource pages;
  net::InterfaceInfo iface;
  sockaddr_in group{};
  int fd = -1;
  std::uint16_t bound_port = 0;
  std::uint64_t page_count = 0;
  std::uint32_t tail = 0;  // valid bytes of the last page
  std::uint64_t session = random64();
  std::uint64_t sequence = 0;
  std::unique_ptr<PacketAuthenticator> auth;
  std::vector<std::uint8_t> padded_tail;
  bool gso_ok = true;

  // Scheduling state, owned by the thread.
  std::deque<std::uint64_t> demand, repair;
  std::vector<std::uint8_t> queued;
  std::vector<std::uint8_t> answered;       // sent at least once as an ANSWER
  std::vector<std::int64_t> last_sent_us;   // 0 = never sent
  std::vector<std::uint64_t> order;
  std::size_t push_pos = 0;
  bool push_done = false;

  struct Peer {
    ReplayWindow window;
    bool complete = false;
  };
  std::unordered_map<std::uint64_t, Peer> peers;

  double rate_bps = 0;
  double tokens = 0;  // bytes
  Clock::time_point started = Clock::now(), last_refill, last_send, last_adjust, last_publish;
  double interval_max_loss = 0;
  std::uint64_t interval_answers = 0, interval_rerequests = 0;

  SenderStats local;
  mutable std::mutex mu;
  std::condition_variable cv;
  SenderStats published;
  Clock::time_point last_request_published;

  std::atomic<bool> running{true};
  std::thread thread;

  std::size_t wire_bytes(std::size_t payload) const { return kHeaderSize + payload + kWireOverhead; }

  void publish() {
    local.current_rate_bps = static_cast<std::uint64_t>(rate_bps);
    if (push_done && !local.push_done)
      local.push_seconds = std::chrono::duration<double>(Clock::now() - started).count();
    local.push_done = push_done;
    local.receivers_seen = peers.size();
    local.receivers_complete = static_cast<std::uint64_t>(
        std::count_if(peers.begin(), peers.end(), [](auto& p) { return p.second.complete; }));
    std::lock_guard lock(mu);
    published = local;
    cv.notify_all();
  }

  std::uint16_t state_flags() const {
    if (!cfg.push) return push_done ? flags::kPushDone : 0;
    return push_done ? flags::kPushDone : flags::kPushActive;
  }

  Header server_header(PacketType type, std::uint16_t extra_flags) {
    Header h;
    h.type = type;
    h.flags = static_cast<std::uint16_t>(state_flags() | extra_flags);
    h.cluster_id = cfg.cluster_id;
    h.session_id = session;
    h.origin = 0;
    h.sequence = ++sequence;
    h.page_count = page_count;
    h.page_size = cfg.page_size;
    h.aux = tail;
    return h;
  }

  void send_heartbeat(std::uint16_t extra_flags) {
    std::array<std::uint8_t, kHeaderSize> buf{};
    Header h = server_header(PacketType::kHeartbeat, extra_flags);
    encode_header(h, {}, *auth, buf);
    if (sendto(fd, buf.data(), buf.size(), 0, reinterpret_cast<const sockaddr*>(&group),
               sizeof group) < 0)
      ++local.send_errors;
    ++local.heartbeats;
    ++local.packets_sent;
    local.bytes_sent += buf.size();
    last_send = Clock::now();
  }

  std::span<const std::uint8_t> page_bytes(std::uint64_t p) {
    auto data = pages(p);
    if (data.size() >= cfg.page_size) return data.first(cfg.page_size);
    // The last page is shorter: send it zero-padded (the receiver knows the tail length).
    std::fill(padded_tail.begin(), padded_tail.end(), 0);
    std::memcpy(padded_tail.data(), data.data(), data.size());
    return padded_tail;
  }

  // Picks the next page to send: demand, then repair, then push. False when there is none.
  bool next_page(std::uint64_t& page, std::uint16_t& extra) {
    for (auto* q : {&demand, &repair}) {
      if (!q->empty()) {
        page = q->front();
        q->pop_front();
        queued[page] = 0;
        extra = flags::kAnswer;
        return true;
      }
    }
    while (cfg.push && !push_done && push_pos < order.size()) {
      page = order[push_pos++];
      if (push_pos == order.size()) push_done = true;
      // Already multicast to everyone (an answer to some clone's request): skip it.
      if (page >= page_count || last_sent_us[page] != 0) continue;
      extra = 0;
      return true;
    }
    if (cfg.push && push_pos >= order.size()) push_done = true;
    return false;
  }

  // UDP GSO (UDP_SEGMENT): n equal-sized datagrams go down the stack, through the bridge and
  // the veths as one buffer and are split only where they are delivered, so the per-packet
  // cost of the send path is paid once per batch instead of once per page. Each segment is
  // still one complete mcdist packet on the wire. Returns false if the kernel refuses GSO
  // (then it is not tried again and the caller uses sendmmsg).
  bool send_segmented(const std::array<std::uint8_t, kHeaderSize>* heads,
                      const std::array<iovec, 2>* iovs, std::size_t n) {
    std::size_t seg = kHeaderSize + cfg.page_size;
    // Header and page of every packet straight from where they are (no staging copy): the
    // kernel cuts the concatenation into segments of `seg` bytes.
    std::array<iovec, 2 * kBatch> v;
    for (std::size_t i = 0; i < n; ++i) {
      v[2 * i] = {const_cast<std::uint8_t*>(heads[i].data()), kHeaderSize};
      v[2 * i + 1] = iovs[i][1];
    }
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(std::uint16_t))] = {};
    msghdr m{};
    m.msg_name = &group;
    m.msg_namelen = sizeof group;
    m.msg_iov = v.data();
    m.msg_iovlen = 2 * n;
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_UDP;
    c->cmsg_type = UDP_SEGMENT;
    c->cmsg_len = CMSG_LEN(sizeof(std::uint16_t));
    std::uint16_t size = static_cast<std::uint16_t>(seg);
    std::memcpy(CMSG_DATA(c), &size, sizeof size);
    for (;;) {
      if (sendmsg(fd, &m, 0) >= 0) return true;
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == ENOBUFS) {
        local.send_errors += n;  // lost like any other loss; clients repair
        return true;
      }
      gso_ok = false;
      return false;
    }
  }

  void send_pages(std::size_t max_packets) {
    std::array<std::array<std::uint8_t, kHeaderSize>, kBatch> headers;
    std::array<std::array<iovec, 2>, kBatch> iov;
    std::array<mmsghdr, kBatch> msgs{};
    // The padded tail buffer is shared, so the last page can appear at most once per batch:
    // it can, because a page is never queued twice.
    std::size_t n = 0;
    auto now_us = micros(Clock::now());
    // A GSO send carries at most 64 KiB: 15 packets of 4 KiB pages.
    std::size_t cap = std::min<std::size_t>(kBatch, 65000 / (kHeaderSize + cfg.page_size));
    if (cap == 0) cap = 1;
    while (n < max_packets && n < cap) {
      std::uint64_t page = 0;
      std::uint16_t extra = 0;
      if (!next_page(page, extra)) break;
      auto payload = page_bytes(page);
      Header h = server_header(PacketType::kData, extra);
      h.page_index = page;
      encode_header(h, payload, *auth, headers[n]);
      iov[n][0] = {headers[n].data(), kHeaderSize};
      iov[n][1] = {const_cast<std::uint8_t*>(payload.data()), payload.size()};
      msgs[n] = {};
      msgs[n].msg_hdr.msg_name = &group;
      msgs[n].msg_hdr.msg_namelen = sizeof group;
      msgs[n].msg_hdr.msg_iov = iov[n].data();
      msgs[n].msg_hdr.msg_iovlen = 2;
      last_sent_us[page] = now_us;
      if (extra & flags::kAnswer) {
        ++local.pages_answered;
        ++interval_answers;
        answered[page] = 1;
      } else {
        ++local.pages_pushed;
      }
      tokens -= static_cast<double>(wire_bytes(payload.size()));
      ++n;
    }
    // More than one page goes as one UDP GSO super-datagram where the kernel allows it.
    const bool sent_segmented = n > 1 && gso_ok && send_segmented(headers.data(), iov.data(), n);
    if (!sent_segmented) {
      std::size_t done = 0;
      while (done < n) {
        int r = sendmmsg(fd, msgs.data() + done, static_cast<unsigned>(n - done), 0);
        if (r <= 0) {
          if (r < 0 && errno == EINTR) continue;
          // Socket buffer full or the qdisc refused: these pages are lost like any other
          // loss; clients repair them.
          local.send_errors += n - done;
          break;
        }
        done += static_cast<std::size_t>(r);
      }
    }
    local.packets_sent += n;
    local.bytes_sent += n * (kHeaderSize + cfg.page_size);
    if (n) last_send = Clock::now();
  }

  void enqueue(std::uint64_t p, bool demand_flag, std::int64_t now_us) {
    if (queued[p]) {
      ++local.requests_deduplicated;
      return;
    }
    auto window_us = std::chrono::duration_cast<std::chrono::microseconds>(cfg.suppress_window).count();
    if (last_sent_us[p] != 0 && now_us - last_sent_us[p] < window_us) {
      ++local.requests_suppressed;
      return;
    }
    if (answered[p]) ++interval_rerequests;
    queued[p] = 1;
    (demand_flag ? demand : repair).push_back(p);
  }

  void handle(std::span<const std::uint8_t> d) {
    Header h;
    switch (validate(d, cfg.cluster_id, *auth, &h)) {
      case Verdict::kMalformed: ++local.malformed; return;
      case Verdict::kForeign: ++local.foreign; return;
      case Verdict::kCorrupt: ++local.corrupt; return;
      case Verdict::kUnauthenticated: ++local.unauthenticated; return;
      case Verdict::kAccepted: break;
    }
    if (h.type != PacketType::kRequest && h.type != PacketType::kStatus) {
      ++local.malformed;  // server packets are never sent to the server
      return;
    }
    if ((h.session_id != 0 && h.session_id != session) || h.origin == 0) {
      ++local.replayed;  // addressed to an earlier session of this cluster
      return;
    }
    auto it = peers.find(h.origin);
    if (it == peers.end()) {
      if (peers.size() >= kMaxPeers) {
        ++local.malformed;
        return;
      }
      it = peers.emplace(h.origin, Peer{}).first;
    }
    if (!it->second.window.accept(h.sequence)) {
      ++local.replayed;
      return;
    }
    auto payload = d.subspan(kHeaderSize);
    {
      std::lock_guard lock(mu);
      last_request_published = Clock::now();  // any client packet: someone is still there
    }
    if (h.type == PacketType::kStatus) {
      auto s = decode_status(payload);
      if (s.lost + s.received > 0)
        interval_max_loss = std::max(interval_max_loss,
                                     static_cast<double>(s.lost) / static_cast<double>(s.lost + s.received));
      if (h.flags & flags::kComplete) it->second.complete = true;
      return;
    }
    auto ranges = decode_ranges(payload);
    if (!ranges) {
      ++local.malformed;
      return;
    }
    ++local.requests;
    bool is_demand = h.flags & flags::kDemand;
    auto now_us = micros(Clock::now());
    for (auto& r : ranges.value()) {
      if (r.first >= page_count) continue;
      std::uint64_t end = std::min<std::uint64_t>(page_count, r.first + r.count);
      for (std::uint64_t p = r.first; p < end; ++p) {
        ++local.pages_requested;
        if (is_demand) ++local.demand_pages;
        enqueue(p, is_demand, now_us);
      }
    }
  }

  void drain_requests() {
    std::array<std::array<std::uint8_t, 2048>, kRecvBatch> bufs;
    std::array<iovec, kRecvBatch> iov;
    std::array<mmsghdr, kRecvBatch> msgs{};
    for (;;) {
      for (std::size_t i = 0; i < kRecvBatch; ++i) {
        iov[i] = {bufs[i].data(), bufs[i].size()};
        msgs[i] = {};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
      }
      int n = recvmmsg(fd, msgs.data(), kRecvBatch, MSG_DONTWAIT, nullptr);
      if (n <= 0) return;
      for (int i = 0; i < n; ++i) {
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
          ++local.malformed;
          continue;
        }
        handle({bufs[i].data(), msgs[i].msg_len});
      }
      if (n < static_cast<int>(kRecvBatch)) return;
    }
  }

  void adjust_rate() {
    double max_rate = static_cast<double>(cfg.max_rate_bps);
    bool rerequests_rise = interval_answers >= 32 &&
                           static_cast<double>(interval_rerequests) > 0.25 * static_cast<double>(interval_answers);
    if (interval_max_loss > 0.05 || rerequests_rise) {
      rate_bps = std::max(rate_bps * 0.7, max_rate / 16);
      ++local.backoffs;
    } else if (interval_max_loss < 0.01) {
      rate_bps = std::min(rate_bps + max_rate / 20, max_rate);
    }
    interval_max_loss = 0;
    interval_answers = interval_rerequests = 0;
  }

  bool work_pending() const {
    return !demand.empty() || !repair.empty() || (cfg.push && !push_done);
  }

  void run() {
    auto now = Clock::now();
    last_refill = last_adjust = now;
    last_send = now - kHeartbeatEvery;
    double packet_wire = static_cast<double>(wire_bytes(cfg.page_size));
    double burst = packet_wire * kBurstPackets;
    while (running.load(std::memory_order_relaxed)) {
      drain_requests();
      now = Clock::now();
      double dt = std::chrono::duration<double>(now - last_refill).count();
      last_refill = now;
      tokens = std::min(burst, tokens + dt * rate_bps / 8);
      while (tokens >= packet_wire && work_pending()) {
        auto before = local.packets_sent;
        send_pages(static_cast<std::size_t>(tokens / packet_wire));
        if (local.packets_sent == before) break;
      }
      now = Clock::now();
      if (now - last_send >= kHeartbeatEvery) send_heartbeat(0);
      if (now - last_adjust >= kAdjustEvery) {
        adjust_rate();
        last_adjust = now;
      }
      if (now - last_publish >= std::chrono::milliseconds(5)) {
        publish();
        last_publish = now;
      }
      // Sleep until enough tokens for a few packets (small bursts, few wakeups), or until a
      // request arrives, or until the next heartbeat is due.
      std::int64_t wait_us = 50'000;
      if (work_pending()) {
        double want = packet_wire * 8 - tokens;
        wait_us = want <= 0 ? 0 : static_cast<std::int64_t>(want * 8 / rate_bps * 1e6);
      }
      if (wait_us > 0) {
        pollfd pfd{fd, POLLIN, 0};
        timespec ts{wait_us / 1'000'000, (wait_us % 1'000'000) * 1000};
        ppoll(&pfd, 1, &ts, nullptr);
      }
    }
    publish();
  }
};

Result<std::unique_ptr<MulticastSender>> MulticastSender::start(SenderConfig cfg, PageSource pages) {
  auto impl = std::make_unique<Impl>();
  if (cfg.page_size < kMinPageSize || cfg.page_size > kMaxPageSize ||
      (cfg.page_size & (cfg.page_size - 1)) != 0)
    return make_error("mcdist sender: page size " + std::to_string(cfg.page_size) +
                      " is not a power of two in 512..16384");
  if (cfg.image_bytes == 0) return make_error("mcdist sender: the image is empty");
  if (cfg.image_bytes > kMaxImageBytes)
    return make_error("mcdist sender: the image is " + std::to_string(cfg.image_bytes) + " bytes; at most " +
                      std::to_string(kMaxImageBytes) + " (1 TiB) per session");
  if (cfg.max_rate_bps < 1'000'000) return make_error("mcdist sender: rate below 1 Mbit/s");
  if (!pages) return make_error("mcdist sender: no page source");
  auto iface = net::resolve_interface(cfg.interface);
  if (!iface) return iface.error();
  auto group = net::parse_multicast_group(cfg.group);
  if (!group) return group.error();
  if (cfg.port == 0) return make_error("mcdist sender: no group port given");
  auto fd = net::open_sender_socket(iface.value(), cfg.request_port);
  if (!fd) return fd.error();
  impl->fd = fd.value();
  sockaddr_in bound{};
  socklen_t len = sizeof bound;
  getsockname(impl->fd, reinterpret_cast<sockaddr*>(&bound), &len);
  impl->bound_port = ntohs(bound.sin_port);
  impl->iface = iface.value();
  impl->group.sin_family = AF_INET;
  impl->group.sin_addr = group.value();
  impl->group.sin_port = htons(cfg.port);
  impl->page_count = (cfg.image_bytes + cfg.page_size - 1) / cfg.page_size;
  impl->tail = static_cast<std::uint32_t>(cfg.image_bytes - (impl->page_count - 1) * cfg.page_size);
  impl->auth = std::make_unique<PacketAuthenticator>(cfg.key);
  impl->padded_tail.resize(cfg.page_size);
  impl->queued.assign(impl->page_count, 0);
  impl->answered.assign(impl->page_count, 0);
  impl->last_sent_us.assign(impl->page_count, 0);
  if (cfg.push) {
    if (cfg.push_order.empty()) {
      impl->order.resize(impl->page_count);
      for (std::uint64_t i = 0; i < impl->page_count; ++i) impl->order[i] = i;
    } else {
      impl->order = cfg.push_order;
    }
  }
  impl->rate_bps = static_cast<double>(cfg.max_rate_bps);
  impl->cfg = std::move(cfg);
  impl->pages = std::move(pages);
  impl->last_request_published = Clock::now();
  Impl* raw = impl.get();
  impl->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<MulticastSender>(new MulticastSender(std::move(impl)));
}

MulticastSender::MulticastSender(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MulticastSender::~MulticastSender() { stop(); }

void MulticastSender::stop() {
  if (!impl_ || impl_->fd < 0) return;
  impl_->running = false;
  if (impl_->thread.joinable()) impl_->thread.join();
  // Tell clients now rather than letting them wait for the silence timeout.
  for (int i = 0; i < 3; ++i) impl_->send_heartbeat(flags::kClosing);
  ::close(impl_->fd);
  impl_->fd = -1;
}

bool MulticastSender::wait_done(std::size_t receivers, std::chrono::milliseconds linger,
                                std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  std::unique_lock lock(impl_->mu);
  for (;;) {
    auto& s = impl_->published;
    bool push_ok = s.push_done || !impl_->cfg.push;
    if (push_ok) {
      if (receivers > 0 && s.receivers_complete >= receivers) return true;
      // Clients send a STATUS every 100 ms while they run: silence for `linger` means every
      // client has finished or gone (also when a COMPLETE report was lost).
      if (Clock::now() - impl_->last_request_published >= linger) return true;
    }
    if (Clock::now() >= deadline) return false;
    impl_->cv.wait_for(lock, std::chrono::milliseconds(20));
  }
}

SenderStats MulticastSender::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->published;
}
std::uint16_t MulticastSender::request_port() const { return impl_->bound_port; }
std::uint64_t MulticastSender::page_count() const { return impl_->page_count; }
std::uint64_t MulticastSender::session_id() const { return impl_->session; }

}  // namespace sf::mcdist
