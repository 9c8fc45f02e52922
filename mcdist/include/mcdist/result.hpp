// mcdist: errors as values (sf-common's vocabulary, common/include/sf-common/result.hpp). A
// failing step returns an Error whose message names the problem and what to do; nothing in
// mcdist throws across its API.
#pragma once

#include <string>
#include <utility>

#include "sf-common/result.hpp"

namespace sf::mcdist {

// No caller branches on the kind of an mcdist failure yet (they report the message), so
// there is one code; add one when a caller needs to tell a failure apart.
enum class Errc {
  general,
};

using Error = sf::common::Error<Errc>;

// A failure of the general kind.
inline Error make_error(std::string message) { return Error{Errc::general, std::move(message)}; }

// A value or the Error of the step that failed; Status for steps that return nothing.
template <typename T>
using Result = sf::common::Result<T, Error>;
using Status = sf::common::Status<Error>;
using sf::common::Ok;
using sf::common::ok_status;

}  // namespace sf::mcdist
