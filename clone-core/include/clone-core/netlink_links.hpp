// clone-core (sandbox driver): the few netlink operations the cluster network needs, on
// libnl-route-3: create a bridge with an address, create a veth pair whose peer lands in a
// clone's network namespace, bring a link up, add an address, delete a group of links.
// Also used by sfd's VM network (a bridge and taps in a private namespace) and by the guest
// side of the qemu driver (vm_identity.hpp: rename, MAC, addresses of the guest's NIC).
#pragma once

#include <sys/types.h>

#include <array>
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
Status create_veth_into(Socket& s, const std::string& host_name, int bridge_ifindex, std::uint32_t group,
                        const std::string& peer_name, int netns_fd, pid_t netns_pid = 0);
Status set_up(Socket& s, int ifindex, const std::string& what);
// The index of link `name` in the socket's namespace (one request).
Result<int> link_index(Socket& s, const std::string& name);
Status add_ipv4(Socket& s, int ifindex, std::uint32_t address, unsigned prefix, const std::string& what);
// Deletes every link of `group` in one batched request; missing links are fine.
Status delete_group(Socket& s, std::uint32_t group);
Status delete_link(Socket& s, const std::string& name);  // ENODEV is fine
// Names and groups of all links in the socket's namespace.
struct LinkEntry {
  std::string name;
  std::uint32_t group = 0;
  int index = 0;
  unsigned arptype = 0;            // ARPHRD_* (1 = Ethernet, 772 = loopback)
  std::string kind{};              // rtnl link type ("bridge", "veth", "tun"); empty for a device driver's NIC
  std::array<std::uint8_t, 6> mac{};
  unsigned flags = 0;              // IFF_*
  int master = 0;                  // ifindex of the bridge it is a port of, or 0
};
Result<std::vector<LinkEntry>> list_links(Socket& s);

// A bridge named `name`, up, with no address, group or fixed MAC, in the socket's namespace
// (the index is looked up through the socket, so this works from any namespace); its index.
Result<int> create_bridge_here(Socket& s, const std::string& name);
// Makes link `ifindex` a port of bridge `master_ifindex` and brings it up (one request).
Status attach_up(Socket& s, int ifindex, int master_ifindex, const std::string& what);
// Pins `mac` to bridge port `ifindex` (a static FDB entry, as `bridge fdb add MAC dev PORT
// master static`) and turns MAC learning off on the port, so frames to `mac` reach that port
// only, whatever source MACs the guests send (a fresh VM clone still sends its parent's MAC).
Status pin_bridge_port(Socket& s, int ifindex, const std::array<std::uint8_t, 6>& mac, const std::string& what);
Status set_down(Socket& s, int ifindex, const std::string& what);
// Renames link `ifindex` to `name` (empty: keep the name) and sets its MAC; the link must be down.
Status set_name_and_mac(Socket& s, int ifindex, const std::string& name, const std::array<std::uint8_t, 6>& mac,
                        const std::string& what);
// Removes every IPv4 address from link `ifindex`.
Status flush_ipv4(Socket& s, int ifindex, const std::string& what);
// The IPv4 addresses on link `ifindex` as "a.b.c.d/p".
Result<std::vector<std::string>> ipv4_addresses(Socket& s, int ifindex);

}  // namespace sf::netlink
