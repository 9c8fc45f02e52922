// clone-core: the qemu driver's guest side (see qemu_driver.hpp, docs/protocols/vm-clone.md).
#include "qemu_driver.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>

#include "clone-core/free_pages.hpp"
#include "clone-core/guest_control.hpp"
#include "clone-core/vm_identity.hpp"

namespace sf {
namespace fs = std::filesystem;

std::optional<std::string> find_virtio_port(const std::string& name, const std::string& sysfs_root) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(sysfs_root, ec)) {
    std::ifstream in(e.path() / "name");
    std::string n;
    std::getline(in, n);
    if (n == name) return "/dev/" + e.path().filename().string();
  }
  return std::nullopt;
}

namespace {

namespace gc = guest_control;

Error protocol_error(const std::string& what) { return make_error(Errc::system, "clone-core: qemu driver: " + what); }

Result<CloneStatus> status_from_wire(const gc::CloneStatus& s) {
  auto end = gc::from_wire(s.end());
  if (!end) return protocol_error("sfd sent clone " + std::to_string(s.id()) + "'s status: " + end.error().message);
  return CloneStatus{s.id(), *end, s.value()};
}

// The sf.ctl connection (guest_control.hpp): one request at a time, events queued on the side.
class ControlPort {
 public:
  ~ControlPort() {
    if (fd_ >= 0) close(fd_);
  }
  Status open_port() {
    auto path = find_virtio_port(gc::kControlPort);
    if (!path)
      return make_error(Errc::driver_unavailable, "clone-core: qemu driver: no virtio-serial port sf.ctl (not inside a SnowFlock VM)");
    fd_ = ::open(path->c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      if (errno == EBUSY)
        return make_error(Errc::bad_state, "clone-core: qemu driver: " + *path + " is busy: another ticket is open in this VM; join or kill it first");
      return make_error(Errc::system, "clone-core: qemu driver: open " + *path + ": " + std::strerror(errno));
    }
    return ok_status();
  }
  int fd() const { return fd_; }

  // Sends `request` and waits for its reply (events that arrive first are queued). A refusal
  // is an Error carrying sfd's message; so is a reply of another sf.ctl version.
  Result<gc::HostMessage> call(const gc::Request& request) {
    auto frame = gc::encode_frame(request);
    if (!frame) return protocol_error(frame.error().message);
    std::size_t off = 0;
    while (off < frame->size()) {
      const ssize_t n = ::write(fd_, frame->data() + off, frame->size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return protocol_error(std::string("write to sf.ctl: ") + std::strerror(errno));
      off += static_cast<std::size_t>(n);
    }
    for (;;) {
      auto msg = next_message(-1);
      if (!msg) return msg.error();
      if (!*msg) continue;
      gc::HostMessage& m = **msg;
      if (m.version() != gc::kVersion) {
        // A refusal of another version still names its reason (field 2 in every version).
        std::string why = gc::version_mismatch(m.version(), gc::kVersion);
        if (m.has_error()) why += " (sfd said: " + m.error() + ")";
        return make_error(Errc::driver_unavailable, "clone-core: qemu driver: " + why);
      }
      if (m.has_ended()) {
        events_.push_back(m.ended());
        continue;
      }
      if (m.has_error()) return make_error(Errc::clone_failed, "sfd: " + m.error());
      return std::move(m);
    }
  }

  // Events queued or readable now (non-blocking).
  std::vector<gc::CloneStatus> take_events() {
    for (;;) {
      auto msg = next_message(0);
      if (!msg || !*msg) break;
      if ((**msg).has_ended()) events_.push_back((**msg).ended());
    }
    std::vector<gc::CloneStatus> out(events_.begin(), events_.end());
    events_.clear();
    return out;
  }

 private:
  // One message: waits up to timeout_ms (-1: forever); nullopt if none yet.
  Result<std::optional<gc::HostMessage>> next_message(int timeout_ms) {
    for (;;) {
      auto body = reader_.next();
      if (!body) return protocol_error(body.error().message);
      if (*body) {
        auto m = gc::decode_host_message(**body);
        if (!m) return protocol_error(m.error().message);
        return std::optional<gc::HostMessage>(std::move(*m));
      }
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return protocol_error(std::string("poll sf.ctl: ") + std::strerror(errno));
      if (r == 0) return std::optional<gc::HostMessage>();
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) return protocol_error(std::string("read sf.ctl: ") + std::strerror(errno));
      if (n == 0) {
        // The host end is not connected (sfd gone): a virtio-serial read returns 0.
        if (timeout_ms == 0) return std::optional<gc::HostMessage>();
        if (Status st = reader_.finish(); !st) return protocol_error("sfd closed the control port: " + st.error().message);
        return protocol_error("sfd closed the control port");
      }
      reader_.feed(chunk, static_cast<std::size_t>(n));
    }
  }

