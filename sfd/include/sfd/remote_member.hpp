// sfd: clones of an `sfd run` family on other hosts (docs/sfd.md "Clones on
// other hosts", docs/protocols/remote-member.md).
//
// With `sfd run --remote AGENT --remote-iface IF`, the family places its clones on the hosts
// that AGENT (a command prefix such as `ssh node2` or `ip netns exec h1`) reaches. For each
// such clone the origin sfd
//   - serves the frozen VM once (RemoteCloneOrigin: memtap page server, mcdist, descriptor),
//   - starts `AGENT SFD remote-member` and writes the member's ticket on its stdin (the
//     agent's stdin stays open: its end tells the member to stop),
//   - relays the clone's Ethernet frames between a tap on the cluster bridge (the node's own,
//     its MAC pinned as for local clones) and a UDP socket on IF that the remote QEMU's socket
//     netdev talks to,
//   - takes the member's two TCP connections (guest I/O and clone control, authenticated by
//     the family's token) as that member's sf.io and sf.ctl, so the family loop treats local
//     and remote clones alike.
// The remote side (`sfd remote-member`) starts the clone with RemoteClone (memory from memtap
// over mcdist), relays its sf.io/sf.ctl ports to those connections, and prints its counters
// (pages fetched) as a JSON line on stdout when it stops.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "memtap/image.hpp"
#include "sfd/result.hpp"
#include "sfd/slurm_grant.hpp"
#include "sfd/vm_network.hpp"

namespace sf::sfd {

// Where `sfd run --remote` puts clones. Clones 1..N go round-robin over `agents`; the master
// (clone 0) stays here.
struct RemotePlacement {
  std::vector<std::vector<std::string>> agents;  // one command prefix per remote host
  // `sfd run --allocator slurm`: the hosts are the nodes Slurm grants for each ticket, and the
  // agents are filled in then (srun_agent); empty until a grant.
  std::optional<SlurmOptions> slurm;
  std::string interface;                         // this host's link to them (IPv4 address needed)
  std::string address;                           // its IPv4 address (interface_ipv4)
  std::string sfd_path;                          // sfd on the remote hosts (the same path)
  bool verbose = false;
  std::string stats_file;  // SFD_STATS: one JSON line per remote clone when it stops
  bool no_fetch_map = true;  // SFD_NO_FETCH_MAP=off: remote clones fetch every page (benchmark baseline)
  bool enabled() const { return !agents.empty() || slurm.has_value(); }
};

// "ssh -x node2" -> {"ssh", "-x", "node2"} (whitespace-separated, as Open MPI's rsh agent).
Result<std::vector<std::string>> split_agent(const std::string& text);
// The IPv4 address of interface `ifname` (an error names the interface and what to do).
Result<std::string> interface_ipv4(const std::string& ifname);

// The TCP service remote members connect their guest I/O and control ports to.
class MemberService {
 public:
  static Result<std::unique_ptr<MemberService>> start(const std::string& address, const sf::memtap::OwnerToken& token);
  ~MemberService();
  MemberService(const MemberService&) = delete;
  MemberService& operator=(const MemberService&) = delete;
  std::string endpoint() const;  // ADDR:PORT

  // Accepts until member `id` has both connections for every id in `ids`, or `deadline`, or
  // `gone()` names a member that ended (its message is the error). Returns id -> {io, ctl}.
  using Gone = std::function<std::optional<std::string>()>;
  Result<std::map<unsigned, std::pair<int, int>>> accept_members(const std::vector<unsigned>& ids,
                                                                 std::chrono::steady_clock::time_point deadline,
                                                                 const Gone& gone);

 private:
  MemberService() = default;
  int fd_ = -1;
  std::string address_;
  std::uint16_t port_ = 0;
  sf::memtap::OwnerToken token_{};
};

// One remote member as the origin sees it: the agent process and the frame relay.
class RemoteMemberLink {
 public:
  // `ticket` holds control, token and members; start() adds id, net and mac, binds the relay's
  // UDP socket on `address` and starts the agent.
  static Result<std::unique_ptr<RemoteMemberLink>> start(const RemotePlacement& placement, unsigned host_index, unsigned id,
                                                         nlohmann::json ticket, std::shared_ptr<const TapDevice> tap,
                                                         const std::string& address);
  ~RemoteMemberLink();  // stop(0) if still running
  RemoteMemberLink(const RemoteMemberLink&) = delete;
  RemoteMemberLink& operator=(const RemoteMemberLink&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& host() const { return host_; }
  // Non-blocking: the agent's wait status once it has exited (and was reaped).
  std::optional<int> try_reap();
  // Closes the agent's stdin (the member stops, prints its counters, cleans up), waits up to
  // `grace`, then SIGTERM and SIGKILL. Always reaps; stops the relay.
  void stop(std::chrono::milliseconds grace);
  // The member's {"event":"stopped",...} line, once stopped and if it printed one.
  const std::optional<nlohmann::json>& stopped_report() const { return stopped_; }
  std::uint64_t frames_relayed() const;

  struct Relay;

 private:
  RemoteMemberLink() = default;
  void read_output();

  pid_t pid_ = -1;
  std::optional<int> status_;
  int stdin_fd_ = -1;
  int stdout_fd_ = -1;
  std::string out_;
  std::string host_;
  std::optional<nlohmann::json> stopped_;
  std::unique_ptr<Relay> relay_;
  std::uint64_t frames_final_ = 0;  // the relay's count when it stopped
};

// `sfd remote-member [-v]`: the remote side; reads its ticket (one JSON line) on stdin.
int remote_member_command(int argc, char** argv);

}  // namespace sf::sfd
