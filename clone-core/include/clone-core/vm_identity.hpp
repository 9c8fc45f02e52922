// clone-core: the network identity of a node inside a qemu-driver VM (docs/sfd.md, "Network").
// The guest agent applies node 0's identity at boot; the guest side of the clone API applies
// clone i's after the VM resumes as clone i (the clone's kernel state, MAC and address
// included, is a copy of the parent's, so each clone must take its own).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "clone-core/result.hpp"

namespace sf {

// "52:54:00:53:46:0a" -> bytes; an error naming the text otherwise.
Result<std::array<std::uint8_t, 6>> parse_mac(const std::string& text);
// "10.213.0.2/24" -> address (host byte order) and prefix; host bits may be set.
struct Ipv4Cidr {
  std::uint32_t address = 0;
  unsigned prefix = 0;
};
Result<Ipv4Cidr> parse_ipv4_cidr(const std::string& text);

// Gives the VM's NIC this identity, in the caller's network namespace. Call it in every VM
// after a clone, clone 0 (the parent) included: its gratuitous ARP is cheap and harmless.
//  - brings `lo` up;
//  - finds the NIC: the link named `interface`, else the Ethernet link (a device driver's,
//    not a bridge/veth/tun) whose MAC is `mac`, else the first such link (waiting up to 5 s
//    for the driver to create it);
//  - if its name or MAC differ: takes it down, renames it to `interface` and sets `mac`;
//  - replaces all of its IPv4 addresses by `address_cidr` (unless that is already its only
//    one: applying the same identity again changes nothing) and brings it up;
//  - sets the hostname (if not empty);
//  - sends one gratuitous ARP (best effort) so peers and the bridge learn the new MAC at once.
// Needs CAP_NET_ADMIN (and CAP_SYS_ADMIN for the hostname): the guest runs it as root.
Status apply_vm_identity(const std::string& interface, const std::string& mac, const std::string& address_cidr,
                         const std::string& hostname);

}  // namespace sf
