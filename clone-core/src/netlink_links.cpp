// clone-core (sandbox driver): netlink operations on libnl-route-3 (see netlink_links.hpp).
#include "clone-core/netlink_links.hpp"

#include <linux/if_link.h>
#include <linux/if_bridge.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netlink/netlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <cstring>

namespace sf::netlink {
namespace {

std::string nl_message(int err) { return std::string(nl_geterror(err)) + " (libnl " + std::to_string(err) + ")"; }

struct LinkRef {
  rtnl_link* p = nullptr;
  ~LinkRef() {
    if (p) rtnl_link_put(p);
  }
};
struct AddrRef {
  nl_addr* p = nullptr;
  ~AddrRef() {
    if (p) nl_addr_put(p);
  }
};

}  // namespace

Socket::~Socket() {
  if (sk_) nl_socket_free(sk_);
}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    if (sk_) nl_socket_free(sk_);
    sk_ = other.sk_;
    other.sk_ = nullptr;
  }
  return *this;
}

void Socket::release() {
  // In a forked child this closes only the child's copy of the fd; the parent's socket lives on.
  if (sk_) nl_socket_free(sk_);
  sk_ = nullptr;
}

Result<Socket> Socket::open(std::uint32_t local_port) {
  Socket s;
  s.sk_ = nl_socket_alloc();
  if (!s.sk_) return make_error(Errc::system, "clone-core: netlink: out of memory allocating a socket");
  if (local_port != 0) nl_socket_set_local_port(s.sk_, local_port);
  int err = nl_connect(s.sk_, NETLINK_ROUTE);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: netlink: connect: " + nl_message(err));
  return s;
}

// The MTU of a sandbox cluster's bridge and veths. The links never leave this machine (no
// port of the bridge is a real NIC), so they take loopback's size, as large as an Ethernet
// link may be: a rank's 64 KiB eager fragment crosses in one frame instead of 44, and Open
// MPI's TCP between two clones has about loopback's cost. LAMMPS on 4 clones went from 1.2
// to about 1.0 times its time under mpirun on one machine (docs/benchmarks/apps.md).
constexpr int kClusterMtu = 65535;

Result<int> create_bridge(Socket& s, const std::string& name, std::uint32_t group, const std::uint8_t mac[6]) {
  LinkRef link{rtnl_link_alloc()};
  if (!link.p) return make_error(Errc::system, "clone-core: netlink: out of memory");
  rtnl_link_set_name(link.p, name.c_str());
  int err = rtnl_link_set_type(link.p, "bridge");
  if (err < 0) return make_error(Errc::network_setup, "clone-core: bridge " + name + ": type bridge: " + nl_message(err));
  rtnl_link_set_group(link.p, group);
  rtnl_link_set_flags(link.p, IFF_UP);
  rtnl_link_set_mtu(link.p, kClusterMtu);
  // A fixed MAC: otherwise the bridge takes the lowest port MAC and changes it as clones
  // join, invalidating the clones' ARP entries for the parent.
  AddrRef lladdr{nl_addr_build(AF_LLC, mac, 6)};
  rtnl_link_set_addr(link.p, lladdr.p);
  err = rtnl_link_add(s.get(), link.p, NLM_F_CREATE | NLM_F_EXCL);
  if (err < 0)
    return make_error(err == -NLE_PERM ? Errc::missing_privilege : Errc::network_setup,
                      "clone-core: creating bridge " + name + ": " + nl_message(err) +
                          (err == -NLE_PERM ? "; the sandbox driver needs CAP_NET_ADMIN (run as root)" : ""));
  unsigned index = if_nametoindex(name.c_str());
  if (index == 0) return make_error(Errc::network_setup, "clone-core: bridge " + name + " vanished after creation");
  return static_cast<int>(index);
}

