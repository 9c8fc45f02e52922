// clone-core: a xenstore client for Xen guests, speaking the xenstore wire protocol over the
// guest kernel's /dev/xen/xenbus (docs/protocols/xen-clone.md).
//
// Why not libxenstore: once a watch is set it reads on a thread of its own, which does not
// survive fork(), and the xen driver forks (a clone's monitor, and clone-core's fork
// semantics want a single-threaded caller); it would also make every program linked with
// clone-core depend on a Xen library. The protocol is Xen's public ABI (xs_wire.h): a 16-byte
// header (type, request id, transaction id, length) and NUL-separated strings.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "clone-core/result.hpp"

namespace sf::xenbus {

inline constexpr const char* kDevice = "/dev/xen/xenbus";
inline constexpr std::size_t kPayloadMax = 4096;  // XENSTORE_PAYLOAD_MAX

class Client {
 public:
  Client() = default;
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;
  Client(Client&& other) noexcept;
  Client& operator=(Client&& other) noexcept;

  static Result<Client> open(const std::string& device = kDevice);

  // Paths without a leading '/' are the calling domain's own (/local/domain/<id>/...).
  Result<std::optional<std::string>> read(const std::string& path);  // nullopt: no such key
  Status write(const std::string& path, const std::string& value);
  Status remove(const std::string& path);  // no such key is not an error
  Result<std::vector<std::string>> directory(const std::string& path);  // empty: no such key
  // Xenstore fires a watch once when it is set, then on every change at or below `path`.
  Status watch(const std::string& path, const std::string& token);

  // The next watch event's path, waiting up to timeout_ms (-1: forever); nullopt if none.
  Result<std::optional<std::string>> next_event(int timeout_ms);
  int fd() const { return fd_; }
  void close_fd();

 private:
  struct Message {
    std::uint32_t type = 0;
    std::uint32_t req_id = 0;
    std::string payload;
  };
  // The reply's payload; nullopt when xenstore answers ENOENT.
  Result<std::optional<std::string>> request(std::uint32_t type, const std::string& payload);
  // One message from the device, waiting up to timeout_ms; nullopt if none came.
  Result<std::optional<Message>> read_message(int timeout_ms);

  int fd_ = -1;
  std::uint32_t next_id_ = 1;
  std::string buf_;
  std::deque<std::string> events_;
};

}  // namespace sf::xenbus
