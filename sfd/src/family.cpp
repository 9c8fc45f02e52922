// sfd: a VM family (see family.hpp). A poll loop rather than Boost.Asio: members come and
// go (the master is replaced by its re-instantiation, clones end one by one), cloning blocks
// the loop on purpose (every VM is paused or not yet running meanwhile), and one poll over a
// handful of descriptors plus a signalfd is the whole event source.
#include "sfd/family.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <spdlog/spdlog.h>

#include "sfd/clone.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/paths.hpp"
#include "clone-core/free_pages.hpp"
#include "clone-core/guest_control.hpp"
#include "sfd/remote_clone.hpp"
#include "sfd/run.hpp"
#include "socket_io.hpp"

namespace sfd {
namespace fs = std::filesystem;
namespace gio = guest_io;
namespace gc = sf::guest_control;
using sf::CloneEnd;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using socket_io::write_all;

std::uint64_t clone_memory_estimate_mib(std::uint64_t guest_mem_mib) { return 64 + guest_mem_mib / 4; }

unsigned grant_clones(unsigned requested, unsigned max_clones, std::uint64_t guest_mem_mib,
                      std::uint64_t available_mib, std::string* why) {
  if (requested == 0) {
    *why = "a ticket for 0 clones";
    return 0;
  }
  if (requested > max_clones) {
    *why = "asked for " + std::to_string(requested) + " clones; this sfd grants at most " + std::to_string(max_clones) +
           " (SF_MAX_CLONES)";
    return 0;
  }
  const std::uint64_t per = clone_memory_estimate_mib(guest_mem_mib);
  const std::uint64_t fits = available_mib / per;
  if (fits < requested) {
    *why = "asked for " + std::to_string(requested) + " clones of a " + std::to_string(guest_mem_mib) +
           " MiB VM; the host's available memory (" + std::to_string(available_mib) + " MiB, about " +
           std::to_string(per) + " MiB per clone) fits " + std::to_string(fits);
    return 0;
  }
  return requested;
}

json descriptor_metadata(const FamilyConfig& config, const std::string& stream_name, std::uint64_t stream_bytes,
                         const std::string& free_pages, std::uint64_t free_page_count,
                         const std::vector<NodeIdentity>& nodes) {
  const RamLayout layout = pc_ram_layout(config.mem_mib);
  json n = json::array();
  for (const auto& node : nodes)
    n.push_back({{"id", node.id}, {"address", node.address}, {"prefix", node.prefix}, {"mac", node.mac}, {"hostname", node.hostname}});
  return {{"format", "snowflock-vm-descriptor"},
          {"version", 1},
          {"qemu_stream", {{"file", stream_name}, {"bytes", stream_bytes}, {"capabilities", {"x-ignore-shared"}}}},
          {"machine", {{"type", "pc"}, {"accel", config.accel}, {"cpus", config.cpus}, {"mem_mib", config.mem_mib}}},
          {"ram", {{"bytes", layout.ram_bytes}, {"below_4g", layout.below_4g}, {"page_size", 4096}}},
          {"free_pages", {{"ranges", free_pages}, {"pages", free_page_count}}},
          {"network", {{"subnet", config.subnet}, {"nodes", n}}}};
}

namespace {

std::uint64_t mem_available_mib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib / 1024;
  }
  return 0;
}

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
  Family(const FamilyConfig& config, int signal_fd) : cfg_(config), signal_fd_(signal_fd), stdin_fd_(config.stdin_fd) {}
  ~Family() {
    // Members (their QEMUs) before the image they map (and remote ones before its server).
    members_.clear();
    member_service_.reset();
    origin_.reset();
    image_.reset();
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
    if (!write_all(m.ctl, frame->data(), frame->size())) spdlog::info("VM {}: control port write failed", m.id);
  }
  void refuse(Member& m, const std::string& why) {
    gc::HostMessage message = gc::make_host_message();
    message.set_error(why);
    reply(m, message);
  }
  void do_clone(Member& parent, const gc::CloneRequest& request);
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

