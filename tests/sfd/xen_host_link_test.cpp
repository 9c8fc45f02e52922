// Unit tests of the link between sfd-xen and its agents on other Xen hosts
// (sfd/xen/host_link.*, docs/protocols/xen-hosts.md): endpoints, the key proof (a known answer
// computed independently with Python's hmac), line framing, message and restore-request
// validation, and one real connection over loopback.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "host_link.hpp"

namespace hl = sf::sfd::xen;
using nlohmann::json;

namespace {

sf::mcdist::ClusterKey test_key() {
  sf::mcdist::ClusterKey k;
  for (std::size_t i = 0; i < k.bytes.size(); ++i) k.bytes[i] = static_cast<std::uint8_t>(i);
  return k;
}

hl::RestoreRequest sample_request() {
  hl::RestoreRequest r;
  r.family = "g0";
  r.group = "239.255.78.1";
  r.port = 7790;
  r.cluster = 0xfedcba9876543210ull;
  r.receiver = 2;
  r.image_bytes = 134217728;
  r.clones = {{2, "g0-sf2", "52:54:00:53:46:02"}, {4, "g0-sf4", "52:54:00:53:46:04"}};
  r.config = {{"c_info", {{"name", "g0"}}}};
  return r;
}

}  // namespace

TEST(XenHostLink, EndpointsAreIpv4AndAPort) {
  auto ok = hl::parse_endpoint("10.214.0.2:7791");
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->first, "10.214.0.2");
  EXPECT_EQ(ok->second, 7791);
  for (const char* bad : {"10.214.0.2", ":7791", "host:7791", "10.214.0.2:", "10.214.0.2:70000", "10.214.0.2:7x"}) {
    auto r = hl::parse_endpoint(bad);
    EXPECT_FALSE(r) << bad;
    if (!r) {
      EXPECT_NE(r.error().message.find(bad), std::string::npos) << r.error().message;
    }
  }
}

TEST(XenHostLink, TheProofIsHmacSha256OfTheNonceUnderTheKey) {
  const auto k = test_key();
  EXPECT_EQ(hl::auth_proof(k, "00112233445566778899aabbccddeeff"),
            "f88049a76f1cc307baab6bfe0c268ea3dc9a5946933559eeaf5593a763c2f1e1");
  const std::string p = hl::auth_proof(k, "abc");
  EXPECT_TRUE(hl::proof_matches(k, "abc", p));
  EXPECT_FALSE(hl::proof_matches(k, "abd", p));
  EXPECT_FALSE(hl::proof_matches(k, "abc", p.substr(1)));
  auto other = k;
  other.bytes[0] ^= 1;
  EXPECT_FALSE(hl::proof_matches(other, "abc", p));
  EXPECT_EQ(hl::random_hex(16).size(), 32u);
  EXPECT_NE(hl::random_hex(16), hl::random_hex(16));
}

TEST(XenHostLink, LinesAreSplitAndAnOversizedOneIsRefused) {
  hl::LineBuffer b;
  b.append("{\"op\":\"a\"}\n{\"op\"");
  auto l1 = b.next();
  ASSERT_TRUE(l1 && *l1);
  EXPECT_EQ(**l1, "{\"op\":\"a\"}");
  auto l2 = b.next();
  ASSERT_TRUE(l2);
  EXPECT_FALSE(*l2);
  b.append(":\"b\"}\n");
  auto l3 = b.next();
  ASSERT_TRUE(l3 && *l3);
  EXPECT_EQ(**l3, "{\"op\":\"b\"}");
  hl::LineBuffer big;
  big.append(std::string(hl::kMaxLine + 1, 'x'));
  EXPECT_FALSE(big.next());
}

TEST(XenHostLink, MessagesAreObjectsWithAnOp) {
  EXPECT_TRUE(hl::parse_message(R"({"op":"ready"})"));
  EXPECT_TRUE(hl::parse_message(R"({"sfd-xen-host":1,"nonce":"ab"})"));
  for (const char* bad : {"", "[]", "\"op\"", R"({"op":1})", R"({"nonce":"ab"})", "{\"op\":\"x\"", "null"})
    EXPECT_FALSE(hl::parse_message(bad)) << bad;
}

