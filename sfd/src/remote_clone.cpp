// sfd: a clone on another host: fetches the origin's VM configuration and descriptor, mounts
// the image with memtap (fed by mcdist) and starts QEMU on it (see remote_clone.hpp,
// docs/sfd.md "Remote clones", docs/protocols/remote-clone.md). The origin's side is
// remote_origin.cpp.
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
using remote::kMaxDescriptor;
using remote::kMaxReplyJson;
using remote::kProtocolVersion;
using remote::make_private_dir;
using remote::write_private_file;

namespace {

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

Result<ControlReply> fetch_from_origin(const RemoteCloneOptions& o, const sf::memtap::OwnerToken& token) {
  auto ep = sf::memtap::parse_endpoint(o.control);
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
  auto token = sf::memtap::parse_token_hex(o.token_hex);
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
  sf::memtap::MulticastOptions mo;
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
    auto ep = sf::memtap::parse_endpoint(memtap_server);
    if (!ep) _exit(4);
    sf::memtap::TcpSourceOptions to;
    to.timeout = o.fetch_timeout;
    auto tcp = sf::memtap::TcpPageSource::connect(*ep, *token, to);
    if (!tcp) {
      std::fprintf(stderr, "sfd remote-clone: memtap page server %s: %s\n", memtap_server.c_str(), tcp.error().message.c_str());
      _exit(5);
    }
    spdlog::info("remote clone: memtap page server {}: {} pages, {} no-fetch", memtap_server, (*tcp)->metadata().page_count(),
                 (*tcp)->metadata().no_fetch_count());
    auto mc = sf::memtap::McdistPageSource::start((*tcp)->metadata(), mo);
    if (!mc) {
      std::fprintf(stderr, "sfd remote-clone: mcdist on %s: %s\n", mo.interface.c_str(), mc.error().message.c_str());
      _exit(6);
    }
    spdlog::info("remote clone: joined mcdist {}:{} on {}", mo.group, mo.port, mo.interface);
    sf::memtap::FuseExportOptions fo;
    auto st = sf::memtap::run_fuse_export(*mc, rc->mountpoint_.string(), fo);
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
  cfg.ram_remote = true;
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

}  // namespace sf::sfd
