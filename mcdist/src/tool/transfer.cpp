// mcdist tool: `send` streams an image to a group and answers requests; `recv` joins and
// assembles it (tests, benchmarks, and how a page server's image is distributed by hand).
#include "commands.hpp"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <vector>

#include "cli.hpp"
#include "image_files.hpp"

namespace sf::mcdist::tool {

using Clock = std::chrono::steady_clock;

int cmd_send(int argc, char** argv) {
  Common c;
  std::string image, order_file;
  double rate_mbit = 900, timeout_s = 600, linger_s = 3;
  std::size_t receivers = 0;
  std::uint32_t page_size = 4096;
  std::uint16_t request_port = 0;
  bool no_push = false;
  po::options_description d("mcdist send IMAGE");
  add_common(d, c, true);
  d.add_options()("image", po::value(&image)->required(), "image file")(
      "rate", po::value(&rate_mbit)->default_value(rate_mbit), "max rate, Mbit/s on the wire")(
      "receivers", po::value(&receivers)->default_value(0), "exit when this many receivers are complete (or all went silent for --linger)")(
      "linger", po::value(&linger_s)->default_value(linger_s), "exit when no receiver was heard this long after the push")(
      "timeout", po::value(&timeout_s)->default_value(timeout_s), "give up after this many seconds")(
      "page-size", po::value(&page_size)->default_value(page_size), "bytes per page")(
      "request-port", po::value(&request_port)->default_value(0), "unicast request port (0 = any)")(
      "no-push", po::bool_switch(&no_push), "only answer requests, do not stream the image")(
      "order", po::value(&order_file), "push order: a file of page indices, one per line");
  po::positional_options_description pos;
  pos.add("image", 1);
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, &pos, vm, err)) return die(err, 2);
  auto key = ClusterKey::from_file(c.key_file);
  if (!key) return die(key.error().message, 2);
  auto mapped = map_file(image);
  if (!mapped) return die(mapped.error().message);
  const MappedFile& m = *mapped.value();
  SenderConfig cfg;
  cfg.interface = c.iface;
  cfg.group = c.group;
  cfg.port = c.port;
  cfg.request_port = request_port;
  cfg.cluster_id = c.cluster;
  cfg.key = key.value();
  cfg.image_bytes = m.size;
  cfg.page_size = page_size;
  cfg.push = !no_push;
  cfg.max_rate_bps = static_cast<std::uint64_t>(rate_mbit * 1e6);
  if (!order_file.empty()) {
    std::ifstream in(order_file);
    std::uint64_t p;
    while (in >> p) cfg.push_order.push_back(p);
  }
  auto sender = MulticastSender::start(cfg, [&m, page_size](std::uint64_t p) {
    std::size_t off = p * page_size;
    std::size_t len = std::min<std::size_t>(page_size, m.size - off);
    return std::span<const std::uint8_t>(m.data + off, len);
  });
  if (!sender) return die(sender.error().message);
  auto& s = *sender.value();
  std::fprintf(stderr, "mcdist send: %s, %llu pages, session %016llx, requests on port %u\n",
               image.c_str(), static_cast<unsigned long long>(s.page_count()),
               static_cast<unsigned long long>(s.session_id()), s.request_port());
  auto t0 = Clock::now();
  bool ok = s.wait_done(receivers, std::chrono::milliseconds(static_cast<long>(linger_s * 1000)),
                        std::chrono::milliseconds(static_cast<long>(timeout_s * 1000)));
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  s.stop();
  auto j = to_json(s.stats());
  j["seconds"] = secs;
  j["image_bytes"] = m.size;
  j["done"] = ok;
  write_json(c.stats_file, j);
  if (!ok)
    return die("mcdist send: not done after " + std::to_string(timeout_s) + " s (" +
               std::to_string(s.stats().receivers_complete) + " of " + std::to_string(receivers) +
               " receivers complete)");
  return 0;
}

int cmd_recv(int argc, char** argv) {
  Common c;
  std::string out, server;
  double timeout_s = 600, server_timeout_s = 2, join_timeout_s = 10;
  std::uint32_t id = 0;
  po::options_description d("mcdist recv OUTFILE");
  add_common(d, c, true);
  d.add_options()("out", po::value(&out)->required(), "where to write the image")(
      "server", po::value(&server), "server request endpoint ADDR:PORT (default: learned)")(
      "id", po::value(&id)->default_value(0), "receiver id (e.g. clone id)")(
      "timeout", po::value(&timeout_s)->default_value(timeout_s), "give up after this many seconds")(
      "server-timeout", po::value(&server_timeout_s)->default_value(server_timeout_s), "fail after the server is silent this long")(
      "join-timeout", po::value(&join_timeout_s)->default_value(join_timeout_s), "fail when no server is heard this long");
  po::positional_options_description pos;
  pos.add("out", 1);
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, &pos, vm, err)) return die(err, 2);
  auto key = ClusterKey::from_file(c.key_file);
  if (!key) return die(key.error().message, 2);
  ReceiverConfig cfg;
  cfg.interface = c.iface;
  cfg.group = c.group;
  cfg.port = c.port;
  cfg.cluster_id = c.cluster;
  cfg.key = key.value();
  cfg.receiver_id = id;
  cfg.server = server;
  cfg.server_timeout = std::chrono::milliseconds(static_cast<long>(server_timeout_s * 1000));
  cfg.join_timeout = std::chrono::milliseconds(static_cast<long>(join_timeout_s * 1000));
  // The image is assembled in memory (ImageStore); only the receiver thread touches it until
  // wait_complete returns.
  ImageStore image;
  cfg.on_image = [&](const ImageInfo& info) { image.open(info.page_count * info.page_size); };
  auto receiver = MulticastReceiver::start(
      cfg, [&](std::uint64_t p, std::span<const std::uint8_t> data) {
        if (image.is_open()) image.collect(p * data.size(), data);
      });
  if (!receiver) return die(receiver.error().message);
  MulticastReceiver* self = receiver.value().get();
  // Tests and scripts wait for this line before they start the sender.
  std::fprintf(stderr, "mcdist recv: joined %s:%u on %s\n", c.group.c_str(), c.port, c.iface.c_str());
  auto t0 = Clock::now();
  auto status = self->wait_complete(std::chrono::milliseconds(static_cast<long>(timeout_s * 1000)));
  std::uint64_t bytes = self->image_bytes();
  self->stop();  // joins the receiving thread: the image is now this thread's
  if (!image.flush()) return die("mcdist recv: " + image.error());
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::string completed_at = unix_now();
  auto j = to_json(self->stats());
  j["seconds"] = secs;
  j["ok"] = status.ok();
  if (status) j["completed_at"] = completed_at;
  if (!status) j["error"] = status.error().message;
  write_json(c.stats_file, j);
  if (!status) return die(status.error().message);
  std::fprintf(stderr, "mcdist recv: complete at %s\n", completed_at.c_str());
  if (!image.save(out, bytes)) return die("mcdist recv: " + image.error());
  return 0;
}

}  // namespace sf::mcdist::tool
