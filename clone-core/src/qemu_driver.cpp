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
#include <nlohmann/json.hpp>

#include "clone-core/free_pages.hpp"
#include "clone-core/vm_identity.hpp"

namespace sf {
namespace fs = std::filesystem;
using nlohmann::json;

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

constexpr std::size_t kMaxLine = 1u << 20;

Result<CloneEnd> parse_end(const std::string& s) {
  if (s == "synced") return CloneEnd::synced;
  if (s == "exited") return CloneEnd::exited;
  if (s == "signaled") return CloneEnd::signaled;
  if (s == "killed") return CloneEnd::killed;
  if (s == "lost") return CloneEnd::lost;
  return make_error(Errc::system, "clone-core: qemu driver: sfd sent an unknown clone end '" + s + "'");
}

Result<CloneStatus> parse_status(const json& j) {
  if (!j.is_object() || !j.contains("id") || !j.contains("end"))
    return make_error(Errc::system, "clone-core: qemu driver: malformed clone status from sfd: " + j.dump());
  auto end = parse_end(j.value("end", ""));
  if (!end) return end.error();
  return CloneStatus{j.value("id", 0u), *end, j.value("value", 0)};
}

// The sf.ctl connection: JSON lines, one request at a time, events queued on the side.
class ControlPort {
 public:
  ~ControlPort() {
    if (fd_ >= 0) close(fd_);
  }
  Error open_port() {
    auto path = find_virtio_port(kVmControlPort);
    if (!path)
      return make_error(Errc::driver_unavailable, "clone-core: qemu driver: no virtio-serial port sf.ctl (not inside a SnowFlock VM)");
    fd_ = ::open(path->c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) {
      if (errno == EBUSY)
        return make_error(Errc::bad_state, "clone-core: qemu driver: " + *path + " is busy: another ticket is open in this VM; join or kill it first");
      return make_error(Errc::system, "clone-core: qemu driver: open " + *path + ": " + std::strerror(errno));
    }
    return {};
  }
  int fd() const { return fd_; }

  // Sends `request` and waits for the reply (events that arrive first are queued).
  Result<json> call(const json& request) {
    const std::string line = request.dump() + "\n";
    std::size_t off = 0;
    while (off < line.size()) {
      const ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return make_error(Errc::system, std::string("clone-core: qemu driver: write to sf.ctl: ") + std::strerror(errno));
      off += static_cast<std::size_t>(n);
    }
    for (;;) {
      auto msg = next_message(-1);
      if (!msg) return msg.error();
      if (!*msg) continue;
      json& j = **msg;
      if (j.contains("event")) {
        events_.push_back(std::move(j));
        continue;
      }
      if (!j.value("ok", false))
        return make_error(Errc::clone_failed, "sfd: " + j.value("error", std::string("request refused")));
      return std::move(j);
    }
  }

  // Events queued or readable now (non-blocking).
  std::vector<json> take_events() {
    for (;;) {
      auto msg = next_message(0);
      if (!msg || !*msg) break;
      if ((**msg).contains("event")) events_.push_back(std::move(**msg));
    }
    std::vector<json> out(events_.begin(), events_.end());
    events_.clear();
    return out;
  }

 private:
  // One message: waits up to timeout_ms (-1: forever); nullopt if none yet.
  Result<std::optional<json>> next_message(int timeout_ms) {
    for (;;) {
      const auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        auto j = json::parse(line, nullptr, false);
        if (j.is_discarded() || !j.is_object())
          return make_error(Errc::system, "clone-core: qemu driver: sfd sent a line that is not a JSON object");
        return std::optional<json>(std::move(j));
      }
      if (buf_.size() > kMaxLine) return make_error(Errc::system, "clone-core: qemu driver: a line from sfd exceeds 1 MiB");
      pollfd p{fd_, POLLIN, 0};
      const int r = ::poll(&p, 1, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return make_error(Errc::system, std::string("clone-core: qemu driver: poll sf.ctl: ") + std::strerror(errno));
      if (r == 0) return std::optional<json>();
      char chunk[4096];
      const ssize_t n = ::read(fd_, chunk, sizeof chunk);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n < 0) return make_error(Errc::system, std::string("clone-core: qemu driver: read sf.ctl: ") + std::strerror(errno));
      if (n == 0) {
        // The host end is not connected (sfd gone): a virtio-serial read returns 0.
        if (timeout_ms == 0) return std::optional<json>();
        return make_error(Errc::system, "clone-core: qemu driver: sfd closed the control port");
      }
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  int fd_ = -1;
  std::string buf_;
  std::deque<json> events_;
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
    try {
      return clone_impl();
    } catch (const json::exception& e) {
      return make_error(Errc::system, std::string("clone-core: qemu driver: malformed reply from sfd: ") + e.what());
    }
  }
  Result<unsigned> clone_impl() {
    json request = {{"op", "clone"}};
    // The free-page report for the no-fetch map of remote clones (a hint, checked by sfd);
    // without it (e.g. no /proc/kpageflags) every page is simply fetched.
    if (auto report = scan_free_pages()) {
      request["free_pages"] = encode_page_ranges(report->ranges);
      request["free_page_count"] = report->free_pages;
    }
    auto reply = port_->call(request);
    if (!reply) return reply.error();
    const unsigned id = reply->value("id", 0u);
    if (id > layout_.clones()) return make_error(Errc::system, "clone-core: qemu driver: sfd sent clone id " + std::to_string(id) + " beyond the ticket");
    id_ = id;
    if (id != 0) {
      const NodeInfo& me = layout_.nodes[id];
      if (Error e = apply_vm_identity(me.interface, macs_[id], me.address_text + "/" + std::to_string(prefix_), me.hostname); e)
        return e;
    }
    cloned_ = true;
    return id;
  }

