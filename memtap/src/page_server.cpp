// memtap page server (see page_server.hpp and docs/protocols/memtap.md): Boost.Asio, one
// strand per connection, pages sent straight from the read-only mapping of the image.
#include "memtap/page_server.hpp"

#include <sched.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <boost/asio.hpp>
#include <cstring>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "byte_order.hpp"
#include "fault_injection.hpp"
#include "memtap/protocol.hpp"

namespace sf::memtap {
namespace {

namespace asio = boost::asio;
using asio::ip::tcp;
namespace proto = protocol;

constexpr auto kHelloDeadline = std::chrono::seconds(10);

struct ServerCounters {
  std::atomic<std::uint64_t> connections_accepted{0};
  std::atomic<std::uint64_t> connections_open{0};
  std::atomic<std::uint64_t> hello_refused{0};
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> pages_served{0};
  std::atomic<std::uint64_t> bytes_served{0};
  std::atomic<std::uint64_t> nofetch_pages_requested{0};
  std::atomic<std::uint64_t> corrupt_pages_refused{0};
  std::atomic<std::uint64_t> errors{0};

  std::string to_json() const {
    nlohmann::json j;
    j["connections_accepted"] = connections_accepted.load();
    j["connections_open"] = connections_open.load();
    j["hello_refused"] = hello_refused.load();
    j["requests"] = requests.load();
    j["pages_served"] = pages_served.load();
    j["bytes_served"] = bytes_served.load();
    j["nofetch_pages_requested"] = nofetch_pages_requested.load();
    j["corrupt_pages_refused"] = corrupt_pages_refused.load();
    j["errors"] = errors.load();
    return j.dump();
  }
};

struct ServerShared {
  std::shared_ptr<const FrozenImage> image;
  PageServerOptions options;
  ServerCounters counters;
  std::mutex stalled_mutex;
  std::vector<std::shared_ptr<void>> stalled;  // sessions kept open by serve-stall
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, std::shared_ptr<ServerShared> shared_state)
      : socket_(std::move(socket)), hello_timer_(socket_.get_executor()), owner_(std::move(shared_state)), shared_(*owner_) {
    boost::system::error_code ec;
    auto ep = socket_.remote_endpoint(ec);
    peer_ = ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
  }
  ~Session() { shared_.counters.connections_open.fetch_sub(1); }

