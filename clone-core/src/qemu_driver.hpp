// clone-core: the qemu driver's guest side (docs/architecture.md). Inside a SnowFlock VM the
// clone API asks the host's sfd over the virtio-serial port "sf.ctl" (docs/protocols/vm-clone.md;
// the codec, shared with sfd, is clone-core/guest_control.hpp); sfd pauses the VM, clones it,
// and answers in every copy with that copy's ID. The guest side then gives the copy its
// network identity.
#pragma once

#include <memory>
#include <string>

#include "clone-core/driver.hpp"
#include "clone-core/virtio_port.hpp"

namespace sf {

std::unique_ptr<Driver> make_qemu_driver();

}  // namespace sf
