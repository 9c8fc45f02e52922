// A control link over TCP on the cluster network (docs/protocols/control.md): each frame is
// a 4-byte big-endian length and a serialized Envelope, at most kMaxFrame bytes. Writes are
// queued, so send() never blocks the event loop.
#pragma once

#include <utility>  // before Asio: Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <boost/asio.hpp>

#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include "control_frame.hpp"
#include "link.hpp"

namespace sf::mpirun {

class TcpLink : public Link, public std::enable_shared_from_this<TcpLink> {
 public:
  static constexpr uint32_t kMaxFrame = kMaxControlFrame;
  static constexpr uint32_t kProtocolVersion = 1;

  explicit TcpLink(boost::asio::ip::tcp::socket socket);
  // Starts reading; `on_error` is called once when the link breaks or sends garbage.
  void start(EnvelopeHandler on_message, std::function<void(const std::string&)> on_error);
  void send(Envelope message) override;
  bool idle() const { return out_.empty(); }
  void close();

 private:
  void read_header();
  void read_body(uint32_t size);
  void write_next();
  void fail(const std::string& why);

  boost::asio::ip::tcp::socket socket_;
  std::array<unsigned char, 4> header_{};
  std::string body_;
  std::deque<std::string> out_;
  EnvelopeHandler on_message_;
  std::function<void(const std::string&)> on_error_;
  bool failed_ = false;
};

}  // namespace sf::mpirun
