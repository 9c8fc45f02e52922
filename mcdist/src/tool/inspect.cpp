// mcdist tool: `decode` prints one saved datagram, `dump` the packets on a group, each with the
// verdict a receiver would reach when a key is given.
#include "commands.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <vector>

#include "mcdist/net.hpp"

#include "cli.hpp"

namespace sf::mcdist::tool {

namespace {

int print_packet(std::span<const std::uint8_t> d, const std::optional<ClusterKey>& key,
                 std::uint64_t cluster) {
  auto h = parse_header(d);
  if (!h) {
    std::printf("MALFORMED (%zu bytes): %s\n", d.size(), h.error().message.c_str());
    return 1;
  }
  std::string verdict = "unchecked (no key)";
  if (key) {
    PacketAuthenticator auth(*key);
    Header v;
    verdict = to_string(validate(d, cluster, auth, &v));
  }
  std::printf("%s [%s]\n", describe(h.value(), d.subspan(kHeaderSize)).c_str(), verdict.c_str());
  return 0;
}

}  // namespace

int cmd_decode(int argc, char** argv) {
  std::string file, key_file;
  std::uint64_t cluster = 1;
  po::options_description d("mcdist decode PACKETFILE");
  d.add_options()("file", po::value(&file)->required(), "a file holding one raw datagram")(
      "key-file", po::value(&key_file), "cluster key (to check the MAC)")(
      "cluster", po::value(&cluster)->default_value(1), "cluster id");
  po::positional_options_description pos;
  pos.add("file", 1);
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, &pos, vm, err)) return die(err, 2);
  auto key = optional_key(key_file, err);
  if (!err.empty()) return die(err, 2);
  std::ifstream in(file, std::ios::binary);
  if (!in) return die("mcdist decode: cannot read " + file);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), {});
  if (bytes.size() > kHeaderSize + kMaxPayload) return die("mcdist decode: file larger than a datagram");
  return print_packet(bytes, key, cluster);
}

int cmd_dump(int argc, char** argv) {
  Common c;
  std::size_t count = 10;
  std::string save;
  po::options_description d("mcdist dump");
  add_common(d, c, false);
  d.add_options()("count", po::value(&count)->default_value(count), "packets to print")(
      "save", po::value(&save), "also save the first packet raw to this file");
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, nullptr, vm, err)) return die(err, 2);
  auto key = optional_key(c.key_file, err);
  if (!err.empty()) return die(err, 2);
  auto iface = net::resolve_interface(c.iface);
  if (!iface) return die(iface.error().message);
  auto group = net::parse_multicast_group(c.group);
  if (!group) return die(group.error().message);
  auto fd = net::open_group_socket(iface.value(), group.value(), c.port);
  if (!fd) return die(fd.error().message);
  std::vector<std::uint8_t> buf(kHeaderSize + kMaxPayload + 1);
  for (std::size_t i = 0; i < count;) {
    pollfd p{fd.value(), POLLIN, 0};
    if (poll(&p, 1, 10000) <= 0) return die("mcdist dump: nothing received for 10 s");
    ssize_t n = recv(fd.value(), buf.data(), buf.size(), 0);
    if (n < 0) continue;
    std::span<const std::uint8_t> d2(buf.data(), static_cast<std::size_t>(n));
    if (i == 0 && !save.empty())
      std::ofstream(save, std::ios::binary).write(reinterpret_cast<const char*>(buf.data()), n);
    print_packet(d2, key, c.cluster);
    ++i;
  }
  close(fd.value());
  return 0;
}

}  // namespace sf::mcdist::tool
