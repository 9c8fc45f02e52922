// sfd: VmNetwork and the VM identity scheme (see vm_network.hpp).
#include "sfd/vm_network.hpp"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>

#include "clone-core/cluster_layout.hpp"
#include "clone-core/vm_identity.hpp"
#include "clone-core/netlink_links.hpp"
#include "clone-core/user_namespace.hpp"

namespace sf::sfd {

std::string vm_mac(unsigned id) {
  char mac[18];
  std::snprintf(mac, sizeof mac, "52:54:00:53:46:%02x", id & 0xffu);
  return mac;
}

Result<NodeIdentity> vm_node_identity(unsigned id, const std::string& master_hostname, const std::string& subnet) {
  if (id >= kMaxVmNodes)
    return make_error("network: node " + std::to_string(id) + " is beyond the " + std::to_string(kMaxVmNodes) +
                      " nodes a /24 cluster network holds");
  auto net = sf::parse_ipv4_net(subnet);
  if (!net) return make_error("network: " + net.error().message);
  if (net->prefix > sf::kClusterPrefix) return make_error("network: the VM subnet " + subnet + " is smaller than a /24");
  // The layout for exactly `id` clones has node `id` last: address base + 1 + id, the
  // parent's hostname for 0 and derive_hostname() for clones.
  auto layout = sf::plan_layout(sf::Ipv4Net{net->base, sf::kClusterPrefix}, 0, id, master_hostname);
  if (!layout) return make_error("network: " + layout.error().message);
  const sf::NodeInfo& n = layout->nodes[id];
  NodeIdentity out;
  out.id = id;
  out.address = n.address_text;
  out.prefix = sf::kClusterPrefix;
  out.mac = vm_mac(id);
  out.hostname = n.hostname;
  return out;
}

nlohmann::json net_spec(const NodeIdentity& node) {
  return {{"interface", kVmInterface}, {"mac", node.mac}, {"address", node.cidr()}, {"hostname", node.hostname}};
}

TapDevice::~TapDevice() {
  if (fd >= 0) close(fd);
}

struct VmNetwork::Netlink {
  sf::netlink::Socket sock;
};

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Runs fn on a short-lived thread inside network namespace `netns_fd` (setns affects only
// the calling thread, so sfd's own threads never leave the host's namespace).
// Returns fn's error message, empty for success.
std::string in_namespace(int netns_fd, const std::function<std::string()>& fn) {
  std::string result;
  std::thread t([&] {
    if (setns(netns_fd, CLONE_NEWNET) != 0) {
      result = "network: entering the VM network namespace: " + errno_text(errno);
      return;
    }
    result = fn();
  });
  t.join();
  return result;
}

}  // namespace

Result<std::unique_ptr<VmNetwork>> VmNetwork::create() {
  // Without root: first a user namespace of our own (keeping the host's network, which remote
  // clones use), over which we then hold the capabilities that the namespace, bridge and taps
  // below need. Files keep our uid and gid; QEMU runs as the user.
  if (!sf::userns::administers_network())
    if (sf::Status st = sf::userns::enter(/*new_network=*/false); !st)
      return make_error("network: " + st.error().message);
  std::unique_ptr<VmNetwork> net(new VmNetwork());
  net->nl_ = std::make_unique<Netlink>();
  std::string error;
  // A thread makes the namespace (unshare affects only it), keeps a handle on it and opens a
  // netlink socket inside it, then ends; the socket keeps working in that namespace.
  std::thread t([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      const int err = errno;
      error = "network: cannot create a network namespace for the VMs: " + errno_text(err) +
              (err == EPERM ? "; sfd needs CAP_SYS_ADMIN over its user namespace" : "");
      return;
    }
    net->netns_fd_ = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (net->netns_fd_ < 0) {
      error = "network: open /proc/thread-self/ns/net: " + errno_text(errno);
      return;
    }
    auto sock = sf::netlink::Socket::open();
    if (!sock) {
      error = "network: " + sock.error().message;
      return;
    }
    net->nl_->sock = std::move(*sock);
  });
  t.join();
  if (!error.empty()) return make_error(error);
  auto bridge = sf::netlink::create_bridge_here(net->nl_->sock, kBridge);
  if (!bridge) return make_error("network: " + bridge.error().message);
  net->bridge_index_ = *bridge;
  return net;
}

VmNetwork::~VmNetwork() {
  nl_.reset();
  if (netns_fd_ >= 0) close(netns_fd_);
}

Result<std::shared_ptr<const TapDevice>> VmNetwork::add_tap(unsigned node, bool vnet_hdr) {
  auto tap = std::make_shared<TapDevice>();
  tap->vnet_hdr = vnet_hdr;
  tap->node = node;
  tap->mac = vm_mac(node);
  tap->name = "sft" + std::to_string(node) + "-" + std::to_string(taps_made_++);
  // The tap is created in the namespace of the thread that opens /dev/net/tun.
  const std::string e = in_namespace(netns_fd_, [&]() -> std::string {
    tap->fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (tap->fd < 0) return "network: open /dev/net/tun: " + errno_text(errno) + "; load the tun module (modprobe tun)";
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "%s", tap->name.c_str());
    // No packet-info header; a virtio-net header so QEMU can pass offloads through.
    ifr.ifr_flags = static_cast<short>(IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0));
    if (ioctl(tap->fd, TUNSETIFF, &ifr) != 0) return "network: creating tap " + tap->name + " (TUNSETIFF): " + errno_text(errno);
    return {};
  });
  if (!e.empty()) return make_error(e);
  auto index = sf::netlink::link_index(nl_->sock, tap->name);
  if (!index) return make_error("network: " + index.error().message);
  if (sf::Status st = sf::netlink::attach_up(nl_->sock, *index, bridge_index_, tap->name); !st)
    return make_error("network: " + st.error().message);
  // Frames to node i's MAC go to node i's tap only: a clone resumes sending its parent's MAC
  // until the guest applies its own, and must not draw the parent's traffic meanwhile.
  auto mac = sf::parse_mac(tap->mac);
  if (!mac) return make_error("network: " + mac.error().message);
  if (sf::Status st = sf::netlink::pin_bridge_port(nl_->sock, *index, *mac, tap->name); !st)
    return make_error("network: " + st.error().message);
  return std::shared_ptr<const TapDevice>(std::move(tap));
}

Result<std::vector<std::string>> VmNetwork::links() {
  auto links = sf::netlink::list_links(nl_->sock);
  if (!links) return make_error("network: " + links.error().message);
  std::vector<std::string> out;
  for (const auto& l : *links) out.push_back(l.name);
  return out;
}

}  // namespace sf::sfd
