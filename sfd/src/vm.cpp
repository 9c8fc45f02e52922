// sfd: QemuVm (see vm.hpp).
#include "sfd/vm.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "clone-core/guest_control.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/paths.hpp"
#include "sfd/vm_network.hpp"

namespace sf::sfd {
namespace fs = std::filesystem;

std::string to_string(Accel a) { return a == Accel::kvm ? "kvm" : "tcg"; }

std::string qemu_binary() {
  const char* v = std::getenv("SF_QEMU");
  return (v != nullptr && *v != '\0') ? v : "qemu-system-x86_64";
}

namespace {

// The read-only root disks (rootfs.hpp). readonly=on on the drive: QEMU opens the image
// O_RDONLY with a shared lock, so the master and all its clones use one file; the host's page
// cache (cache=writeback, the default) serves them all. Commas in a path are doubled (QEMU's
// option syntax).
void append_root_disks(std::vector<std::string>& a, const VmConfig& c) {
  const auto escape = [](const std::filesystem::path& p) {
    std::string out;
    for (char ch : p.string()) out += ch == ',' ? std::string(",,") : std::string(1, ch);
    return out;
  };
  const auto disk = [&](const std::filesystem::path& file, const std::string& id) {
    a.insert(a.end(), {"-drive", "file=" + escape(file) + ",format=raw,if=none,readonly=on,cache=writeback,id=" + id,
                       "-device", "virtio-blk-pci,drive=" + id + ",serial=" + id});
  };
  disk(*c.system_disk, "sfsys");
  if (c.work_disk) disk(*c.work_disk, "sfwork");
}

}  // namespace

std::vector<std::string> qemu_command_line(const VmConfig& c, const VmPaths& p, int qmp_fd,
                                           int io_fd, int console_fd, int ctl_fd) {
  const std::string mem = std::to_string(c.mem_mib) + "M";
  // init_on_free=1: the guest kernel zeroes every page it frees, so free guest memory is
  // all-zero in a frozen RAM image and in memtap's no-fetch map (remote clones never fetch it).
  std::string append = "console=ttyS0 panic=-1 quiet loglevel=3 init_on_free=1 sf.mode=" + c.mode;
  if (!c.agent.empty()) append += " sf.agent=" + c.agent.string();
  if (c.system_disk) append += " sf.root=disk";
  std::vector<std::string> a = {
      qemu_binary(), "-name", p.run_dir.filename().string(),
      "-nodefaults", "-no-user-config", "-nographic",
      // Exit instead of rebooting: a guest panic (panic=-1) or power-off ends the process.
      "-no-reboot",
      // dump-guest-core=off: a core of QEMU (if the user's limit allows one) leaves the guest's
      // RAM out; it would be as big as the VM.
      "-machine", "pc,accel=" + to_string(c.accel) + ",memory-backend=ram,dump-guest-core=off",
      "-cpu", c.accel == Accel::kvm ? "host" : "max",
      "-smp", std::to_string(c.cpus), "-m", mem,
      // Guest RAM in a named file, mapped shared: the clone path freezes this file and maps
      // it copy-on-write into clones.
      "-object", "memory-backend-file,id=ram,size=" + mem + ",mem-path=" + p.ram_file.string() + (c.ram_shared ? ",share=on" : ",share=off"),
      "-kernel", c.image.kernel.string(), "-initrd", c.image.initramfs.string(), "-append", append,
      "-chardev", "socket,id=qmp,fd=" + std::to_string(qmp_fd), "-mon", "chardev=qmp,mode=control",
  };
  if (c.nic) {
    // The cluster network: a tap on a bridge in sfd's private namespace (vm_network.hpp), fd 7
    // in QEMU (see launch()). QEMU probes the fd for IFF_VNET_HDR itself (it refuses
    // vnet_hdr= together with fd=), so a tap opened without it gives a NIC without the header.
    a.insert(a.end(), {"-netdev", "tap,id=n0,fd=7", "-device", "virtio-net-pci,netdev=n0,mac=" + c.nic->mac});
  } else if (c.udp_nic) {
    // The same virtio-net device (the descriptor's device state needs it) on a UDP link.
    a.insert(a.end(), {"-netdev", "socket,id=n0,udp=" + c.udp_nic->remote + ",localaddr=" + c.udp_nic->local, "-device",
                       "virtio-net-pci,netdev=n0,mac=" + c.udp_nic->mac});
  } else {
    a.insert(a.end(), {"-nic", "none"});  // no network device at all
  }
  if (c.incoming_defer) a.insert(a.end(), {"-incoming", "defer"});
  if (c.console_to_socket) {
    a.insert(a.end(), {"-chardev", "socket,id=con,fd=" + std::to_string(console_fd)});
  } else {
    a.insert(a.end(), {"-chardev", "file,id=con,path=" + p.console_log.string()});
  }
  a.insert(a.end(), {"-serial", "chardev:con"});
  if (c.mode != "probe") {
    a.insert(a.end(), {
        "-device", "virtio-serial-pci,id=vser",
        "-chardev", "socket,id=sfio,fd=" + std::to_string(io_fd),
        "-device", std::string("virtserialport,bus=vser.0,chardev=sfio,name=") + guest_io::kIoPort,
        // The clone API's requests from the guest (docs/protocols/vm-clone.md).
        "-chardev", "socket,id=sfctl,fd=" + std::to_string(ctl_fd),
        "-device", std::string("virtserialport,bus=vser.0,chardev=sfctl,name=") + sf::guest_control::kControlPort,
    });
    if (c.system_disk) {
      append_root_disks(a, c);
    } else {
      a.insert(a.end(), {
          // The host's root, read-only on the host side (readonly=on), as the overlay's lower.
          "-fsdev", "local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap",
          "-device", "virtio-9p-pci,fsdev=fsroot,mount_tag=sfroot",
      });
    }
    if (c.work_dir && !c.system_disk) {
      a.insert(a.end(), {
          "-fsdev", "local,id=fswork,path=" + c.work_dir->string() + ",security_model=none,multidevs=remap",
          "-device", "virtio-9p-pci,fsdev=fswork,mount_tag=sfwork",
      });
    }
  }
  return a;
}

namespace {

std::atomic<int> vm_counter{0};

std::string tail_of(const fs::path& path, std::size_t bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return {};
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::size_t>(in.tellg());
  in.seekg(static_cast<std::streamoff>(size > bytes ? size - bytes : 0));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

Result<std::unique_ptr<QemuVm>> QemuVm::launch(const VmConfig& config) {
  std::unique_ptr<QemuVm> vm(new QemuVm());
  const std::string name = std::string(kVmPrefix) + std::to_string(getpid()) + "-" + std::to_string(vm_counter++);
  std::error_code ec;
  ec = create_runtime_dir();
  vm->paths_.run_dir = runtime_dir() / name;
  if (!fs::create_directory(vm->paths_.run_dir, ec) || ec)
    return make_error("vm: cannot create " + vm->paths_.run_dir.string() + ": " + ec.message() + "; set SF_RUNTIME_DIR");
  vm->paths_.ram_file = config.ram_file ? *config.ram_file : ram_dir() / (name + ".ram");
  vm->owns_ram_file_ = !config.ram_file;
  vm->paths_.console_log = vm->paths_.run_dir / "console.log";
  vm->paths_.qemu_log = vm->paths_.run_dir / "qemu.log";

  int qmp_pair[2], io_pair[2], ctl_pair[2], con_pair[2] = {-1, -1};
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, qmp_pair) != 0 ||
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, io_pair) != 0 ||
      socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl_pair) != 0 ||
      (config.console_to_socket && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, con_pair) != 0))
    return make_error(std::string("vm: socketpair: ") + std::strerror(errno));
  // In the child the QEMU ends are moved to fixed numbers 3 (QMP), 4 (I/O), 5 (console),
  // 6 (control port), 7 (the tap, if any).
  const auto argv_strings = qemu_command_line(config, vm->paths_, 3, 4, 5, 6);
  std::vector<char*> argv;
  for (const auto& s : argv_strings) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  const std::string log = vm->paths_.qemu_log.string();
  const pid_t parent = getpid();
  const int tap_fd = config.nic ? config.nic->fd : -1;
  const bool no_core = config.ram_remote;

  const pid_t pid = fork();
  if (pid < 0) return make_error(std::string("vm: fork: ") + std::strerror(errno));
  if (pid == 0) {
    // Child: only async-signal-safe calls from here to exec.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    // sfd blocks the signals it reads through a signalfd; QEMU gets a clean mask.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (getppid() != parent) _exit(127);  // sfd died before prctl took effect
    if (no_core) {
      const rlimit none_core{0, 0};
      setrlimit(RLIMIT_CORE, &none_core);
    }
    int fds[5] = {qmp_pair[1], io_pair[1], con_pair[1], ctl_pair[1], tap_fd};
    // Move the ends above 6 first so dup2 onto 3..6 cannot clobber one we still need.
    for (int& fd : fds) {
      if (fd >= 0) fd = fcntl(fd, F_DUPFD, 10);
    }
    for (int i = 0; i < 5; ++i) {
      if (fds[i] >= 0) dup2(fds[i], 3 + i);
    }
    const int null_fd = open("/dev/null", O_RDONLY);
    if (null_fd >= 0) dup2(null_fd, 0);
    const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd >= 0) {
      dup2(log_fd, 1);
      dup2(log_fd, 2);
    }
    if (!config.console_to_socket) close(5);
    close_range(tap_fd >= 0 ? 8 : 7, ~0U, 0);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  vm->pid_ = pid;
  close(qmp_pair[1]);
  close(io_pair[1]);
  close(ctl_pair[1]);
  if (con_pair[1] >= 0) close(con_pair[1]);
  vm->io_fd_ = io_pair[0];
  vm->ctl_fd_ = ctl_pair[0];
  vm->console_fd_ = con_pair[0];

  auto qmp = QmpClient::adopt(qmp_pair[0]);
  if (!qmp) return qmp.error();
  vm->qmp_ = std::move(*qmp);
  // TCG start-up on a loaded 2-core machine can take a while; be generous.
  if (auto st = vm->qmp_->handshake(std::chrono::seconds(60)); !st) {
    vm->terminate(std::chrono::milliseconds(500));
    return make_error("vm: QEMU did not start (" + st.error().message + "): " + vm->diagnostics());
  }
  return vm;
}