  void start() {
    shared_.counters.connections_open.fetch_add(1);
    boost::system::error_code ec;
    socket_.set_option(tcp::no_delay(true), ec);
    hello_timer_.expires_after(kHelloDeadline);
    hello_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& e) {
      if (!e && !self->authenticated_) {
        spdlog::warn("memtap serve: {} sent no HELLO within 10 s; closing", self->peer_);
        boost::system::error_code ignored;
        self->socket_.close(ignored);
      }
    });
    read_header();
  }

 private:
  void read_header() {
    asio::async_read(socket_, asio::buffer(header_bytes_),
                     [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                       if (ec) return;  // peer gone or closed: the session ends
                       self->on_header();
                     });
  }

  void on_header() {
    auto h = proto::decode_header(header_bytes_);
    if (!h) {
      shared_.counters.errors.fetch_add(1);
      spdlog::warn("memtap serve: {}: {}; closing", peer_, h.error().message);
      return;
    }
    request_ = *h;
    body_.resize(request_.body_length);
    asio::async_read(socket_, asio::buffer(body_),
                     [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
                       if (ec) return;
                       self->on_body();
                     });
  }

  void on_body() {
    if (proto::body_checksum(body_) != request_.body_checksum) {
      shared_.counters.errors.fetch_add(1);
      spdlog::warn("memtap serve: {}: request body checksum mismatch; closing", peer_);
      return;
    }
    shared_.counters.requests.fetch_add(1);
    const auto& md = shared_.image->metadata();
    switch (request_.type) {
      case proto::MessageType::kHello: return on_hello(md);
      case proto::MessageType::kGetMetadata:
        if (!authenticated_) return refuse(proto::WireStatus::kNotAuthenticated, "say HELLO first", true);
        reply_body_ = md.serialize(false);
        return send_owned_body();
      case proto::MessageType::kFetch:
        if (!authenticated_) return refuse(proto::WireStatus::kNotAuthenticated, "say HELLO first", true);
        return on_fetch(md);
      case proto::MessageType::kStats: {
        if (!authenticated_) return refuse(proto::WireStatus::kNotAuthenticated, "say HELLO first", true);
        auto s = shared_.counters.to_json();
        reply_body_.assign(reinterpret_cast<const std::byte*>(s.data()),
                           reinterpret_cast<const std::byte*>(s.data() + s.size()));
        return send_owned_body();
      }
    }
    refuse(proto::WireStatus::kBadRequest, "unknown message type " + std::to_string(static_cast<int>(request_.type)), true);
  }

  void on_hello(const ImageMetadata& md) {
    if (body_.size() != proto::kHelloBodySize) return refuse(proto::WireStatus::kBadRequest, "HELLO has a wrong size", true);
    OwnerToken offered{};
    std::memcpy(offered.data(), body_.data(), offered.size());
    if (!md.has_token() || !tokens_equal(offered, md.token())) {
      shared_.counters.hello_refused.fetch_add(1);
      spdlog::warn("memtap serve: {} offered token {} which does not own this image; refused", peer_,
                   token_fingerprint(offered));
      return refuse(proto::WireStatus::kBadToken, "the token does not own this image", true);
    }
    authenticated_ = true;
    hello_timer_.cancel();
    proto::HelloReply r;
    r.page_size = md.page_size();
    r.max_batch_pages = shared_.options.max_batch_pages;
    r.image_length = md.image_length();
    r.page_count = md.page_count();
    r.image_id = md.image_id();
    reply_body_ = proto::encode_hello_reply(r);
    send_owned_body();
  }

  void on_fetch(const ImageMetadata& md) {
    if (fault_fires(FaultKind::kServeExit)) {
      spdlog::warn("memtap serve: exiting on purpose (MEMTAP_FAULT=serve-exit)");
      ::_exit(3);
    }
    if (fault_fires(FaultKind::kServeStall)) {
      spdlog::warn("memtap serve: not answering {} (MEMTAP_FAULT=serve-stall)", peer_);
      std::lock_guard lock(shared_.stalled_mutex);
      shared_.stalled.push_back(shared_from_this());
      return;
    }
    const auto request = proto::decode_fetch_request(body_, md.page_count(), shared_.options.max_batch_pages);
    if (request.status != proto::WireStatus::kOk) return refuse(request.status, request.error, false);
    const std::uint64_t total = request.pages;
    bool corrupt = fault_fires(FaultKind::kServeCorrupt);
    page_buffers_.clear();
    XXH3_state_t* st = XXH3_createState();
    XXH3_64bits_reset(st);
    for (const auto& range : request.ranges) {
      const std::uint64_t first = range.first;
      const std::uint32_t count = range.count;
      for (std::uint32_t k = 0; k < count; ++k) {
        std::uint64_t p = first + k;
        auto page = shared_.image->page(p);
        // The frozen image must not change; a page that no longer matches its checksum is
        // refused rather than served as if it belonged to the image.
        if (!md.verify_page(p, page)) {
          XXH3_freeState(st);
          shared_.counters.corrupt_pages_refused.fetch_add(1);
          spdlog::error("memtap serve: page {} of {} no longer matches its checksum: the image was changed after "
                        "it was frozen; refusing it",
                        p, shared_.image->path());
          return refuse(proto::WireStatus::kCorruptImage,
                        "page " + std::to_string(p) + " of the image changed after it was frozen", false);
        }
        if (md.no_fetch(p)) shared_.counters.nofetch_pages_requested.fetch_add(1);
        if (corrupt && page_buffers_.empty()) {
          corrupt_copy_.assign(page.begin(), page.end());
          corrupt_copy_[0] ^= std::byte{0x5a};
          page = corrupt_copy_;
        }
        XXH3_64bits_update(st, page.data(), page.size());
        page_buffers_.emplace_back(page.data(), page.size());
      }
    }
    std::uint64_t checksum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    shared_.counters.pages_served.fetch_add(total);
    shared_.counters.bytes_served.fetch_add(total * md.page_size());
    proto::FrameHeader h;
    h.type = request_.type;
    h.request_id = request_.request_id;
    h.body_length = static_cast<std::uint32_t>(total * md.page_size());
    h.body_checksum = checksum;
    reply_header_ = proto::encode_header(h);
    page_buffers_.insert(page_buffers_.begin(), asio::const_buffer(reply_header_.data(), reply_header_.size()));
    asio::async_write(socket_, page_buffers_, [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
      if (!ec) self->read_header();
    });
  }

  void send_owned_body() {
    proto::FrameHeader h;
    h.type = request_.type;
    h.request_id = request_.request_id;
    h.body_length = static_cast<std::uint32_t>(reply_body_.size());
    h.body_checksum = proto::body_checksum(reply_body_);
    reply_header_ = proto::encode_header(h);
    std::array<asio::const_buffer, 2> bufs{asio::buffer(reply_header_), asio::buffer(reply_body_)};
    asio::async_write(socket_, bufs, [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
      if (!ec) self->read_header();
    });
  }

  void refuse(proto::WireStatus status, const std::string& message, bool close_after) {
    shared_.counters.errors.fetch_add(1);
    reply_body_.assign(reinterpret_cast<const std::byte*>(message.data()),
                       reinterpret_cast<const std::byte*>(message.data() + message.size()));
    proto::FrameHeader h;
    h.type = request_.type;
    h.request_id = request_.request_id;
    h.status = status;
    h.body_length = static_cast<std::uint32_t>(reply_body_.size());
    h.body_checksum = proto::body_checksum(reply_body_);
    reply_header_ = proto::encode_header(h);
    std::array<asio::const_buffer, 2> bufs{asio::buffer(reply_header_), asio::buffer(reply_body_)};
    asio::async_write(socket_, bufs,
                      [self = shared_from_this(), close_after](const boost::system::error_code& ec, std::size_t) {
                        if (ec) return;
                        if (close_after) {
                          boost::system::error_code ignored;
                          self->socket_.shutdown(tcp::socket::shutdown_both, ignored);
                          self->socket_.close(ignored);
                          self->hello_timer_.cancel();
                          return;
                        }
                        self->read_header();
                      });
  }

  tcp::socket socket_;
  asio::steady_timer hello_timer_;
  std::shared_ptr<ServerShared> owner_;  // keeps the counters alive as long as any session
  ServerShared& shared_;
  std::string peer_;
  bool authenticated_ = false;
  std::array<std::byte, proto::kHeaderSize> header_bytes_{};
  proto::FrameHeader request_;
  std::vector<std::byte> body_;
  std::array<std::byte, proto::kHeaderSize> reply_header_{};
  std::vector<std::byte> reply_body_;
  std::vector<asio::const_buffer> page_buffers_;
  std::vector<std::byte> corrupt_copy_;
};

