// clone-core: the address scheme of an impromptu cluster (see cluster_layout.hpp and
// docs/clone-core.md "Address scheme").
#include "clone-core/cluster_layout.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>

namespace sf {

std::string ipv4_to_string(std::uint32_t address) {
  return std::to_string(address >> 24) + "." + std::to_string((address >> 16) & 0xff) + "." +
         std::to_string((address >> 8) & 0xff) + "." + std::to_string(address & 0xff);
}

std::string Ipv4Net::to_string() const { return ipv4_to_string(base) + "/" + std::to_string(prefix); }

Result<Ipv4Net> parse_ipv4_net(const std::string& cidr) {
  auto bad = [&](const std::string& why) {
    return make_error(Errc::invalid_argument,
                      "clone-core: subnet '" + cidr + "' " + why + "; expected a CIDR like 10.213.0.0/16");
  };
  auto slash = cidr.find('/');
  if (slash == std::string::npos) return bad("has no /prefix");
  in_addr addr{};
  if (inet_pton(AF_INET, cidr.substr(0, slash).c_str(), &addr) != 1) return bad("has no valid IPv4 address");
  unsigned prefix = 0;
  const char* first = cidr.data() + slash + 1;
  const char* last = cidr.data() + cidr.size();
  auto [ptr, ec] = std::from_chars(first, last, prefix);
  if (ec != std::errc{} || ptr != last || first == last || prefix > 32) return bad("has an invalid prefix length");
  Ipv4Net net{ntohl(addr.s_addr), prefix};
  std::uint32_t mask = prefix == 0 ? 0 : ~0u << (32 - prefix);
  if ((net.base & ~mask) != 0) return bad("has host bits set");
  return net;
}

unsigned slot_count(const Ipv4Net& pool) {
  if (pool.prefix > kClusterPrefix) return 0;
  unsigned bits = kClusterPrefix - pool.prefix;
  if (bits >= 16) return kMaxSlots;
  return std::min<unsigned>(1u << bits, kMaxSlots);
}

Result<Ipv4Net> slot_subnet(const Ipv4Net& pool, unsigned slot) {
  if (slot >= slot_count(pool))
    return make_error(Errc::invalid_argument, "clone-core: slot " + std::to_string(slot) + " is outside pool " +
                                                  pool.to_string() + " (" + std::to_string(slot_count(pool)) +
                                                  " /24 slots)");
  return Ipv4Net{pool.base + (static_cast<std::uint32_t>(slot) << 8), kClusterPrefix};
}

std::string derive_hostname(const std::string& parent_hostname, unsigned id) {
  std::string suffix = "-sf" + std::to_string(id);
  constexpr std::size_t kMaxHostname = 64;  // HOST_NAME_MAX on Linux
  std::string host = parent_hostname.empty() ? std::string("localhost") : parent_hostname;
  if (host.size() + suffix.size() > kMaxHostname) host.resize(kMaxHostname - suffix.size());
  return host + suffix;
}

std::string bridge_name(unsigned slot) { return kBridgePrefix + std::to_string(slot); }
std::string veth_name(unsigned slot, unsigned id) {
  return kVethPrefix + std::to_string(slot) + "_" + std::to_string(id);
}

Result<ClusterLayout> plan_layout(const Ipv4Net& pool, unsigned slot, unsigned clones,
                                  const std::string& parent_hostname) {
  if (clones > kMaxClonesPerCluster)
    return make_error(Errc::invalid_argument, "clone-core: " + std::to_string(clones) +
                                                  " clones do not fit a /24 cluster subnet (at most " +
                                                  std::to_string(kMaxClonesPerCluster) + ")");
  auto subnet = slot_subnet(pool, slot);
  if (!subnet) return subnet.error();
  ClusterLayout layout;
  layout.slot = slot;
  layout.subnet = *subnet;
  layout.bridge = bridge_name(slot);
  layout.nodes.reserve(clones + 1);
  for (unsigned i = 0; i <= clones; ++i) {
    NodeInfo node;
    node.id = i;
    node.address = subnet->base + 1 + i;
    node.address_text = ipv4_to_string(node.address);
    node.hostname = i == 0 ? (parent_hostname.empty() ? std::string("localhost") : parent_hostname)
                           : derive_hostname(parent_hostname, i);
    node.interface = i == 0 ? layout.bridge : std::string(kCloneInterface);
    layout.nodes.push_back(std::move(node));
  }
  return layout;
}

void share_parent_network(ClusterLayout& layout) {
  layout.shared_network = true;
  layout.subnet = Ipv4Net{};
  layout.bridge.clear();
  for (auto& node : layout.nodes) {
    node.address = 0;
    node.address_text.clear();
    node.interface.clear();
  }
}

}  // namespace sf