Status create_veth_into(Socket& s, const std::string& host_name, int bridge_ifindex, std::uint32_t group,
                        const std::string& peer_name, int netns_fd, pid_t netns_pid) {
  LinkRef link{rtnl_link_veth_alloc()};
  if (!link.p) return make_error(Errc::system, "clone-core: netlink: out of memory");
  LinkRef peer{rtnl_link_veth_get_peer(link.p)};  // our own reference (libnl >= 3.2.27)
  rtnl_link_set_name(link.p, host_name.c_str());
  rtnl_link_set_master(link.p, bridge_ifindex);
  rtnl_link_set_group(link.p, group);
  rtnl_link_set_flags(link.p, IFF_UP);
  rtnl_link_set_name(peer.p, peer_name.c_str());
  rtnl_link_set_mtu(link.p, kClusterMtu);
  rtnl_link_set_mtu(peer.p, kClusterMtu);
  if (netns_fd >= 0) rtnl_link_set_ns_fd(peer.p, netns_fd);
  else rtnl_link_set_ns_pid(peer.p, netns_pid);
  // No IFF_UP on the peer: the kernel opens it before the pair is linked (veth_open fails
  // with ENOTCONN). The clone brings it up from inside.
  int err = rtnl_link_add(s.get(), link.p, NLM_F_CREATE | NLM_F_EXCL);
  if (err < 0)
    return make_error(Errc::network_setup,
                      "clone-core: creating veth " + host_name + " <-> " + peer_name + ": " + nl_message(err));
  return ok_status();
}

Status set_up(Socket& s, int ifindex, const std::string& what) {
  LinkRef change{rtnl_link_alloc()};
  rtnl_link_set_ifindex(change.p, ifindex);
  rtnl_link_set_flags(change.p, IFF_UP);
  int err = rtnl_link_change(s.get(), change.p, change.p, 0);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: bringing " + what + " up: " + nl_message(err));
  return ok_status();
}

Result<int> link_index(Socket& s, const std::string& name) {
  // if_nametoindex() would look in the caller's namespace, not the socket's.
  rtnl_link* link = nullptr;
  int err = rtnl_link_get_kernel(s.get(), 0, name.c_str(), &link);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: looking up link " + name + ": " + nl_message(err));
  int index = rtnl_link_get_ifindex(link);
  rtnl_link_put(link);
  return index;
}

Status add_ipv4(Socket& s, int ifindex, std::uint32_t address, unsigned prefix, const std::string& what) {
  rtnl_addr* addr = rtnl_addr_alloc();
  std::uint32_t be = htonl(address);
  AddrRef local{nl_addr_build(AF_INET, &be, 4)};
  nl_addr_set_prefixlen(local.p, static_cast<int>(prefix));
  rtnl_addr_set_ifindex(addr, ifindex);
  rtnl_addr_set_local(addr, local.p);
  int err = rtnl_addr_add(s.get(), addr, 0);
  rtnl_addr_put(addr);
  if (err < 0)
    return make_error(Errc::network_setup, "clone-core: adding address to " + what + ": " + nl_message(err));
  return ok_status();
}

Status delete_group(Socket& s, std::uint32_t group) {
  // libnl's rtnl_link_delete needs a name or index; deleting by IFLA_GROUP (the kernel's
  // rtnl_group_dellink, one batched unregister) needs a hand-built message.
  nl_msg* msg = nlmsg_alloc_simple(RTM_DELLINK, 0);
  if (!msg) return make_error(Errc::system, "clone-core: netlink: out of memory");
  ifinfomsg ifi{};
  ifi.ifi_family = AF_UNSPEC;
  int err = nlmsg_append(msg, &ifi, sizeof ifi, NLMSG_ALIGNTO);
  if (err >= 0) err = nla_put_u32(msg, IFLA_GROUP, group);
  if (err >= 0) err = nl_send_auto_complete(s.get(), msg);
  nlmsg_free(msg);
  if (err >= 0) err = nl_wait_for_ack(s.get());
  if (err < 0 && err != -NLE_NODEV && err != -NLE_OBJ_NOTFOUND)
    return make_error(Errc::network_setup, "clone-core: deleting link group " + std::to_string(group) + ": " +
                                               nl_message(err));
  return ok_status();
}

Status delete_link(Socket& s, const std::string& name) {
  LinkRef link{rtnl_link_alloc()};
  rtnl_link_set_name(link.p, name.c_str());
  int err = rtnl_link_delete(s.get(), link.p);
  if (err < 0 && err != -NLE_NODEV && err != -NLE_OBJ_NOTFOUND)
    return make_error(Errc::network_setup, "clone-core: deleting link " + name + ": " + nl_message(err));
  return ok_status();
}

