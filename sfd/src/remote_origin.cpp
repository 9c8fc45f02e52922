// sfd: the origin of remote clones: serves a frozen VM to clones on other hosts (memtap's page
// server, mcdist, and the control service of docs/protocols/remote-clone.md; see
// remote_clone.hpp and docs/sfd.md "Remote clones").
#include "sfd/remote_clone.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sstream>
#include <thread>

#include "memtap/page_server.hpp"
#include "memtap/mcdist_page_source.hpp"
#include "remote_common.hpp"
#include "socket_io.hpp"

namespace sf::sfd {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::duration_cast;
using std::chrono::microseconds;
using json = nlohmann::json;
using socket_io::get_le32;
using socket_io::put_le32;
using socket_io::recv_all;
using socket_io::send_all;
using socket_io::set_timeouts;
using remote::hex64;
using remote::kMagic;
using remote::kPage;
using remote::kProtocolVersion;
using remote::make_private_dir;
using remote::write_private_file;

struct RemoteCloneOrigin::State {
  fs::path dir;
  std::string address;
  std::uint16_t control_port = 0;
  sf::memtap::OwnerToken token{};
  std::string reply_json;  // everything but the descriptor
  std::string descriptor;  // the bytes
  NoFetchStats no_fetch;
  microseconds metadata_time{0};
  std::shared_ptr<const sf::memtap::FrozenImage> image;
  std::unique_ptr<sf::memtap::PageServer> page_server;
  std::thread page_thread;
  std::unique_ptr<sf::memtap::MulticastPageServer> mcast;
  int listen_fd = -1;
  int stop_fd = -1;
  std::thread control_thread;
  std::atomic<std::uint64_t> sent{0};

