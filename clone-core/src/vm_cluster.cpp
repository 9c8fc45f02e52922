// clone-core: the guest side shared by the VM drivers (see vm_cluster.hpp).
#include "vm_cluster.hpp"

#include <arpa/inet.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "clone-core/free_pages.hpp"
#include "clone-core/vm_identity.hpp"

namespace sf {
namespace fs = std::filesystem;
namespace gc = guest_control;

Error HostChannel::protocol_error(const std::string& what) const {
  return make_error(Errc::system, "clone-core: " + driver_ + " driver: " + what);
}

Result<gc::HostMessage> HostChannel::call(const gc::Request& request) {
  if (Status st = send(request); !st) return st.error();
  for (;;) {
    auto msg = next_message(-1);
    if (!msg) return msg.error();
    if (!*msg) continue;
    gc::HostMessage& m = **msg;
    if (m.version() != gc::kVersion) {
      // A refusal of another version still names its reason (field 2 in every version).
      std::string why = gc::version_mismatch(m.version(), gc::kVersion);
      if (m.has_error()) why += " (" + host_name() + " said: " + m.error() + ")";
      return make_error(Errc::driver_unavailable, "clone-core: " + driver_ + " driver: " + why);
    }
    if (m.has_ended()) {
      events_.push_back(m.ended());
      continue;
    }
    if (m.has_error()) return make_error(Errc::clone_failed, host_name() + ": " + m.error());
    return std::move(m);
  }
}

std::vector<gc::CloneStatus> HostChannel::take_events() {
  for (;;) {
    auto msg = next_message(0);
    if (!msg || !*msg) break;
    if ((**msg).has_ended()) events_.push_back((**msg).ended());
  }
  std::vector<gc::CloneStatus> out(events_.begin(), events_.end());
  events_.clear();
  return out;
}

std::string guest_interface() {
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator("/sys/class/net", ec)) {
    std::ifstream in(e.path() / "type");
    int type = 0;
    in >> type;
    const std::string name = e.path().filename().string();
    if (type == 1 && name != "lo") names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  return names.empty() ? std::string() : names.front();
}

namespace {

Result<CloneStatus> status_from_wire(const HostChannel& channel, const gc::CloneStatus& s) {
  auto end = gc::from_wire(s.end());
  if (!end) return channel.protocol_error("the host sent clone " + std::to_string(s.id()) + "'s status: " + end.error().message);
  return CloneStatus{s.id(), *end, s.value()};
}

class VmCluster final : public ClusterInstance {
 public:
  VmCluster(std::unique_ptr<HostChannel> channel, ClusterLayout layout, std::vector<std::string> macs, unsigned prefix,
            VmClusterOptions options)
      : channel_(std::move(channel)), layout_(std::move(layout)), macs_(std::move(macs)), prefix_(prefix), options_(options) {}

  // Ticket's destructor calls kill() in the parent when needed; a clone's copy only closes
  // its channel (the host destroys the VM).
  ~VmCluster() override = default;

  const ClusterLayout& layout() const override { return layout_; }

  Result<unsigned> clone() override {
    gc::Request request = gc::make_request();
    gc::CloneRequest& clone = *request.mutable_clone();
    if (options_.free_page_report) {
      // The free-page report for the no-fetch map of remote clones (a hint, checked by sfd);
      // without it (e.g. no /proc/kpageflags, or a report above the frame limit) every page
      // is simply fetched.
      if (auto report = scan_free_pages()) {
        clone.set_free_pages(encode_page_ranges(report->ranges));
        clone.set_free_page_count(report->free_pages);
        if (request.ByteSizeLong() > gc::kMaxFrame) clone.Clear();
      }
    }
    auto reply = channel_->call(request);
    if (!reply) return reply.error();
    if (!reply->has_clone()) return channel_->protocol_error("the host answered clone with another reply");
    const unsigned id = reply->clone().id();
    if (id > layout_.clones())
      return channel_->protocol_error("the host sent clone id " + std::to_string(id) + " beyond the ticket");
    id_ = id;
    if (id != 0) {
      // The monitor first: whatever the program does from here, even when the identity
      // cannot be applied, its end reaches the host.
      if (options_.report_exit) {
        if (Status st = fork_monitor(); !st) return st.error();
      }
      const NodeInfo& me = layout_.nodes[id];
      if (Status st = apply_vm_identity(me.interface, macs_[id], me.address_text + "/" + std::to_string(prefix_), me.hostname); !st)
        return st.error();
    }
    cloned_ = true;
    return id;
  }

  Status sync(int status) override {
    if (id_ == 0) return make_error(Errc::wrong_side, "clone-core: sync() called in the parent; the parent calls join()");
    gc::Request request = gc::make_request();
    request.mutable_sync()->set_status(status);
    auto reply = channel_->call(request);
    if (!reply) return reply.error();
    // As with the sandbox driver, sync ends the clone: the program exits, the host destroys the VM.
    _exit(0);
  }