Result<std::vector<LinkEntry>> list_links(Socket& s) {
  nl_cache* cache = nullptr;
  int err = rtnl_link_alloc_cache(s.get(), AF_UNSPEC, &cache);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: listing links: " + nl_message(err));
  std::vector<LinkEntry> out;
  for (nl_object* o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
    auto* link = reinterpret_cast<rtnl_link*>(o);
    const char* name = rtnl_link_get_name(link);
    LinkEntry e{name ? name : "", rtnl_link_get_group(link)};
    e.index = rtnl_link_get_ifindex(link);
    e.arptype = rtnl_link_get_arptype(link);
    const char* kind = rtnl_link_get_type(link);
    e.kind = kind ? kind : "";
    if (nl_addr* a = rtnl_link_get_addr(link); a && nl_addr_get_len(a) == 6)
      std::memcpy(e.mac.data(), nl_addr_get_binary_addr(a), 6);
    e.flags = rtnl_link_get_flags(link);
    e.master = rtnl_link_get_master(link);
    out.push_back(std::move(e));
  }
  nl_cache_free(cache);
  return out;
}

Result<int> create_bridge_here(Socket& s, const std::string& name) {
  LinkRef link{rtnl_link_alloc()};
  if (!link.p) return make_error(Errc::system, "clone-core: netlink: out of memory");
  rtnl_link_set_name(link.p, name.c_str());
  int err = rtnl_link_set_type(link.p, "bridge");
  if (err < 0) return make_error(Errc::network_setup, "clone-core: bridge " + name + ": type bridge: " + nl_message(err));
  rtnl_link_set_flags(link.p, IFF_UP);
  err = rtnl_link_add(s.get(), link.p, NLM_F_CREATE | NLM_F_EXCL);
  if (err < 0)
    return make_error(err == -NLE_PERM ? Errc::missing_privilege : Errc::network_setup,
                      "clone-core: creating bridge " + name + ": " + nl_message(err) +
                          (err == -NLE_PERM ? "; this needs CAP_NET_ADMIN (run as root)" : ""));
  return link_index(s, name);
}

Status attach_up(Socket& s, int ifindex, int master_ifindex, const std::string& what) {
  LinkRef change{rtnl_link_alloc()};
  rtnl_link_set_ifindex(change.p, ifindex);
  rtnl_link_set_master(change.p, master_ifindex);
  rtnl_link_set_flags(change.p, IFF_UP);
  int err = rtnl_link_change(s.get(), change.p, change.p, 0);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: attaching " + what + " to its bridge: " + nl_message(err));
  return ok_status();
}

namespace {

// Sends a hand-built request and waits for the kernel's ack; libnl's own objects do not
// cover bridge port flags and FDB entries well.
int send_and_ack(Socket& s, nl_msg* msg) {
  int err = nl_send_auto_complete(s.get(), msg);
  nlmsg_free(msg);
  if (err >= 0) err = nl_wait_for_ack(s.get());
  return err;
}

}  // namespace

Status pin_bridge_port(Socket& s, int ifindex, const std::array<std::uint8_t, 6>& mac, const std::string& what) {
  // Learning off: RTM_SETLINK, family AF_BRIDGE, IFLA_PROTINFO { IFLA_BRPORT_LEARNING = 0 }.
  nl_msg* msg = nlmsg_alloc_simple(RTM_SETLINK, 0);
  if (!msg) return make_error(Errc::system, "clone-core: netlink: out of memory");
  ifinfomsg ifi{};
  ifi.ifi_family = AF_BRIDGE;
  ifi.ifi_index = ifindex;
  int err = nlmsg_append(msg, &ifi, sizeof ifi, NLMSG_ALIGNTO);
  nlattr* pi = err >= 0 ? nla_nest_start(msg, IFLA_PROTINFO | NLA_F_NESTED) : nullptr;
  if (!pi) err = -NLE_NOMEM;
  if (err >= 0) err = nla_put_u8(msg, IFLA_BRPORT_LEARNING, 0);
  if (err >= 0) err = nla_nest_end(msg, pi);
  if (err < 0) {
    nlmsg_free(msg);
    return make_error(Errc::system, "clone-core: netlink: building a bridge port request: " + nl_message(err));
  }
  err = send_and_ack(s, msg);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: turning MAC learning off on " + what + ": " + nl_message(err));

  // The static FDB entry: RTM_NEWNEIGH, family AF_BRIDGE, NTF_MASTER, NUD_NOARP, NDA_LLADDR.
  msg = nlmsg_alloc_simple(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE);
  if (!msg) return make_error(Errc::system, "clone-core: netlink: out of memory");
  ndmsg ndm{};
  ndm.ndm_family = AF_BRIDGE;
  ndm.ndm_ifindex = ifindex;
  ndm.ndm_state = NUD_NOARP;
  ndm.ndm_flags = NTF_MASTER;
  err = nlmsg_append(msg, &ndm, sizeof ndm, NLMSG_ALIGNTO);
  if (err >= 0) err = nla_put(msg, NDA_LLADDR, 6, mac.data());
  if (err < 0) {
    nlmsg_free(msg);
    return make_error(Errc::system, "clone-core: netlink: building an FDB request: " + nl_message(err));
  }
  err = send_and_ack(s, msg);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: adding the static FDB entry of " + what + ": " + nl_message(err));
  return ok_status();
}

