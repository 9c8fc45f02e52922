// clone-core: the xen driver's guest side (see xen_driver.hpp).
#include "xen_driver.hpp"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "vm_cluster.hpp"
#include "xenbus.hpp"

namespace sf {
namespace {

namespace gc = guest_control;

constexpr const char* kWatchToken = "sf-ctl";

// sf.ctl over xenstore: the request key one way, numbered message keys the other.
class XenstoreChannel final : public HostChannel {
 public:
  XenstoreChannel() : HostChannel("xen") {}

  ~XenstoreChannel() override {
    if (lock_ >= 0) ::close(lock_);
  }

  // One ticket at a time per guest (the request key is single): an abstract socket name is
  // the lock, held while this process or its forks live.
  Status lock() {
    lock_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lock_ < 0) return make_error(Errc::system, std::string("clone-core: xen driver: socket: ") + std::strerror(errno));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    static constexpr char kName[] = "\0snowflock-xen-sf-ctl";
    std::memcpy(a.sun_path, kName, sizeof kName - 1);
    if (::bind(lock_, reinterpret_cast<sockaddr*>(&a), offsetof(sockaddr_un, sun_path) + sizeof kName - 1) != 0) {
      const int err = errno;
      ::close(lock_);
      lock_ = -1;
      if (err == EADDRINUSE)
        return make_error(Errc::bad_state, "clone-core: xen driver: another ticket is open in this guest; join or kill it first");
      return make_error(Errc::system, std::string("clone-core: xen driver: bind: ") + std::strerror(err));
    }
    return ok_status();
  }

  Status connect() {
    auto client = xenbus::Client::open();
    if (!client) return client.error();
    xs_ = std::move(*client);
    auto version = xs_.read(gc::kXenVersionKey);
    if (!version) return version.error();
    if (!*version)
      return make_error(Errc::driver_unavailable,
                        "clone-core: xen driver: no sfd-xen serves this Xen guest (no " + std::string(gc::kXenVersionKey) +
                            " key); in dom0 run `sfd-xen serve " + own_domain_name() + "`");
    // The watch fires once now and on every message sfd-xen writes.
    return xs_.watch(gc::kXenHostDir, kWatchToken);
  }

  int fd() const override { return xs_.fd(); }

  Status reopen_after_fork() override {
    // The child gets its own connection: the copy of the parent's is the monitor's.
    xs_.close_fd();
    pending_.clear();
    return connect();
  }

 protected:
  std::string host_name() const override { return "sfd-xen"; }

  Status send(const gc::Request& request) override {
    std::string body;
    if (!request.SerializeToString(&body)) return protocol_error("cannot encode a request");
    if (body.size() > gc::kXenMaxMessage) return protocol_error("a request of " + std::to_string(body.size()) + " bytes is too large for xenstore");
    return xs_.write(gc::kXenRequestKey, body);
  }

  Result<std::optional<gc::HostMessage>> next_message(int timeout_ms) override {
    for (;;) {
      if (!pending_.empty()) {
        gc::HostMessage m = std::move(pending_.front());
        pending_.erase(pending_.begin());
        return std::optional<gc::HostMessage>(std::move(m));
      }
      // Take every watch event that is there now, then read what sfd-xen has written.
      for (;;) {
        auto e = xs_.next_event(0);
        if (!e) return e.error();
        if (!*e) break;
      }
      if (Status st = collect(); !st) return st.error();
      if (!pending_.empty()) continue;
      if (timeout_ms == 0) return std::optional<gc::HostMessage>();
      auto e = xs_.next_event(timeout_ms);
      if (!e) return e.error();
      if (!*e && timeout_ms > 0) return std::optional<gc::HostMessage>();
    }
  }

 private:
  // Reads and removes sfd-xen's messages in their order.
  Status collect() {
    auto names = xs_.directory(gc::kXenHostDir);
    if (!names) return names.error();
    std::sort(names->begin(), names->end());  // zero-padded sequence numbers
    for (const auto& n : *names) {
      const std::string key = std::string(gc::kXenHostDir) + "/" + n;
      auto value = xs_.read(key);
      if (!value) return value.error();
      if (Status st = xs_.remove(key); !st) return st.error();
      if (!*value) continue;
      auto m = gc::decode_host_message(**value);
      if (!m) return protocol_error("sfd-xen's message " + n + ": " + m.error().message);
      pending_.push_back(std::move(*m));
    }
    return ok_status();
  }

  std::string own_domain_name() {
    auto name = xs_.read("name");
    return name && *name ? **name : std::string("DOMAIN");
  }

  xenbus::Client xs_;
  std::vector<gc::HostMessage> pending_;
  int lock_ = -1;
};

class XenDriver final : public Driver {
 public:
  std::string_view name() const override { return "xen"; }
  Probe probe() const override {
    if (::access(xenbus::kDevice, F_OK) != 0)
      return {false, std::string("not inside a Xen guest (no ") + xenbus::kDevice + ")"};
    if (::access(xenbus::kDevice, R_OK | W_OK) != 0)
      return {false, std::string("inside a Xen guest, but this user cannot open ") + xenbus::kDevice +
                         " (the guest's root can, or a user the guest's administrator gives access to it)"};
    auto client = xenbus::Client::open();
    if (!client) return {false, client.error().message};
    auto version = client->read(gc::kXenVersionKey);
    if (!version) return {false, version.error().message};
    if (!*version) return {false, "inside a Xen guest that no sfd-xen serves (no " + std::string(gc::kXenVersionKey) + " key)"};
    return {true, "inside a Xen guest served by sfd-xen (clone requests go through xenstore)"};
  }
  unsigned max_clones() const override { return kMaxXenClones; }
  // Each clone is a new VM: the host (its memory) limits them, not this guest's.
  bool clones_share_this_machine() const override { return false; }

  Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) override {
    auto channel = std::make_unique<XenstoreChannel>();
    if (Status st = channel->lock(); !st) return st.error();
    if (Status st = channel->connect(); !st) return st.error();
    VmClusterOptions options;
    options.report_exit = true;
    options.apply_parent_identity = true;
    return prepare_vm_cluster(std::move(channel), spec, options);
  }

  // The ticket reply (g + 1 nodes) must fit one xenstore value.
  static constexpr unsigned kMaxXenClones = 32;
};

}  // namespace

std::unique_ptr<Driver> make_xen_driver() { return std::make_unique<XenDriver>(); }

}  // namespace sf
