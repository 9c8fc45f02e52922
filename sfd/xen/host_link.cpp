// sfd-xen: the origin/host-agent link (host_link.hpp, docs/protocols/xen-hosts.md).
#include "host_link.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cerrno>
#include <cstring>

#include "clone-core/vm_identity.hpp"
#include "sf-common/random.hpp"

namespace sf::sfd::xen {

namespace {

using Clock = std::chrono::steady_clock;

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

Result<sockaddr_in> socket_address(const std::string& endpoint) {
  auto ep = parse_endpoint(endpoint);
  if (!ep) return ep.error();
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(ep->second);
  inet_pton(AF_INET, ep->first.c_str(), &sa.sin_addr);
  return sa;
}

// A JSON number that is a whole number >= 0 (parsed text gives unsigned; built values int).
bool whole(const nlohmann::json& v) { return v.is_number_unsigned() || (v.is_number_integer() && v.get<std::int64_t>() >= 0); }

}  // namespace

Result<std::pair<std::string, std::uint16_t>> parse_endpoint(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || colon == 0)
    return make_error("'" + text + "' is not ADDR:PORT (an IPv4 address and a port, e.g. 10.214.0.2:7790)");
  const std::string addr = text.substr(0, colon), port = text.substr(colon + 1);
  in_addr a{};
  if (inet_pton(AF_INET, addr.c_str(), &a) != 1)
    return make_error("'" + addr + "' in '" + text + "' is not an IPv4 address");
  char* end = nullptr;
  errno = 0;
  const unsigned long p = std::strtoul(port.c_str(), &end, 10);
  if (port.empty() || *end || errno || p > 65535)
    return make_error("'" + port + "' in '" + text + "' is not a port (0 to 65535)");
  return std::make_pair(addr, static_cast<std::uint16_t>(p));
}

Result<int> listen_on(const std::string& endpoint) {
  auto sa = socket_address(endpoint);
  if (!sa) return sa.error();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(std::string("socket: ") + std::strerror(errno));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*sa), sizeof *sa) != 0 || ::listen(fd, 16) != 0) {
    const int e = errno;
    ::close(fd);
    return make_error("cannot listen on " + endpoint + ": " + std::strerror(e) +
                      (e == EADDRNOTAVAIL ? " (no interface here has that address)" : ""));
  }
  return fd;
}

std::uint16_t bound_port(int fd) {
  sockaddr_in sa{};
  socklen_t len = sizeof sa;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) return 0;
  return ntohs(sa.sin_port);
}

Result<int> connect_to(const std::string& endpoint, std::chrono::milliseconds timeout) {
  auto sa = socket_address(endpoint);
  if (!sa) return sa.error();
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return make_error(std::string("socket: ") + std::strerror(errno));
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&*sa), sizeof *sa);
  if (rc != 0 && errno == EINPROGRESS) {
    pollfd p{fd, POLLOUT, 0};
    rc = ::poll(&p, 1, static_cast<int>(timeout.count()));
    if (rc == 0) {
      ::close(fd);
      return make_error("no answer from " + endpoint + " within " + std::to_string(timeout.count() / 1000) +
                        " s; is `sfd-xen host` running there, and is the address right?");
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    errno = err;
    rc = err == 0 ? 0 : -1;
  }
  if (rc != 0) {
    const int e = errno;
    ::close(fd);
    return make_error("cannot connect to " + endpoint + ": " + std::strerror(e) +
                      (e == ECONNREFUSED ? " (is `sfd-xen host --listen " + endpoint + "` running there?)" : ""));
  }
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> b(bytes);
  // getrandom(2) blocks until the kernel's pool is ready and random_bytes retries EINTR, so
  // this loop, like the one it replaced, only guards against the impossible.
  while (!sf::random_bytes(b.data(), b.size())) continue;
  return sf::to_hex(b.data(), b.size());
}

std::string auth_proof(const sf::mcdist::ClusterKey& key, std::string_view nonce) {
  const std::string msg = "sfd-xen origin " + std::string(nonce);
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.bytes.data(), static_cast<int>(key.bytes.size()),
       reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), mac, &len);
  return sf::to_hex(mac, len);
}

bool proof_matches(const sf::mcdist::ClusterKey& key, std::string_view nonce, std::string_view proof) {
  const std::string want = auth_proof(key, nonce);
  return proof.size() == want.size() && CRYPTO_memcmp(proof.data(), want.data(), want.size()) == 0;
}

Result<std::optional<std::string>> LineBuffer::next() {
  const auto nl = buf_.find('\n');
  if (nl == std::string::npos) {
    if (buf_.size() > kMaxLine) return make_error("a line of over " + std::to_string(kMaxLine) + " bytes");
    return std::optional<std::string>{};
  }
  if (nl > kMaxLine) return make_error("a line of over " + std::to_string(kMaxLine) + " bytes");
  std::string line = buf_.substr(0, nl);
  buf_.erase(0, nl + 1);
  return std::optional<std::string>{std::move(line)};
}

const nlohmann::json& field(const nlohmann::json& m, const char* key) {
  static const nlohmann::json none;
  return m.is_object() && m.contains(key) ? m[key] : none;
}

Result<nlohmann::json> parse_message(std::string_view line) {
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return make_error("a line that is not a JSON object");
  const bool greeting = j.contains("sfd-xen-host");
  if (!greeting && !(j.contains("op") && j["op"].is_string())) return make_error("a message without an \"op\" string");
  return j;
}

