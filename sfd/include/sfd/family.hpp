// sfd: a VM family: the master VM of `sfd run` and, once its guest asks (docs/protocols/
// vm-clone.md), the clones sfd makes of it. One poll loop watches every member's guest I/O
// port (sf.io: output is forwarded, the exit frame ends the member), its control port (sf.ctl:
// ticket, clone, sync, join, kill), sfd's signals and QEMU's exits. Member 0 is the master
// (after a clone, the master re-instantiated as a copy-on-write clone); its command's exit
// status is the run's. Everything (clone VMs, the frozen image, the descriptor) is removed on
// every way out.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sfd/remote_member.hpp"
#include "sfd/result.hpp"
#include "sfd/vm.hpp"
#include "sfd/vm_network.hpp"  // NodeIdentity, vm_node_identity()

namespace sf::sfd {

struct FamilyConfig {
  std::uint64_t mem_mib = 256;
  int cpus = 1;
  std::string accel = "tcg";
  std::string spec;  // the command spec (JSON) sent to the master's guest agent
  // Forwarded to the master's command as stdin frames (end of input: an empty frame); -1: none.
  int stdin_fd = -1;
  // VM i's configuration (its own tap on the cluster network); i = 0 for the re-instantiated
  // master. The RAM file and incoming flags are set by the clone path.
  std::function<Result<VmConfig>(unsigned id)> config_for;
  std::string subnet;  // the cluster network, e.g. "10.213.0.0/24"
  // Identity of node i of a cluster whose master is named `master_hostname`.
  std::function<NodeIdentity(unsigned id, const std::string& master_hostname)> identity;
  // Most clones one request may get (SF_MAX_CLONES, default 64), besides the memory limit.
  unsigned max_clones = 64;
  // Clones on other hosts (`sfd run --remote`); empty: every clone runs here.
  RemotePlacement remote;
};

// How much host memory one more clone is assumed to need: QEMU and TCG's own (64 MiB) plus a
// quarter of the guest's RAM for the pages it writes (copy-on-write). Documented in docs/sfd.md.
std::uint64_t clone_memory_estimate_mib(std::uint64_t guest_mem_mib);

// The count alone: `requested` if it is 1..max_clones, else 0 with `why` set. What
// grant_clones checks first, and all sfd checks when Slurm's nodes, not this host, hold the
// clones (--allocator slurm).
unsigned grant_clone_count(unsigned requested, unsigned max_clones, std::string* why);

// Clones a request of `requested` may get with `available_mib` of MemAvailable: all or none
// (the guest side asks for what its own allocator planned). Returns 0 with `why` set if none.
unsigned grant_clones(unsigned requested, unsigned max_clones, std::uint64_t guest_mem_mib,
                      std::uint64_t available_mib, std::string* why);

// The descriptor's SnowFlock metadata, version 1 (docs/formats/vm-descriptor.md): machine
// shape, RAM layout, the guest's free-page report (encoded ranges, a hint for the no-fetch map
// of remote clones) and the cluster's network identities.
nlohmann::json descriptor_metadata(const FamilyConfig& config, const std::string& stream_name, std::uint64_t stream_bytes,
                                   const std::string& free_pages, std::uint64_t free_page_count,
                                   const std::vector<NodeIdentity>& nodes);

// Runs the family until the master's command exits (its status), sfd gets SIGINT/SIGTERM/
// SIGHUP (128 + n), or something fails (kSfdFailureExit, with a message). `master` has been
// launched and sent its command spec; `signal_fd` is a signalfd for SIGINT, SIGTERM, SIGHUP
// and SIGCHLD (blocked by the caller).
int run_family(std::unique_ptr<QemuVm> master, const FamilyConfig& config, int signal_fd);

// A VM of a static cluster (`sfd run --nodes N`): booted, not cloned, with its own command
// spec. The family forwards its output like a clone's and stops it when the master's command
// ends; the master's clone requests are refused.
struct BootedNode {
  unsigned id = 0;
  std::unique_ptr<QemuVm> vm;
  std::string spec;
};
int run_family(std::unique_ptr<QemuVm> master, std::vector<BootedNode> nodes, const FamilyConfig& config, int signal_fd);

}  // namespace sf::sfd
