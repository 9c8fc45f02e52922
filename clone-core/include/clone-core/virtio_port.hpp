// clone-core: finding a virtio-serial port inside a SnowFlock VM. The guest has no udev, so
// there is no /dev/virtio-ports/<name> link: the port's name is read from sysfs.
#pragma once

#include <optional>
#include <string>

namespace sf {

// /dev/vportNpM of the virtio-serial port named `name`, found through
// /sys/class/virtio-ports/*/name (under `sysfs_root` for tests); nullopt if there is none.
std::optional<std::string> find_virtio_port(const std::string& name,
                                            const std::string& sysfs_root = "/sys/class/virtio-ports");

}  // namespace sf
