// clone-core: errors as values (sf-common's vocabulary, common/include/sf-common/result.hpp).
// Every fallible clone-core operation returns a Status or a Result<T> whose Error names the
// failing step and what to do about it; nothing throws across the C API.
#pragma once

#include "sf-common/result.hpp"

namespace sf {

// Stable numeric codes; the C API (sf.h) returns them negated as SF_ERR_*.
enum class Errc : int {
  ok = 0,                     // SF_OK in the C API; no Error carries it
  invalid_argument = 1,       // a ticket option is out of range or malformed
  not_single_threaded = 2,    // clone() needs a single-threaded process (fork copies one thread)
  missing_privilege = 3,      // CAP_SYS_ADMIN / CAP_NET_ADMIN missing for the sandbox driver
  insufficient_resources = 4, // the allocator cannot grant min_clones
  no_cluster_slot = 5,        // every subnet slot in the pool is in use
  driver_unavailable = 6,     // the named driver's probe() failed, or no driver probes ok
  network_setup = 7,          // bridge, veth or address creation failed (netlink)
  namespace_setup = 8,        // unshare, mount, hostname or PID-namespace setup failed
  clone_failed = 9,           // fork failed, or a clone died before it was running
  wrong_side = 10,            // a parent-only call in a clone, or a clone-only call in the parent
  bad_state = 11,             // e.g. clone() twice, join() before clone(), use after join()
  system = 12,                // another system call failed (message names it)
};

const char* errc_name(Errc code) noexcept;

using Error = sf::common::Error<Errc>;
using sf::common::make_error;

// A value or an Error (sf-common's Result); Status for steps that return nothing.
template <class T>
using Result = sf::common::Result<T, Error>;
using Status = sf::common::Status<Error>;
using sf::common::Ok;
using sf::common::ok_status;

}  // namespace sf
