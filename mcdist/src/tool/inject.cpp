// mcdist tool: `inject` crafts packets that receivers must drop and count (foreign cluster,
// corrupt payload, wrong key, malformed header, replayed capture).
#include "commands.hpp"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "mcdist/net.hpp"

#include "cli.hpp"

namespace sf::mcdist::tool {

int cmd_inject(int argc, char** argv) {
  Common c;
  std::string kind;
  std::size_t count = 20;
  double delay_s = 0.3;
  po::options_description d("mcdist inject");
  add_common(d, c, true);
  d.add_options()("kind", po::value(&kind)->required(), "foreign|corrupt|badkey|malformed|replay")(
      "count", po::value(&count)->default_value(count), "packets")(
      "delay", po::value(&delay_s)->default_value(delay_s), "replay: seconds between capture and resend");
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, nullptr, vm, err)) return die(err, 2);
  auto key = ClusterKey::from_file(c.key_file);
  if (!key) return die(key.error().message, 2);
  auto iface = net::resolve_interface(c.iface);
  if (!iface) return die(iface.error().message);
  auto group = net::parse_multicast_group(c.group);
  if (!group) return die(group.error().message);
  auto fd = net::open_sender_socket(iface.value(), 0);
  if (!fd) return die(fd.error().message);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_addr = group.value();
  to.sin_port = htons(c.port);
  std::vector<std::vector<std::uint8_t>> packets;
  if (kind == "replay") {
    auto gfd = net::open_group_socket(iface.value(), group.value(), c.port);
    if (!gfd) return die(gfd.error().message);
    PacketAuthenticator auth(key.value());
    std::vector<std::uint8_t> buf(kHeaderSize + kMaxPayload);
    while (packets.size() < count) {
      pollfd p{gfd.value(), POLLIN, 0};
      if (poll(&p, 1, 10000) <= 0) return die("mcdist inject: nothing to capture for 10 s");
      ssize_t n = recv(gfd.value(), buf.data(), buf.size(), 0);
      Header h;
      if (n > 0 && validate({buf.data(), static_cast<std::size_t>(n)}, c.cluster, auth, &h) == Verdict::kAccepted)
        packets.emplace_back(buf.begin(), buf.begin() + n);
    }
    close(gfd.value());
    std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<long>(delay_s * 1000)));
  } else {
    ClusterKey k = key.value();
    std::uint64_t cluster = c.cluster;
    if (kind == "foreign") cluster = c.cluster + 1;
    if (kind == "badkey") getrandom(k.bytes.data(), k.bytes.size(), 0);
    PacketAuthenticator auth(k);
    std::vector<std::uint8_t> page(4096, 0xAB);
    // A fresh random session per run, like a real server: a (stream, sequence) pair is never
    // MACed twice under one key (docs/protocols/mcdist.md section 3).
    std::uint64_t session = 0;
    while (session == 0) getrandom(&session, sizeof session, 0);
    for (std::size_t i = 0; i < count; ++i) {
      Header h;
      h.type = PacketType::kData;
      h.cluster_id = cluster;
      h.session_id = session;
      h.sequence = i + 1;
      h.page_index = i;
      h.page_count = 1 << 20;
      h.page_size = 4096;
      h.aux = 4096;
      std::vector<std::uint8_t> pkt(kHeaderSize + page.size());
      std::memcpy(pkt.data() + kHeaderSize, page.data(), page.size());
      encode_header(h, page, auth, std::span<std::uint8_t, kHeaderSize>(pkt.data(), kHeaderSize));
      if (kind == "corrupt") pkt[kHeaderSize + i % page.size()] ^= 0x01;
      if (kind == "malformed") pkt[4] = 99;  // unknown version
      else if (kind != "corrupt" && kind != "foreign" && kind != "badkey")
        return die("mcdist inject: unknown --kind " + kind, 2);
      packets.push_back(std::move(pkt));
    }
  }
  for (auto& p : packets)
    sendto(fd.value(), p.data(), p.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to);
  close(fd.value());
  std::fprintf(stderr, "mcdist inject: sent %zu %s packets\n", packets.size(), kind.c_str());
  return 0;
}

}  // namespace sf::mcdist::tool