void Family::stop_vm(Member& m, std::chrono::milliseconds grace) {
  if (m.remote) {
    m.remote->stop(grace);
    report_remote(m);
    m.remote.reset();
    return;
  }
  if (!m.vm || m.vm->try_reap()) return;
  (void)m.vm->qmp().quit(std::chrono::milliseconds(1000));
  if (!m.vm->wait_exit(grace)) m.vm->terminate(std::chrono::milliseconds(500));
}

void Family::end_clone(Member& m, CloneEnd end, int value) {
  if (m.ended) return;
  m.ended = true;
  m.end = end;
  m.value = value;
  if (static_cluster_ && end != CloneEnd::killed)  // a node's service should run until the master ends
    spdlog::warn("node {} stopped early ({} {}): the master's command cannot use it", m.id, sf::clone_end_name(end), value);
  else
    spdlog::info("{} {} ended: {} {}", static_cluster_ ? "node" : "clone", m.id, sf::clone_end_name(end), value);
  stop_vm(m, std::chrono::milliseconds(2000));
  m.close_fds();
  m.vm.reset();
  if (Member* p = member(0); p != nullptr && !static_cluster_) {
    gc::HostMessage event = gc::make_host_message();
    set_status(*event.mutable_ended(), m.id, end, value);
    reply(*p, event);
    if (pending_join_ && all_clones_ended()) {
      pending_join_ = false;
      reply(*p, join_reply());
    }
  }
}

void Family::kill_clones() {
  for (auto& m : members_) {
    if (m->id != 0 && !m->ended) end_clone(*m, CloneEnd::killed, SIGKILL);
  }
}

void Family::reap_all() {
  for (auto& m : members_) {
    const bool gone = m->vm ? m->vm->try_reap().has_value() : m->remote && m->remote->try_reap().has_value();
    if (!gone) continue;
    if (m->id == 0) continue;  // handled by the loop (the run ends)
    // A clone's QEMU went away: output already queued is still read, then it is lost.
    read_io(*m, true);
    if (!m->ended) end_clone(*m, CloneEnd::lost, 0);
  }
}

void Family::read_io(Member& m, bool drain) {
  if (m.io < 0) return;
  std::array<std::uint8_t, 65536> buf{};
  for (;;) {
    if (drain) {
      pollfd p{m.io, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) return;
    }
    const ssize_t n = ::read(m.io, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(m.io);
      m.io = -1;
      return;
    }
    m.decoder.feed({buf.data(), static_cast<std::size_t>(n)});
    for (;;) {
      auto f = m.decoder.next();
      if (!f) {
        spdlog::error("VM {}: {}", m.id, f.error().message);
        if (m.id == 0) failure_ = "run: " + f.error().message;
        ::close(m.io);
        m.io = -1;
        return;
      }
      if (!*f) break;
      const gio::Frame& frame = **f;
      switch (frame.type) {
        case gio::FrameType::stdout_data: write_all(1, frame.payload.data(), frame.payload.size()); break;
        case gio::FrameType::stderr_data: write_all(2, frame.payload.data(), frame.payload.size()); break;
        case gio::FrameType::error: {
          const std::string msg = gio::parse_error_message(frame.text());
          spdlog::error("in the guest{}: {}", m.id == 0 ? "" : " (clone " + std::to_string(m.id) + ")", msg);
          if (m.id == 0) guest_error_ = msg;
          break;
        }
        case gio::FrameType::exit: {
          // A payload that is not {"code": N, "signal": S} is sfd's failure, not a crash.
          const auto status = gio::parse_exit(frame.text());
          const int code = status ? status->code : kSfdFailureExit;
          const int sig = status ? status->signal : 0;
          if (m.id == 0) {
            exit_code_ = status ? shell_status(code, sig) : kSfdFailureExit;
            spdlog::info("the command exited with status {}; stopping the VMs", *exit_code_);
          } else if (m.synced) {
            end_clone(m, CloneEnd::synced, m.sync_value);
            return;
          } else {
            end_clone(m, sig != 0 ? CloneEnd::signaled : CloneEnd::exited, sig != 0 ? sig : code);
            return;
          }
          break;
        }
        case gio::FrameType::spec:
        case gio::FrameType::stdin_data: break;  // host -> guest only
      }
    }
    if (!drain) return;
  }
}

