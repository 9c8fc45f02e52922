// clone-core: the qemu driver's guest side (see qemu_driver.hpp, docs/protocols/vm-clone.md):
// the sf.ctl virtio-serial port as the channel of the shared VM cluster (vm_cluster.hpp).
#include "qemu_driver.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "vm_cluster.hpp"

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

// The sf.ctl port (guest_control.hpp): frames both ways.
class ControlPort final : public HostChannel {
 public:
  ControlPort() : HostChannel("qemu") {}
  ~ControlPort() override {
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
  int fd() const override { return fd_; }

 protected:
  std::string host_name() const override { return "sfd"; }

  Status send(const gc::Request& request) override {
    auto frame = gc::encode_frame(request);
    if (!frame) return protocol_error(frame.error().message);
    std::size_t off = 0;
    while (off < frame->size()) {
      const ssize_t n = ::write(fd_, frame->data() + off, frame->size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return protocol_error(std::string("write to sf.ctl: ") + std::strerror(errno));
      off += static_cast<std::size_t>(n);
    }
    return ok_status();
  }

  Result<std::optional<gc::HostMessage>> next_message(int timeout_ms) override {
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

 private:
  int fd_ = -1;
  gc::FrameReader reader_;
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
  // Each clone is a new VM: the host (its memory) limits them, not this guest's.
  bool clones_share_this_machine() const override { return false; }

  Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) override {
    auto port = std::make_unique<ControlPort>();
    if (Status st = port->open_port(); !st) return st.error();
    VmClusterOptions options;
    options.free_page_report = true;
    return prepare_vm_cluster(std::move(port), spec, options);
  }
};

}  // namespace

std::unique_ptr<Driver> make_qemu_driver() { return std::make_unique<QemuDriver>(); }

}  // namespace sf