nlohmann::json encode_restore(const RestoreRequest& r) {
  nlohmann::json clones = nlohmann::json::array();
  for (const auto& c : r.clones) clones.push_back({{"id", c.id}, {"name", c.name}, {"mac", c.mac}});
  return {{"op", "restore"}, {"family", r.family}, {"group", r.group}, {"port", r.port}, {"cluster", r.cluster},
          {"receiver", r.receiver}, {"image_bytes", r.image_bytes}, {"clones", clones}, {"config", r.config}};
}

Result<RestoreRequest> parse_restore(const nlohmann::json& m) {
  auto bad = [](const std::string& what) { return make_error("a restore request with " + what); };
  for (const char* k : {"family", "group"})
    if (!field(m, k).is_string()) return bad(std::string("no string \"") + k + "\"");
  for (const char* k : {"port", "cluster", "receiver", "image_bytes"})
    if (!whole(field(m, k))) return bad(std::string("no unsigned \"") + k + "\"");
  if (!field(m, "clones").is_array()) return bad("no \"clones\" array");
  if (!field(m, "config").is_object()) return bad("no \"config\" object");
  RestoreRequest r;
  r.family = field(m, "family").get<std::string>();
  r.group = field(m, "group").get<std::string>();
  in_addr g{};
  if (inet_pton(AF_INET, r.group.c_str(), &g) != 1 || !IN_MULTICAST(ntohl(g.s_addr)))
    return bad("a group that is not an IPv4 multicast address (" + r.group + ")");
  const auto port = field(m, "port").get<std::uint64_t>();
  if (port == 0 || port > 65535) return bad("port " + std::to_string(port));
  r.port = static_cast<std::uint16_t>(port);
  r.cluster = field(m, "cluster").get<std::uint64_t>();
  const auto receiver = field(m, "receiver").get<std::uint64_t>();
  if (receiver == 0 || receiver > kMaxHosts) return bad("receiver " + std::to_string(receiver));
  r.receiver = static_cast<std::uint32_t>(receiver);
  r.image_bytes = field(m, "image_bytes").get<std::uint64_t>();
  if (r.image_bytes == 0 || r.image_bytes > kMaxImageBytes) return bad("an image of " + std::to_string(r.image_bytes) + " bytes");
  const auto& clones = field(m, "clones");
  if (clones.empty() || clones.size() > kMaxClonesPerHost) return bad(std::to_string(clones.size()) + " clones (1 to 32)");
  for (const auto& jc : clones) {
    if (!jc.is_object() || !jc.contains("id") || !whole(jc["id"]) || !jc.contains("name") || !jc["name"].is_string() ||
        !jc.contains("mac") || !jc["mac"].is_string())
      return bad("a clone without an id, a name and a MAC");
    RestoreClone c;
    const auto id = jc["id"].get<std::uint64_t>();
    if (id == 0 || id > kMaxClonesPerHost * (kMaxHosts + 1)) return bad("clone id " + std::to_string(id));
    c.id = static_cast<unsigned>(id);
    c.name = jc["name"].get<std::string>();
    c.mac = jc["mac"].get<std::string>();
    if (c.name.empty() || c.name.size() > 64) return bad("a clone name of " + std::to_string(c.name.size()) + " characters");
    if (!sf::parse_mac(c.mac)) return bad("the MAC '" + c.mac + "'");
    r.clones.push_back(std::move(c));
  }
  r.config = field(m, "config");
  return r;
}

HostLink& HostLink::operator=(HostLink&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = o.fd_;
    in_ = std::move(o.in_);
    peer_ = std::move(o.peer_);
    o.fd_ = -1;
  }
  return *this;
}

HostLink::~HostLink() { close(); }

void HostLink::close() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

Status HostLink::send(const nlohmann::json& message) {
  if (fd_ < 0) return make_error(peer_ + ": not connected");
  const std::string line = message.dump() + "\n";
  std::size_t off = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (off < line.size()) {
    const ssize_t n = ::send(fd_, line.data() + off, line.size() - off, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      off += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, remaining_ms(deadline)) <= 0) return make_error(peer_ + ": reads nothing (10 s)");
      continue;
    }
    return make_error(peer_ + ": " + std::strerror(errno));
  }
  return ok_status();
}

Result<std::optional<nlohmann::json>> HostLink::next_buffered() {
  auto line = in_.next();
  if (!line) return make_error(peer_ + " sent " + line.error().message);
  if (!*line) return std::optional<nlohmann::json>{};
  auto m = parse_message(**line);
  if (!m) return make_error(peer_ + " sent " + m.error().message);
  return std::optional<nlohmann::json>{std::move(*m)};
}

Result<std::vector<nlohmann::json>> HostLink::read_available() {
  char buf[65536];
  ssize_t n;
  do {
    n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n == 0) return make_error(peer_ + " closed the connection");
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return make_error(peer_ + ": " + std::strerror(errno));
  if (n > 0) in_.append(std::string_view(buf, static_cast<std::size_t>(n)));
  std::vector<nlohmann::json> out;
  for (;;) {
    auto m = next_buffered();
    if (!m) return m.error();
    if (!*m) break;
    out.push_back(std::move(**m));
  }
  return out;
}

Result<nlohmann::json> HostLink::receive(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    auto m = next_buffered();
    if (!m) return m.error();
    if (*m) return std::move(**m);
    pollfd p{fd_, POLLIN, 0};
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0)
      return make_error(peer_ + ": no answer within " + std::to_string(timeout.count() / 1000) + " s");
    char buf[65536];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n == 0) return make_error(peer_ + " closed the connection");
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(peer_ + ": " + std::strerror(errno));
    }
    in_.append(std::string_view(buf, static_cast<std::size_t>(n)));
  }
}

}  // namespace sf::sfd::xen