Status set_down(Socket& s, int ifindex, const std::string& what) {
  LinkRef change{rtnl_link_alloc()};
  rtnl_link_set_ifindex(change.p, ifindex);
  rtnl_link_unset_flags(change.p, IFF_UP);
  int err = rtnl_link_change(s.get(), change.p, change.p, 0);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: bringing " + what + " down: " + nl_message(err));
  return ok_status();
}

Status set_name_and_mac(Socket& s, int ifindex, const std::string& name, const std::array<std::uint8_t, 6>& mac,
                        const std::string& what) {
  // A separate `orig` (index only): with orig == changes libnl drops the name as unchanged.
  LinkRef orig{rtnl_link_alloc()};
  LinkRef change{rtnl_link_alloc()};
  rtnl_link_set_ifindex(orig.p, ifindex);
  if (!name.empty()) rtnl_link_set_name(change.p, name.c_str());
  AddrRef lladdr{nl_addr_build(AF_LLC, mac.data(), 6)};
  rtnl_link_set_addr(change.p, lladdr.p);
  int err = rtnl_link_change(s.get(), orig.p, change.p, 0);
  if (err < 0)
    return make_error(Errc::network_setup, "clone-core: setting the name and MAC of " + what + ": " + nl_message(err));
  return ok_status();
}

namespace {

// Calls fn(rtnl_addr*) for every IPv4 address on `ifindex`.
template <class Fn>
Status for_each_ipv4(Socket& s, int ifindex, const std::string& what, Fn fn) {
  nl_cache* cache = nullptr;
  int err = rtnl_addr_alloc_cache(s.get(), &cache);
  if (err < 0) return make_error(Errc::network_setup, "clone-core: listing the addresses of " + what + ": " + nl_message(err));
  Status e = ok_status();
  for (nl_object* o = nl_cache_get_first(cache); o && e; o = nl_cache_get_next(o)) {
    auto* addr = reinterpret_cast<rtnl_addr*>(o);
    if (rtnl_addr_get_family(addr) == AF_INET && rtnl_addr_get_ifindex(addr) == ifindex) e = fn(addr);
  }
  nl_cache_free(cache);
  return e;
}

}  // namespace

Status flush_ipv4(Socket& s, int ifindex, const std::string& what) {
  return for_each_ipv4(s, ifindex, what, [&](rtnl_addr* addr) -> Status {
    int err = rtnl_addr_delete(s.get(), addr, 0);
    if (err < 0 && err != -NLE_NOADDR && err != -NLE_OBJ_NOTFOUND)
      return make_error(Errc::network_setup, "clone-core: removing an address from " + what + ": " + nl_message(err));
    return ok_status();
  });
}

Result<std::vector<std::string>> ipv4_addresses(Socket& s, int ifindex) {
  std::vector<std::string> out;
  Status e = for_each_ipv4(s, ifindex, "link " + std::to_string(ifindex), [&](rtnl_addr* addr) -> Status {
    char buf[64];
    if (nl_addr* local = rtnl_addr_get_local(addr)) out.emplace_back(nl_addr2str(local, buf, sizeof buf));
    return ok_status();
  });
  if (!e) return e.error();
  return out;
}

}  // namespace sf::netlink
