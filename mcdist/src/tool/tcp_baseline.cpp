// mcdist tool: the unicast TCP baseline of the benchmarks: `tcp-send` serves the image to N
// clients at once, one thread each; `tcp-recv` fetches it into memory like `recv` does.
#include "commands.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "mcdist/net.hpp"

#include "cli.hpp"
#include "image_files.hpp"

namespace sf::mcdist::tool {

int cmd_tcp_send(int argc, char** argv) {
  std::string image, listen_at;
  std::size_t count = 1;
  po::options_description d("mcdist tcp-send IMAGE");
  d.add_options()("image", po::value(&image)->required(), "image file")(
      "listen", po::value(&listen_at)->required(), "ADDR:PORT")(
      "count", po::value(&count)->default_value(1), "clients to serve");
  po::positional_options_description pos;
  pos.add("image", 1);
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, &pos, vm, err)) return die(err, 2);
  auto mapped = map_file(image);
  if (!mapped) return die(mapped.error().message);
  auto ep = net::parse_endpoint(listen_at);
  if (!ep) return die(ep.error().message);
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, reinterpret_cast<sockaddr*>(&ep.value()), sizeof(sockaddr_in)) != 0 || listen(ls, 64) != 0)
    return die("mcdist tcp-send: cannot listen on " + listen_at + ": " + std::strerror(errno));
  const MappedFile& m = *mapped.value();
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < count; ++i) {
    int s = accept(ls, nullptr, nullptr);
    if (s < 0) return die("mcdist tcp-send: accept failed");
    threads.emplace_back([s, &m] {
      std::uint64_t size = m.size;
      [[maybe_unused]] auto r = write(s, &size, sizeof size);
      std::size_t off = 0;
      while (off < m.size) {
        ssize_t n = write(s, m.data + off, std::min<std::size_t>(1 << 20, m.size - off));
        if (n <= 0) break;
        off += static_cast<std::size_t>(n);
      }
      close(s);
    });
  }
  for (auto& t : threads) t.join();
  close(ls);
  return 0;
}

int cmd_tcp_recv(int argc, char** argv) {
  std::string out, connect_to;
  po::options_description d("mcdist tcp-recv OUTFILE");
  d.add_options()("out", po::value(&out)->required(), "where to write the image")(
      "connect", po::value(&connect_to)->required(), "ADDR:PORT");
  po::positional_options_description pos;
  pos.add("out", 1);
  po::variables_map vm;
  std::string err;
  if (!parse(argc, argv, d, &pos, vm, err)) return die(err, 2);
  auto ep = net::parse_endpoint(connect_to);
  if (!ep) return die(ep.error().message);
  int s = -1;
  for (int attempt = 0; attempt < 100; ++attempt) {  // the server may still be starting
    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(s, reinterpret_cast<sockaddr*>(&ep.value()), sizeof(sockaddr_in)) == 0) break;
    close(s);
    s = -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (s < 0) return die("mcdist tcp-recv: cannot connect to " + connect_to);
  std::uint64_t size = 0;
  if (recv(s, &size, sizeof size, MSG_WAITALL) != sizeof size) return die("mcdist tcp-recv: short header");
  ImageStore image;  // held in memory like `recv` does
  if (size == 0 || !image.open(size)) return die("mcdist tcp-recv: empty image or " + image.error());
  std::vector<std::uint8_t> buf(256 << 10);
  std::uint64_t off = 0;
  while (off < size) {
    ssize_t n = read(s, buf.data(), std::min<std::uint64_t>(size - off, buf.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return die("mcdist tcp-recv: connection closed early");
    if (!image.store(off, {buf.data(), static_cast<std::size_t>(n)})) return die("mcdist tcp-recv: " + image.error());
    off += static_cast<std::size_t>(n);
  }
  close(s);
  std::fprintf(stderr, "mcdist tcp-recv: complete at %s\n", unix_now().c_str());
  if (!image.save(out, size)) return die("mcdist tcp-recv: " + image.error());
  return 0;
}

}  // namespace sf::mcdist::tool
