// memtap TCP page source (see tcp_page_source.hpp). Boost.Asio sockets driven with
// io_context::run_until so every connect and request has a deadline: when it passes the
// socket is closed and the fetch fails with kTimeout instead of hanging.
#include "memtap/tcp_page_source.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio.hpp>
#include <sched.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "byte_order.hpp"
#include "fault_injection.hpp"
#include "memtap/protocol.hpp"

namespace sf::memtap {

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;
namespace proto = protocol;

std::string Endpoint::to_string() const {
  if (address.find(':') != std::string::npos) return "[" + address + "]:" + std::to_string(port);
  return address + ":" + std::to_string(port);
}

Result<Endpoint> parse_endpoint(const std::string& text) {
  auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == text.size()) {
    return make_error(ErrorCode::kInvalidArgument, "'" + text + "' is not ADDR:PORT (e.g. 127.0.0.1:7000)");
  }
  Endpoint ep;
  ep.address = text.substr(0, colon);
  if (ep.address.front() == '[' && ep.address.back() == ']') ep.address = ep.address.substr(1, ep.address.size() - 2);
  boost::system::error_code ec;
  asio::ip::make_address(ep.address, ec);
  if (ec) {
    return make_error(ErrorCode::kInvalidArgument,
                      "'" + ep.address + "' is not an IP address (memtap does no name lookup)");
  }
  char* end = nullptr;
  unsigned long port = std::strtoul(text.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port > 65535) return make_error(ErrorCode::kInvalidArgument, "bad port in '" + text + "'");
  ep.port = static_cast<std::uint16_t>(port);
  return ep;
}

// One connection to the server, used by one thread at a time.
class TcpConnection {
 public:
  explicit TcpConnection(std::string server_name) : socket_(io_), server_(std::move(server_name)) {}

  Status connect(const Endpoint& ep, Clock::time_point deadline) {
    tcp::endpoint target(asio::ip::make_address(ep.address), ep.port);
    boost::system::error_code result = asio::error::would_block;
    socket_.async_connect(target, [&](const boost::system::error_code& ec) { result = ec; });
    if (auto s = run_until(deadline, "connect"); !s) return s;
    if (result) {
      return make_error(ErrorCode::kUnavailable, "cannot connect to memtap server " + server_ + ": " + result.message());
    }
    socket_.set_option(tcp::no_delay(true));
    return ok_status();
  }

