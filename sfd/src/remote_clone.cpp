// sfd: clones on other hosts (see remote_clone.hpp, docs/sfd.md "Remote clones",
// docs/protocols/remote-clone.md).
#include "sfd/remote_clone.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <cstddef>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sstream>
#include <thread>

#include "memtap/fuse_export.hpp"
#include "memtap/mcdist_page_source.hpp"
#include "memtap/page_server.hpp"
#include "memtap/tcp_page_source.hpp"
#include "sfd/clone.hpp"
#include "sfd/paths.hpp"
#include "socket_io.hpp"

namespace sfd {
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

namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t k4G = 4ull << 30;
constexpr char kMagic[4] = {'S', 'F', 'R', 'C'};
constexpr std::uint32_t kProtocolVersion = 1;
constexpr std::uint32_t kMaxReplyJson = 1u << 20;
constexpr std::uint64_t kMaxDescriptor = 256ull << 20;
std::atomic<int> dir_counter{0};

std::string hex64(std::uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

// A private directory named after this sfd (so the stale-file sweep removes it if we are killed).
Result<fs::path> make_private_dir(const std::string& kind) {
  std::error_code ec;
  ec = create_runtime_dir();
  const fs::path d = runtime_dir() / (std::string(kVmPrefix) + std::to_string(getpid()) + "-" + kind + "-" +
                                      std::to_string(dir_counter++));
  if (::mkdir(d.c_str(), 0700) != 0)
    return make_error("remote clone: cannot create " + d.string() + ": " + std::strerror(errno) + "; set SF_RUNTIME_DIR");
  return d;
}

Status write_private_file(const fs::path& p, const std::string& text) {
  const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("cannot write " + p.string() + ": " + std::strerror(errno));
  std::size_t off = 0;
  while (off < text.size()) {
    const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return make_error("cannot write " + p.string() + ": " + std::strerror(errno));
    }
    off += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return ok_status();
}

// QEMU madvise()s all guest RAM MADV_HUGEPAGE (physmem.c, unconditionally). On a file mapping
// that makes every page fault read ahead two 2 MiB-aligned huge pages (mm/filemap.c,
// do_sync_mmap_readahead: "Use the readahead code, even if readahead is disabled"): through
// memtap's FUSE file that is 512-1024 pages fetched per fault instead of the export's 8. This
// seccomp filter makes madvise(..., MADV_HUGEPAGE) fail with EINVAL (QEMU ignores the result)
// in the calling thread and every process it starts from now on (filters are inherited across
// fork and exec and cannot be removed: call it only where that is wanted, as here, in the
// thread that launches the clone's QEMU).
Status refuse_madv_hugepage_for_children() {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_madvise, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[2])),  // low half (LE)
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, MADV_HUGEPAGE, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EINVAL & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {static_cast<unsigned short>(sizeof f / sizeof f[0]), f};
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0) return ok_status();
  if (errno == EACCES && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
      ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) == 0)
    return ok_status();
  return make_error(std::string("remote clone: cannot install the MADV_HUGEPAGE filter for QEMU (seccomp): ") + std::strerror(errno));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// RAM layout and the no-fetch map

RamLayout pc_ram_layout(std::uint64_t mem_mib) {
  RamLayout l;
  l.ram_bytes = mem_mib << 20;
  // QEMU 7.2 pc_piix.c: lowmem = 0xe0000000, or 3 GiB (gigabyte_align) if RAM >= 0xe0000000.
  const std::uint64_t lowmem = l.ram_bytes >= 0xe0000000ull ? 0xc0000000ull : 0xe0000000ull;
  l.below_4g = std::min(l.ram_bytes, lowmem);
  return l;
}

std::optional<std::uint64_t> ram_file_offset(const RamLayout& l, std::uint64_t gpa) {
  if (gpa < l.below_4g) return gpa;
  if (gpa >= k4G && gpa - k4G < l.ram_bytes - l.below_4g) return l.below_4g + (gpa - k4G);
  return std::nullopt;
}

