// sfd: errors as values (sf-common's vocabulary, common/include/sf-common/result.hpp). Every
// failing step returns an Error that names what failed and what to do about it; nothing
// throws across the CLI or (later) a C API.
#pragma once

#include <string>
#include <utility>

#include "sf-common/result.hpp"

namespace sf::sfd {

// No caller branches on the kind of an sfd failure yet (they log or print the message), so
// there is one code; add one when a caller needs to tell a failure apart.
enum class Errc {
  general,
};

using Error = sf::common::Error<Errc>;  // message: "<step>: <what went wrong>; <what to do>"

// A failure of the general kind.
inline Error make_error(std::string message) { return Error{Errc::general, std::move(message)}; }

template <typename T>
using Result = sf::common::Result<T, Error>;
using Status = sf::common::Status<Error>;  // success carries nothing
using sf::common::Ok;
using sf::common::ok_status;

}  // namespace sf::sfd
