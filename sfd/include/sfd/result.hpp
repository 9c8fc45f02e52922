// sfd: errors as values (sf-common's vocabulary, common/include/sf-common/result.hpp). Every
// failing step returns an Error that names what failed and what to do about it; nothing
// throws across the CLI or (later) a C API.
#pragma once

#include <string>
#include <utility>

#include "sf-common/result.hpp"

namespace sfd {

// No caller branches on the kind of an sfd failure yet (they log or print the message), so
// there is one code; add one when a caller needs to tell a failure apart.
enum class Errc {
  general,
};

using Error = sfcommon::Error<Errc>;  // message: "<step>: <what went wrong>; <what to do>"

// A failure of the general kind.
inline Error make_error(std::string message) { return Error{Errc::general, std::move(message)}; }

template <typename T>
using Result = sfcommon::Result<T, Error>;
using Status = sfcommon::Status<Error>;  // success carries nothing
using sfcommon::Ok;
using sfcommon::ok_status;

}  // namespace sfd
