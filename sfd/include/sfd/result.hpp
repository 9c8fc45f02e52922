// sfd: errors as values. Every failing step returns an Error that names what failed and what
// to do about it; nothing throws across the CLI or (later) a C API.
//
// Hand-written rather than a library because std::expected is C++23 (we build C++20) and
// Boost.Outcome's policy machinery is heavier than this one small type needs.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace sfd {

struct Error {
  std::string message;  // "<step>: <what went wrong>; <what to do>"
};

inline Error make_error(std::string message) { return Error{std::move(message)}; }

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}            // NOLINT: implicit on purpose
  Result(Error error) : v_(std::move(error)) {}        // NOLINT: implicit on purpose
  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

// Result<void>: success carries nothing.
struct Ok {};
using Status = Result<Ok>;
inline Status ok_status() { return Ok{}; }

}  // namespace sfd
