// sf-common: errors as values, one vocabulary for every component. A fallible step returns a
// Result<T, E>: its value, or an Error naming what failed and what to do about it. A step
// with nothing to return returns a Status (Result<Ok, E>). Nothing throws across the
// components' APIs (and none crosses the C API).
//
// Every component's error is an Error<Code>: a code from the component's own enum (the kinds
// its callers branch on, plus a general one) and a message "<step>: <what went wrong>; <what
// to do>". The component's header holds thin aliases only:
//   enum class Errc { ... };
//   using Error = sf::common::Error<Errc>;
//   template <class T> using Result = sf::common::Result<T, Error>;
//   using Status = sf::common::Status<Error>;
//
// Hand-written rather than a library: std::expected is C++23 (we build C++20), and
// Boost.Outcome's policy machinery is heavier than these small types need.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace sf::common {

template <class Code>
struct Error {
  Code code{};
  std::string message;
};

template <class Code>
Error<Code> make_error(Code code, std::string message) {
  return Error<Code>{code, std::move(message)};
}

// What a Status carries on success.
struct Ok {};

template <class T, class E>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit on purpose
  Result(E error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT: implicit on purpose

  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const E& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, E> v_;
};

// Success or an Error: for steps that return nothing.
template <class E>
using Status = Result<Ok, E>;

// `return ok_status();` in any function returning a Status (Ok converts to every Status<E>).
constexpr Ok ok_status() noexcept { return {}; }

}  // namespace sf::common