void Family::read_ctl(Member& m) {
  std::array<char, 4096> buf{};
  const ssize_t n = ::read(m.ctl, buf.data(), buf.size());
  if (n < 0 && errno == EINTR) return;
  if (n <= 0) {
    if (sf::Error e = m.ctl_reader.finish(); e) spdlog::info("VM {}: {}", m.id, e.message);
    ::close(m.ctl);
    m.ctl = -1;
    return;
  }
  m.ctl_reader.feed(buf.data(), static_cast<std::size_t>(n));
  for (;;) {
    auto body = m.ctl_reader.next();
    if (!body) {
      // The frame boundaries are lost: nothing more on this port can be read.
      spdlog::error("VM {}: {}; closing its control port", m.id, body.error().message);
      ::close(m.ctl);
      m.ctl = -1;
      return;
    }
    if (!*body) break;
    auto req = gc::decode_request(**body);
    if (!req) {
      refuse(m, "sfd: " + req.error().message);
      continue;
    }
    if (req->version() != gc::kVersion) {
      spdlog::error("VM {}: {}", m.id, gc::version_mismatch(gc::kVersion, req->version()));
      refuse(m, gc::version_mismatch(gc::kVersion, req->version()));
      continue;
    }
    handle_request(m, *req);
    if (replaced_) return;  // cloning replaced every member, m included
    if (m.ctl < 0) return;
  }
}

void Family::handle_request(Member& m, const gc::Request& req) {
  switch (req.op_case()) {
    case gc::Request::kTicket: {
      if (m.id != 0) return refuse(m, "nested clusters are not supported: a clone cannot request a ticket");
      if (static_cluster_)
        return refuse(m, "this VM is node 0 of a static cluster (sfd run --nodes): it cannot be cloned; run without --nodes to clone");
      if (granted_ != 0) return refuse(m, "one ticket per sfd run: this VM has already been given one");
      std::string why;
      const unsigned g = grant_clones(req.ticket().clones(), cfg_.max_clones, cfg_.mem_mib, mem_available_mib(), &why);
      if (g == 0) return refuse(m, "cannot clone this VM: " + why);
      granted_ = g;
      const std::string host = req.ticket().hostname().empty() ? std::string("sf-vm") : req.ticket().hostname();
      nodes_.clear();
      gc::HostMessage message = gc::make_host_message();
      gc::TicketReply& ticket = *message.mutable_ticket();
      ticket.set_granted(g);
      ticket.set_subnet(cfg_.subnet);
      for (unsigned i = 0; i <= g; ++i) {
        nodes_.push_back(cfg_.identity(i, host));
        const NodeIdentity& n = nodes_.back();
        gc::Node& node = *ticket.add_nodes();
        node.set_id(i);
        node.set_address(n.address);
        node.set_prefix(n.prefix);
        node.set_mac(n.mac);
        node.set_hostname(n.hostname);
      }
      spdlog::info("ticket: {} clone(s) granted", g);
      return reply(m, message);
    }
    case gc::Request::kClone:
      if (m.id != 0) return refuse(m, "nested clusters are not supported: a clone cannot clone");
      if (granted_ == 0) return refuse(m, "clone without a ticket: request a ticket first");
      if (cloned_) return refuse(m, "this ticket was already used to clone");
      return do_clone(m, req.clone());
    case gc::Request::kSync:
      if (m.id == 0) return refuse(m, "sync() is for clones; the parent calls join()");
      m.synced = true;
      m.sync_value = req.sync().status();
      return reply(m, done_reply());
    case gc::Request::kJoin:
      if (m.id != 0) return refuse(m, "join() is for the parent; clones call sync()");
      if (!cloned_) return refuse(m, "join() before clone()");
      if (all_clones_ended()) return reply(m, join_reply());
      pending_join_ = true;
      return;
    case gc::Request::kKill:
      if (m.id != 0) return refuse(m, "kill() is for the parent");
      kill_clones();
      if (pending_join_) {
        pending_join_ = false;  // answered by end_clone already
      }
      return reply(m, done_reply());
    case gc::Request::OP_NOT_SET: break;
  }
  refuse(m, "a request without an operation this sfd knows (sf.ctl version " + std::to_string(gc::kVersion) + ")");
}

