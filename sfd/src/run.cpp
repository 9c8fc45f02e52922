// sfd: `sfd run` (see run.hpp): checks, the guest image, the accelerator and the master VM;
// then the VM family (family.hpp) runs it, serves its clone requests and cleans up.
#include "sfd/run.hpp"
#include "sfd/static_cluster.hpp"

#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cstring>
#include <optional>
#include <spdlog/spdlog.h>

#include "sfd/accel.hpp"
#include "sfd/family.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/remote_member.hpp"
#include "sfd/paths.hpp"
#include "sfd/rootfs.hpp"
#include "sfd/vm.hpp"
#include "sfd/vm_network.hpp"

namespace sf::sfd {
namespace fs = std::filesystem;
namespace gio = guest_io;

std::vector<std::string> guest_environment(char** env) {
  // Names that point at host-only things (sockets, displays, the host's runtime dir).
  static const std::array<const char*, 12> host_only = {
      "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "DISPLAY",
      "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "TMUX", "TMUX_PANE", "XAUTHORITY"};
  std::vector<std::string> out;
  for (char** e = env; e != nullptr && *e != nullptr; ++e) {
    const std::string kv = *e;
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    const std::string name = kv.substr(0, eq);
    bool skip = false;
    for (const char* h : host_only) skip = skip || name == h;
    if (!skip) out.push_back(kv);
  }
  return out;
}

Result<std::uint64_t> parse_mem_mib(const std::string& text) {
  std::size_t i = 0;
  std::uint64_t n = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) && n < (1ull << 40)) n = n * 10 + static_cast<std::uint64_t>(text[i++] - '0');
  if (i == 0) return make_error("--mem: '" + text + "' is not a size; use e.g. 256M or 1G");
  const std::string unit = text.substr(i);
  if (unit == "G" || unit == "g" || unit == "GiB") n *= 1024;
  else if (!(unit.empty() || unit == "M" || unit == "m" || unit == "MiB"))
    return make_error("--mem: unknown unit '" + unit + "'; use M or G");
  if (n < 64 || n > 64 * 1024) return make_error("--mem: " + std::to_string(n) + " MiB is outside 64M..64G");
  return n;
}

nlohmann::json command_spec(const RunOptions& o) {
  // work_dir: the 9p share the guest agent mounts (none with the root on disks).
  const std::string work_dir = o.root == RootMode::ninep ? o.cwd.string() : std::string();
  return {{"argv", o.argv},         {"env", o.env},           {"cwd", o.cwd.string()},
          {"work_dir", work_dir}, {"hostname", "sf-vm"}, {"stdin", o.forward_stdin}};
}

int shell_status(int code, int signal) { return signal != 0 ? 128 + signal : code; }

namespace {

unsigned max_clones_from_env() {
  const char* v = std::getenv("SF_MAX_CLONES");
  if (v == nullptr || *v == '\0') return 64;
  const long n = std::strtol(v, nullptr, 10);
  return n > 0 && n <= 253 ? static_cast<unsigned>(n) : 64;
}

// The system image (cached) and this run's work image (rootfs.hpp).
Result<SystemImage> prepare_root_disks(const RunOptions& o, std::unique_ptr<WorkImage>* work_image) {
  auto spec = host_system_image_spec();
  if (!spec) return spec.error();
  auto system = ensure_system_image(*spec, cache_dir());
  if (!system) return system.error();
  spdlog::info("system image {} ({} MiB){}", system->file.string(), system->bytes >> 20, system->built_now ? ", built now" : "");
  std::string path_env;
  for (const auto& kv : o.env) {
    if (kv.rfind("PATH=", 0) == 0) path_env.assign(kv, 5);  // not substr: GCC 12 -Wrestrict false positive at -O3
  }
  const auto paths = work_image_paths(o.cwd, o.argv.empty() ? std::string() : o.argv.front(), path_env, o.agent, *spec);
  const auto t0 = std::chrono::steady_clock::now();
  auto work = WorkImage::build(paths);
  if (!work) return work.error();
  std::string list;
  for (const auto& p : paths) list += " " + p.string();
  std::error_code ec;
  spdlog::info("work image {} ({} KiB, {} ms):{}", (*work)->file().string(), fs::file_size((*work)->file(), ec) >> 10,
               std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count(), list);
  *work_image = std::move(*work);
  return system;
}

}  // namespace