TEST(XenHostLink, ARestoreRequestRoundTrips) {
  const auto r = sample_request();
  auto back = hl::parse_restore(json::parse(hl::encode_restore(r).dump()));
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(back->family, "g0");
  EXPECT_EQ(back->group, "239.255.78.1");
  EXPECT_EQ(back->port, 7790);
  EXPECT_EQ(back->cluster, r.cluster);
  EXPECT_EQ(back->receiver, 2u);
  EXPECT_EQ(back->image_bytes, r.image_bytes);
  ASSERT_EQ(back->clones.size(), 2u);
  EXPECT_EQ(back->clones[1].id, 4u);
  EXPECT_EQ(back->clones[1].name, "g0-sf4");
  EXPECT_EQ(back->clones[1].mac, "52:54:00:53:46:04");
  EXPECT_EQ(back->config, r.config);
}

TEST(XenHostLink, ABadRestoreRequestNamesItsFault) {
  struct Case {
    const char* what;
    std::function<void(json&)> spoil;
    const char* says;
  };
  const std::vector<Case> cases = {
      {"unicast group", [](json& j) { j["group"] = "10.0.0.1"; }, "multicast"},
      {"port 0", [](json& j) { j["port"] = 0; }, "port 0"},
      {"negative port", [](json& j) { j["port"] = -1; }, "\"port\""},
      {"empty image", [](json& j) { j["image_bytes"] = 0; }, "an image of 0 bytes"},
      {"huge image", [](json& j) { j["image_bytes"] = 1ull << 40; }, "an image of"},
      {"no clones", [](json& j) { j["clones"] = json::array(); }, "0 clones"},
      {"bad mac", [](json& j) { j["clones"][0]["mac"] = "52:54:00"; }, "the MAC"},
      {"clone id 0", [](json& j) { j["clones"][0]["id"] = 0; }, "clone id 0"},
      {"no name", [](json& j) { j["clones"][0].erase("name"); }, "a name"},
      {"receiver 0", [](json& j) { j["receiver"] = 0; }, "receiver 0"},
      {"config not an object", [](json& j) { j["config"] = "x"; }, "\"config\""},
      {"no family", [](json& j) { j.erase("family"); }, "\"family\""},
  };
  for (const auto& c : cases) {
    json j = hl::encode_restore(sample_request());
    c.spoil(j);
    auto r = hl::parse_restore(j);
    ASSERT_FALSE(r) << c.what;
    EXPECT_NE(r.error().message.find(c.says), std::string::npos) << c.what << ": " << r.error().message;
  }
}

TEST(XenHostLink, AConnectionCarriesMessagesBothWaysAndReportsTheEnd) {
  auto lfd = hl::listen_on("127.0.0.1:0");
  ASSERT_TRUE(lfd) << lfd.error().message;
  const std::uint16_t port = hl::bound_port(*lfd);
  ASSERT_NE(port, 0);
  std::thread agent([fd = *lfd] {
    hl::HostLink l(::accept(fd, nullptr, nullptr));
    l.set_peer("origin");
    (void)l.send({{"sfd-xen-host", 1}, {"nonce", "n"}});
    auto m = l.receive(std::chrono::seconds(10));
    if (m) (void)l.send({{"op", "echo"}, {"got", (*m)["op"]}});
    ::close(fd);
  });
  auto cfd = hl::connect_to("127.0.0.1:" + std::to_string(port), std::chrono::seconds(10));
  ASSERT_TRUE(cfd) << cfd.error().message;
  hl::HostLink link(*cfd);
  link.set_peer("agent");
  auto hello = link.receive(std::chrono::seconds(10));
  ASSERT_TRUE(hello) << hello.error().message;
  EXPECT_EQ((*hello)["nonce"], "n");
  ASSERT_TRUE(link.send({{"op", "auth"}}));
  auto echo = link.receive(std::chrono::seconds(10));
  ASSERT_TRUE(echo) << echo.error().message;
  EXPECT_EQ((*echo)["got"], "auth");
  agent.join();
  auto end = link.receive(std::chrono::seconds(10));
  ASSERT_FALSE(end);
  EXPECT_NE(end.error().message.find("agent closed the connection"), std::string::npos) << end.error().message;
}

TEST(XenHostLink, NobodyListeningIsAClearError) {
  auto lfd = hl::listen_on("127.0.0.1:0");
  ASSERT_TRUE(lfd);
  const std::uint16_t port = hl::bound_port(*lfd);
  ::close(*lfd);  // the port is now closed
  auto c = hl::connect_to("127.0.0.1:" + std::to_string(port), std::chrono::seconds(5));
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("sfd-xen host --listen"), std::string::npos) << c.error().message;
  auto l = hl::listen_on("192.0.2.1:7791");  // TEST-NET-1: no interface here has it
  ASSERT_FALSE(l);
  EXPECT_NE(l.error().message.find("no interface here has that address"), std::string::npos) << l.error().message;
}
