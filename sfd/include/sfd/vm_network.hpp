// sfd: the cluster network of the VMs of one `sfd run` (docs/sfd.md, "Network"): a private
// network namespace holding a bridge with no address and no uplink, and one tap device per VM
// on it. QEMU runs in the host's namespace but gets the tap's fd, so the guests' Ethernet
// frames reach only the bridge: the VMs of one run reach each other and nothing else.
//
// Nothing is named on the host: the namespace lives as long as something holds it (this
// object's fd, a tap fd, QEMU's copy of one), so it and everything in it vanish when sfd and
// its QEMUs are gone, also after a SIGKILL of sfd (QEMU dies with sfd, PR_SET_PDEATHSIG).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sfd/result.hpp"

namespace sf::sfd {

// The VM cluster's subnet, the guest NIC's name and the MAC scheme.
inline constexpr const char* kVmSubnet = "10.213.0.0/24";
inline constexpr const char* kVmInterface = "sf0";  // as in sandbox clones (clone-core kCloneInterface)
inline constexpr unsigned kMaxVmNodes = 254;         // node ids 0..253: addresses .1 .. .254

// Network identity of node i of a VM cluster (node 0 = the master).
struct NodeIdentity {
  unsigned id = 0;
  std::string address;   // dotted quad
  unsigned prefix = 24;
  std::string mac;       // aa:bb:cc:dd:ee:ff
  std::string hostname;
  std::string cidr() const { return address + "/" + std::to_string(prefix); }
};

// Node i's MAC: 52:54:00:53:46:<i as two hex digits> (QEMU's locally administered 52:54:00
// prefix, then "SF"; one byte of node id is enough for a /24).
std::string vm_mac(unsigned id);
// Node i of a cluster whose master is `master_hostname`, in `subnet` (a /24 or larger):
// address = subnet base + 1 + i, hostname = the master's for 0 and "<master>-sf<i>" for clones
// (clone-core's cluster_layout: plan_layout, derive_hostname). Pure.
Result<NodeIdentity> vm_node_identity(unsigned id, const std::string& master_hostname,
                                      const std::string& subnet = kVmSubnet);
// The "net" object of the guest agent's spec: {"interface", "mac", "address", "hostname"}.
nlohmann::json net_spec(const NodeIdentity& node);

// One tap device on the bridge; closes its fd when the last holder lets go. The device
// itself lives while any copy of the fd is open (QEMU holds one).
struct TapDevice {
  int fd = -1;
  unsigned node = 0;
  std::string name;  // in the VmNetwork's namespace
  std::string mac;   // the MAC the VM's NIC gets (vm_mac(node))
  bool vnet_hdr = true;  // frames carry a virtio-net header (QEMU passes offloads through)
  TapDevice() = default;
  ~TapDevice();
  TapDevice(const TapDevice&) = delete;
  TapDevice& operator=(const TapDevice&) = delete;
};

class VmNetwork {
 public:
  // A new network namespace (private to this process, never named) with bridge "sfvmbr" up.
  // Needs CAP_SYS_ADMIN and CAP_NET_ADMIN (sfd runs as root).
  static Result<std::unique_ptr<VmNetwork>> create();
  ~VmNetwork();  // closes the namespace fd and the netlink socket; taps live on with their fds
  VmNetwork(const VmNetwork&) = delete;
  VmNetwork& operator=(const VmNetwork&) = delete;

  // A new tap device on the bridge (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), up, for node `node`;
  // put it in VmConfig::nic before QemuVm::launch. Each VM needs its own. Without `vnet_hdr`
  // (IFF_VNET_HDR off, which QEMU detects on the fd): a family with clones on other hosts, whose
  // socket netdev has no such header, so every VM's virtio-net state must be without it.
  Result<std::shared_ptr<const TapDevice>> add_tap(unsigned node, bool vnet_hdr = true);

  int netns_fd() const { return netns_fd_; }
  static constexpr const char* kBridge = "sfvmbr";
  // Names of the links in the namespace (tests, diagnostics).
  Result<std::vector<std::string>> links();

 private:
  VmNetwork() = default;
  struct Netlink;
  int netns_fd_ = -1;
  int bridge_index_ = 0;
  unsigned taps_made_ = 0;
  std::unique_ptr<Netlink> nl_;
};

}  // namespace sf::sfd
