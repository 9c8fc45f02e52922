// memtap TCP page source: a client of the page server (docs/protocols/memtap.md). Keeps a
// small pool of connections so several threads can fetch at once; every connect and every
// request is bounded by a deadline.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "memtap/image.hpp"
#include "memtap/page_source.hpp"

namespace sf::memtap {

struct TcpSourceOptions {
  std::chrono::milliseconds timeout{5000};  // per connect and per request
  // Poll for a reply this long before sleeping (a wake-up costs more than a loopback
  // round trip on a VM); 0 disables.
  std::chrono::microseconds spin{0};
};

// "ADDR:PORT" (IPv4 literal or [IPv6]:PORT); no name lookup.
struct Endpoint {
  std::string address;
  std::uint16_t port = 0;
  std::string to_string() const;
};
Result<Endpoint> parse_endpoint(const std::string& text);

class TcpConnection;

class TcpPageSource final : public PageSource {
 public:
  // Connects, says HELLO with `token`, and loads the metadata from the server (or, when
  // `known` is given, e.g. from a clone descriptor, checks that the server's image is it).
  static Result<std::shared_ptr<TcpPageSource>> connect(const Endpoint& server, const OwnerToken& token,
                                                        const TcpSourceOptions& options = {},
                                                        const ImageMetadata* known = nullptr);
  ~TcpPageSource() override;

  const ImageMetadata& metadata() const override { return metadata_; }
  Status fetch(std::span<const PageRange> ranges, std::span<std::byte> out) override;
  std::uint32_t max_batch_pages() const override { return max_batch_pages_; }
  std::string describe() const override { return "tcp " + server_.to_string(); }

  // The server's counters as JSON (the STATS message).
  Result<std::string> server_stats();

 private:
  TcpPageSource(Endpoint server, OwnerToken token, TcpSourceOptions options);
  Result<std::unique_ptr<TcpConnection>> take_connection();
  void return_connection(std::unique_ptr<TcpConnection> c);

  Endpoint server_;
  OwnerToken token_;
  TcpSourceOptions options_;
  ImageMetadata metadata_;
  std::uint32_t max_batch_pages_ = 0;
  std::mutex pool_mutex_;
  std::vector<std::unique_ptr<TcpConnection>> idle_;
};

}  // namespace sf::memtap