  Result<std::vector<CloneStatus>> join() override {
    gc::Request request = gc::make_request();
    request.mutable_join();
    auto reply = channel_->call(request);
    if (!reply) return reply.error();
    if (!reply->has_join()) return channel_->protocol_error("the host answered join with another reply");
    std::vector<CloneStatus> out(layout_.clones());
    for (unsigned i = 0; i < out.size(); ++i) out[i] = {i + 1, CloneEnd::lost, 0};
    for (const auto& s : reply->join().statuses()) {
      auto st = status_from_wire(*channel_, s);
      if (!st) return st.error();
      if (st->id >= 1 && st->id <= out.size()) out[st->id - 1] = *st;
    }
    finished_ = true;
    return out;
  }

  Status kill() override {
    if (finished_ || !cloned_) return ok_status();
    finished_ = true;
    gc::Request request = gc::make_request();
    request.mutable_kill();
    auto reply = channel_->call(request);
    if (!reply) return reply.error();
    return ok_status();
  }

  int exit_fd() const override { return cloned_ && id_ == 0 ? channel_->fd() : -1; }

  std::vector<CloneStatus> poll_exited() override {
    std::vector<CloneStatus> out;
    for (const auto& e : channel_->take_events()) {
      // A status this version cannot read is dropped; join() still reports every clone.
      if (auto st = status_from_wire(*channel_, e)) out.push_back(*st);
    }
    return out;
  }

 private:
  // In a clone: the program goes on in a child; this process waits for it and tells the host
  // how it ended (unless it synced, which the host already knows and which ends the VM).
  Status fork_monitor() {
    const pid_t child = fork();
    if (child < 0) return make_error(Errc::system, "clone-core: " + channel_->driver() + " driver: fork the clone's monitor: " + std::strerror(errno));
    if (child == 0) return channel_->reopen_after_fork();
    for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGTSTP, SIGTTIN, SIGTTOU}) signal(sig, SIG_IGN);
    int ws = 0;
    while (waitpid(child, &ws, 0) < 0) {
      if (errno != EINTR) _exit(127);
    }
    gc::Request request = gc::make_request();
    gc::ExitRequest& exit = *request.mutable_exit();
    if (WIFSIGNALED(ws)) {
      exit.set_end(gc::CLONE_END_SIGNALED);
      exit.set_value(WTERMSIG(ws));
    } else {
      exit.set_end(gc::CLONE_END_EXITED);
      exit.set_value(WEXITSTATUS(ws));
    }
    (void)channel_->call(request);  // the host ends the VM; nothing to do if it is gone
    _exit(WIFSIGNALED(ws) ? 128 + WTERMSIG(ws) : WEXITSTATUS(ws));
  }

  std::unique_ptr<HostChannel> channel_;
  ClusterLayout layout_;
  std::vector<std::string> macs_;
  unsigned prefix_ = 24;
  VmClusterOptions options_;
  unsigned id_ = 0;
  bool cloned_ = false;
  bool finished_ = false;
};

}  // namespace

Result<std::unique_ptr<ClusterInstance>> prepare_vm_cluster(std::unique_ptr<HostChannel> channel, const ClusterSpec& spec,
                                                            const VmClusterOptions& options) {
  gc::Request request = gc::make_request();
  gc::TicketRequest& ticket = *request.mutable_ticket();
  ticket.set_clones(spec.clones);
  ticket.set_min_clones(spec.clones);
  ticket.set_procs_per_clone(spec.procs_per_clone);
  ticket.set_hostname(spec.parent_hostname);
  auto reply = channel->call(request);
  if (!reply) return reply.error();
  if (!reply->has_ticket()) return channel->protocol_error("the host answered ticket with another reply");
  const gc::TicketReply& granted = reply->ticket();
  const std::string ifname = guest_interface();
  if (ifname.empty())
    return make_error(Errc::network_setup, "clone-core: " + channel->driver() + " driver: the VM has no network interface for the cluster network");
  ClusterLayout layout;
  auto subnet = parse_ipv4_net(granted.subnet());
  if (!subnet) return subnet.error();
  layout.subnet = *subnet;
  layout.bridge = ifname;
  std::vector<std::string> macs;
  unsigned prefix = 24;
  for (const auto& n : granted.nodes()) {
    NodeInfo node;
    node.id = n.id();
    node.address_text = n.address();
    in_addr a{};
    if (node.id != layout.nodes.size() || inet_pton(AF_INET, node.address_text.c_str(), &a) != 1)
      return channel->protocol_error("malformed node " + std::to_string(n.id()) + " (address '" + n.address() + "') in the ticket reply");
    node.address = ntohl(a.s_addr);
    node.hostname = n.hostname();
    node.interface = ifname;
    prefix = n.prefix();
    macs.push_back(n.mac());
    layout.nodes.push_back(std::move(node));
  }
  if (layout.nodes.empty() || layout.clones() != granted.granted())
    return channel->protocol_error("the ticket reply lists the wrong number of nodes");
  if (options.apply_parent_identity) {
    const NodeInfo& me = layout.nodes[0];
    if (Status st = apply_vm_identity(me.interface, macs[0], me.address_text + "/" + std::to_string(prefix), ""); !st)
      return st.error();
  }
  return std::unique_ptr<ClusterInstance>(
      std::make_unique<VmCluster>(std::move(channel), std::move(layout), std::move(macs), prefix, options));
}

}  // namespace sf