  // Sends one request and reads its reply header and body. A successful reply's body goes
  // into `target` when it is non-empty (it must then be exactly that size), otherwise into
  // `body`. Any failure leaves the connection broken.
  //
  // Latency: the request is sent with one sendmsg and the reply is first polled for with
  // non-blocking reads for spin_us (header and pages land in one recvmsg); a sleeping
  // thread's wake-up costs more than a loopback round trip on a VM. After spin_us it waits
  // in the io_context with the deadline.
  Result<proto::FrameHeader> request(proto::MessageType type, std::span<const std::byte> request_body,
                                     std::span<std::byte> target, std::vector<std::byte>& body,
                                     Clock::time_point deadline, std::chrono::microseconds spin) {
    proto::FrameHeader h;
    h.type = type;
    h.request_id = ++next_id_;
    h.body_length = static_cast<std::uint32_t>(request_body.size());
    h.body_checksum = proto::body_checksum(request_body);
    auto hdr = proto::encode_header(h);
    if (auto s = send_all(hdr, request_body, deadline); !s) return s.error();

    std::array<std::byte, proto::kHeaderSize> reply_hdr{};
    // Stage 1: the header, and as much of the expected page data as arrives with it.
    std::size_t got = 0;
    if (auto s = receive({reply_hdr, target}, got, proto::kHeaderSize, spin, deadline); !s) return s.error();
    auto rh = proto::decode_header(reply_hdr);
    if (!rh) {
      broken_ = true;
      return make_error(rh.error().code, "memtap server " + server_ + ": " + rh.error().message);
    }
    if (rh->request_id != h.request_id || rh->type != type) {
      broken_ = true;
      return make_error(ErrorCode::kProtocol, "memtap server " + server_ + " answered another request");
    }
    const std::size_t early = got - proto::kHeaderSize;  // body bytes already in target
    std::span<std::byte> into;
    if (rh->status == proto::WireStatus::kOk && !target.empty()) {
      if (rh->body_length != target.size()) {
        broken_ = true;
        return make_error(ErrorCode::kProtocol, "memtap server " + server_ + " sent " +
                                                    std::to_string(rh->body_length) + " bytes, expected " +
                                                    std::to_string(target.size()));
      }
      into = target;
    } else {
      if (early > rh->body_length) {
        broken_ = true;
        return make_error(ErrorCode::kProtocol, "memtap server " + server_ + " sent more than it announced");
      }
      body.resize(rh->body_length);
      if (early > 0) std::memcpy(body.data(), target.data(), early);
      into = body;
    }
    // Stage 2: the rest of the body.
    std::size_t have = early;
    if (have < into.size()) {
      if (auto s = receive({into.subspan(0, 0), into}, have, into.size(), spin, deadline); !s) return s.error();
    }
    if (proto::body_checksum(into) != rh->body_checksum) {
      broken_ = true;
      return make_error(ErrorCode::kCorrupt, "memtap server " + server_ + ": reply body checksum mismatch");
    }
    if (rh->status != proto::WireStatus::kOk) {
      std::string msg(reinterpret_cast<const char*>(body.data()), body.size());
      if (rh->status == proto::WireStatus::kBadToken || rh->status == proto::WireStatus::kNotAuthenticated) broken_ = true;
      return make_error(proto::error_code_for(rh->status), "memtap server " + server_ + " refused: " +
                                                               proto::to_string(rh->status) + ": " + msg);
    }
    return rh;
  }

  bool broken() const { return broken_; }

 private:
  // Sends header + body: one non-blocking sendmsg, the rest (if the socket buffer is full)
  // through the io_context with the deadline.
  Status send_all(std::span<const std::byte> hdr, std::span<const std::byte> body, Clock::time_point deadline) {
    iovec iov[2] = {{const_cast<std::byte*>(hdr.data()), hdr.size()},
                    {const_cast<std::byte*>(body.data()), body.size()}};
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = body.empty() ? 1 : 2;
    ssize_t n = ::sendmsg(socket_.native_handle(), &m, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return io_error(boost::system::error_code(errno, boost::system::system_category()));
    }
    std::size_t sent = n < 0 ? 0 : static_cast<std::size_t>(n);
    if (sent == hdr.size() + body.size()) return ok_status();
    std::vector<std::byte> rest;
    rest.insert(rest.end(), hdr.begin(), hdr.end());
    rest.insert(rest.end(), body.begin(), body.end());
    boost::system::error_code result = asio::error::would_block;
    asio::async_write(socket_, asio::buffer(rest.data() + sent, rest.size() - sent),
                      [&](const boost::system::error_code& ec, std::size_t) { result = ec; });
    if (auto s = run_until(deadline, "send"); !s) return s;
    if (result) return io_error(result);
    return ok_status();
  }

