// clone-core: the xen driver's guest side. Inside a Xen PV or PVH guest served by sfd-xen in
// dom0, the clone API sends the sf.ctl messages as xenstore values under the domain's own
// path (docs/protocols/xen-clone.md); sfd-xen saves the domain once and restores it as the
// clones, which learn their ID from their own xenstore keys.
#pragma once

#include <memory>

#include "clone-core/driver.hpp"

namespace sf {

std::unique_ptr<Driver> make_xen_driver();

}  // namespace sf
