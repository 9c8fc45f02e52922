// mcdist: the command-line tool for tests and benchmarks.
//   mcdist send IMAGE --iface X --group G --port P --cluster ID --key-file F [...]
//   mcdist recv OUTFILE --iface X --group G --port P --cluster ID --key-file F [...]
//   mcdist dump --iface X --group G --port P [--cluster ID --key-file F] [--count N]
//   mcdist decode PACKETFILE [--cluster ID --key-file F]
//   mcdist inject --kind foreign|corrupt|badkey|malformed|replay --iface X --group G ...
//   mcdist tcp-send IMAGE --listen ADDR:PORT --count N     (unicast baseline for benchmarks)
//   mcdist tcp-recv OUTFILE --connect ADDR:PORT
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "mcdist/net.hpp"
#include "mcdist/receiver.hpp"
#include "mcdist/sender.hpp"

namespace po = boost::program_options;
using namespace mcdist;
using Clock = std::chrono::steady_clock;

namespace {

int die(const std::string& message, int code = 1) {
  std::fprintf(stderr, "%s\n", message.c_str());
  return code;
}

struct Common {
  std::string iface, group = "239.255.77.1", key_file, stats_file;
  std::uint16_t port = 7700;
  std::uint64_t cluster = 1;
};

void add_common(po::options_description& d, Common& c, bool need_key) {
  d.add_options()("iface", po::value(&c.iface)->required(), "interface (required, explicit)")(
      "group", po::value(&c.group)->default_value(c.group), "multicast group")(
      "port", po::value(&c.port)->default_value(c.port), "group port")(
      "cluster", po::value(&c.cluster)->default_value(c.cluster), "cluster id")(
      "stats", po::value(&c.stats_file), "write statistics as JSON to this file");
  if (need_key)
    d.add_options()("key-file", po::value(&c.key_file)->required(), "file with the 64-hex-digit cluster key");
  else
    d.add_options()("key-file", po::value(&c.key_file), "file with the 64-hex-digit cluster key");
}

bool parse(int argc, char** argv, po::options_description& d, po::positional_options_description* pos,
           po::variables_map& vm, std::string& error) {
  try {
    po::command_line_parser p(argc, argv);
    p.options(d);
    if (pos) p.positional(*pos);
    po::store(p.run(), vm);
    po::notify(vm);
    return true;
  } catch (const std::exception& e) {
    std::ostringstream o;
    o << "mcdist: " << e.what() << "\n" << d;
    error = o.str();
    return false;
  }
}

// Wall-clock time (CLOCK_REALTIME, like `date +%s.%N`) as seconds with nanoseconds: receivers
// report when they held the whole image, so a benchmark's time excludes writing it out and the
// process's exit.
std::string unix_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld.%09ld", static_cast<long long>(ts.tv_sec), ts.tv_nsec);
  return buf;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  if (path.empty()) return;
  std::ofstream(path) << j.dump(2) << "\n";
}

struct MappedFile {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  ~MappedFile() {
    if (data) munmap(const_cast<std::uint8_t*>(data), size);
  }
};

Result<std::unique_ptr<MappedFile>> map_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Error{"mcdist: cannot open " + path + ": " + std::strerror(errno)};
  struct stat st{};
  fstat(fd, &st);
  auto m = std::make_unique<MappedFile>();
  m->size = static_cast<std::size_t>(st.st_size);
  if (m->size == 0) {
    close(fd);
    return Error{"mcdist: " + path + " is empty"};
  }
  void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return Error{"mcdist: mmap " + path + ": " + std::strerror(errno)};
  m->data = static_cast<const std::uint8_t*>(p);
  return m;
}

