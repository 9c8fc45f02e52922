// clone-core: the qemu driver's guest side (docs/architecture.md). Inside a SnowFlock VM the
// clone API asks the host's sfd over the virtio-serial port "sf.ctl"
// (docs/protocols/vm-clone.md); sfd pauses the VM, clones it, and answers in every copy with
// that copy's ID. The guest side then gives the copy its network identity.
#pragma once

#include <memory>
#include <string>

#include "clone-core/driver.hpp"
#include "clone-core/virtio_port.hpp"

namespace sf {

inline constexpr const char* kVmControlPort = "sf.ctl";

std::unique_ptr<Driver> make_qemu_driver();

}  // namespace sf
