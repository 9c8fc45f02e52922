// memtap page server: serves one frozen image over TCP (docs/protocols/memtap.md) to the
// clients that present the image's owner token. Binds only the address it is given.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "memtap/image.hpp"
#include "memtap/tcp_page_source.hpp"

namespace sf::memtap {

struct PageServerOptions {
  unsigned threads = 1;
  // After any activity, poll the sockets this long before sleeping in epoll (latency over
  // CPU: the server burns up to this much CPU after each request); 0 disables.
  unsigned spin_us = 0;
  std::uint32_t max_batch_pages = 1024;
};

class PageServer {
 public:
  static Result<std::unique_ptr<PageServer>> create(std::shared_ptr<const FrozenImage> image,
                                                    const Endpoint& listen,
                                                    const PageServerOptions& options = {});
  virtual ~PageServer() = default;
  // The bound port (useful with port 0).
  virtual std::uint16_t port() const = 0;
  // Serves until stop() or SIGINT/SIGTERM when handle_signals is set.
  virtual void run(bool handle_signals) = 0;
  virtual void stop() = 0;
  virtual std::string stats_json() const = 0;
};

}  // namespace sf::memtap