  void serve_control();
  void handle(int fd);
  ~State() {
    if (stop_fd >= 0) {
      const std::uint64_t one = 1;
      (void)!::write(stop_fd, &one, sizeof one);
    }
    if (control_thread.joinable()) control_thread.join();
    if (listen_fd >= 0) ::close(listen_fd);
    if (stop_fd >= 0) ::close(stop_fd);
    if (page_server) page_server->stop();
    if (page_thread.joinable()) page_thread.join();
    if (mcast) mcast->stop();
    mcast.reset();
    page_server.reset();
    image.reset();
    std::error_code ec;
    if (!dir.empty()) fs::remove_all(dir, ec);
  }
};

void RemoteCloneOrigin::State::serve_control() {
  for (;;) {
    pollfd p[2] = {{listen_fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("remote clone origin: poll: {}", std::strerror(errno));
      return;
    }
    if (p[1].revents != 0) return;
    if ((p[0].revents & POLLIN) == 0) continue;
    const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    handle(fd);
    ::close(fd);
  }
}

void RemoteCloneOrigin::State::handle(int fd) {
  set_timeouts(fd, std::chrono::seconds(10));
  unsigned char hello[8 + 32];
  if (!recv_all(fd, hello, sizeof hello)) return;
  auto refuse = [&](const std::string& why) {
    const std::string j = json{{"error", why}}.dump();
    unsigned char len[4];
    put_le32(len, static_cast<std::uint32_t>(j.size()));
    send_all(fd, len, 4) && send_all(fd, j.data(), j.size());
    spdlog::warn("remote clone origin: refused a clone request: {}", why);
  };
  if (std::memcmp(hello, kMagic, 4) != 0) return;  // not our protocol: just close
  if (get_le32(hello + 4) != kProtocolVersion) {
    refuse("protocol version " + std::to_string(get_le32(hello + 4)) + " not supported (this sfd speaks 1)");
    return;
  }
  sf::memtap::OwnerToken t{};
  std::memcpy(t.data(), hello + 8, 32);
  if (!sf::memtap::tokens_equal(t, token)) {
    refuse("wrong token: this is not the ticket of this clone family");
    return;
  }
  unsigned char len[4];
  put_le32(len, static_cast<std::uint32_t>(reply_json.size()));
  if (send_all(fd, len, 4) && send_all(fd, reply_json.data(), reply_json.size()) &&
      send_all(fd, descriptor.data(), descriptor.size())) {
    ++sent;
  }
}

RemoteCloneOrigin::RemoteCloneOrigin(std::unique_ptr<State> s) : s_(std::move(s)) {}
RemoteCloneOrigin::~RemoteCloneOrigin() = default;

Result<std::unique_ptr<RemoteCloneOrigin>> RemoteCloneOrigin::start(const VmConfig& config, const FrozenImage& image,
                                                                    const RemoteOriginOptions& o) {
  if (o.interface.empty()) return make_error("remote clone origin: no interface for mcdist (the cluster link must be named)");
  in_addr a{};
  if (inet_pton(AF_INET, o.address.c_str(), &a) != 1)
    return make_error("remote clone origin: '" + o.address + "' is not an IPv4 address of this host");
  if (config.work_dir && !config.system_disk)
    return make_error("remote clone origin: a guest with the 9p work share cannot be cloned (QEMU 7.2 blocks its migration)");
  auto s = std::make_unique<State>();
  s->address = o.address;
  auto dir = make_private_dir("origin");
  if (!dir) return dir.error();
  s->dir = *dir;

  // The descriptor, read once: every remote clone gets the same bytes.
  {
    std::ifstream in(image.descriptor(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    s->descriptor = ss.str();
    if (!in || s->descriptor.empty()) return make_error("remote clone origin: cannot read the descriptor " + image.descriptor().string());
  }

  // memtap metadata: page checksums, the zero map, the guest's free-page report.
  auto token = sf::memtap::random_token();
  if (!token) return make_error("remote clone origin: " + token.error().message);
  s->token = *token;
  const auto t0 = Clock::now();
  auto md = sf::memtap::ImageMetadata::build(image.ram_file().string(), kPage, s->token, o.no_fetch_map);
  if (!md) return make_error("remote clone origin: scanning " + image.ram_file().string() + ": " + md.error().message);
  const RamLayout layout = pc_ram_layout(config.mem_mib);
  if (o.no_fetch_map) {
    auto st = apply_free_page_report(*md, o.free_pages, layout, o.policy);
    if (!st) return st.error();
    s->no_fetch = *st;
  } else {
    s->no_fetch.pages = md->page_count();
  }
  s->metadata_time = duration_cast<microseconds>(Clock::now() - t0);
  const fs::path md_path = s->dir / "image.memtap";
  if (auto st = md->save(md_path.string()); !st) return make_error("remote clone origin: " + st.error().message);
  auto fi = sf::memtap::FrozenImage::open(image.ram_file().string(), md_path.string());
  if (!fi) return make_error("remote clone origin: " + fi.error().message);
  s->image = std::make_shared<const sf::memtap::FrozenImage>(std::move(fi).value());

  // The page server (TCP: HELLO, metadata) and the multicast server (mcdist).
  auto ps = sf::memtap::PageServer::create(s->image, sf::memtap::Endpoint{o.address, 0});
  if (!ps) return make_error("remote clone origin: page server on " + o.address + ": " + ps.error().message);
  s->page_server = std::move(ps).value();
  s->page_thread = std::thread([srv = s->page_server.get()] { srv->run(false); });
  auto key = sf::memtap::random_token();
  if (!key) return make_error("remote clone origin: " + key.error().message);
  const std::string key_hex = sf::memtap::token_hex(*key);
  const fs::path key_file = s->dir / "mcast.key";
  if (auto st = write_private_file(key_file, key_hex + "\n"); !st) return make_error("remote clone origin: " + st.error().message);
  sf::memtap::MulticastOptions mo;
  mo.interface = o.interface;
  mo.group = o.mcast_group;
  mo.port = o.mcast_port;
  mo.key_file = key_file.string();
  auto mc = sf::memtap::MulticastPageServer::start(s->image, mo);
  if (!mc) return make_error("remote clone origin: mcdist on " + o.interface + ": " + mc.error().message);
  s->mcast = std::move(mc).value();

  // The control service.
  s->listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  s->stop_fd = ::eventfd(0, EFD_CLOEXEC);
  if (s->listen_fd < 0 || s->stop_fd < 0) return make_error(std::string("remote clone origin: socket: ") + std::strerror(errno));
  const int one = 1;
  setsockopt(s->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr = a;
  socklen_t sl = sizeof sa;
  if (::bind(s->listen_fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 || ::listen(s->listen_fd, 64) != 0 ||
      ::getsockname(s->listen_fd, reinterpret_cast<sockaddr*>(&sa), &sl) != 0)
    return make_error("remote clone origin: cannot listen on " + o.address + ": " + std::strerror(errno));
  s->control_port = ntohs(sa.sin_port);

  json vmj = {{"mem_mib", config.mem_mib},
              {"cpus", config.cpus},
              {"mode", config.mode},
              {"accel", to_string(config.accel)},
              {"image_key", config.image.key},
              {"agent", config.agent.string()}};
  if (config.system_disk) vmj["system_disk"] = config.system_disk->string();
  if (config.work_disk) vmj["work_disk"] = config.work_disk->string();
  const json reply = {
      {"version", kProtocolVersion},
      {"memtap", sf::memtap::Endpoint{o.address, s->page_server->port()}.to_string()},
      {"mcast", {{"group", o.mcast_group}, {"port", o.mcast_port}, {"key", key_hex}}},
      {"image_id", hex64(s->image->metadata().image_id())},
      {"vm", vmj},
      {"descriptor_bytes", s->descriptor.size()},
      {"descriptor_xxh3", hex64(XXH3_64bits(s->descriptor.data(), s->descriptor.size()))},
  };
  s->reply_json = reply.dump();
  s->control_thread = std::thread([st = s.get()] { st->serve_control(); });
  spdlog::info("remote clone origin: serving {} ({} pages, {} no-fetch) control {}:{} page server {}:{} mcdist on {}",
               image.ram_file().string(), s->no_fetch.pages, s->image->metadata().no_fetch_count(), o.address,
               s->control_port, o.address, s->page_server->port(), o.interface);
  return std::unique_ptr<RemoteCloneOrigin>(new RemoteCloneOrigin(std::move(s)));
}

std::string RemoteCloneOrigin::ticket_json() const {
  return json{{"control", s_->address + ":" + std::to_string(s_->control_port)}, {"token", sf::memtap::token_hex(s_->token)}}.dump();
}

Status RemoteCloneOrigin::write_ticket(const fs::path& path) const { return write_private_file(path, ticket_json() + "\n"); }
const NoFetchStats& RemoteCloneOrigin::no_fetch() const { return s_->no_fetch; }
microseconds RemoteCloneOrigin::metadata_time() const { return s_->metadata_time; }
std::string RemoteCloneOrigin::page_server_stats() const { return s_->page_server->stats_json(); }
std::string RemoteCloneOrigin::multicast_stats() const { return s_->mcast->stats_json(); }
std::uint64_t RemoteCloneOrigin::descriptors_sent() const { return s_->sent.load(); }
const sf::memtap::OwnerToken& RemoteCloneOrigin::token() const { return s_->token; }
std::uint64_t RemoteCloneOrigin::image_pages() const { return s_->image->metadata().page_count(); }

}  // namespace sf::sfd
