// clone-core: the sandbox driver's factory (the driver is private to the library).
#pragma once

#include <memory>

#include "clone-core/driver.hpp"

namespace sf {

std::unique_ptr<Driver> make_sandbox_driver();

}  // namespace sf