void Family::read_stdin() {
  std::array<std::uint8_t, 65536> buf{};
  const ssize_t n = ::read(stdin_fd_, buf.data(), buf.size());
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n > 0) {
    to_guest_ = gio::encode(gio::FrameType::stdin_data, std::span<const std::uint8_t>(buf.data(), static_cast<std::size_t>(n)));
  } else {  // end of input (or an unreadable stdin): the command sees end of file
    to_guest_ = gio::encode(gio::FrameType::stdin_data, std::string());
    stdin_fd_ = -1;
  }
}

void Family::write_to_guest(Member& m0) {
  if (to_guest_.empty() || m0.io < 0) return;
  const ssize_t n = ::send(m0.io, to_guest_.data(), to_guest_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n > 0) {
    to_guest_.erase(to_guest_.begin(), to_guest_.begin() + n);
  } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
    spdlog::info("VM 0: cannot forward stdin ({}); the command's stdin ends", std::strerror(errno));
    to_guest_.clear();
    stdin_fd_ = -1;
  }
}

// Before a clone: the stdin frame being written is finished and QEMU has taken every byte of
// it into the guest (a byte still in the socket would be lost with the old QEMU).
bool Family::settle_stdin(Member& m0, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    write_to_guest(m0);
    int queued = 0;
    if (m0.io < 0 || (to_guest_.empty() && ::ioctl(m0.io, SIOCOUTQ, &queued) == 0 && queued == 0)) return true;
    if (Clock::now() > deadline) return false;
    pollfd p{m0.io, static_cast<short>(to_guest_.empty() ? 0 : POLLOUT), 0};
    ::poll(&p, 1, 10);
  }
}

