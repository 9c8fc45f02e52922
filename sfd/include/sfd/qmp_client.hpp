// sfd: a small client of QEMU's machine protocol (QMP) over a unix stream socket, with JSON
// through nlohmann-json. Synchronous calls with a deadline each; asynchronous events that
// arrive while waiting for a reply are kept and can be taken with take_events().
#pragma once

#include <chrono>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "sfd/result.hpp"

namespace sf::sfd {

class QmpClient {
 public:
  using Json = nlohmann::json;
  static constexpr std::chrono::milliseconds kDefaultTimeout{10000};

  // Adopts a connected stream socket (e.g. one end of a socketpair whose other end QEMU got
  // with -chardev socket,fd=N). Takes ownership of fd.
  static Result<std::unique_ptr<QmpClient>> adopt(int fd);
  // Connects to a QMP unix socket path (-qmp unix:PATH,server=on).
  static Result<std::unique_ptr<QmpClient>> connect(const std::filesystem::path& path);
  ~QmpClient();
  QmpClient(const QmpClient&) = delete;
  QmpClient& operator=(const QmpClient&) = delete;

  // Reads the greeting and negotiates capabilities; call once before anything else.
  Status handshake(std::chrono::milliseconds timeout = kDefaultTimeout);
  const Json& greeting() const { return greeting_; }

  // Runs one command; returns its "return" value or an Error with QEMU's "error" description.
  Result<Json> execute(const std::string& command, const Json& arguments = Json::object(),
                       std::chrono::milliseconds timeout = kDefaultTimeout);

  Status stop();
  Status cont();
  Status migrate_set_capabilities(const std::map<std::string, bool>& capabilities);
  Status migrate(const std::string& uri);
  Status migrate_incoming(const std::string& uri);
  Result<Json> query_migrate();
  Result<Json> query_status();
  // Asks QEMU to exit. QEMU may close the socket before it answers; that counts as success.
  Status quit(std::chrono::milliseconds timeout = kDefaultTimeout);

  // Waits until an event named `name` arrives (or was already kept) and returns it.
  Result<Json> wait_event(const std::string& name, std::chrono::milliseconds timeout);
  std::deque<Json> take_events();

 private:
  struct Impl;
  explicit QmpClient(std::unique_ptr<Impl> impl);
  Result<Json> read_message(std::chrono::steady_clock::time_point deadline);
  Status simple(const std::string& command, const Json& arguments = Json::object());

  std::unique_ptr<Impl> impl_;
  Json greeting_;
  std::deque<Json> events_;
  long next_id_ = 1;
  bool peer_closed_ = false;  // QEMU closed the socket (end of file on a read)
};

}  // namespace sf::sfd
