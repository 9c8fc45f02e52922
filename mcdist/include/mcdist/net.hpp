// mcdist: socket setup on one explicitly named interface. Plain POSIX sockets rather than
// Boost.Asio: the hot paths need sendmmsg/recvmmsg batching and sub-millisecond pacing in one
// tight loop per thread, and the options that keep multicast on the right link
// (IP_MULTICAST_IF by ifindex, IP_MULTICAST_ALL, ip_mreqn joins) are raw setsockopt calls in
// Asio too; an io_context would add a layer without removing any of this code.
#pragma once

#include <netinet/in.h>

#include <cstdint>
#include <string>

#include "mcdist/result.hpp"

namespace sf::mcdist::net {

struct InterfaceInfo {
  std::string name;
  unsigned index = 0;
  in_addr address{};  // its first IPv4 address
};

Result<InterfaceInfo> resolve_interface(const std::string& name);
Result<in_addr> parse_multicast_group(const std::string& group);
Result<sockaddr_in> parse_endpoint(const std::string& addr_port);
std::string to_string(const sockaddr_in& a);

// A UDP socket bound to iface.address:port that multicasts on iface only, TTL 1, no loop.
Result<int> open_sender_socket(const InterfaceInfo& iface, std::uint16_t port);
// A UDP socket bound to group:port, joined to group on iface only.
Result<int> open_group_socket(const InterfaceInfo& iface, in_addr group, std::uint16_t port);
// A UDP socket bound to iface.address:0 for unicast requests.
Result<int> open_unicast_socket(const InterfaceInfo& iface);

void set_buffers(int fd, int bytes);

}  // namespace sf::mcdist::net
