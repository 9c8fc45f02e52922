// clone-core: the xenstore wire client (see xenbus.hpp).
#include "xenbus.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

namespace sf::xenbus {
namespace {

// Message types of Xen's public xs_wire.h (a stable ABI).
enum : std::uint32_t {
  kDirectory = 1,
  kRead = 2,
  kWatch = 4,
  kWrite = 11,
  kRm = 13,
  kWatchEvent = 15,
  kError = 16,
};
constexpr std::size_t kHeader = 16;

Error xs_error(const std::string& what) { return make_error(Errc::system, "clone-core: xenstore: " + what); }

void put32(std::string& out, std::uint32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); }  // host order, as the ABI
std::uint32_t get32(const std::string& in, std::size_t off) {
  std::uint32_t v = 0;
  std::memcpy(&v, in.data() + off, 4);
  return v;
}

}  // namespace

Client::~Client() { close_fd(); }
Client::Client(Client&& other) noexcept { *this = std::move(other); }
Client& Client::operator=(Client&& other) noexcept {
  if (this != &other) {
    close_fd();
    fd_ = other.fd_;
    other.fd_ = -1;
    next_id_ = other.next_id_;
    buf_ = std::move(other.buf_);
    events_ = std::move(other.events_);
  }
  return *this;
}

void Client::close_fd() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  buf_.clear();
  events_.clear();
}

Result<Client> Client::open(const std::string& device) {
  Client c;
  c.fd_ = ::open(device.c_str(), O_RDWR | O_CLOEXEC);
  if (c.fd_ < 0) {
    const int err = errno;
    return make_error(err == ENOENT ? Errc::driver_unavailable : Errc::system,
                      "clone-core: xenstore: open " + device + ": " + std::strerror(err));
  }
  return c;
}

Result<std::optional<Client::Message>> Client::read_message(int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms < 0 ? 0 : timeout_ms);
  for (;;) {
    if (buf_.size() >= kHeader) {
      const std::uint32_t len = get32(buf_, 12);
      if (len > kPayloadMax) return xs_error("a message announces " + std::to_string(len) + " bytes, more than the protocol allows");
      if (buf_.size() >= kHeader + len) {
        Message m{get32(buf_, 0), get32(buf_, 4), buf_.substr(kHeader, len)};
        buf_.erase(0, kHeader + len);
        return std::optional<Message>(std::move(m));
      }
    }
    int wait = -1;
    if (timeout_ms >= 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
      wait = left > 0 ? static_cast<int>(left) : 0;
    }
    pollfd p{fd_, POLLIN, 0};
    const int r = ::poll(&p, 1, wait);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return xs_error(std::string("poll: ") + std::strerror(errno));
    if (r == 0) return std::optional<Message>();
    char chunk[kHeader + kPayloadMax];
    const ssize_t n = ::read(fd_, chunk, sizeof chunk);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n < 0) return xs_error(std::string("read: ") + std::strerror(errno));
    if (n == 0) return xs_error("the xenbus device was closed");
    buf_.append(chunk, static_cast<std::size_t>(n));
  }
}

Result<std::optional<std::string>> Client::request(std::uint32_t type, const std::string& payload) {
  if (payload.size() > kPayloadMax) return xs_error("a request of " + std::to_string(payload.size()) + " bytes is above xenstore's limit of 4096");
  const std::uint32_t id = next_id_++;
  std::string msg;
  put32(msg, type);
  put32(msg, id);
  put32(msg, 0);
  put32(msg, static_cast<std::uint32_t>(payload.size()));
  msg += payload;
  // The device takes one whole message per write.
  for (;;) {
    const ssize_t n = ::write(fd_, msg.data(), msg.size());
    if (n < 0 && errno == EINTR) continue;
    if (n != static_cast<ssize_t>(msg.size())) return xs_error(std::string("write: ") + (n < 0 ? std::strerror(errno) : "short write"));
    break;
  }
  for (;;) {
    auto m = read_message(-1);
    if (!m) return m.error();
    if (!*m) continue;
    if ((*m)->type == kWatchEvent) {
      const std::string& p = (*m)->payload;
      events_.push_back(p.substr(0, p.find('\0')));
      continue;
    }
    if ((*m)->req_id != id) continue;  // not ours (cannot happen with one request at a time)
    if ((*m)->type == kError) {
      std::string e = (*m)->payload;
      if (auto nul = e.find('\0'); nul != std::string::npos) e.resize(nul);
      if (e == "ENOENT") return std::optional<std::string>();
      return make_error(Errc::system, e);
    }
    return std::optional<std::string>(std::move((*m)->payload));
  }
}

Result<std::optional<std::string>> Client::read(const std::string& path) {
  auto r = request(kRead, path + '\0');
  if (!r) return xs_error("read " + path + ": " + r.error().message);
  return std::move(*r);
}

Status Client::write(const std::string& path, const std::string& value) {
  auto r = request(kWrite, path + '\0' + value);
  if (!r) return xs_error("write " + path + ": " + r.error().message);
  if (!*r) return xs_error("write " + path + ": ENOENT");
  return ok_status();
}

Status Client::remove(const std::string& path) {
  auto r = request(kRm, path + '\0');
  if (!r) return xs_error("remove " + path + ": " + r.error().message);
  return ok_status();
}

Result<std::vector<std::string>> Client::directory(const std::string& path) {
  auto r = request(kDirectory, path + '\0');
  if (!r) return xs_error("list " + path + ": " + r.error().message);
  std::vector<std::string> out;
  if (!*r) return out;
  const std::string& names = **r;
  std::size_t pos = 0;
  while (pos < names.size()) {
    const std::size_t nul = names.find('\0', pos);
    const std::size_t end = nul == std::string::npos ? names.size() : nul;
    if (end > pos) out.push_back(names.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

Status Client::watch(const std::string& path, const std::string& token) {
  auto r = request(kWatch, path + '\0' + token + '\0');
  if (!r) return xs_error("watch " + path + ": " + r.error().message);
  if (!*r) return xs_error("watch " + path + ": ENOENT");
  return ok_status();
}

Result<std::optional<std::string>> Client::next_event(int timeout_ms) {
  for (;;) {
    if (!events_.empty()) {
      std::string e = std::move(events_.front());
      events_.pop_front();
      return std::optional<std::string>(std::move(e));
    }
    auto m = read_message(timeout_ms);
    if (!m) return m.error();
    if (!*m) return std::optional<std::string>();
    if ((*m)->type == kWatchEvent) {
      const std::string& p = (*m)->payload;
      return std::optional<std::string>(p.substr(0, p.find('\0')));
    }
    // A stray reply: nothing waits for it.
  }
}

}  // namespace sf::xenbus
