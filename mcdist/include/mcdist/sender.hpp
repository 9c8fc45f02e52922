// mcdist: the server side. MulticastSender multicasts the pages of one image on one explicitly
// named interface (TTL 1), answers unicast page requests by multicast (demand first, then loss
// repair, then the background push), paces itself and backs off when clients report loss.
// Protocol: docs/protocols/mcdist.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mcdist/packet.hpp"
#include "mcdist/result.hpp"

namespace sf::mcdist {

struct SenderConfig {
  std::string interface;         // required: the link the clones are on (never guessed)
  std::string group;             // IPv4 multicast group, e.g. "239.255.77.1"
  std::uint16_t port = 0;        // group port
  std::uint16_t request_port = 0;  // unicast request port; 0 = any free port
  std::uint64_t cluster_id = 0;
  ClusterKey key;
  std::uint64_t image_bytes = 0;  // the image is ceil(image_bytes / page_size) pages
  std::uint32_t page_size = 4096;
  // Push mode: stream the whole image (index order) or `push_order` in the background.
  bool push = true;
  std::vector<std::uint64_t> push_order;  // empty = 0..page_count-1
  std::uint64_t max_rate_bps = 900'000'000;  // Ethernet bits per second
  std::chrono::milliseconds suppress_window{20};
};

struct SenderStats {
  std::uint64_t packets_sent = 0, bytes_sent = 0;  // bytes = UDP payload bytes
  std::uint64_t pages_pushed = 0, pages_answered = 0, heartbeats = 0;
  std::uint64_t requests = 0, pages_requested = 0, demand_pages = 0;
  std::uint64_t requests_deduplicated = 0, requests_suppressed = 0;
  std::uint64_t malformed = 0, foreign = 0, corrupt = 0, unauthenticated = 0, replayed = 0;
  std::uint64_t backoffs = 0, send_errors = 0;
  std::uint64_t current_rate_bps = 0;
  std::uint64_t receivers_seen = 0, receivers_complete = 0;
  bool push_done = false;
  double push_seconds = 0;  // from start until the push pass ended
};

class MulticastSender {
 public:
  // Returns the bytes of one page (page_size bytes; the last page may be shorter and is sent
  // zero-padded). Called on the sender's thread; must stay valid until the packet is sent.
  using PageSource = std::function<std::span<const std::uint8_t>(std::uint64_t page)>;

  // Opens the socket on the interface and starts the sending thread.
  static Result<std::unique_ptr<MulticastSender>> start(SenderConfig config, PageSource pages);
  ~MulticastSender();  // stop()s

  // Waits until the push pass is done and either `receivers` distinct clients reported
  // complete (receivers > 0), or no client packet (request or status) came for `linger`.
  // Returns false on timeout.
  bool wait_done(std::size_t receivers, std::chrono::milliseconds linger,
                 std::chrono::milliseconds timeout);
  // Sends CLOSING heartbeats and stops the thread. Idempotent.
  void stop();

  SenderStats stats() const;
  std::uint16_t request_port() const;
  std::uint64_t page_count() const;
  std::uint64_t session_id() const;

  struct Impl;

 private:
  explicit MulticastSender(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sf::mcdist
