// clone-core: the address scheme of an impromptu cluster (IC). A subnet pool (default
// 10.213.0.0/16) is carved into one /24 per concurrent cluster ("slot" k); node i of the
// cluster (0 = the parent) gets host address 1 + i in that /24, a hostname derived from the
// parent's, and fixed interface names. Pure functions, no system calls: unit-tested with fakes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "clone-core/result.hpp"

namespace sf {

// An IPv4 network in host byte order.
struct Ipv4Net {
  std::uint32_t base = 0;  // network address
  unsigned prefix = 0;     // 0..32

  std::string to_string() const;  // "10.213.0.0/24"
};

std::string ipv4_to_string(std::uint32_t address);
Result<Ipv4Net> parse_ipv4_net(const std::string& cidr);  // rejects host bits set

inline constexpr const char* kDefaultSubnetPool = "10.213.0.0/16";
inline constexpr unsigned kClusterPrefix = 24;
// Host addresses .1 .. .254 of the /24: node 0 (the parent) plus at most 253 clones.
inline constexpr unsigned kMaxClonesPerCluster = 253;
// Upper bound on concurrent clusters on one host (slot k also names bridge sfbr<k>).
inline constexpr unsigned kMaxSlots = 256;
// The interface inside every clone, and the prefixes of what the host side creates.
inline constexpr const char* kCloneInterface = "sf0";
inline constexpr const char* kBridgePrefix = "sfbr";  // sfbr<k>
inline constexpr const char* kVethPrefix = "sfv";     // sfv<k>_<i>
// Host-side links of cluster k carry netdev group kLinkGroupBase + k, so one netlink request
// removes them all in one batched unregister (much faster than one request per veth).
inline constexpr std::uint32_t kLinkGroupBase = 0x5f000000u;

struct NodeInfo {
  unsigned id = 0;          // 0 = the parent
  std::uint32_t address = 0;
  std::string address_text; // dotted quad
  std::string hostname;     // parent's own for 0; "<host>-sf<i>" for clones
  std::string interface;    // the cluster interface on that node: sfbr<k> for 0, sf0 in clones
};

struct ClusterLayout {
  unsigned slot = 0;
  Ipv4Net subnet;           // the cluster's /24
  std::string bridge;       // host-side bridge name, sfbr<k>
  std::vector<NodeInfo> nodes;  // index = node id, 0..clones
  // The clones share the parent's network (CloneNetwork::shared): no subnet, bridge, addresses
  // or cluster interfaces; those fields are empty.
  bool shared_network = false;

  unsigned clones() const { return nodes.empty() ? 0 : static_cast<unsigned>(nodes.size() - 1); }
  std::string subnet_cidr() const { return shared_network ? std::string() : subnet.to_string(); }
};

// How many /24 slots a pool offers (capped at kMaxSlots); 0 if the pool is smaller than a /24.
unsigned slot_count(const Ipv4Net& pool);
// The k-th /24 of the pool.
Result<Ipv4Net> slot_subnet(const Ipv4Net& pool, unsigned slot);
// "<host>-sf<i>", truncating <host> so the result fits in a 64-byte hostname.
std::string derive_hostname(const std::string& parent_hostname, unsigned id);
std::string bridge_name(unsigned slot);
std::string veth_name(unsigned slot, unsigned id);
// The whole layout of a cluster of `clones` clones in `slot` of `pool`.
Result<ClusterLayout> plan_layout(const Ipv4Net& pool, unsigned slot, unsigned clones,
                                  const std::string& parent_hostname);
// Turns a planned layout into one whose clones share the parent's network: hostnames stay,
// subnet, bridge, addresses and interfaces go.
void share_parent_network(ClusterLayout& layout);

}  // namespace sf
