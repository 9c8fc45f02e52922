// mcdist: the client side. MulticastReceiver joins the group on one explicitly named interface,
// validates every packet (foreign, corrupt, unauthenticated and replayed ones are dropped and
// counted), hands every new page to a callback whether it asked for it or not (implicit
// prefetch), sends demand requests by unicast, repairs losses after the end of the push, and
// fails loudly when the server goes silent. Protocol: docs/protocols/mcdist.md.
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

// The image's geometry, learned from the first authenticated server packet.
struct ImageInfo {
  std::uint64_t page_count = 0;
  std::uint32_t page_size = 0;
  std::uint64_t image_bytes = 0;  // the last page may be partial
};

struct ReceiverConfig {
  std::string interface;  // required: the link to the server (never guessed)
  std::string group;      // IPv4 multicast group
  std::uint16_t port = 0;
  std::uint64_t cluster_id = 0;
  ClusterKey key;
  std::uint32_t receiver_id = 0;  // e.g. the clone id; reported to the server
  // The server's unicast request endpoint "ADDR:PORT"; empty = learn it from the source of the
  // first authenticated server packet (a heartbeat arrives within 100 ms).
  std::string server;
  // true: fetch the whole image (repair every missing page after the end of the push) and
  // become complete. false: only demand-requested pages are fetched (memtap's lazy mode);
  // pages pushed or asked for by others are still delivered.
  bool fetch_all = true;
  std::chrono::milliseconds server_timeout{2000};  // silence after the first packet
  std::chrono::milliseconds join_timeout{10000};   // waiting for the first packet
  std::chrono::milliseconds demand_retry{100};
  std::chrono::milliseconds repair_retry{250};
  std::size_t repair_window = 512;  // pages outstanding at once while repairing
  // Called once on the receiver's thread, before the first page callback, when the image's
  // geometry is known (size a page store here).
  std::function<void(const ImageInfo&)> on_image;
};

struct ReceiverStats {
  std::uint64_t packets = 0, pages_received = 0, duplicate_pages = 0, heartbeats = 0;
  std::uint64_t malformed = 0, foreign = 0, corrupt = 0, unauthenticated = 0, replayed = 0;
  std::uint64_t sequence_gaps = 0;  // server packets lost (gaps in the server sequence)
  std::uint64_t reordered = 0;      // server packets that arrived after a later one
  std::uint64_t requests_sent = 0, pages_requested = 0, status_sent = 0;
  std::uint64_t page_count = 0;
  bool complete = false, failed = false;
};

class MulticastReceiver {
 public:
  // Called on the receiver's thread once per page, the first time it arrives (asked for or
  // not). data has page_size bytes (the image's last page is zero-padded). Keep it short: copy
  // the page and return.
  using PageCallback = std::function<void(std::uint64_t page, std::span<const std::uint8_t> data)>;
  // Called once on the receiver's thread when the receiver fails (server dead or closed).
  using FailureCallback = std::function<void(const Error&)>;

  static Result<std::unique_ptr<MulticastReceiver>> start(ReceiverConfig config,
                                                          PageCallback on_page,
                                                          FailureCallback on_failure = {});
  ~MulticastReceiver();  // stop()s

  // Asks the server for these pages now (DEMAND: served before anything else). Thread-safe,
  // returns at once; pages arrive through the PageCallback. Re-requested until they arrive.
  void request(std::span<const std::uint64_t> pages);

  // fetch_all: waits until every page arrived (Ok), the receiver failed (its Error), or the
  // timeout passed (an Error saying so).
  Status wait_complete(std::chrono::milliseconds timeout);
  void stop();

  // Image geometry, known after the first server packet.
  std::optional<std::uint64_t> page_count() const;
  std::uint32_t page_size() const;
  std::uint64_t image_bytes() const;
  ReceiverStats stats() const;

  struct Impl;

 private:
  explicit MulticastReceiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace sf::mcdist
