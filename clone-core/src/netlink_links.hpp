// clone-core (sandbox driver): the few netlink operations the cluster network needs, on
// libnl-route-3: create a bridge with an address, create a veth pair whose peer lands in a
// clone's network namespace, bring a link up, add an address, delete a group of links.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "clone-core/result.hpp"

struct nl_sock;

namespace sf::netlink {

class Socket {
 public:
  Socket() = default;
  ~Socket();
  Socket(Socket&& other) noexcept : sk_(other.sk_) { other.sk_ = nullptr; }
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  // A NETLINK_ROUTE socket in the caller's current network namespace. local_port 0 lets libnl
  // pick; a nonzero one is used as given (processes forked into new PID namespaces all have
  // pid 1, so libnl's pid-based choice would collide in a shared network namespace).
  static Result<Socket> open(std::uint32_t local_port = 0);
  nl_sock* get() const { return sk_; }
  // Closes the socket's fd without touching the peer (after fork, in the child).
  void release();

 private:
  nl_sock* sk_ = nullptr;
};

Result<int> create_bridge(Socket& s, const std::string& name, std::uint32_t group, const std::uint8_t mac[6]);
// Creates host_name (master = bridge_ifindex, group, up) paired with peer_name inside the
// network namespace netns_fd, or if that is -1 the one of process netns_pid (down). One request.
Error create_veth_into(Socket& s, const std::string& host_name, int bridge_ifindex, std::uint32_t group,
                       const std::string& peer_name, int netns_fd, pid_t netns_pid = 0);
Error set_up(Socket& s, int ifindex, const std::string& what);
// The index of link `name` in the socket's namespace (one request).
Result<int> link_index(Socket& s, const std::string& name);
Error add_ipv4(Socket& s, int ifindex, std::uint32_t address, unsigned prefix, const std::string& what);
// Deletes every link of `group` in one batched request; missing links are fine.
Error delete_group(Socket& s, std::uint32_t group);
Error delete_link(Socket& s, const std::string& name);  // ENODEV is fine
// Names and groups of all links in the socket's namespace.
struct LinkEntry {
  std::string name;
  std::uint32_t group = 0;
};
Result<std::vector<LinkEntry>> list_links(Socket& s);

}  // namespace sf::netlink