Result<NoFetchStats> apply_free_page_report(memtap::ImageMetadata& md, std::span<const sf::PageRange> frames,
                                            const RamLayout& layout, FreeReportPolicy policy) {
  if (md.page_size() != kPage) return make_error("no-fetch map: the image's page size is " + std::to_string(md.page_size()) + ", not 4096");
  if (md.image_length() != layout.ram_bytes)
    return make_error("no-fetch map: the image is " + std::to_string(md.image_length()) + " bytes but the guest has " +
                      std::to_string(layout.ram_bytes) + " bytes of RAM");
  NoFetchStats s;
  s.pages = md.page_count();
  s.zero_pages = md.no_fetch_count();
  for (const auto& r : frames) {
    for (std::uint64_t f = r.first; f < r.first + r.count; ++f) {
      if (f > (~0ull >> 12)) {
        ++s.reported_outside;
        continue;
      }
      const auto off = ram_file_offset(layout, f * kPage);
      if (!off) {
        ++s.reported_outside;
        continue;
      }
      const std::uint64_t page = *off / kPage;
      ++s.reported_pages;
      if (md.no_fetch(page)) {
        ++s.reported_zero;
      } else if (policy == FreeReportPolicy::trust) {
        md.set_no_fetch(page, true);
        ++s.reported_added;
      }
    }
  }
  s.no_fetch_pages = md.no_fetch_count();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Origin

struct RemoteCloneOrigin::State {
  fs::path dir;
  std::string address;
  std::uint16_t control_port = 0;
  memtap::OwnerToken token{};
  std::string reply_json;  // everything but the descriptor
  std::string descriptor;  // the bytes
  NoFetchStats no_fetch;
  microseconds metadata_time{0};
  std::shared_ptr<const memtap::FrozenImage> image;
  std::unique_ptr<memtap::PageServer> page_server;
  std::thread page_thread;
  std::unique_ptr<memtap::MulticastPageServer> mcast;
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
  memtap::OwnerToken t{};
  std::memcpy(t.data(), hello + 8, 32);
  if (!memtap::tokens_equal(t, token)) {
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
  auto token = memtap::random_token();
  if (!token) return make_error("remote clone origin: " + token.error().message);
  s->token = *token;
  const auto t0 = Clock::now();
  auto md = memtap::ImageMetadata::build(image.ram_file().string(), kPage, s->token, o.no_fetch_map);
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
  auto fi = memtap::FrozenImage::open(image.ram_file().string(), md_path.string());
  if (!fi) return make_error("remote clone origin: " + fi.error().message);
  s->image = std::make_shared<const memtap::FrozenImage>(std::move(fi).value());

  // The page server (TCP: HELLO, metadata) and the multicast server (mcdist).
  auto ps = memtap::PageServer::create(s->image, memtap::Endpoint{o.address, 0});
  if (!ps) return make_error("remote clone origin: page server on " + o.address + ": " + ps.error().message);
  s->page_server = std::move(ps).value();
  s->page_thread = std::thread([srv = s->page_server.get()] { srv->run(false); });
  auto key = memtap::random_token();
  if (!key) return make_error("remote clone origin: " + key.error().message);
  const std::string key_hex = memtap::token_hex(*key);
  const fs::path key_file = s->dir / "mcast.key";
  if (auto st = write_private_file(key_file, key_hex + "\n"); !st) return make_error("remote clone origin: " + st.error().message);
  memtap::MulticastOptions mo;
  mo.interface = o.interface;
  mo.group = o.mcast_group;
  mo.port = o.mcast_port;
  mo.key_file = key_file.string();
  auto mc = memtap::MulticastPageServer::start(s->image, mo);
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
      {"memtap", memtap::Endpoint{o.address, s->page_server->port()}.to_string()},
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
  return json{{"control", s_->address + ":" + std::to_string(s_->control_port)}, {"token", memtap::token_hex(s_->token)}}.dump();
}

Status RemoteCloneOrigin::write_ticket(const fs::path& path) const { return write_private_file(path, ticket_json() + "\n"); }
const NoFetchStats& RemoteCloneOrigin::no_fetch() const { return s_->no_fetch; }
microseconds RemoteCloneOrigin::metadata_time() const { return s_->metadata_time; }
std::string RemoteCloneOrigin::page_server_stats() const { return s_->page_server->stats_json(); }
std::string RemoteCloneOrigin::multicast_stats() const { return s_->mcast->stats_json(); }
std::uint64_t RemoteCloneOrigin::descriptors_sent() const { return s_->sent.load(); }
const memtap::OwnerToken& RemoteCloneOrigin::token() const { return s_->token; }
std::uint64_t RemoteCloneOrigin::image_pages() const { return s_->image->metadata().page_count(); }

// ---------------------------------------------------------------------------------------------
// Remote side

Status read_ticket(const fs::path& path, RemoteCloneOptions& o) {
  std::ifstream in(path);
  if (!in) return make_error("remote clone: cannot read the ticket " + path.string());
  try {
    const json j = json::parse(in);
    o.control = j.at("control").get<std::string>();
    o.token_hex = j.at("token").get<std::string>();
  } catch (const std::exception& e) {
    return make_error("remote clone: the ticket " + path.string() + " is not {\"control\":..., \"token\":...}: " + e.what());
  }
  return ok_status();
}

namespace {

// A non-negative integer field of at most `max`. nlohmann's get<std::uint64_t>() converts a
// float such as 1e300 with a cast whose result is undefined; only integers are taken.
Result<std::uint64_t> count_field(const json& j, const char* key, std::uint64_t max) {
  const json& v = j.at(key);
  std::uint64_t n = 0;
  if (v.is_number_unsigned()) {
    n = v.get<std::uint64_t>();
  } else if (v.is_number_integer() && v.get<std::int64_t>() >= 0) {
    n = static_cast<std::uint64_t>(v.get<std::int64_t>());
  } else {
    return make_error(std::string("malformed reply: ") + key + " is not a non-negative integer");
  }
  if (n == 0 || n > max) return make_error(std::string("malformed reply: ") + key + " " + std::to_string(n) + " out of range");
  return n;
}

}  // namespace

Result<OriginReply> parse_origin_reply(const std::string& text) {
  const json m = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (m.is_discarded() || !m.is_object()) return make_error("malformed reply: not a JSON object");
  try {
    if (const auto e = m.find("error"); e != m.end())
      return make_error("refused: " + (e->is_string() ? e->get<std::string>() : e->dump()));
    OriginReply r;
    const auto size = count_field(m, "descriptor_bytes", ~std::uint64_t{0});
    if (!size) return size.error();
    r.descriptor_bytes = *size;
    if (r.descriptor_bytes > kMaxDescriptor)
      return make_error("descriptor size " + std::to_string(r.descriptor_bytes) + " out of range");
    r.descriptor_xxh3 = m.at("descriptor_xxh3").get<std::string>();
    const json& mc = m.at("mcast");
    r.mcast_key = mc.at("key").get<std::string>();
    r.mcast_group = mc.at("group").get<std::string>();
    const auto port = count_field(mc, "port", 65535);
    if (!port) return port.error();
    r.mcast_port = static_cast<std::uint16_t>(*port);
    r.memtap = m.at("memtap").get<std::string>();
    const json& v = m.at("vm");
    const auto mem_mib = count_field(v, "mem_mib", 1ull << 24);
    if (!mem_mib) return mem_mib.error();
    r.vm.mem_mib = *mem_mib;
    const auto cpus = count_field(v, "cpus", 4096);
    if (!cpus) return cpus.error();
    r.vm.cpus = static_cast<int>(*cpus);
    r.vm.mode = v.at("mode").get<std::string>();
    r.vm.accel = v.at("accel").get<std::string>() == "kvm" ? Accel::kvm : Accel::tcg;
    r.vm.agent = v.at("agent").get<std::string>();
    if (v.contains("system_disk")) r.vm.system_disk = v["system_disk"].get<std::string>();
    if (v.contains("work_disk")) r.vm.work_disk = v["work_disk"].get<std::string>();
    r.image_key = v.at("image_key").get<std::string>();
    return r;
  } catch (const json::exception& e) {
    return make_error(std::string("malformed reply: ") + e.what());
  }
}

namespace {

struct ControlReply {
  OriginReply meta;
  std::string descriptor;
};

Result<ControlReply> fetch_from_origin(const RemoteCloneOptions& o, const memtap::OwnerToken& token) {
  auto ep = memtap::parse_endpoint(o.control);
  if (!ep) return make_error("remote clone: control address: " + ep.error().message);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(ep->port);
  if (inet_pton(AF_INET, ep->address.c_str(), &sa.sin_addr) != 1) return make_error("remote clone: control address must be IPv4: " + o.control);
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(std::string("remote clone: socket: ") + std::strerror(errno));
  set_timeouts(fd, std::chrono::seconds(10));
  auto fail = [&](const std::string& m) -> Error {
    ::close(fd);
    return make_error("remote clone: origin " + o.control + ": " + m);
  };
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0)
    return fail(std::string("cannot connect: ") + std::strerror(errno) + " (is the origin serving, is this host on its link?)");
  unsigned char hello[8 + 32];
  std::memcpy(hello, kMagic, 4);
  put_le32(hello + 4, kProtocolVersion);
  std::memcpy(hello + 8, token.data(), 32);
  if (!send_all(fd, hello, sizeof hello)) return fail("send failed");
  unsigned char len[4];
  if (!recv_all(fd, len, 4)) return fail("closed the connection without a reply");
  const std::uint32_t n = get_le32(len);
  if (n > kMaxReplyJson) return fail("reply of " + std::to_string(n) + " bytes is over the 1 MiB limit");
  std::string text(n, '\0');
  if (!recv_all(fd, text.data(), n)) return fail("reply cut short");
  ControlReply r;
  auto meta = parse_origin_reply(text);
  if (!meta) return fail(meta.error().message);
  r.meta = std::move(*meta);
  const auto size = r.meta.descriptor_bytes;
  r.descriptor.resize(size);
  if (!recv_all(fd, r.descriptor.data(), size)) return fail("descriptor cut short");
  if (hex64(XXH3_64bits(r.descriptor.data(), size)) != r.meta.descriptor_xxh3) return fail("descriptor checksum mismatch");
  ::close(fd);
  return r;
}

}  // namespace

Result<std::unique_ptr<RemoteClone>> RemoteClone::start(const RemoteCloneOptions& o, RemoteCloneTimings* timings) {
  if (o.interface.empty()) return make_error("remote clone: no interface for mcdist (--iface)");
  auto token = memtap::parse_token_hex(o.token_hex);
  if (!token) return make_error("remote clone: token: " + token.error().message);
  std::unique_ptr<RemoteClone> rc(new RemoteClone());
  auto dir = make_private_dir("remote");
  if (!dir) return dir.error();
  rc->dir_ = *dir;
  RemoteCloneTimings t;
  auto t0 = Clock::now();
  auto reply = fetch_from_origin(o, *token);
  if (!reply) return reply.error();
  const OriginReply& m = reply->meta;
  const fs::path desc = rc->dir_ / "descriptor";
  if (auto st = write_private_file(desc, reply->descriptor); !st) return make_error("remote clone: " + st.error().message);
  const fs::path key_file = rc->dir_ / "mcast.key";
  VmConfig cfg = m.vm;
  memtap::MulticastOptions mo;
  const std::string memtap_server = m.memtap;
  if (auto st = write_private_file(key_file, m.mcast_key + "\n"); !st) return make_error("remote clone: " + st.error().message);
  mo.group = m.mcast_group;
  mo.port = m.mcast_port;
  auto image = ensure_host_guest_image();
  if (!image) return make_error("remote clone: guest image: " + image.error().message);
  if (image->key != m.image_key)
    return make_error("remote clone: this host's guest image " + image->key + " is not the origin's " + m.image_key +
                      " (the descriptor needs the same kernel and devices)");
  cfg.image = *image;
  for (const auto* disk : {&cfg.system_disk, &cfg.work_disk}) {
    std::error_code ec;
    if (*disk && !fs::exists(**disk, ec))
      return make_error("remote clone: the root disk " + (*disk)->string() + " is not on this host (copy it to the same path)");
  }
  t.descriptor = duration_cast<microseconds>(Clock::now() - t0);
  mo.interface = o.interface;
  mo.key_file = key_file.string();
  mo.receiver_id = o.clone_id;
  mo.timeout = o.fetch_timeout;

  // The memtap FUSE export, in a child process: TCP HELLO for the metadata, then mcdist.
  t0 = Clock::now();
  rc->mountpoint_ = rc->dir_ / "mnt";
  if (::mkdir(rc->mountpoint_.c_str(), 0700) != 0) return make_error("remote clone: mkdir " + rc->mountpoint_.string() + ": " + std::strerror(errno));
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return make_error(std::string("remote clone: fork: ") + std::strerror(errno));
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGTERM);  // sfd gone: unmount and exit
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (getppid() != parent) _exit(3);
    auto ep = memtap::parse_endpoint(memtap_server);
    if (!ep) _exit(4);
    memtap::TcpSourceOptions to;
    to.timeout = o.fetch_timeout;
    auto tcp = memtap::TcpPageSource::connect(*ep, *token, to);
    if (!tcp) {
      std::fprintf(stderr, "sfd remote-clone: memtap page server %s: %s\n", memtap_server.c_str(), tcp.error().message.c_str());
      _exit(5);
    }
    spdlog::info("remote clone: memtap page server {}: {} pages, {} no-fetch", memtap_server, (*tcp)->metadata().page_count(),
                 (*tcp)->metadata().no_fetch_count());
    auto mc = memtap::McdistPageSource::start((*tcp)->metadata(), mo);
    if (!mc) {
      std::fprintf(stderr, "sfd remote-clone: mcdist on %s: %s\n", mo.interface.c_str(), mc.error().message.c_str());
      _exit(6);
    }
    spdlog::info("remote clone: joined mcdist {}:{} on {}", mo.group, mo.port, mo.interface);
    memtap::FuseExportOptions fo;
    auto st = memtap::run_fuse_export(*mc, rc->mountpoint_.string(), fo);
    if (!st) std::fprintf(stderr, "sfd remote-clone: FUSE export: %s\n", st.error().message.c_str());
    std::fflush(stderr);
    _exit(st ? 0 : 7);
  }
  rc->fuse_pid_ = pid;
  const fs::path ram = rc->mountpoint_ / "image";
  const auto mount_deadline = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    struct stat sb {};
    if (::stat(ram.c_str(), &sb) == 0 && static_cast<std::uint64_t>(sb.st_size) == (cfg.mem_mib << 20)) break;
    if (auto ex = rc->fuse_exited()) return make_error("remote clone: " + *ex);
    if (Clock::now() > mount_deadline) return make_error("remote clone: the memtap FUSE export did not appear at " + ram.string() + " in 30 s");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  t.mount = duration_cast<microseconds>(Clock::now() - t0);

  // QEMU on the FUSE file, copy-on-write, waiting for the descriptor.
  t0 = Clock::now();
  cfg.ram_file = ram;
  cfg.udp_nic = o.nic;
  cfg.ram_shared = false;
  cfg.incoming_defer = true;
  if (auto st = refuse_madv_hugepage_for_children(); !st) return st.error();
  auto vm = QemuVm::launch(cfg);
  if (!vm) return make_error("remote clone: " + vm.error().message);
  rc->vm_ = std::move(*vm);
  t.start = duration_cast<microseconds>(Clock::now() - t0);
  t0 = Clock::now();
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  auto& q = rc->vm_->qmp();
  if (auto st = q.migrate_set_capabilities({{"x-ignore-shared", true}}); !st) return make_error("remote clone: " + st.error().message);
  if (auto st = q.migrate_incoming("exec:cat '" + desc.string() + "'"); !st) return make_error("remote clone: " + st.error().message);
  if (auto st = wait_migration(q, deadline, "remote clone: loading the descriptor"); !st)
    return make_error(st.error().message + rc->vm_->diagnostics());
  t.load = duration_cast<microseconds>(Clock::now() - t0);
  t0 = Clock::now();
  if (auto st = q.cont(); !st) return make_error("remote clone: cont: " + st.error().message);
  for (;;) {
    auto s = q.query_status();
    if (!s) return make_error("remote clone: " + s.error().message + rc->vm_->diagnostics());
    if (s->value("status", "") == "running") break;
    if (Clock::now() > deadline) return make_error("remote clone: did not reach running" + rc->vm_->diagnostics());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  t.resume = duration_cast<microseconds>(Clock::now() - t0);
  if (timings != nullptr) *timings = t;
  return rc;
}

