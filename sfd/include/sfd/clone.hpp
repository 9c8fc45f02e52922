// sfd: local VM cloning. Pause a VM, save its device-state descriptor
// with x-ignore-shared (guest RAM stays in its share=on RAM file), freeze that file, and start
// clones that map it copy-on-write (share=off + -incoming defer + migrate-incoming), then
// resume them. The parent itself is re-instantiated as a copy-on-write clone of the frozen
// image, so nothing ever writes into the file the clones map.
//
// Limit (QEMU 7.2): a VM whose guest has a virtio-9p export mounted cannot be migrated, so
// only guests whose root is on read-only disks can be cloned (docs/sfd.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sfd/result.hpp"
#include "sfd/vm.hpp"

namespace sf::sfd {

// The frozen state clones start from: the RAM file and the descriptor (and, if given, the
// descriptor's SnowFlock metadata, docs/formats/vm-descriptor.md). Deletes them when
// destroyed; destroy it only after every VM that maps it.
class FrozenImage {
 public:
  FrozenImage(std::filesystem::path ram_file, std::filesystem::path descriptor, std::filesystem::path metadata = {});
  ~FrozenImage();
  FrozenImage(const FrozenImage&) = delete;
  FrozenImage& operator=(const FrozenImage&) = delete;
  const std::filesystem::path& ram_file() const { return ram_file_; }
  const std::filesystem::path& descriptor() const { return descriptor_; }
  const std::filesystem::path& metadata() const { return metadata_; }

 private:
  std::filesystem::path ram_file_;
  std::filesystem::path descriptor_;
  std::filesystem::path metadata_;
};

// Polls QMP query-migrate until the migration completed; failed/cancelled or passing the
// deadline are errors whose message starts with `what` (the migration's name for the user).
Status wait_migration(QmpClient& qmp, std::chrono::steady_clock::time_point deadline, const std::string& what);

struct DescriptorStats {
  std::uint64_t bytes = 0;
  std::chrono::microseconds pause{0};  // QMP stop
  std::chrono::microseconds save{0};   // migrate until completed
};

// Stops `vm` and writes its device state to `path` (QEMU's migration stream, x-ignore-shared).
// The VM stays paused.
Result<DescriptorStats> save_descriptor(QemuVm& vm, const std::filesystem::path& path,
                                        std::chrono::milliseconds timeout = std::chrono::seconds(120));

struct CloneTimings {
  std::chrono::microseconds start{0};   // spawn the QEMUs until each answers QMP
  std::chrono::microseconds load{0};    // migrate-incoming of the descriptor until completed
  std::chrono::microseconds resume{0};  // cont until every clone runs
};

// Starts n clones of `image` with the parent's configuration, all at once, and resumes them.
Result<std::vector<std::unique_ptr<QemuVm>>> start_clones(VmConfig config, const FrozenImage& image, int n,
                                                          CloneTimings* timings = nullptr);
// The same with one configuration per clone (e.g. each with its own network tap); the RAM
// file, share=off and -incoming defer are set here.
Result<std::vector<std::unique_ptr<QemuVm>>> start_clones(std::vector<VmConfig> configs, const FrozenImage& image,
                                                          CloneTimings* timings = nullptr);

// A cloned family. Member order matters: VMs go before the image they map.
struct CloneSet {
  std::unique_ptr<FrozenImage> image;
  std::unique_ptr<QemuVm> parent;               // the re-instantiated parent (a CoW clone too)
  std::vector<std::unique_ptr<QemuVm>> clones;  // clone i+1 at index i
  DescriptorStats descriptor;
  CloneTimings timings;
  ~CloneSet() {
    clones.clear();
    parent.reset();
    image.reset();
  }
};

// Clones `parent` (launched with `config`) into n clones; `parent` is consumed and comes back
// re-instantiated in CloneSet::parent. `descriptor_dir` holds the descriptor file.
Result<std::unique_ptr<CloneSet>> clone_vm(std::unique_ptr<QemuVm> parent, const VmConfig& config, int n,
                                           const std::filesystem::path& descriptor_dir);

}  // namespace sf::sfd
