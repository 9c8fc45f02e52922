// sfd: KVM or TCG. /dev/kvm existing is not enough: on some hosts (a nested PVM hypervisor
// here) KVM accepts the VM but hangs a stock Linux guest after real-mode setup. So KVM counts
// only if a short probe boot of the guest image under KVM prints its marker in time. The
// answer is cached per (guest image, QEMU binary, host kernel); TCG is the fallback.
#pragma once

#include <chrono>
#include <string>

#include "sfd/guest_image.hpp"
#include "sfd/result.hpp"
#include "sfd/vm.hpp"

namespace sf::sfd {

struct AccelChoice {
  Accel accel = Accel::tcg;
  std::string reason;      // why, for -v
  bool from_cache = false;
};

struct AccelProbeOptions {
  bool reprobe = false;  // ignore the cache
  // How long the KVM probe boot may take; $SF_KVM_PROBE_TIMEOUT (seconds) overrides.
  std::chrono::milliseconds timeout{20000};
};

// $SF_ACCEL=kvm|tcg forces a choice without probing.
Result<AccelChoice> choose_accel(const GuestImage& image, const AccelProbeOptions& options = {});

// Boots `image` in probe mode with `accel` and waits for the marker. True if it came.
Result<bool> probe_boot(const GuestImage& image, Accel accel, std::chrono::milliseconds timeout);

}  // namespace sf::sfd
