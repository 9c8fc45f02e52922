// sfd: running a helper program to completion (cpio, gzip for the guest image builder).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "sfd/result.hpp"

namespace sf::sfd {

// Runs argv[0] (looked up in PATH) with stdin from /dev/null and waits for it. Returns its
// exit code, or an Error if it could not be started or died by a signal.
Result<int> run_to_completion(const std::vector<std::string>& argv);

}  // namespace sf::sfd