int run_in_vm(const RunOptions& o) {
  const auto fail = [](const std::string& msg) {
    spdlog::error("{}", msg);
    return kSfdFailureExit;
  };
  // Take the signals from the start: a Ctrl-C while the image builds or QEMU starts is
  // acted on (and everything cleaned up) as soon as the family's loop runs.
  sigset_t signals;
  sigemptyset(&signals);
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGCHLD}) sigaddset(&signals, sig);
  sigprocmask(SIG_BLOCK, &signals, nullptr);
  const int signal_fd = signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK);
  if (signal_fd < 0) return fail(std::string("run: signalfd: ") + std::strerror(errno));
  struct CloseFd {
    int fd;
    ~CloseFd() { close(fd); }
  } close_signal_fd{signal_fd};

  if (int n = sweep_stale_vm_files(); n > 0) spdlog::info("removed {} file(s) left by a killed sfd", n);
  if (o.cwd == "/") return fail("run: the working directory is /, which cannot be shared read-write; cd to a directory first");
  for (const auto& p : {o.agent.string(), o.cwd.string()}) {
    for (char ch : p) {
      if (std::isspace(static_cast<unsigned char>(ch)) || ch == ',')
        return fail("run: the path '" + p + "' has a space or comma, which QEMU's and the kernel's option syntax cannot carry; use another directory");
    }
  }

  // Clones on other hosts: the agents and this host's address on the link, checked before
  // anything boots.
  RemotePlacement remote;
  for (const auto& a : o.remote) {
    auto words = split_agent(a);
    if (!words) return fail(words.error().message);
    remote.agents.push_back(*words);
  }
  remote.slurm = o.slurm;
  if (remote.enabled()) {
    auto address = interface_ipv4(o.remote_iface);
    if (!address) return fail(address.error().message);
    remote.interface = o.remote_iface;
    remote.address = *address;
    remote.sfd_path = o.agent.string();
    remote.verbose = o.verbose;
    if (const char* f = std::getenv("SFD_STATS"); f != nullptr) remote.stats_file = f;
    if (const char* f = std::getenv("SFD_NO_FETCH_MAP"); f != nullptr && std::string(f) == "off") remote.no_fetch_map = false;
  }

  auto image = ensure_host_guest_image();
  if (!image) return fail(image.error().message);
  spdlog::info("guest image {} ({}){}", image->dir.string(), image->kernel_version, image->built_now ? ", built now" : "");
  auto accel = choose_accel(*image);
  if (!accel) return fail(accel.error().message);
  spdlog::info("accelerator: {}", accel->reason);

  VmConfig cfg;
  cfg.image = *image;
  cfg.accel = accel->accel;
  cfg.mem_mib = o.mem_mib;
  cfg.cpus = o.cpus;
  cfg.agent = o.agent;
  std::unique_ptr<WorkImage> work_image;  // outlives every VM of the family (clones use it too)
  std::shared_ptr<const int> system_in_use;  // likewise the system image (held against removal)
  if (o.root == RootMode::disk) {
    auto disks = prepare_root_disks(o, &work_image);
    if (!disks) return fail(disks.error().message);
    system_in_use = disks->in_use;
    cfg.system_disk = disks->file;
    cfg.work_disk = work_image->file();
  } else {
    cfg.work_dir = o.cwd;
  }
  // The cluster network (vm_network.hpp): a private namespace with a bridge; the master is
  // node 0 on it, each clone gets its own tap when the family starts it.
  auto network = VmNetwork::create();
  if (!network) return fail(network.error().message);
  auto node0 = vm_node_identity(0, "sf-vm");
  if (!node0) return fail(node0.error().message);
  const bool vnet_hdr = !remote.enabled();  // remote clones' NICs have no virtio-net header
  auto tap0 = (*network)->add_tap(0, vnet_hdr);
  if (!tap0) return fail(tap0.error().message);
  cfg.nic = *tap0;
  nlohmann::json spec_json = command_spec(o);
  spec_json["net"] = net_spec(*node0);
  // A static cluster (--nodes): the run's SSH key, and node 0 told where the nodes are.
  std::string rsh_key;
  if (o.nodes > 1) {
    auto key = make_rsh_key_hex(runtime_dir().string());
    if (!key) return fail(key.error().message);
    rsh_key = *key;
    std::vector<std::string> addresses;
    for (unsigned i = 0; i < o.nodes; ++i) {
      auto n = vm_node_identity(i, "sf-vm");
      if (!n) return fail(n.error().message);
      addresses.push_back(n->address);
    }
    for (auto& e : node0_environment(o.agent.string(), rsh_key, addresses, o.cpus)) spec_json["env"].push_back(e);
  }
  const std::string spec = spec_json.dump();
  if (spec.size() > gio::kMaxPayload) return fail("run: the command and environment exceed 1 MiB; trim the environment");
  auto launched = QemuVm::launch(cfg);
  if (!launched) return fail(launched.error().message);
  QemuVm& vm = **launched;
  cfg.nic.reset();  // QEMU holds the master's tap now; it goes with the master
  spdlog::info("VM {} started (pid {}, {} MiB, {} vCPU, RAM {})", vm.paths().run_dir.filename().string(), vm.pid(), o.mem_mib, o.cpus,
               vm.paths().ram_file.string());

  FamilyConfig family;
  family.mem_mib = o.mem_mib;
  family.cpus = o.cpus;
  family.accel = to_string(cfg.accel);
  family.spec = spec;
  family.stdin_fd = o.forward_stdin ? STDIN_FILENO : -1;
  family.max_clones = max_clones_from_env();
  family.subnet = kVmSubnet;
  family.remote = remote;
  family.config_for = [&cfg, &network, vnet_hdr](unsigned id) -> Result<VmConfig> {
    VmConfig c = cfg;
    auto tap = (*network)->add_tap(id, vnet_hdr);
    if (!tap) return tap.error();
    c.nic = *tap;
    return c;
  };
  // The other nodes of a static cluster boot now, alongside node 0.
  std::vector<BootedNode> nodes;
  for (unsigned i = 1; i < o.nodes; ++i) {
    auto c = family.config_for(i);
    if (!c) return fail(c.error().message);
    auto ident = vm_node_identity(i, "sf-vm");
    if (!ident) return fail(ident.error().message);
    RunOptions node_options = o;
    node_options.argv = compute_node_argv(o.agent.string(), ident->address);
    node_options.forward_stdin = false;
    nlohmann::json node_spec = command_spec(node_options);
    node_spec["env"].push_back(std::string(kRshKeyEnv) + "=" + rsh_key);
    node_spec["hostname"] = ident->hostname;
    node_spec["net"] = net_spec(*ident);
    auto vm_i = QemuVm::launch(*c);
    if (!vm_i) return fail("run --nodes: node " + std::to_string(i) + ": " + vm_i.error().message);
    spdlog::info("node {} started (pid {}, {})", i, (*vm_i)->pid(), ident->address);
    nodes.push_back({i, std::move(*vm_i), node_spec.dump()});
  }
  // Cannot fail: ids stay below max_clones + 1 <= 254 and the subnet is the default one.
  family.identity = [](unsigned id, const std::string& master_hostname) {
    auto n = vm_node_identity(id, master_hostname);
    return n ? *n : NodeIdentity{};
  };
  return run_family(std::move(*launched), std::move(nodes), family, signal_fd);
}

}  // namespace sf::sfd