  int fd_ = -1;
  gc::FrameReader reader_;
  std::deque<gc::CloneStatus> events_;
};

std::string guest_interface() {
  // The VM's NIC: the first ethernet link that is not loopback.
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

class QemuCluster final : public ClusterInstance {
 public:
  QemuCluster(std::unique_ptr<ControlPort> port, ClusterLayout layout, std::vector<std::string> macs, unsigned prefix)
      : port_(std::move(port)), layout_(std::move(layout)), macs_(std::move(macs)), prefix_(prefix) {}

  ~QemuCluster() override {
    // Ticket's destructor calls kill() in the parent when needed; a clone's copy only
    // closes the port (sfd destroys the VM).
  }

  const ClusterLayout& layout() const override { return layout_; }

  Result<unsigned> clone() override {
    gc::Request request = gc::make_request();
    gc::CloneRequest& clone = *request.mutable_clone();
    // The free-page report for the no-fetch map of remote clones (a hint, checked by sfd);
    // without it (e.g. no /proc/kpageflags, or a report above the frame limit) every page is
    // simply fetched.
    if (auto report = scan_free_pages()) {
      clone.set_free_pages(encode_page_ranges(report->ranges));
      clone.set_free_page_count(report->free_pages);
      if (request.ByteSizeLong() > gc::kMaxFrame) clone.Clear();
    }
    auto reply = port_->call(request);
    if (!reply) return reply.error();
    if (!reply->has_clone()) return protocol_error("sfd answered clone with another reply");
    const unsigned id = reply->clone().id();
    if (id > layout_.clones()) return make_error(Errc::system, "clone-core: qemu driver: sfd sent clone id " + std::to_string(id) + " beyond the ticket");
    id_ = id;
    if (id != 0) {
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
    auto reply = port_->call(request);
    if (!reply) return reply.error();
    // As with the sandbox driver, sync ends the clone: the command exits, sfd destroys the VM.
    _exit(0);
  }

  Result<std::vector<CloneStatus>> join() override {
    gc::Request request = gc::make_request();
    request.mutable_join();
    auto reply = port_->call(request);
    if (!reply) return reply.error();
    if (!reply->has_join()) return protocol_error("sfd answered join with another reply");
    std::vector<CloneStatus> out(layout_.clones());
    for (unsigned i = 0; i < out.size(); ++i) out[i] = {i + 1, CloneEnd::lost, 0};
    for (const auto& s : reply->join().statuses()) {
      auto st = status_from_wire(s);
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
    auto reply = port_->call(request);
    if (!reply) return reply.error();
    return ok_status();
  }

  int exit_fd() const override { return cloned_ && id_ == 0 ? port_->fd() : -1; }

  std::vector<CloneStatus> poll_exited() override {
    std::vector<CloneStatus> out;
    for (const auto& e : port_->take_events()) {
      // A status this version cannot read is dropped; join() still reports every clone.
      if (auto st = status_from_wire(e)) out.push_back(*st);
    }
    return out;
  }

 private:
  std::unique_ptr<ControlPort> port_;
  ClusterLayout layout_;
  std::vector<std::string> macs_;
  unsigned prefix_ = 24;
  unsigned id_ = 0;
  bool cloned_ = false;
  bool finished_ = false;
};

class QemuDriver final : public Driver {
 public:
  std::string_view name() const override { return "qemu"; }
  Probe probe() const override {
    auto port = find_virtio_port(gc::kControlPort);
    if (!port) return {false, "not inside a SnowFlock VM (no virtio-serial port named sf.ctl); run under `sfd run`"};
    return {true, "inside a SnowFlock VM (clone requests go to sfd over " + *port + ")"};
  }
  unsigned max_clones() const override { return kMaxClonesPerCluster; }

  Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) override {
    auto port = std::make_unique<ControlPort>();
    if (Status st = port->open_port(); !st) return st.error();
    gc::Request request = gc::make_request();
    gc::TicketRequest& ticket = *request.mutable_ticket();
    ticket.set_clones(spec.clones);
    ticket.set_min_clones(spec.clones);
    ticket.set_procs_per_clone(spec.procs_per_clone);
    ticket.set_hostname(spec.parent_hostname);
    auto reply = port->call(request);
    if (!reply) return reply.error();
    if (!reply->has_ticket()) return protocol_error("sfd answered ticket with another reply");
    const gc::TicketReply& granted = reply->ticket();
    const std::string ifname = guest_interface();
    if (ifname.empty())
      return make_error(Errc::network_setup, "clone-core: qemu driver: the VM has no network interface for the cluster network");
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
        return protocol_error("malformed node " + std::to_string(n.id()) + " (address '" + n.address() + "') in sfd's ticket reply");
      node.address = ntohl(a.s_addr);
      node.hostname = n.hostname();
      node.interface = ifname;
      prefix = n.prefix();
      macs.push_back(n.mac());
      layout.nodes.push_back(std::move(node));
    }
    if (layout.nodes.empty() || layout.clones() != granted.granted())
      return protocol_error("sfd's ticket reply lists the wrong number of nodes");
    return std::unique_ptr<ClusterInstance>(
        std::make_unique<QemuCluster>(std::move(port), std::move(layout), std::move(macs), prefix));
  }
};

}  // namespace

std::unique_ptr<Driver> make_qemu_driver() { return std::make_unique<QemuDriver>(); }

}  // namespace sf
