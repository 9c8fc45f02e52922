// mcdist: socket setup on one explicitly named interface (see net.hpp for why plain sockets).
#include "mcdist/net.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sf::mcdist::net {
namespace {
std::string errno_text() { return std::strerror(errno); }

Error fail_and_close(int fd, std::string what) {
  std::string msg = "mcdist: " + what + ": " + errno_text();
  ::close(fd);
  return make_error(msg);
}
}  // namespace

Result<InterfaceInfo> resolve_interface(const std::string& name) {
  if (name.empty())
    return make_error("mcdist: no interface given; name the link the clones are on (--iface)");
  InterfaceInfo info;
  info.name = name;
  info.index = if_nametoindex(name.c_str());
  if (info.index == 0)
    return make_error("mcdist: interface '" + name + "' does not exist here: " + errno_text());
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return make_error("mcdist: getifaddrs: " + errno_text());
  bool found = false;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET && name == a->ifa_name) {
      info.address = reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr;
      found = true;
      break;
    }
  }
  freeifaddrs(list);
  if (!found)
    return make_error("mcdist: interface '" + name + "' has no IPv4 address; assign one first");
  return info;
}

Result<in_addr> parse_multicast_group(const std::string& group) {
  in_addr a{};
  if (inet_pton(AF_INET, group.c_str(), &a) != 1 || !IN_MULTICAST(ntohl(a.s_addr)))
    return make_error("mcdist: '" + group + "' is not an IPv4 multicast group (224.0.0.0/4); use e.g. 239.255.77.1");
  return a;
}

Result<sockaddr_in> parse_endpoint(const std::string& s) {
  auto colon = s.rfind(':');
  sockaddr_in a{};
  a.sin_family = AF_INET;
  if (colon == std::string::npos || inet_pton(AF_INET, s.substr(0, colon).c_str(), &a.sin_addr) != 1)
    return make_error("mcdist: '" + s + "' is not ADDR:PORT");
  int port = std::atoi(s.c_str() + colon + 1);
  if (port <= 0 || port > 65535) return make_error("mcdist: bad port in '" + s + "'");
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  return a;
}

std::string to_string(const sockaddr_in& a) {
  char buf[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &a.sin_addr, buf, sizeof buf);
  return std::string(buf) + ":" + std::to_string(ntohs(a.sin_port));
}

void set_buffers(int fd, int bytes) {
  // SO_*BUFFORCE (root) passes net.core.[rw]mem_max; fall back to the capped variant.
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bytes, sizeof bytes) != 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof bytes);
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof bytes) != 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof bytes);
}

Result<int> open_sender_socket(const InterfaceInfo& iface, std::uint16_t port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("mcdist: socket: " + errno_text());
  ip_mreqn mreq{};
  mreq.imr_ifindex = static_cast<int>(iface.index);
  mreq.imr_address = iface.address;
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &mreq, sizeof mreq) != 0)
    return fail_and_close(fd, "IP_MULTICAST_IF on " + iface.name);
  // TTL 1: multicast never leaves the link (docs/protocols/mcdist.md section 1).
  unsigned char ttl = 1, loop = 0;
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) != 0)
    return fail_and_close(fd, "IP_MULTICAST_TTL");
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) != 0)
    return fail_and_close(fd, "IP_MULTICAST_LOOP");
  set_buffers(fd, 4 << 20);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr = iface.address;
  a.sin_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return fail_and_close(fd, "bind " + to_string(a) + " on " + iface.name);
  return fd;
}

Result<int> open_group_socket(const InterfaceInfo& iface, in_addr group, std::uint16_t port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("mcdist: socket: " + errno_text());
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  // Only the groups joined on this socket, not every group any socket of the host joined.
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero) != 0)
    return fail_and_close(fd, "IP_MULTICAST_ALL");
  // 64 MiB (the kernel doubles it): ~1 s of a 1 Gbit/s stream, so a receiver that is starved
  // of CPU for a while (many clones on few cores) catches up instead of dropping. Memory is
  // only used while packets wait.
  set_buffers(fd, 64 << 20);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr = group;
  a.sin_port = htons(port);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return fail_and_close(fd, "bind " + to_string(a));
  ip_mreqn mreq{};
  mreq.imr_multiaddr = group;
  mreq.imr_address = iface.address;
  mreq.imr_ifindex = static_cast<int>(iface.index);
  if (setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) != 0)
    return fail_and_close(fd, "IP_ADD_MEMBERSHIP " + to_string(a) + " on " + iface.name);
  return fd;
}

Result<int> open_unicast_socket(const InterfaceInfo& iface) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error("mcdist: socket: " + errno_text());
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr = iface.address;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0)
    return fail_and_close(fd, "bind " + to_string(a) + " on " + iface.name);
  return fd;
}

}  // namespace sf::mcdist::net