  Error sync(int status) override {
    if (id_ == 0) return make_error(Errc::wrong_side, "clone-core: sync() called in the parent; the parent calls join()");
    auto reply = port_->call({{"op", "sync"}, {"status", status}});
    if (!reply) return reply.error();
    // As with the sandbox driver, sync ends the clone: the command exits, sfd destroys the VM.
    _exit(0);
  }

  Result<std::vector<CloneStatus>> join() override {
    try {
      return join_impl();
    } catch (const json::exception& e) {
      return make_error(Errc::system, std::string("clone-core: qemu driver: malformed reply from sfd: ") + e.what());
    }
  }
  Result<std::vector<CloneStatus>> join_impl() {
    auto reply = port_->call({{"op", "join"}});
    if (!reply) return reply.error();
    std::vector<CloneStatus> out(layout_.clones());
    for (unsigned i = 0; i < out.size(); ++i) out[i] = {i + 1, CloneEnd::lost, 0};
    for (const auto& s : reply->value("statuses", json::array())) {
      auto st = parse_status(s);
      if (!st) return st.error();
      if (st->id >= 1 && st->id <= out.size()) out[st->id - 1] = *st;
    }
    finished_ = true;
    return out;
  }

  Error kill() override {
    if (finished_ || !cloned_) return {};
    finished_ = true;
    auto reply = port_->call({{"op", "kill"}});
    if (!reply) return reply.error();
    return {};
  }

  int exit_fd() const override { return cloned_ && id_ == 0 ? port_->fd() : -1; }

  std::vector<CloneStatus> poll_exited() override {
    std::vector<CloneStatus> out;
    for (const auto& e : port_->take_events()) {
      try {
        if (e.value("event", "") != "ended") continue;
        if (auto st = parse_status(e)) out.push_back(*st);
      } catch (const json::exception&) {
        // A malformed event is dropped; join() still reports every clone.
      }
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
    auto port = find_virtio_port(kVmControlPort);
    if (!port) return {false, "not inside a SnowFlock VM (no virtio-serial port named sf.ctl); run under `sfd run`"};
    return {true, "inside a SnowFlock VM (clone requests go to sfd over " + *port + ")"};
  }
  unsigned max_clones() const override { return kMaxClonesPerCluster; }

  Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) override {
    try {
      return prepare_impl(spec);
    } catch (const json::exception& e) {
      return make_error(Errc::system, std::string("clone-core: qemu driver: malformed reply from sfd: ") + e.what());
    }
  }
  Result<std::unique_ptr<ClusterInstance>> prepare_impl(const ClusterSpec& spec) {
    auto port = std::make_unique<ControlPort>();
    if (Error e = port->open_port(); e) return e;
    auto reply = port->call({{"op", "ticket"},
                             {"clones", spec.clones},
                             {"min_clones", spec.clones},
                             {"procs_per_clone", spec.procs_per_clone},
                             {"hostname", spec.parent_hostname}});
    if (!reply) return reply.error();
    const std::string ifname = guest_interface();
    if (ifname.empty())
      return make_error(Errc::network_setup, "clone-core: qemu driver: the VM has no network interface for the cluster network");
    ClusterLayout layout;
    auto subnet = parse_ipv4_net(reply->value("subnet", std::string()));
    if (!subnet) return subnet.error();
    layout.subnet = *subnet;
    layout.bridge = ifname;
    std::vector<std::string> macs;
    unsigned prefix = 24;
    for (const auto& n : reply->value("nodes", json::array())) {
      NodeInfo node;
      node.id = n.value("id", 0u);
      node.address_text = n.value("address", std::string());
      in_addr a{};
      if (node.id != layout.nodes.size() || inet_pton(AF_INET, node.address_text.c_str(), &a) != 1)
        return make_error(Errc::system, "clone-core: qemu driver: malformed node in sfd's ticket reply: " + n.dump());
      node.address = ntohl(a.s_addr);
      node.hostname = n.value("hostname", std::string());
      node.interface = ifname;
      prefix = n.value("prefix", 24u);
      macs.push_back(n.value("mac", std::string()));
      layout.nodes.push_back(std::move(node));
    }
    if (layout.nodes.empty() || layout.clones() != reply->value("granted", 0u))
      return make_error(Errc::system, "clone-core: qemu driver: sfd's ticket reply lists the wrong number of nodes");
    return std::unique_ptr<ClusterInstance>(
        std::make_unique<QemuCluster>(std::move(port), std::move(layout), std::move(macs), prefix));
  }
};

}  // namespace

std::unique_ptr<Driver> make_qemu_driver() { return std::make_unique<QemuDriver>(); }

}  // namespace sf
