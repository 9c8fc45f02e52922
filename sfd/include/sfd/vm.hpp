// sfd: one QEMU process running a SnowFlock guest. Owns everything the VM needs on the host
// (the QEMU process, its RAM file under ram_dir(), its runtime directory, the QMP and guest
// I/O sockets) and removes all of it when destroyed, whatever state the VM is in.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "sfd/guest_image.hpp"
#include "sfd/qmp_client.hpp"
#include "sfd/result.hpp"

namespace sf::sfd {

struct TapDevice;  // vm_network.hpp

enum class Accel { kvm, tcg };
std::string to_string(Accel a);

struct VmConfig {
  GuestImage image;
  Accel accel = Accel::tcg;
  std::uint64_t mem_mib = 256;
  int cpus = 1;
  std::string mode = "run";                     // sf.mode= for the guest init: run | probe
  std::filesystem::path agent;                  // host path of the sfd binary (the guest agent)
  std::optional<std::filesystem::path> work_dir;  // shared read-write as 9p tag "sfwork"
  // The root on read-only disks (rootfs.hpp): the system and work EROFS images, as virtio-blk
  // disks with serials sfsys and sfwork. With system_disk set the VM gets no 9p device at all
  // (a mounted 9p export blocks migration, so cloning) and work_dir is not used.
  std::optional<std::filesystem::path> system_disk;
  std::optional<std::filesystem::path> work_disk;
  // The NIC on the VMs' cluster network (vm_network.hpp): QEMU gets a copy of the tap's fd (as
  // fd 7) and a virtio-net NIC with the tap's MAC. Without one the VM has no network device.
  std::shared_ptr<const TapDevice> nic;
  // Or, for a clone on another host (remote_member.hpp): the NIC's Ethernet frames as UDP
  // datagrams between `local` and `remote` (ADDR:PORT each; QEMU's socket netdev), where the
  // origin sfd relays them to a tap on its cluster bridge.
  struct UdpNic {
    std::string mac;
    std::string local;
    std::string remote;
  };
  std::optional<UdpNic> udp_nic;
  bool console_to_socket = false;               // console on console_fd() instead of a log file
  // Cloning (clone.hpp): map an existing frozen RAM file (not created, not deleted by this
  // VM), privately (share=off: copy-on-write), and wait for a descriptor (-incoming defer).
  std::optional<std::filesystem::path> ram_file;
  bool ram_shared = true;
  bool incoming_defer = false;
  // RAM served by a page server over the network (a remote clone's FUSE file): if the server
  // goes, the guest's next fetch is a SIGBUS that ends QEMU, the clone's documented end, so
  // QEMU writes no core file (RLIMIT_CORE 0) into the user's directory for it.
  bool ram_remote = false;
};

// The paths one VM uses; all named after the owning sfd's pid (kVmPrefix) for the sweep.
struct VmPaths {
  std::filesystem::path run_dir;      // runtime_dir()/sf-vm-<pid>-<n>
  std::filesystem::path ram_file;     // ram_dir()/sf-vm-<pid>-<n>.ram
  std::filesystem::path console_log;  // run_dir/console.log
  std::filesystem::path qemu_log;     // run_dir/qemu.log (QEMU's own stderr)
};

// QEMU's command line for `config`, with the QMP socket on fd `qmp_fd`, the guest I/O port
// (sf.io) on `io_fd`, the clone-request port (sf.ctl) on `ctl_fd` and (if console_to_socket)
// the console on `console_fd`.
std::vector<std::string> qemu_command_line(const VmConfig& config, const VmPaths& paths,
                                           int qmp_fd, int io_fd, int console_fd, int ctl_fd);

// $SF_QEMU or qemu-system-x86_64.
std::string qemu_binary();

class QemuVm {
 public:
  // Starts QEMU and completes the QMP handshake. QEMU gets its own process group (so a
  // terminal's Ctrl-C reaches sfd, which then shuts the VM down) and dies with sfd
  // (PR_SET_PDEATHSIG), so no QEMU outlives a killed sfd.
  static Result<std::unique_ptr<QemuVm>> launch(const VmConfig& config);
  ~QemuVm();  // kills QEMU if still running, reaps it, removes the RAM file and run dir
  QemuVm(const QemuVm&) = delete;
  QemuVm& operator=(const QemuVm&) = delete;

  pid_t pid() const { return pid_; }
  const VmPaths& paths() const { return paths_; }
  QmpClient& qmp() { return *qmp_; }
  // The host ends of the guest I/O socket and (if configured) console socket; the caller
  // takes ownership and must close them.
  int take_io_fd();
  int take_console_fd();
  int take_ctl_fd();  // the host end of the sf.ctl port (clone requests)

  // Non-blocking: the wait status if QEMU has exited (and was reaped), else nullopt.
  std::optional<int> try_reap();
  // Waits up to `timeout` for QEMU to exit on its own.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  // SIGTERM, a grace period, then SIGKILL; always reaps.
  void terminate(std::chrono::milliseconds grace = std::chrono::milliseconds(2000));
  std::optional<int> exit_status() const { return exit_status_; }
  // Hands the RAM file over to the caller: this VM no longer deletes it (cloning freezes it).
  std::filesystem::path release_ram_file();

  // The last `bytes` of the console log and of QEMU's stderr, for error messages.
  std::string diagnostics(std::size_t bytes = 2000) const;

 private:
  QemuVm() = default;
  void cleanup_files();

  pid_t pid_ = -1;
  std::optional<int> exit_status_;
  VmPaths paths_;
  std::unique_ptr<QmpClient> qmp_;
  int io_fd_ = -1;
  int ctl_fd_ = -1;
  int console_fd_ = -1;
  bool owns_ram_file_ = true;
};

}  // namespace sf::sfd
