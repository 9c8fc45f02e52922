// sfd: errors as values. Every failing step returns an Error that names what failed and what
// to do about it; nothing throws across the CLI or (later) a C API.
// The Result type is sf-common's (common/include/sf-common/result.hpp).
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "sf-common/result.hpp"

namespace sfd {

struct Error {
  std::string message;  // "<step>: <what went wrong>; <what to do>"
};

inline Error make_error(std::string message) { return Error{std::move(message)}; }

template <typename T>
using Result = sfcommon::Result<T, Error>;

// Result<void>: success carries nothing.
struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

}  // namespace sfd