class AsioPageServer final : public PageServer {
 public:
  AsioPageServer(std::shared_ptr<const FrozenImage> image, const PageServerOptions& options)
      : acceptor_(io_), signals_(io_), shared_(std::make_shared<ServerShared>()) {
    shared_->image = std::move(image);
    shared_->options = options;
  }

  ~AsioPageServer() override {
    io_.stop();
    // Stalled sessions hold the shared state; drop them while the io_context still lives.
    std::lock_guard lock(shared_->stalled_mutex);
    shared_->stalled.clear();
  }

  Status bind(const Endpoint& listen) {
    boost::system::error_code ec;
    tcp::endpoint ep(asio::ip::make_address(listen.address, ec), listen.port);
    if (ec) return make_error(ErrorCode::kInvalidArgument, "'" + listen.address + "' is not an IP address");
    acceptor_.open(ep.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(ep, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      return make_error(ErrorCode::kIo, "cannot listen on " + listen.to_string() + ": " + ec.message() +
                                            " (is the address one of this host's, and the port free?)");
    }
    port_ = acceptor_.local_endpoint().port();
    return ok_status();
  }

  std::uint16_t port() const override { return port_; }

  void run(bool handle_signals) override {
    if (handle_signals) {
      signals_.add(SIGINT);
      signals_.add(SIGTERM);
      signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
        if (!ec) {
          spdlog::info("memtap serve: signal {}, stopping", sig);
          stop();
        }
      });
    }
    accept();
    std::vector<std::thread> extra;
    for (unsigned i = 1; i < std::max(1u, shared_->options.threads); ++i) extra.emplace_back([this] { serve_loop(); });
    serve_loop();
    for (auto& t : extra) t.join();
  }

  void stop() override { io_.stop(); }

  // io_context::run with a busy-poll phase after activity (PageServerOptions::spin_us).
  void serve_loop() {
    const auto spin = std::chrono::microseconds(shared_->options.spin_us);
    if (spin.count() == 0) {
      io_.run();
      return;
    }
    auto last = std::chrono::steady_clock::now();
    while (!io_.stopped()) {
      if (io_.poll() > 0) {
        last = std::chrono::steady_clock::now();
      } else if (std::chrono::steady_clock::now() - last > spin) {
        if (io_.run_one() == 0) break;
        last = std::chrono::steady_clock::now();
      } else {
        ::sched_yield();  // spinning must not keep a runnable client off this CPU
      }
    }
  }

  std::string stats_json() const override { return shared_->counters.to_json(); }

 private:
  void accept() {
    acceptor_.async_accept(asio::make_strand(io_), [this](const boost::system::error_code& ec, tcp::socket socket) {
      if (!ec) {
        shared_->counters.connections_accepted.fetch_add(1);
        std::make_shared<Session>(std::move(socket), shared_)->start();
      } else if (ec == asio::error::operation_aborted) {
        return;
      } else {
        spdlog::warn("memtap serve: accept failed: {}", ec.message());
      }
      accept();
    });
  }

  asio::io_context io_;
  tcp::acceptor acceptor_;
  asio::signal_set signals_;
  std::shared_ptr<ServerShared> shared_;
  std::uint16_t port_ = 0;
};

}  // namespace

Result<std::unique_ptr<PageServer>> PageServer::create(std::shared_ptr<const FrozenImage> image, const Endpoint& listen,
                                                       const PageServerOptions& options) {
  if (!image->metadata().has_token()) {
    return make_error(ErrorCode::kFormat, "the image metadata holds no owner token; recreate it with memtap create");
  }
  if (options.max_batch_pages == 0 || options.max_batch_pages * std::uint64_t{image->metadata().page_size()} > (64u << 20)) {
    return make_error(ErrorCode::kInvalidArgument, "max batch must be 1 page ... 64 MiB");
  }
  auto server = std::make_unique<AsioPageServer>(std::move(image), options);
  if (auto s = server->bind(listen); !s) return s.error();
  return std::unique_ptr<PageServer>(std::move(server));
}

}  // namespace sf::memtap
