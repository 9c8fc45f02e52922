// sfd unit tests of the VM network identity scheme (vm_network.hpp), the parsers of
// clone-core's vm_identity.hpp, and the NIC on QEMU's command line. No system calls.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "clone-core/vm_identity.hpp"
#include "sfd/vm.hpp"
#include "sfd/vm_network.hpp"

namespace {

std::string joined(const std::vector<std::string>& a) {
  std::string out;
  for (const auto& s : a) out += s + " ";
  return out;
}

TEST(VmIdentity, MacIsLocallyAdministeredUnicastWithTheNodeIdInTheLastByte) {
  EXPECT_EQ(sf::sfd::vm_mac(0), "52:54:00:53:46:00");
  EXPECT_EQ(sf::sfd::vm_mac(10), "52:54:00:53:46:0a");
  EXPECT_EQ(sf::sfd::vm_mac(253), "52:54:00:53:46:fd");
  auto bytes = sf::parse_mac(sf::sfd::vm_mac(7));
  ASSERT_TRUE(bytes) << bytes.error().message;
  EXPECT_EQ((*bytes)[0] & 0x02, 0x02);  // locally administered
  EXPECT_EQ((*bytes)[0] & 0x01, 0x00);  // unicast
  EXPECT_EQ((*bytes)[5], 7);
}

TEST(VmIdentity, AddressIsOnePlusTheIdAndHostnamesFollowTheClusterLayout) {
  auto n0 = sf::sfd::vm_node_identity(0, "sf-vm");
  ASSERT_TRUE(n0) << n0.error().message;
  EXPECT_EQ(n0->id, 0u);
  EXPECT_EQ(n0->address, "10.213.0.1");
  EXPECT_EQ(n0->prefix, 24u);
  EXPECT_EQ(n0->cidr(), "10.213.0.1/24");
  EXPECT_EQ(n0->mac, "52:54:00:53:46:00");
  EXPECT_EQ(n0->hostname, "sf-vm");

  auto n5 = sf::sfd::vm_node_identity(5, "sf-vm");
  ASSERT_TRUE(n5) << n5.error().message;
  EXPECT_EQ(n5->address, "10.213.0.6");
  EXPECT_EQ(n5->mac, "52:54:00:53:46:05");
  EXPECT_EQ(n5->hostname, "sf-vm-sf5");

  auto last = sf::sfd::vm_node_identity(253, "h");
  ASSERT_TRUE(last) << last.error().message;
  EXPECT_EQ(last->address, "10.213.0.254");

  auto other = sf::sfd::vm_node_identity(2, "master", "10.99.7.0/24");
  ASSERT_TRUE(other) << other.error().message;
  EXPECT_EQ(other->cidr(), "10.99.7.3/24");
  EXPECT_EQ(other->hostname, "master-sf2");
}

TEST(VmIdentity, RejectsIdsBeyondASlash24AndBadSubnets) {
  auto too_far = sf::sfd::vm_node_identity(254, "sf-vm");
  ASSERT_FALSE(too_far);
  EXPECT_NE(too_far.error().message.find("254"), std::string::npos);
  EXPECT_FALSE(sf::sfd::vm_node_identity(1, "sf-vm", "10.213.0.0/25"));
  EXPECT_FALSE(sf::sfd::vm_node_identity(1, "sf-vm", "not-a-subnet"));
  EXPECT_FALSE(sf::sfd::vm_node_identity(1, "sf-vm", "10.213.0.1/24"));  // host bits set
}

TEST(VmIdentity, NetSpecCarriesWhatTheGuestAgentApplies) {
  auto n = sf::sfd::vm_node_identity(3, "sf-vm");
  ASSERT_TRUE(n);
  const auto j = sf::sfd::net_spec(*n);
  EXPECT_EQ(j.at("interface"), "sf0");
  EXPECT_EQ(j.at("mac"), "52:54:00:53:46:03");
  EXPECT_EQ(j.at("address"), "10.213.0.4/24");
  EXPECT_EQ(j.at("hostname"), "sf-vm-sf3");
}

TEST(VmIdentity, ParsesMacsAndCidrs) {
  auto mac = sf::parse_mac("52:54:00:53:46:ff");
  ASSERT_TRUE(mac);
  EXPECT_EQ((*mac)[5], 0xff);
  EXPECT_FALSE(sf::parse_mac("52:54:00:53:46"));
  EXPECT_FALSE(sf::parse_mac("52:54:00:53:46:ff:00"));
  EXPECT_FALSE(sf::parse_mac("zz:54:00:53:46:ff"));
  EXPECT_FALSE(sf::parse_mac("01:00:5e:00:00:01"));  // multicast
  auto c = sf::parse_ipv4_cidr("10.213.0.9/24");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->address, (10u << 24) | (213u << 16) | 9u);
  EXPECT_EQ(c->prefix, 24u);
  EXPECT_FALSE(sf::parse_ipv4_cidr("10.213.0.9"));
  EXPECT_FALSE(sf::parse_ipv4_cidr("10.213.0.9/33"));
  EXPECT_FALSE(sf::parse_ipv4_cidr("10.213.0.9/0"));
  EXPECT_FALSE(sf::parse_ipv4_cidr("10.213.0/24"));
  EXPECT_FALSE(sf::parse_ipv4_cidr("10.213.0.9/2x"));
}

TEST(QemuCommandLineNic, TapFdSevenAndTheMacOrNoNetworkDeviceAtAll) {
  sf::sfd::VmConfig c;
  sf::sfd::VmPaths p{"/run/x/sf-vm-1-0", "/dev/shm/sf-vm-1-0.ram", "/run/x/sf-vm-1-0/console.log", "/run/x/sf-vm-1-0/qemu.log"};
  const auto without = joined(sf::sfd::qemu_command_line(c, p, 3, 4, 5, 6));
  EXPECT_NE(without.find("-nic none"), std::string::npos);
  EXPECT_EQ(without.find("-netdev"), std::string::npos);

  auto tap = std::make_shared<sf::sfd::TapDevice>();
  tap->mac = sf::sfd::vm_mac(3);  // fd stays -1: nothing is opened here
  c.nic = tap;
  const auto with = joined(sf::sfd::qemu_command_line(c, p, 3, 4, 5, 6));
  EXPECT_EQ(with.find("-nic none"), std::string::npos);
  EXPECT_NE(with.find("-netdev tap,id=n0,fd=7 "), std::string::npos) << with;
  EXPECT_NE(with.find("-device virtio-net-pci,netdev=n0,mac=52:54:00:53:46:03 "), std::string::npos) << with;
}

}  // namespace
