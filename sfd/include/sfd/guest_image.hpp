// sfd: the guest image builder. Makes a bootable guest out of the host's own packages: Debian's
// kernel plus an initramfs of busybox-static and the few modules the guest needs. The guest's
// root is the host's files read-only (EROFS images on virtio-blk disks, rootfs.hpp, or the
// host's / over virtio-9p) under a private tmpfs overlay, so the guest runs the host's Open
// MPI, the project's build and the user's programs unchanged.
// Images are cached under cache_dir()/guest/<key>, key = hash of every input; a changed
// kernel, module, busybox or init script gives a new key and so a rebuild.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "sfd/result.hpp"

namespace sf::sfd {

struct GuestImageInputs {
  std::filesystem::path kernel;       // /boot/vmlinuz-<version>
  std::string kernel_version;         // <version>
  std::filesystem::path modules_dir;  // /lib/modules/<version>
  std::filesystem::path busybox;      // a static busybox
  std::vector<std::string> modules;   // wanted module names; dependencies are added
};

struct GuestImage {
  std::string key;                   // hex hash of the inputs
  std::filesystem::path dir;         // cache_dir()/guest/<key>
  std::filesystem::path kernel;      // dir/vmlinuz
  std::filesystem::path initramfs;   // dir/initramfs.img
  std::string kernel_version;
  bool built_now = false;            // false when it came from the cache
};

// The modules the guest init loads (before dependencies): PCI virtio transport, virtio-9p,
// overlayfs, virtio-serial, virtio-net, virtio-blk, erofs (and crc32c for its libcrc32c).
std::vector<std::string> default_guest_modules();

// Picks the inputs on this host: $SF_GUEST_KERNEL if set, else the newest /boot/vmlinuz-*
// whose /lib/modules/<version> has every wanted module (Debian's cloud kernel has no 9p, so
// this is normally linux-image-amd64); busybox from $SF_BUSYBOX or /bin/busybox.
Result<GuestImageInputs> find_guest_inputs();

// Module files (relative to modules_dir, from modules.dep) in an order that loads each module
// after its dependencies.
Result<std::vector<std::string>> resolve_module_order(const std::filesystem::path& modules_dir,
                                                      const std::vector<std::string>& wanted);

// Hash of every input: image format version, init script, kernel, busybox, module files.
Result<std::string> guest_image_key(const GuestImageInputs& inputs,
                                    const std::vector<std::string>& module_files);

// Returns the cached image for these inputs, building it first if it is missing.
Result<GuestImage> ensure_guest_image(const GuestImageInputs& inputs,
                                      const std::filesystem::path& cache_root);

// This host's guest image (find_guest_inputs) in the default cache (cache_dir()), built
// first if it is missing: what `sfd run`, `sfd build-guest` and `sfd accel` use.
Result<GuestImage> ensure_host_guest_image();

// The guest's /init (busybox sh). Kernel command line parameters it reads:
//   sf.mode=probe   print kGuestProbeMarker on the console and power off (accelerator probe)
//   sf.mode=idle    load the modules, print SF-GUEST-IDLE, mount nothing and idle (for the
//                   descriptor/cloning benchmark: a mounted 9p export blocks migration)
//   sf.mode=run     mount the root overlay and exec sf.agent as PID 1 ("sfd guest-agent")
//   sf.agent=PATH   the sfd binary, a host path (seen through the read-only root)
//   sf.root=disk    the root from the EROFS disks with serials sfsys and sfwork (else 9p)
std::string_view guest_init_script();
inline constexpr std::string_view kGuestProbeMarker = "SF-GUEST-PROBE-OK";

}  // namespace sf::sfd
