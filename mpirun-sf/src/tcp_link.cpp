// The TCP control link; see tcp_link.hpp.
#include "tcp_link.hpp"

namespace asio = boost::asio;

namespace sf::mpirun {

TcpLink::TcpLink(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {
  boost::system::error_code ec;
  socket_.set_option(asio::ip::tcp::no_delay(true), ec);  // fences are latency-bound
}

void TcpLink::start(EnvelopeHandler on_message, std::function<void(const std::string&)> on_error) {
  on_message_ = std::move(on_message);
  on_error_ = std::move(on_error);
  read_header();
}

void TcpLink::fail(const std::string& why) {
  if (failed_) return;
  failed_ = true;
  out_.clear();
  boost::system::error_code ec;
  socket_.close(ec);
  if (on_error_) on_error_(why);
}

void TcpLink::close() {
  failed_ = true;  // a deliberate close is not reported as an error
  boost::system::error_code ec;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

void TcpLink::read_header() {
  auto self = shared_from_this();
  asio::async_read(socket_, asio::buffer(header_),
                   [self](const boost::system::error_code& ec, size_t) {
                     if (ec) return self->fail(ec == asio::error::eof ? "connection closed"
                                                                        : ec.message());
                     auto size = decode_frame_length(self->header_);
                     if (!size)
                       return self->fail("a frame of " + std::to_string(announced_frame_length(self->header_)) +
                                         " bytes exceeds the limit of " + std::to_string(kMaxFrame) + " bytes");
                     self->read_body(*size);
                   });
}

void TcpLink::read_body(uint32_t size) {
  body_.resize(size);
  auto self = shared_from_this();
  asio::async_read(socket_, asio::buffer(body_),
                   [self](const boost::system::error_code& ec, size_t) {
                     if (ec) return self->fail(ec.message());
                     Envelope m;
                     if (!m.ParseFromString(self->body_))
                       return self->fail("a frame is not a valid control message");
                     if (self->on_message_) self->on_message_(std::move(m));
                     if (!self->failed_) self->read_header();
                   });
}

void TcpLink::send(Envelope message) {
  if (failed_) return;
  std::string frame = encode_frame(message);
  out_.push_back(std::move(frame));
  if (out_.size() == 1) write_next();
}

void TcpLink::write_next() {
  auto self = shared_from_this();
  asio::async_write(socket_, asio::buffer(out_.front()),
                    [self](const boost::system::error_code& ec, size_t) {
                      if (ec) return self->fail(ec.message());
                      if (self->out_.empty()) return;
                      self->out_.pop_front();
                      if (!self->out_.empty()) self->write_next();
                    });
}

}  // namespace sf::mpirun