int QemuVm::take_io_fd() { return std::exchange(io_fd_, -1); }
int QemuVm::take_console_fd() { return std::exchange(console_fd_, -1); }
int QemuVm::take_ctl_fd() { return std::exchange(ctl_fd_, -1); }

std::optional<int> QemuVm::try_reap() {
  if (exit_status_ || pid_ <= 0) return exit_status_;
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) exit_status_ = status;
  return exit_status_;
}

std::optional<int> QemuVm::wait_exit(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!try_reap()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_status_;
}

void QemuVm::terminate(std::chrono::milliseconds grace) {
  if (pid_ <= 0 || try_reap()) return;
  kill(pid_, SIGTERM);
  if (wait_exit(grace)) return;
  kill(pid_, SIGKILL);
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  exit_status_ = status;
}

std::string QemuVm::diagnostics(std::size_t bytes) const {
  std::string out;
  const auto qemu = tail_of(paths_.qemu_log, bytes);
  if (!qemu.empty()) out += "\n--- QEMU said ---\n" + qemu;
  const auto console = tail_of(paths_.console_log, bytes);
  if (!console.empty()) out += "\n--- guest console (last lines) ---\n" + console;
  return out;
}

fs::path QemuVm::release_ram_file() {
  owns_ram_file_ = false;
  return paths_.ram_file;
}

void QemuVm::cleanup_files() {
  std::error_code ec;
  if (owns_ram_file_) fs::remove(paths_.ram_file, ec);
  fs::remove_all(paths_.run_dir, ec);
}

QemuVm::~QemuVm() {
  qmp_.reset();
  terminate();
  if (io_fd_ >= 0) close(io_fd_);
  if (ctl_fd_ >= 0) close(ctl_fd_);
  if (console_fd_ >= 0) close(console_fd_);
  cleanup_files();
}

}  // namespace sf::sfd