std::optional<std::string> RemoteClone::fuse_exited() {
  if (fuse_pid_ <= 0) return std::string("the memtap FUSE export is not running");
  int status = 0;
  if (::waitpid(fuse_pid_, &status, WNOHANG) != fuse_pid_) return std::nullopt;
  fuse_pid_ = -1;
  if (WIFEXITED(status)) return "the memtap FUSE export exited with status " + std::to_string(WEXITSTATUS(status));
  return "the memtap FUSE export was killed by signal " + std::to_string(WTERMSIG(status));
}

std::string RemoteClone::client_stats() const {
  std::ifstream in(mountpoint_ / "stats");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void RemoteClone::stop_fuse() {
  if (fuse_pid_ > 0) {
    ::kill(fuse_pid_, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(5);
    int status = 0;
    while (::waitpid(fuse_pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(fuse_pid_, SIGKILL);
        ::waitpid(fuse_pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    fuse_pid_ = -1;
  }
  // A killed export leaves the mount to fusermount3's auto_unmount; detach it in any case.
  if (!mountpoint_.empty()) ::umount2(mountpoint_.c_str(), MNT_DETACH);
}

RemoteClone::~RemoteClone() {
  vm_.reset();  // QEMU first: it maps the FUSE file
  stop_fuse();
  std::error_code ec;
  if (!mountpoint_.empty()) fs::remove(mountpoint_, ec);
  if (!dir_.empty()) fs::remove_all(dir_, ec);
}

}  // namespace sfd