  // Reads into the concatenation of two buffers until `have` reaches `want`: non-blocking
  // reads for `spin`, then a wait in the io_context bounded by the deadline.
  Status receive(std::array<std::span<std::byte>, 2> bufs, std::size_t& have, std::size_t want,
                 std::chrono::microseconds spin, Clock::time_point deadline) {
    const std::size_t total = bufs[0].size() + bufs[1].size();
    auto iov_from = [&](std::size_t at, iovec* iov) {
      int k = 0;
      if (at < bufs[0].size()) iov[k++] = {bufs[0].data() + at, bufs[0].size() - at};
      std::size_t in1 = at > bufs[0].size() ? at - bufs[0].size() : 0;
      if (in1 < bufs[1].size()) iov[k++] = {bufs[1].data() + in1, bufs[1].size() - in1};
      return k;
    };
    const auto spin_until = Clock::now() + spin;
    while (have < want) {
      iovec iov[2];
      msghdr m{};
      m.msg_iov = iov;
      m.msg_iovlen = static_cast<std::size_t>(iov_from(have, iov));
      ssize_t n = ::recvmsg(socket_.native_handle(), &m, MSG_DONTWAIT);
      if (n > 0) {
        have += static_cast<std::size_t>(n);
        continue;
      }
      if (n == 0) return io_error(asio::error::eof);
      if (errno != EAGAIN && errno != EINTR) return io_error(boost::system::error_code(errno, boost::system::system_category()));
      if (Clock::now() >= spin_until) break;
      ::sched_yield();  // let a runnable thread (the server, the application) have this CPU
    }
    if (have >= want) return ok_status();
    // Wait for the rest (at least up to `want`) with the deadline.
    boost::system::error_code result = asio::error::would_block;
    std::size_t need = want - have;
    std::array<asio::mutable_buffer, 2> mb;
    iovec iov[2];
    int k = iov_from(have, iov);
    for (int i = 0; i < 2; ++i) mb[static_cast<std::size_t>(i)] = i < k ? asio::buffer(iov[i].iov_base, iov[i].iov_len) : asio::mutable_buffer();
    (void)total;
    asio::async_read(socket_, mb, asio::transfer_at_least(need),
                     [&](const boost::system::error_code& ec, std::size_t n) {
                       have += n;
                       if (have < want) result = ec ? ec : asio::error::eof;
                       else result = {};
                     });
    if (auto s = run_until(deadline, "reply"); !s) return s;
    if (result) return io_error(result);
    return ok_status();
  }

  Status run_until(Clock::time_point deadline, const char* what) {
    io_.restart();
    io_.run_until(deadline);
    if (!io_.stopped()) {
      // The deadline passed with the operation still pending: close the socket so the
      // handler runs (with operation_aborted) and the connection is never reused.
      boost::system::error_code ignored;
      socket_.close(ignored);
      io_.run();
      broken_ = true;
      return make_error(ErrorCode::kTimeout, std::string("memtap server ") + server_ + " did not answer (" + what +
                                                 ") before the deadline");
    }
    return ok_status();
  }

  Error io_error(const boost::system::error_code& ec) {
    broken_ = true;
    if (ec == asio::error::eof || ec == asio::error::connection_reset || ec == asio::error::broken_pipe) {
      return make_error(ErrorCode::kUnavailable, "memtap server " + server_ + " closed the connection (" + ec.message() + ")");
    }
    return make_error(ErrorCode::kIo, "memtap server " + server_ + ": " + ec.message());
  }

  asio::io_context io_{1};
  tcp::socket socket_;
  std::string server_;
  std::uint32_t next_id_ = 0;
  bool broken_ = false;
};

namespace {

Status say_hello(TcpConnection& c, const OwnerToken& token, Clock::time_point deadline, proto::HelloReply* reply) {
  std::vector<std::byte> body(proto::kHelloBodySize);
  std::memcpy(body.data(), token.data(), token.size());
  put_le32(body.data() + 32, proto::kVersion);
  std::vector<std::byte> reply_body;
  auto h = c.request(proto::MessageType::kHello, body, {}, reply_body, deadline, std::chrono::microseconds(0));
  if (!h) return h.error();
  auto r = proto::decode_hello_reply(reply_body);
  if (!r) return r.error();
  if (reply) *reply = *r;
  return ok_status();
}

}  // namespace

TcpPageSource::TcpPageSource(Endpoint server, OwnerToken token, TcpSourceOptions options)
    : server_(std::move(server)), token_(token), options_(options) {}

TcpPageSource::~TcpPageSource() = default;

