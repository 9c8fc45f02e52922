// sfd: the VM family's state, shared by the files that implement it (private to sfd):
//   family.cpp           the poll loop (Family::run), members' ends, run_family()
//   family_guest_io.cpp  sf.io: the members' output and exit frames, the master's stdin
//   family_requests.cpp  sf.ctl: decoding requests; ticket, sync, join and kill
//   family_clone.cpp     the clone request: pause, descriptor, frozen image, local and
//                        remote members
// One Family runs one `sfd run` (see sfd/family.hpp); everything is single-threaded.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "clone-core/guest_control.hpp"
#include "sfd/clone.hpp"
#include "sfd/family.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/remote_clone.hpp"
#include "sfd/run.hpp"  // kSfdFailureExit
#include "socket_io.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

namespace sf::sfd::detail {

namespace gio = guest_io;
namespace gc = sf::guest_control;
using sf::CloneEnd;
using Clock = std::chrono::steady_clock;

struct Member {
  unsigned id = 0;
  std::unique_ptr<QemuVm> vm;                 // a VM on this host, or
  std::unique_ptr<RemoteMemberLink> remote;  // a clone on another host (io, ctl: its TCP links)
  int io = -1;
  int ctl = -1;
  gio::FrameDecoder decoder;
  gc::FrameReader ctl_reader;  // sf.ctl requests (clone-core/guest_control.hpp)
  bool synced = false;
  int sync_value = 0;
  bool ended = false;   // clones: the end below is final
  CloneEnd end = CloneEnd::lost;
  int value = 0;

  void close_fds() {
    if (io >= 0) ::close(io);
    if (ctl >= 0) ::close(ctl);
    io = ctl = -1;
  }
  ~Member() { close_fds(); }
};

class Family {
 public:
  Family(const FamilyConfig& config, int signal_fd)
      : cfg_(config), signal_fd_(signal_fd), stdin_fd_(config.stdin_fd), placement_(config.remote) {}
  ~Family() {
    // Members (their QEMUs) before the image they map (and remote ones before its server),
    // then the Slurm nodes they ran on.
    members_.clear();
    member_service_.reset();
    origin_.reset();
    image_.reset();
    slurm_.reset();
  }

  int run(std::unique_ptr<QemuVm> master, std::vector<BootedNode> nodes);

 private:
  void adopt(Member& m, QemuVm& vm) {
    m.io = vm.take_io_fd();
    m.ctl = vm.take_ctl_fd();
  }
  Member* member(unsigned id) {
    for (auto& m : members_) {
      if (m->id == id) return m.get();
    }
    return nullptr;
  }
  void read_io(Member& m, bool drain);
  void read_ctl(Member& m);
  void handle_request(Member& m, const gc::Request& req);
  void reply(Member& m, const gc::HostMessage& message) {
    if (m.ctl < 0) return;
    auto frame = gc::encode_frame(message);
    if (!frame) {
      spdlog::error("VM {}: {}", m.id, frame.error().message);
      return;
    }
    if (!socket_io::write_all(m.ctl, frame->data(), frame->size())) spdlog::info("VM {}: control port write failed", m.id);
  }
  void refuse(Member& m, const std::string& why) {
    gc::HostMessage message = gc::make_host_message();
    message.set_error(why);
    reply(m, message);
  }
  void do_clone(Member& parent, const gc::CloneRequest& request);
  // The ticket's reply: `granted` clones, named after the master's `hostname`.
  void grant_ticket(Member& m, unsigned granted, const std::string& hostname);
  // `--allocator slurm`: the ticket waits for Slurm's grant (slurm_); the loop polls its fd and
  // calls this, which answers the ticket once Slurm decided, and notes a long wait.
  void progress_slurm_grant();
  // Cancels the Slurm allocation once every clone ended (join, kill, their own ends).
  void release_slurm_if_done();
  // The remote part of a clone (remote_member.hpp): serve the image, start the members and
  // take their connections. Fills members `ids` (placed on remote hosts) of `added`.
  Status start_remote_members(const std::vector<unsigned>& ids, const VmConfig& config, const gc::CloneRequest& request,
                              std::vector<std::shared_ptr<const TapDevice>>& taps,
                              std::vector<std::unique_ptr<Member>>& added);
  void report_remote(Member& m);
  // sfd's stdin to the master's command: one stdin frame at a time, written without blocking
  // (the loop keeps forwarding output while the guest is slow to take it).
  void read_stdin();
  void write_to_guest(Member& m0);
  bool settle_stdin(Member& m0, std::chrono::milliseconds limit);
  void end_clone(Member& m, CloneEnd end, int value);
  void stop_vm(Member& m, std::chrono::milliseconds grace);
  void reap_all();
  void kill_clones();
  bool all_clones_ended() const {
    return std::all_of(members_.begin(), members_.end(), [](const auto& m) { return m->id == 0 || m->ended; });
  }
  static void set_status(gc::CloneStatus& s, unsigned id, CloneEnd end, int value) {
    s.set_id(id);
    s.set_end(gc::to_wire(end));
    s.set_value(value);
  }
  gc::HostMessage join_reply() const {
    gc::HostMessage message = gc::make_host_message();
    gc::JoinReply& join = *message.mutable_join();
    for (const auto& m : members_) {
      if (m->id != 0) set_status(*join.add_statuses(), m->id, m->end, m->value);
    }
    return message;
  }
  static gc::HostMessage done_reply() {
    gc::HostMessage message = gc::make_host_message();
    message.mutable_done();
    return message;
  }
  int fail(const std::string& why) {
    spdlog::error("{}", why);
    return kSfdFailureExit;
  }

  const FamilyConfig& cfg_;
  int signal_fd_;
  int stdin_fd_;                       // until its end is forwarded
  std::vector<std::uint8_t> to_guest_;  // the rest of the stdin frame being written
  std::unique_ptr<FrozenImage> image_;
  std::unique_ptr<RemoteCloneOrigin> origin_;        // serves image_ to remote members
  std::unique_ptr<MemberService> member_service_;  // their I/O and control connections
  std::vector<std::unique_ptr<Member>> members_;
  RemotePlacement placement_;  // cfg_.remote, with the agents of the Slurm nodes once granted
  std::unique_ptr<SlurmGrant> slurm_;  // --allocator slurm: this ticket's grant (or its wait)
  std::string slurm_hostname_;        // the ticket's master hostname, for the reply
  Clock::time_point slurm_next_note_;
  std::vector<NodeIdentity> nodes_;  // after a ticket
  unsigned granted_ = 0;
  bool cloned_ = false;
  bool static_cluster_ = false;  // booted nodes (--nodes): no cloning
  bool pending_join_ = false;
  bool replaced_ = false;  // set by do_clone: every Member pointer taken before is gone
  std::optional<int> exit_code_;  // the master's command
  std::optional<Clock::time_point> master_deadline_;
  std::string failure_;  // a fatal error found inside a handler
  std::string guest_error_;
};

}  // namespace sf::sfd::detail
