// clone-core: apply a VM node's network identity (see vm_identity.hpp).
#include "clone-core/vm_identity.hpp"

#include <arpa/inet.h>
#include <net/if_arp.h>
#include <linux/if_ether.h>
#include <netpacket/packet.h>
#include <net/if.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <thread>

#include "clone-core/netlink_links.hpp"

namespace sf {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// One ARP request for our own address from our own MAC, to the broadcast address: peers that
// cache the address update it, and the bridge learns where the MAC is. Best effort: a peer
// that missed it resolves the address on first use anyway.
void send_gratuitous_arp(int ifindex, const std::array<std::uint8_t, 6>& mac, std::uint32_t address) {
  const int fd = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ARP));
  if (fd < 0) return;
  struct __attribute__((packed)) {
    arphdr h;
    std::uint8_t sha[6];
    std::uint32_t spa;
    std::uint8_t tha[6];
    std::uint32_t tpa;
  } pkt{};
  pkt.h.ar_hrd = htons(ARPHRD_ETHER);
  pkt.h.ar_pro = htons(ETH_P_IP);
  pkt.h.ar_hln = 6;
  pkt.h.ar_pln = 4;
  pkt.h.ar_op = htons(ARPOP_REQUEST);
  std::memcpy(pkt.sha, mac.data(), 6);
  pkt.spa = htonl(address);
  pkt.tpa = htonl(address);
  sockaddr_ll to{};
  to.sll_family = AF_PACKET;
  to.sll_protocol = htons(ETH_P_ARP);
  to.sll_ifindex = ifindex;
  to.sll_halen = 6;
  std::memset(to.sll_addr, 0xff, 6);
  (void)sendto(fd, &pkt, sizeof pkt, 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  close(fd);
}

bool is_nic(const netlink::LinkEntry& l) {
  return l.arptype == ARPHRD_ETHER && l.kind.empty() && l.name != "lo";
}

// Waits until link `index` is running (IFF_RUNNING: up with a carrier), for at most `limit`.
Status wait_until_running(netlink::Socket& s, int index, const std::string& name, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto links = netlink::list_links(s);
    if (!links) return links.error();
    for (const auto& l : *links)
      if (l.index == index && (l.flags & IFF_RUNNING)) return ok_status();
    if (std::chrono::steady_clock::now() >= until)
      return make_error(Errc::network_setup, "clone-core: " + name + " has no link " + std::to_string(limit.count()) +
                                                 " s after it was set up (no carrier: the VM's NIC backend did not "
                                                 "connect); the clone cannot reach the other machines");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace

Result<std::array<std::uint8_t, 6>> parse_mac(const std::string& text) {
  std::array<std::uint8_t, 6> mac{};
  unsigned b[6];
  char tail = 0;
  if (std::sscanf(text.c_str(), "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6 ||
      text.size() != 17)
    return make_error(Errc::invalid_argument, "clone-core: '" + text + "' is not a MAC address (aa:bb:cc:dd:ee:ff)");
  for (int i = 0; i < 6; ++i) mac[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(b[i]);
  if (mac[0] & 1) return make_error(Errc::invalid_argument, "clone-core: '" + text + "' is a multicast MAC address");
  return mac;
}

Result<Ipv4Cidr> parse_ipv4_cidr(const std::string& text) {
  const auto slash = text.find('/');
  const auto bad = [&] {
    return make_error(Errc::invalid_argument, "clone-core: '" + text + "' is not an IPv4 address with a prefix (a.b.c.d/p)");
  };
  if (slash == std::string::npos || slash + 1 >= text.size() || text.size() - slash > 3) return bad();
  in_addr a{};
  if (inet_pton(AF_INET, text.substr(0, slash).c_str(), &a) != 1) return bad();
  unsigned prefix = 0;
  for (char c : text.substr(slash + 1)) {
    if (c < '0' || c > '9') return bad();
    prefix = prefix * 10 + static_cast<unsigned>(c - '0');
  }
  if (prefix == 0 || prefix > 32) return bad();
  return Ipv4Cidr{ntohl(a.s_addr), prefix};
}

Status apply_vm_identity(const std::string& interface, const std::string& mac_text, const std::string& address_cidr,
                         const std::string& hostname) {
  if (interface.empty() || interface.size() >= IFNAMSIZ)
    return make_error(Errc::invalid_argument, "clone-core: '" + interface + "' is not a usable interface name");
  auto mac = parse_mac(mac_text);
  if (!mac) return mac.error();
  auto cidr = parse_ipv4_cidr(address_cidr);
  if (!cidr) return cidr.error();
  auto s = netlink::Socket::open();
  if (!s) return s.error();

  auto lo = netlink::link_index(*s, "lo");
  if (!lo) return lo.error();
  if (Status st = netlink::set_up(*s, *lo, "lo"); !st) return st.error();

  // The NIC: by name (already applied once), by MAC, or the first device NIC. At boot the
  // driver may still be probing, so wait a little for it.
  std::optional<netlink::LinkEntry> nic;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  for (;;) {
    auto links = netlink::list_links(*s);
    if (!links) return links.error();
    for (const auto& l : *links) {
      if (l.name == interface) nic = l;
    }
    for (const auto& l : *links) {
      if (!nic && is_nic(l) && l.mac == *mac) nic = l;
    }
    for (const auto& l : *links) {
      if (!nic && is_nic(l)) nic = l;
    }
    if (nic || std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (!nic)
    return make_error(Errc::network_setup,
                      "clone-core: the VM has no network interface (no Ethernet link besides lo); sfd gives every VM a "
                      "virtio-net NIC, so the guest kernel lacks the virtio_net module or the VM was started without one");

  if (nic->name != interface || nic->mac != *mac) {
    // Right after a restore a PV NIC (Xen's netfront) is detached until its backend
    // reconnects, and the kernel refuses a new MAC meanwhile (ENODEV): try again for a while.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (;;) {
      Status st = netlink::set_down(*s, nic->index, nic->name);
      if (st) st = netlink::set_name_and_mac(*s, nic->index, nic->name == interface ? "" : interface, *mac, nic->name);
      if (st) break;
      if (std::chrono::steady_clock::now() >= until) return st.error();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  // Idempotent: an interface that already has exactly this address keeps it (a re-applied
  // identity, e.g. clone 0 = the parent, must not break its open connections).
  auto current = netlink::ipv4_addresses(*s, nic->index);
  if (!current) return current.error();
  const std::string want = address_cidr.substr(0, address_cidr.find('/')) + "/" + std::to_string(cidr->prefix);
  if (*current != std::vector<std::string>{want} && *current != std::vector<std::string>{address_cidr}) {
    if (Status st = netlink::flush_ipv4(*s, nic->index, interface); !st) return st.error();
    if (Status st = netlink::add_ipv4(*s, nic->index, cidr->address, cidr->prefix, interface); !st) return st.error();
  }
  if (Status st = netlink::set_up(*s, nic->index, interface); !st) return st.error();
  // Up is not yet running: a restored PV NIC has a link only once its backend has reconnected
  // (seconds on a loaded host), and until then nothing it sends arrives. Programs that reach
  // the other machines as soon as sf_clone() returns (mpirun-sf's agents) need the link.
  if (Status st = wait_until_running(*s, nic->index, interface, std::chrono::seconds(20)); !st) return st.error();
  if (!hostname.empty() && sethostname(hostname.data(), hostname.size()) != 0)
    return make_error(Errc::namespace_setup, "clone-core: setting the hostname to " + hostname + ": " + errno_text(errno));
  send_gratuitous_arp(nic->index, *mac, cidr->address);
  return ok_status();
}

}  // namespace sf
