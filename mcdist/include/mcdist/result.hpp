// mcdist: errors as values. A failing step returns an Error whose message names the problem
// and what to do; nothing in mcdist throws across its API.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace mcdist {

struct Error {
  std::string message;
};

// A value or the Error of the step that failed (C++20 has no std::expected yet).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error error) : state_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(state_); }
  explicit operator bool() const { return ok(); }
  T& value() { return std::get<T>(state_); }
  const T& value() const { return std::get<T>(state_); }
  const Error& error() const { return std::get<Error>(state_); }

 private:
  std::variant<T, Error> state_;
};

// For steps that return nothing on success.
struct Ok {};
using Status = Result<Ok>;

}  // namespace mcdist
