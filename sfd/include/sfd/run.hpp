// sfd: `sfd run`: boot a master VM, run one command in it with the caller's working directory
// and environment, stream its stdout and stderr back apart, and return its exit status.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sfd/result.hpp"
#include "sfd/slurm_grant.hpp"
#include "sfd/rootfs.hpp"

namespace sf::sfd {

// sfd's own failures (cannot build the image, QEMU failed, the guest died) exit with this,
// like `docker run`; the command's own status is passed through otherwise.
inline constexpr int kSfdFailureExit = 125;

struct RunOptions {
  std::uint64_t mem_mib = 256;
  int cpus = 1;
  bool verbose = false;
  std::vector<std::string> argv;             // the command
  std::filesystem::path cwd;                 // run there in the guest (see `root`)
  // disk: the host's files on read-only EROFS disks, cwd included, writes stay in the VM
  // (clonable); 9p: the host's / over 9p and cwd shared read-write (not clonable).
  RootMode root = RootMode::disk;
  std::vector<std::string> env;              // NAME=value, already filtered
  std::filesystem::path agent;               // the sfd binary the guest runs as its agent
  // sfd's stdin is forwarded to the command (as mpirun forwards it to rank 0); false: the
  // command reads /dev/null (`--stdin none`).
  bool forward_stdin = true;
  // > 1: a static cluster of freshly booted VMs (static_cluster.hpp) instead of one clonable VM.
  unsigned nodes = 1;
  // Clones on other hosts (remote_member.hpp): one agent per host, this host's link to them.
  std::vector<std::string> remote;
  std::string remote_iface;
  // `--allocator slurm`: the clones go to nodes Slurm grants per ticket (slurm_grant.hpp).
  std::optional<SlurmOptions> slurm;
};

// The caller's environment minus what only makes sense on the host (agent sockets, display,
// terminal multiplexers, the host's runtime dir).
std::vector<std::string> guest_environment(char** environ_);

// Parses "256", "256M", "1G" into MiB.
Result<std::uint64_t> parse_mem_mib(const std::string& text);

// The spec frame's JSON (docs/sfd.md).
nlohmann::json command_spec(const RunOptions& options);

// Exit status as a shell reports it: the code, or 128 + signal number.
int shell_status(int code, int signal);

// Runs the whole thing; returns the exit status for sfd to exit with.
int run_in_vm(const RunOptions& options);

}  // namespace sf::sfd
