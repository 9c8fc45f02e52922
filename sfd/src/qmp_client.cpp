// sfd: QmpClient (see qmp_client.hpp). Boost.Asio for the socket; each call runs the client's
// own io_context until the reply or the deadline, so a QEMU that stops answering turns into
// an error instead of a hang.
#include "sfd/qmp_client.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <istream>

namespace sf::sfd {
namespace asio = boost::asio;
using Json = QmpClient::Json;

struct QmpClient::Impl {
  asio::io_context io;
  asio::local::stream_protocol::socket socket{io};
  asio::streambuf buffer;
};

QmpClient::QmpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
QmpClient::~QmpClient() = default;

Result<std::unique_ptr<QmpClient>> QmpClient::adopt(int fd) {
  auto impl = std::make_unique<Impl>();
  boost::system::error_code ec;
  impl->socket.assign(asio::local::stream_protocol(), fd, ec);
  if (ec) return make_error("qmp: cannot adopt socket fd " + std::to_string(fd) + ": " + ec.message());
  return std::unique_ptr<QmpClient>(new QmpClient(std::move(impl)));
}

Result<std::unique_ptr<QmpClient>> QmpClient::connect(const std::filesystem::path& path) {
  auto impl = std::make_unique<Impl>();
  boost::system::error_code ec;
  impl->socket.connect(asio::local::stream_protocol::endpoint(path.string()), ec);
  if (ec) return make_error("qmp: cannot connect to " + path.string() + ": " + ec.message() + "; is QEMU running?");
  return std::unique_ptr<QmpClient>(new QmpClient(std::move(impl)));
}

Result<Json> QmpClient::read_message(std::chrono::steady_clock::time_point deadline) {
  boost::system::error_code result_ec;
  bool done = false;
  asio::async_read_until(impl_->socket, impl_->buffer, '\n',
                         [&](const boost::system::error_code& ec, std::size_t) {
                           result_ec = ec;
                           done = true;
                         });
  impl_->io.restart();
  impl_->io.run_until(deadline);
  if (!done) {
    // Cancel the read and let its handler run so nothing refers to this frame afterwards.
    boost::system::error_code ignore;
    impl_->socket.cancel(ignore);
    impl_->io.restart();
    impl_->io.run();
    if (!result_ec || result_ec == asio::error::operation_aborted)
      return make_error("qmp: no answer from QEMU before the deadline");
  }
  if (result_ec) {
    if (result_ec == asio::error::eof) {
      peer_closed_ = true;
      return make_error("qmp: QEMU closed the connection");
    }
    return make_error("qmp: read failed: " + result_ec.message());
  }
  std::istream in(&impl_->buffer);
  std::string line;
  std::getline(in, line);
  Json msg = Json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (msg.is_discarded() || !msg.is_object()) return make_error("qmp: QEMU sent something that is not a JSON object: " + line.substr(0, 200));
  return msg;
}

Status QmpClient::handshake(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto greet = read_message(deadline);
  if (!greet) return greet.error();
  if (!greet->contains("QMP")) return make_error("qmp: the peer did not greet with QMP; is this a QMP socket?");
  greeting_ = *greet;
  auto caps = execute("qmp_capabilities", Json::object(),
                      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
  if (!caps) return caps.error();
  return ok_status();
}

Result<Json> QmpClient::execute(const std::string& command, const Json& arguments,
                                std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const long id = next_id_++;
  Json request = {{"execute", command}, {"id", id}};
  if (!arguments.empty()) request["arguments"] = arguments;
  const std::string text = request.dump() + "\n";
  boost::system::error_code ec;
  asio::write(impl_->socket, asio::buffer(text), ec);
  if (ec) return make_error("qmp: cannot send " + command + ": " + ec.message());
  for (;;) {
    auto msg = read_message(deadline);
    if (!msg) return make_error(msg.error().message + " (waiting for " + command + ")");
    if (msg->contains("event")) {
      events_.push_back(std::move(*msg));
      continue;
    }
    if (!msg->contains("id") || (*msg)["id"] != id) continue;  // a reply to an abandoned call
    if (msg->contains("error")) {
      // QEMU sends {"class": ..., "desc": "..."}; anything else is shown as it came.
      const Json& err = (*msg)["error"];
      const bool has_desc = err.is_object() && err.contains("desc") && err["desc"].is_string();
      return make_error("qmp: " + command + " failed: " + (has_desc ? err["desc"].get<std::string>() : err.dump()));
    }
    return msg->value("return", Json::object());
  }
}

Status QmpClient::simple(const std::string& command, const Json& arguments) {
  auto r = execute(command, arguments);
  if (!r) return r.error();
  return ok_status();
}

Status QmpClient::stop() { return simple("stop"); }
Status QmpClient::cont() { return simple("cont"); }

Status QmpClient::migrate_set_capabilities(const std::map<std::string, bool>& capabilities) {
  Json list = Json::array();
  for (const auto& [name, state] : capabilities) list.push_back({{"capability", name}, {"state", state}});
  return simple("migrate-set-capabilities", {{"capabilities", list}});
}

Status QmpClient::migrate(const std::string& uri) { return simple("migrate", {{"uri", uri}}); }
Status QmpClient::migrate_incoming(const std::string& uri) { return simple("migrate-incoming", {{"uri", uri}}); }
Result<Json> QmpClient::query_migrate() { return execute("query-migrate"); }
Result<Json> QmpClient::query_status() { return execute("query-status"); }

Status QmpClient::quit(std::chrono::milliseconds timeout) {
  auto r = execute("quit", Json::object(), timeout);
  if (!r && !peer_closed_) return r.error();
  return ok_status();
}

Result<Json> QmpClient::wait_event(const std::string& name, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    for (auto it = events_.begin(); it != events_.end(); ++it) {
      if ((*it)["event"] == name) {
        Json e = std::move(*it);
        events_.erase(it);
        return e;
      }
    }
    auto msg = read_message(deadline);
    if (!msg) return make_error(msg.error().message + " (waiting for event " + name + ")");
    if (msg->contains("event")) events_.push_back(std::move(*msg));
  }
}

std::deque<Json> QmpClient::take_events() { return std::exchange(events_, {}); }

}  // namespace sf::sfd