Result<std::shared_ptr<TcpPageSource>> TcpPageSource::connect(const Endpoint& server, const OwnerToken& token,
                                                              const TcpSourceOptions& options,
                                                              const ImageMetadata* known) {
  std::shared_ptr<TcpPageSource> src(new TcpPageSource(server, token, options));
  auto deadline = Clock::now() + options.timeout;
  auto conn = std::make_unique<TcpConnection>(server.to_string());
  if (auto s = conn->connect(server, deadline); !s) return s.error();
  proto::HelloReply hello;
  if (auto s = say_hello(*conn, token, deadline, &hello); !s) return s.error();
  src->max_batch_pages_ = hello.max_batch_pages;
  if (known) {
    if (known->image_id() != hello.image_id) {
      return make_error(ErrorCode::kFormat, "memtap server " + server.to_string() +
                                                " serves another image than the one described");
    }
    src->metadata_ = *known;
  } else {
    std::vector<std::byte> body;
    auto h = conn->request(proto::MessageType::kGetMetadata, {}, {}, body, deadline, std::chrono::microseconds(0));
    if (!h) return h.error();
    auto md = ImageMetadata::parse(body);
    if (!md) return make_error(md.error().code, "memtap server " + server.to_string() + ": " + md.error().message);
    if (md->image_id() != hello.image_id || md->page_size() != hello.page_size ||
        md->image_length() != hello.image_length) {
      return make_error(ErrorCode::kProtocol, "memtap server " + server.to_string() + ": metadata disagrees with HELLO");
    }
    src->metadata_ = std::move(md).value();
  }
  src->return_connection(std::move(conn));
  return src;
}

Result<std::unique_ptr<TcpConnection>> TcpPageSource::take_connection() {
  {
    std::lock_guard lock(pool_mutex_);
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      return c;
    }
  }
  auto deadline = Clock::now() + options_.timeout;
  auto conn = std::make_unique<TcpConnection>(server_.to_string());
  if (auto s = conn->connect(server_, deadline); !s) return s.error();
  proto::HelloReply hello;
  if (auto s = say_hello(*conn, token_, deadline, &hello); !s) return s.error();
  if (hello.image_id != metadata_.image_id()) {
    return make_error(ErrorCode::kProtocol, "memtap server " + server_.to_string() + " now serves another image");
  }
  return conn;
}

void TcpPageSource::return_connection(std::unique_ptr<TcpConnection> c) {
  if (c->broken()) return;
  std::lock_guard lock(pool_mutex_);
  idle_.push_back(std::move(c));
}

Status TcpPageSource::fetch(std::span<const PageRange> ranges, std::span<std::byte> out) {
  auto deadline = Clock::now() + options_.timeout;
  if (fault_fires(FaultKind::kFetchFail)) {
    return make_error(ErrorCode::kInjected, "fetch from " + describe() + " failed by MEMTAP_FAULT=fetch-fail");
  }
  if (fault_fires(FaultKind::kFetchStall)) {
    std::this_thread::sleep_until(deadline);
    return make_error(ErrorCode::kTimeout, "memtap server " + server_.to_string() +
                                               " did not answer before the deadline (MEMTAP_FAULT=fetch-stall)");
  }
  std::uint64_t pages = 0;
  for (const auto& r : ranges) pages += r.count;
  if (pages > max_batch_pages_ || ranges.size() > proto::kMaxRanges) {
    return make_error(ErrorCode::kInvalidArgument, "fetch of " + std::to_string(pages) + " pages exceeds the batch cap");
  }
  if (out.size() != pages * metadata_.page_size()) {
    return make_error(ErrorCode::kInvalidArgument, "fetch buffer has the wrong size");
  }
  const std::vector<std::byte> body = proto::encode_fetch_request(ranges);
  auto conn = take_connection();
  if (!conn) return conn.error();
  std::vector<std::byte> err_body;
  auto h = (*conn)->request(proto::MessageType::kFetch, body, out, err_body, deadline, options_.spin);
  return_connection(std::move(conn).value());
  if (!h) return h.error();
  return ok_status();
}

Result<std::string> TcpPageSource::server_stats() {
  auto conn = take_connection();
  if (!conn) return conn.error();
  std::vector<std::byte> body;
  auto h = (*conn)->request(proto::MessageType::kStats, {}, {}, body, Clock::now() + options_.timeout, std::chrono::microseconds(0));
  return_connection(std::move(conn).value());
  if (!h) return h.error();
  return std::string(reinterpret_cast<const char*>(body.data()), body.size());
}

}  // namespace sf::memtap
