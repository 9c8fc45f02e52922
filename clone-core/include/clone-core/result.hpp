// clone-core: errors as values. Every fallible clone-core operation returns an Error (or a
// Result<T>) that names the failing step and what to do about it; nothing throws across the
// C API. std::expected is C++23 and we build as C++20, so Result<T> is
// sf-common's small variant.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "sf-common/result.hpp"

namespace sf {

// Stable numeric codes; the C API (sf.h) returns them negated as SF_ERR_*.
enum class Errc : int {
  ok = 0,
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

struct Error {
  Errc code = Errc::ok;
  std::string message;

  bool ok() const noexcept { return code == Errc::ok; }
  explicit operator bool() const noexcept { return !ok(); }  // true when there is an error
};

inline Error make_error(Errc code, std::string message) { return Error{code, std::move(message)}; }

// A value or an Error (sf-common's Result).
template <class T>
using Result = sfcommon::Result<T, Error>;

}  // namespace sf
