// sfd: local VM cloning (see clone.hpp).
#include "sfd/clone.hpp"

#include <map>
#include <string>
#include <thread>

namespace sf::sfd {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::duration_cast;
using std::chrono::microseconds;

namespace {

const std::map<std::string, bool> kIgnoreShared = {{"x-ignore-shared", true}};

}  // namespace

Status wait_migration(QmpClient& qmp, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    auto r = qmp.query_migrate();
    if (!r) return make_error(what + ": " + r.error().message);
    const std::string status = r->value("status", "");
    if (status == "completed") return ok_status();
    if (status == "failed" || status == "cancelled")
      return make_error(what + ": migration " + status + (r->contains("error-desc") ? ": " + (*r)["error-desc"].get<std::string>() : ""));
    if (Clock::now() > deadline) return make_error(what + ": migration did not complete in time (status " + status + ")");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

FrozenImage::FrozenImage(fs::path ram_file, fs::path descriptor, fs::path metadata)
    : ram_file_(std::move(ram_file)), descriptor_(std::move(descriptor)), metadata_(std::move(metadata)) {}

FrozenImage::~FrozenImage() {
  std::error_code ec;
  fs::remove(ram_file_, ec);
  fs::remove(descriptor_, ec);
  if (!metadata_.empty()) fs::remove(metadata_, ec);
}

Result<DescriptorStats> save_descriptor(QemuVm& vm, const fs::path& path, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (char ch : path.string()) {
    if (ch == '\'' || ch == '\n') return make_error("descriptor: unusable path " + path.string());
  }
  DescriptorStats stats;
  auto t0 = Clock::now();
  if (auto st = vm.qmp().stop(); !st) return make_error("descriptor: stop: " + st.error().message);
  stats.pause = duration_cast<microseconds>(Clock::now() - t0);
  if (auto st = vm.qmp().migrate_set_capabilities(kIgnoreShared); !st) return make_error("descriptor: " + st.error().message);
  t0 = Clock::now();
  // exec: runs through /bin/sh in QEMU; the path was checked for quotes above.
  if (auto st = vm.qmp().migrate("exec:cat > '" + path.string() + "'"); !st)
    return make_error("descriptor: " + st.error().message + " (a mounted virtio-9p export blocks migration in QEMU 7.2)");
  if (auto st = wait_migration(vm.qmp(), deadline, "descriptor"); !st) return st.error();
  stats.save = duration_cast<microseconds>(Clock::now() - t0);
  std::error_code ec;
  stats.bytes = fs::file_size(path, ec);
  if (ec) return make_error("descriptor: " + path.string() + ": " + ec.message());
  return stats;
}

Result<std::vector<std::unique_ptr<QemuVm>>> start_clones(VmConfig config, const FrozenImage& image, int n,
                                                          CloneTimings* timings) {
  return start_clones(std::vector<VmConfig>(static_cast<std::size_t>(n), config), image, timings);
}

Result<std::vector<std::unique_ptr<QemuVm>>> start_clones(std::vector<VmConfig> configs, const FrozenImage& image,
                                                          CloneTimings* timings) {
  const auto deadline = Clock::now() + std::chrono::seconds(120);
  std::vector<std::unique_ptr<QemuVm>> clones;
  auto t0 = Clock::now();
  // QemuVm::launch returns after the QMP handshake; starting them one after another is
  // still overlapped enough (QEMU's start is mostly its own process setup).
  for (std::size_t i = 0; i < configs.size(); ++i) {
    VmConfig& config = configs[i];
    config.ram_file = image.ram_file();
    config.ram_shared = false;  // MAP_PRIVATE: a clone's writes stay its own
    config.incoming_defer = true;
    auto vm = QemuVm::launch(config);
    if (!vm) return make_error("clone " + std::to_string(i) + ": " + vm.error().message);
    clones.push_back(std::move(*vm));
  }
  const auto t1 = Clock::now();
  const std::string uri = "exec:cat '" + image.descriptor().string() + "'";
  for (auto& c : clones) {
    if (auto st = c->qmp().migrate_set_capabilities(kIgnoreShared); !st) return st.error();
    if (auto st = c->qmp().migrate_incoming(uri); !st) return make_error("clone: " + st.error().message);
  }
  for (auto& c : clones) {
    if (auto st = wait_migration(c->qmp(), deadline, "clone"); !st) return st.error();
  }
  const auto t2 = Clock::now();
  for (auto& c : clones) {
    if (auto st = c->qmp().cont(); !st) return make_error("clone: cont: " + st.error().message);
  }
  for (auto& c : clones) {
    for (;;) {
      auto s = c->qmp().query_status();
      if (!s) return s.error();
      if (s->value("status", "") == "running") break;
      if (Clock::now() > deadline) return make_error("clone: did not reach running");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  if (timings != nullptr) {
    timings->start = duration_cast<microseconds>(t1 - t0);
    timings->load = duration_cast<microseconds>(t2 - t1);
    timings->resume = duration_cast<microseconds>(Clock::now() - t2);
  }
  return clones;
}

Result<std::unique_ptr<CloneSet>> clone_vm(std::unique_ptr<QemuVm> parent, const VmConfig& config, int n,
                                           const fs::path& descriptor_dir) {
  auto set = std::make_unique<CloneSet>();
  const fs::path desc = descriptor_dir / (parent->paths().run_dir.filename().string() + ".desc");
  auto stats = save_descriptor(*parent, desc);
  if (!stats) {
    std::error_code ec;
    fs::remove(desc, ec);
    return stats.error();
  }
  set->descriptor = *stats;
  // Freeze: the RAM file now belongs to the image; the paused parent goes away and comes
  // back as a copy-on-write clone, so no process maps the file shared any more.
  set->image = std::make_unique<FrozenImage>(parent->release_ram_file(), desc);
  parent.reset();
  auto vms = start_clones(config, *set->image, n + 1, &set->timings);
  if (!vms) return vms.error();
  set->parent = std::move(vms->front());
  for (std::size_t i = 1; i < vms->size(); ++i) set->clones.push_back(std::move((*vms)[i]));
  return set;
}

}  // namespace sf::sfd
