// sfd-xen: the link between an origin sfd-xen (the dom0 whose guest asked for clones) and a
// host agent (`sfd-xen host`, the dom0 of another Xen host that restores some of the clones).
// One TCP connection per ticket, carrying one JSON object per line; the agent proves nothing,
// the origin proves it holds the hosts' shared key by an HMAC of the agent's random nonce
// (docs/protocols/xen-hosts.md). The saved image does not travel here: it is multicast once
// with mcdist to every agent. No libxl in here, so the unit tests and the fuzzer reach it.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "mcdist/packet.hpp"
#include "sfd/result.hpp"

namespace sf::sfd::xen {

inline constexpr int kHostProtocolVersion = 1;
inline constexpr std::size_t kMaxLine = 1u << 20;  // a restore request carries libxl's config
inline constexpr unsigned kMaxHosts = 16;

// "ADDR:PORT" (IPv4) split and checked; the error names what is wrong.
Result<std::pair<std::string, std::uint16_t>> parse_endpoint(const std::string& text);

// A listening TCP socket on ADDR:PORT (port 0: any; see bound_port), and a connection to one
// (waits at most `timeout`).
Result<int> listen_on(const std::string& endpoint);
std::uint16_t bound_port(int fd);
Result<int> connect_to(const std::string& endpoint, std::chrono::milliseconds timeout);

// `bytes` random bytes as lower-case hex.
std::string random_hex(std::size_t bytes);
// What the origin answers to the agent's nonce: HMAC-SHA256 under the hosts' key, in hex.
std::string auth_proof(const sf::mcdist::ClusterKey& key, std::string_view nonce);
// Constant-time comparison of a proof received with the expected one.
bool proof_matches(const sf::mcdist::ClusterKey& key, std::string_view nonce, std::string_view proof);

// Splits buffered bytes into lines (without the newline); refuses a line over kMaxLine.
class LineBuffer {
 public:
  void append(std::string_view bytes) { buf_.append(bytes); }
  // The next whole line, if one is there; an error if the pending line is already too long.
  Result<std::optional<std::string>> next();

 private:
  std::string buf_;
};

// A message's field, or null when it has none or is not an object (operator[] of a const
// json must not miss).
const nlohmann::json& field(const nlohmann::json& m, const char* key);

// Parses one line as a message: a JSON object with a string "op" (the agent's greeting has
// "sfd-xen-host" instead). The error names what is wrong.
Result<nlohmann::json> parse_message(std::string_view line);

// What an origin asks a host agent to restore: the image's multicast stream, the clones placed
// there, and the guest's libxl configuration (libxl's own JSON).
struct RestoreClone {
  unsigned id = 0;
  std::string name;
  std::string mac;
};
struct RestoreRequest {
  std::string family;  // the parent domain's name
  std::string group;   // multicast group and port of the image
  std::uint16_t port = 0;
  std::uint64_t cluster = 0;   // the stream's mcdist cluster ID
  std::uint32_t receiver = 0;  // this host's receiver ID in the stream
  std::uint64_t image_bytes = 0;
  std::vector<RestoreClone> clones;
  nlohmann::json config;
};
inline constexpr std::uint64_t kMaxImageBytes = 64ull << 30;
inline constexpr std::size_t kMaxClonesPerHost = 32;

nlohmann::json encode_restore(const RestoreRequest& r);
// Checks every field (types, ranges, a multicast group, MACs); the error names the first
// that is wrong.
Result<RestoreRequest> parse_restore(const nlohmann::json& m);

// One connection, owned (closed on destruction).
class HostLink {
 public:
  HostLink() = default;
  explicit HostLink(int fd) : fd_(fd) {}
  HostLink(HostLink&& o) noexcept : fd_(o.fd_), in_(std::move(o.in_)), peer_(std::move(o.peer_)) { o.fd_ = -1; }
  HostLink& operator=(HostLink&& o) noexcept;
  ~HostLink();
  int fd() const { return fd_; }
  bool open() const { return fd_ >= 0; }
  void close();
  // Who is at the other end, for messages ("host 10.0.0.2:7790").
  const std::string& peer() const { return peer_; }
  void set_peer(std::string p) { peer_ = std::move(p); }

  // Writes one message as a line (blocking; a peer that reads nothing for 10 s fails it).
  Status send(const nlohmann::json& message);
  // The next message, waiting at most `timeout`; an error on end of file, a broken or
  // oversized line, or the timeout.
  Result<nlohmann::json> receive(std::chrono::milliseconds timeout);
  // After poll() said the socket is readable: reads once and returns the messages now
  // complete (possibly none); an error on end of file or a broken line.
  Result<std::vector<nlohmann::json>> read_available();

 private:
  Result<std::optional<nlohmann::json>> next_buffered();
  int fd_ = -1;
  LineBuffer in_;
  std::string peer_;
};

}  // namespace sf::sfd::xen
