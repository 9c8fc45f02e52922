// mcdist: errors as values. A failing step returns an Error whose message names the problem
// and what to do; nothing in mcdist throws across its API.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "sf-common/result.hpp"

namespace mcdist {

struct Error {
  std::string message;
};

// A value or the Error of the step that failed.
template <typename T>
using Result = sfcommon::Result<T, Error>;

// For steps that return nothing on success.
struct Ok {};
using Status = Result<Ok>;

}  // namespace mcdist