void Family::do_clone(Member& parent_member, const gc::CloneRequest& request) {
  const auto t0 = Clock::now();
  QemuVm& parent = *parent_member.vm;
  if (parent_member.id == 0 && !settle_stdin(parent_member, std::chrono::milliseconds(2000)))
    return refuse(parent_member, "standard input sent to the VM is not taken by the guest; clone again once the "
                                 "command reads its input (or run sfd with --stdin none)");
  if (auto st = parent.qmp().stop(); !st) return refuse(parent_member, "cannot pause the VM: " + st.error().message);
  // Output the guest wrote before the pause is forwarded before the parent's QEMU goes.
  read_io(parent_member, true);
  const fs::path desc = runtime_dir() / (parent.paths().run_dir.filename().string() + "-clone.desc");
  auto stats = save_descriptor(parent, desc);
  if (!stats) {
    std::error_code ec;
    fs::remove(desc, ec);
    (void)parent.qmp().cont();
    return refuse(parent_member, "cannot save the VM's descriptor: " + stats.error().message);
  }
  // Our metadata beside QEMU's stream: what a remote host needs besides the device state.
  const fs::path meta = desc.string() + ".json";
  const std::string& free_pages = request.free_pages();
  const std::uint64_t free_count = request.free_page_count();
  {
    std::ofstream out(meta);
    out << descriptor_metadata(cfg_, desc.filename().string(), stats->bytes, free_pages, free_count, nodes_).dump(1) << "\n";
  }
  std::error_code meta_ec;
  const std::uint64_t meta_bytes = fs::file_size(meta, meta_ec);
  const auto t1 = Clock::now();
  // Freeze the RAM file; from here the old parent is gone for good.
  image_ = std::make_unique<FrozenImage>(parent.release_ram_file(), desc, meta);
  const gio::FrameDecoder decoder = parent_member.decoder;  // a partial frame continues in every copy
  members_.clear();
  replaced_ = true;
  cloned_ = true;
  // Placement: the master (clone 0) here; the others here too, or all on the --remote hosts.
  std::vector<VmConfig> configs;
  std::vector<unsigned> local_ids;
  std::vector<unsigned> remote_ids;
  std::vector<std::shared_ptr<const TapDevice>> remote_taps;
  for (unsigned i = 0; i <= granted_; ++i) {
    auto c = cfg_.config_for(i);
    if (!c) {
      failure_ = "clone: " + c.error().message;
      return;
    }
    if (i > 0 && cfg_.remote.enabled()) {
      remote_ids.push_back(i);
      remote_taps.push_back(c->nic);  // relayed to the remote clone's NIC
    } else {
      local_ids.push_back(i);
      configs.push_back(std::move(*c));
    }
  }
  std::vector<std::unique_ptr<Member>> added;
  if (!remote_ids.empty()) {
    // Before the local clones start, so the remote hosts work meanwhile.
    if (auto st = start_remote_members(remote_ids, configs.front(), request, remote_taps, added); !st) {
      failure_ = "clone: " + st.error().message;
      return;
    }
  }
  CloneTimings timings;
  auto vms = start_clones(std::move(configs), *image_, &timings);
  if (!vms) {
    failure_ = "clone: " + vms.error().message;
    return;
  }
  for (unsigned k = 0; k < vms->size(); ++k) {
    auto m = std::make_unique<Member>();
    m->id = local_ids[k];
    m->vm = std::move((*vms)[k]);
    adopt(*m, *m->vm);
    added.push_back(std::move(m));
  }
  if (!remote_ids.empty()) {
    auto conns = member_service_->accept_members(remote_ids, Clock::now() + std::chrono::seconds(60), [&]() -> std::optional<std::string> {
      for (auto& m : added) {
        if (!m->remote) continue;
        if (const auto reaped = m->remote->try_reap()) {
          const int st = *reaped;
          const std::string how = WIFEXITED(st) ? "exited with status " + std::to_string(WEXITSTATUS(st))
                                                : "was killed by signal " + std::to_string(WTERMSIG(st));
          return "clone " + std::to_string(m->id) + " on '" + m->remote->host() + "': the agent " + how +
                 " before the member connected (its messages, if any, are above); check that --remote runs a command "
                 "on the other host and that it reaches this host on --remote-iface";
        }
      }
      return std::nullopt;
    });
    if (!conns) {
      failure_ = "clone: " + conns.error().message;
      return;
    }
    for (auto& m : added) {
      if (!m->remote) continue;
      m->io = (*conns)[m->id].first;
      m->ctl = (*conns)[m->id].second;
    }
  }
  std::sort(added.begin(), added.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  for (auto& m : added) {
    m->decoder = decoder;
    gc::HostMessage cloned = gc::make_host_message();
    cloned.mutable_clone()->set_id(m->id);
    reply(*m, cloned);
    members_.push_back(std::move(m));
  }
  using ms = std::chrono::duration<double, std::milli>;
  spdlog::info("descriptor {} ({} bytes of QEMU device state + {} bytes of metadata; the guest reported {} free pages)",
               desc.string(), stats->bytes, meta_bytes, free_count);
  spdlog::info("cloned into {} clone(s) in {:.0f} ms: pause+descriptor {:.0f} ms ({} bytes), start {:.0f} ms, load {:.0f} ms, resume {:.0f} ms",
               granted_, ms(Clock::now() - t0).count(), ms(t1 - t0).count(), stats->bytes + meta_bytes,
               ms(timings.start).count(), ms(timings.load).count(), ms(timings.resume).count());
}

Status Family::start_remote_members(const std::vector<unsigned>& ids, const VmConfig& config, const gc::CloneRequest& request,
                                    std::vector<std::shared_ptr<const TapDevice>>& taps,
                                    std::vector<std::unique_ptr<Member>>& added) {
  const RemotePlacement& rp = cfg_.remote;
  RemoteOriginOptions oo;
  oo.address = rp.address;
  oo.interface = rp.interface;
  oo.no_fetch_map = rp.no_fetch_map;
  // The no-fetch map: the image's zero pages, cross-checked with the guest's free-page report
  // (init_on_free=1 zeroes every freed page, so the report adds nothing unsafe to trust).
  if (auto ranges = sf::decode_page_ranges(request.free_pages()); ranges) oo.free_pages = std::move(*ranges);
  auto origin = RemoteCloneOrigin::start(config, *image_, oo);
  if (!origin) return origin.error();
  origin_ = std::move(*origin);
  auto service = MemberService::start(rp.address, origin_->token());
  if (!service) return service.error();
  member_service_ = std::move(*service);
  const json base = json::parse(origin_->ticket_json());
  for (std::size_t k = 0; k < ids.size(); ++k) {
    json ticket = base;
    ticket["members"] = member_service_->endpoint();
    auto link = RemoteMemberLink::start(rp, static_cast<unsigned>(k % rp.agents.size()), ids[k], ticket, taps[k], rp.address);
    if (!link) return link.error();
    auto m = std::make_unique<Member>();
    m->id = ids[k];
    m->remote = std::move(*link);
    added.push_back(std::move(m));
  }
  const NoFetchStats& nf = origin_->no_fetch();
  spdlog::info("serving the frozen VM to {} remote clone(s) on {} ({}): {} of {} pages no-fetch, metadata in {} ms", ids.size(),
               rp.interface, rp.address, nf.no_fetch_pages, nf.pages,
               std::chrono::duration_cast<std::chrono::milliseconds>(origin_->metadata_time()).count());
  return ok_status();
}

void Family::report_remote(Member& m) {
  const auto& r = m.remote->stopped_report();
  if (!r) {
    spdlog::info("clone {} on '{}' stopped without its counters", m.id, m.remote->host());
    return;
  }
  const json client = r->value("client", json());
  const std::uint64_t pages = origin_ ? origin_->image_pages() : 0;
  const std::uint64_t fetched = client.is_object() ? client.value("pages_fetched", std::uint64_t{0}) : 0;
  spdlog::info("clone {} on '{}' stopped ({}): fetched {} of {} pages ({:.1f}% of RAM), {} frames relayed", m.id, m.remote->host(),
               r->value("why", std::string()), fetched, pages, pages ? 100.0 * static_cast<double>(fetched) / static_cast<double>(pages) : 0.0,
               m.remote->frames_relayed());
  if (cfg_.remote.stats_file.empty()) return;
  std::ofstream out(cfg_.remote.stats_file, std::ios::app);
  out << json{{"id", m.id}, {"host", m.remote->host()}, {"ram_pages", pages}, {"why", r->value("why", std::string())},
              {"frames_relayed", m.remote->frames_relayed()}, {"client", client}}
             .dump()
      << "\n";
}

int Family::run(std::unique_ptr<QemuVm> master, std::vector<BootedNode> nodes) {
  // Each spec waits in its socket until the guest agent opens the port.
  const auto add = [this](unsigned id, std::unique_ptr<QemuVm> vm, const std::string& spec) {
    auto m = std::make_unique<Member>();
    m->id = id;
    m->vm = std::move(vm);
    adopt(*m, *m->vm);
    const auto frame = gio::encode(gio::FrameType::spec, spec);
    const bool sent = write_all(m->io, frame.data(), frame.size());
    members_.push_back(std::move(m));
    return sent;
  };
  if (!add(0, std::move(master), cfg_.spec)) return fail("run: cannot send the command to the VM");
  static_cluster_ = !nodes.empty();
  for (auto& n : nodes) {
    if (!add(n.id, std::move(n.vm), n.spec)) {
      kill_clones();
      return fail("run: cannot send node " + std::to_string(n.id) + " its command");
    }
  }
  for (;;) {
    if (!failure_.empty()) {
      kill_clones();
      return fail(failure_);
    }
    Member* m0 = member(0);
    if (m0 == nullptr) return fail("run: the VM is gone");
    // The master's command exited: end the clones, let QEMU quit (its last output is read
    // meanwhile), then return its status.
    if (exit_code_ && !master_deadline_) {
      kill_clones();
      (void)m0->vm->qmp().quit(std::chrono::milliseconds(3000));
      master_deadline_ = Clock::now() + std::chrono::seconds(10);
    }
    if (m0->vm->try_reap()) {
      read_io(*m0, true);
      kill_clones();
      if (exit_code_) return *exit_code_;
      std::string why = "the VM stopped before the command finished";
      if (auto st = m0->vm->exit_status(); st && WIFSIGNALED(*st)) why = "QEMU was killed by signal " + std::to_string(WTERMSIG(*st));
      else if (!guest_error_.empty()) why += " (" + guest_error_ + ")";
      else why += " (guest crash or power-off)";
      return fail("run: " + why + m0->vm->diagnostics());
    }
    if (master_deadline_ && Clock::now() > *master_deadline_) {
      spdlog::info("QEMU did not exit in time; killing it");
      m0->vm->terminate(std::chrono::milliseconds(500));
      return *exit_code_;
    }

    replaced_ = false;
    std::vector<pollfd> fds{{signal_fd_, POLLIN, 0}};
    // stdin is read when the last frame is written (and not once the command has exited).
    const bool read_input = stdin_fd_ >= 0 && to_guest_.empty() && !exit_code_ && m0->io >= 0;
    fds.push_back({read_input ? stdin_fd_ : -1, POLLIN, 0});
    std::vector<std::pair<unsigned, bool>> who{{0, false}};  // member id, is control port
    for (auto& m : members_) {
      if (m->io >= 0) {
        const bool out = m->id == 0 && !to_guest_.empty();
        fds.push_back({m->io, static_cast<short>(POLLIN | (out ? POLLOUT : 0)), 0});
        who.emplace_back(m->id, false);
      }
      if (m->ctl >= 0) {
        fds.push_back({m->ctl, POLLIN, 0});
        who.emplace_back(m->id, true);
      }
    }
    const int r = ::poll(fds.data(), fds.size(), master_deadline_ ? 100 : 1000);
    if (r < 0 && errno != EINTR) return fail(std::string("run: poll: ") + std::strerror(errno));
    if (r <= 0) {
      reap_all();
      continue;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        const int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) continue;
        spdlog::info("got signal {}; stopping the VMs", sig);
        for (auto& m : members_) {
          if (m->vm) m->vm->terminate(std::chrono::milliseconds(1000));
          if (m->remote) stop_vm(*m, std::chrono::milliseconds(1000));
        }
        return 128 + sig;
      }
      reap_all();
    }
    if (fds[1].revents != 0) read_stdin();
    for (std::size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents & POLLOUT) {
        if (Member* m = member(who[i - 1].first); m != nullptr && m->io == fds[i].fd) write_to_guest(*m);
      }
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Member* m = member(who[i - 1].first);
      if (m == nullptr) continue;  // replaced by cloning in this round
      if (who[i - 1].second) {
        if (m->ctl == fds[i].fd) read_ctl(*m);
      } else if (m->io == fds[i].fd) {
        read_io(*m, false);
      }
      if (replaced_) break;  // the member set changed: poll again
    }
  }
}

}  // namespace

int run_family(std::unique_ptr<QemuVm> master, const FamilyConfig& config, int signal_fd) {
  return run_family(std::move(master), {}, config, signal_fd);
}

int run_family(std::unique_ptr<QemuVm> master, std::vector<BootedNode> nodes, const FamilyConfig& config, int signal_fd) {
  Family family(config, signal_fd);
  return family.run(std::move(master), std::move(nodes));
}

}  // namespace sfd