// A received image, held in a memory file (memfd, tmpfs) written with pwrite: a whole-page
// write into tmpfs allocates the page without zeroing it first, whereas first touches of
// anonymous memory have the kernel zero every page before it is overwritten (a third of the
// machine's CPU with 16 receivers of 256 MiB on 2 cores). `recv` and `tcp-recv` both use it, so
// the benchmark compares like with like.
class ImageStore {
 public:
  ImageStore() = default;
  ImageStore(const ImageStore&) = delete;
  ImageStore& operator=(const ImageStore&) = delete;
  ~ImageStore() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool open(std::uint64_t bytes) {
    fd_ = memfd_create("mcdist-image", MFD_CLOEXEC);
    if (fd_ < 0 || ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
      error_ = "cannot make a memory file of " + std::to_string(bytes) + " bytes for the image: " + std::strerror(errno);
      return false;
    }
    size_ = bytes;
    run_.reserve(kRun);
    return true;
  }
  bool is_open() const { return fd_ >= 0; }
  // Stores `data` at byte offset `off` (within the image).
  bool store(std::uint64_t off, std::span<const std::uint8_t> data) {
    while (!data.empty()) {
      ssize_t n = pwrite(fd_, data.data(), data.size(), static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        if (error_.empty()) error_ = std::string("cannot store a page: ") + std::strerror(errno);
        return false;
      }
      data = data.subspan(static_cast<std::size_t>(n));
      off += static_cast<std::uint64_t>(n);
    }
    return true;
  }
  // Like store(), but collects consecutive pieces (pages arrive mostly in order) into runs of
  // up to 1 MiB so that one pwrite stores many pages; flush() stores what is collected.
  void collect(std::uint64_t off, std::span<const std::uint8_t> data) {
    if (!run_.empty() && (off != run_off_ + run_.size() || run_.size() + data.size() > kRun)) flush();
    if (run_.empty()) run_off_ = off;
    run_.insert(run_.end(), data.begin(), data.end());
  }
  bool flush() {
    bool ok = run_.empty() || store(run_off_, run_);
    run_.clear();
    return ok;
  }
  const std::string& error() const { return error_; }
  // Writes the first `bytes` bytes to path (a file, or /dev/null).
  bool save(const std::string& path, std::uint64_t bytes) {
    if (fd_ < 0) return error_.empty() ? (error_ = "no image was stored", false) : false;
    flush();
    if (!error_.empty()) return false;
    int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    std::vector<std::uint8_t> buf(1 << 20);
    std::uint64_t off = 0;
    while (out >= 0 && off < bytes) {
      ssize_t r = pread(fd_, buf.data(), std::min<std::uint64_t>(bytes - off, buf.size()), static_cast<off_t>(off));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      ssize_t w = 0;
      while (w < r) {
        ssize_t n = write(out, buf.data() + w, static_cast<std::size_t>(r - w));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        w += n;
      }
      if (w < r) break;
      off += static_cast<std::uint64_t>(r);
    }
    if (out < 0 || off < bytes || close(out) != 0) {
      error_ = "cannot write " + path + ": " + std::strerror(errno);
      return false;
    }
    return true;
  }

 private:
  static constexpr std::size_t kRun = 1 << 20;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::vector<std::uint8_t> run_;
  std::uint64_t run_off_ = 0;
  std::string error_;
};

nlohmann::json to_json(const SenderStats& s) {
  return {{"packets_sent", s.packets_sent},
          {"bytes_sent", s.bytes_sent},
          {"pages_pushed", s.pages_pushed},
          {"pages_answered", s.pages_answered},
          {"heartbeats", s.heartbeats},
          {"requests", s.requests},
          {"pages_requested", s.pages_requested},
          {"demand_pages", s.demand_pages},
          {"requests_deduplicated", s.requests_deduplicated},
          {"requests_suppressed", s.requests_suppressed},
          {"malformed", s.malformed},
          {"foreign", s.foreign},
          {"corrupt", s.corrupt},
          {"unauthenticated", s.unauthenticated},
          {"replayed", s.replayed},
          {"backoffs", s.backoffs},
          {"send_errors", s.send_errors},
          {"current_rate_bps", s.current_rate_bps},
          {"receivers_seen", s.receivers_seen},
          {"receivers_complete", s.receivers_complete},
          {"push_done", s.push_done},
          {"push_seconds", s.push_seconds}};
}

nlohmann::json to_json(const ReceiverStats& s) {
  return {{"packets", s.packets},
          {"pages_received", s.pages_received},
          {"duplicate_pages", s.duplicate_pages},
          {"heartbeats", s.heartbeats},
          {"malformed", s.malformed},
          {"foreign", s.foreign},
          {"corrupt", s.corrupt},
          {"unauthenticated", s.unauthenticated},
          {"replayed", s.replayed},
          {"sequence_gaps", s.sequence_gaps},
          {"reordered", s.reordered},
          {"requests_sent", s.requests_sent},
          {"pages_requested", s.pages_requested},
          {"status_sent", s.status_sent},
          {"page_count", s.page_count},
          {"complete", s.complete},
          {"failed", s.failed}};
}

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

std::optional<ClusterKey> optional_key(const std::string& file, std::string& err) {
  if (file.empty()) return std::nullopt;
  auto k = ClusterKey::from_file(file);
  if (!k) {
    err = k.error().message;
    return std::nullopt;
  }
  return k.value();
}

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

// Crafts packets that receivers must drop and count (tests, and showing what a receiver does).
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

// Unicast TCP baseline: serves the image to `count` clients at once, one thread each.
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

}  // namespace

int main(int argc, char** argv) {
  std::string usage =
      "usage: mcdist send|recv|dump|decode|inject|tcp-send|tcp-recv [options]\n"
      "       mcdist COMMAND --help for the options of one command\n";
  if (argc < 2) return die(usage, 2);
  std::string cmd = argv[1];
  if (cmd == "send") return cmd_send(argc - 1, argv + 1);
  if (cmd == "recv") return cmd_recv(argc - 1, argv + 1);
  if (cmd == "dump") return cmd_dump(argc - 1, argv + 1);
  if (cmd == "decode") return cmd_decode(argc - 1, argv + 1);
  if (cmd == "inject") return cmd_inject(argc - 1, argv + 1);
  if (cmd == "tcp-send") return cmd_tcp_send(argc - 1, argv + 1);
  if (cmd == "tcp-recv") return cmd_tcp_recv(argc - 1, argv + 1);
  return die(usage, 2);
}
