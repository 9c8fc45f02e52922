// sf-common: errors as values, shared by every component. A fallible step returns a
// Result<T, E>: its value, or the component's Error naming what failed and what to do about
// it; nothing throws across the components' APIs (and none crosses the C API).
//
// Hand-written rather than a library: std::expected is C++23 (we build C++20), and
// Boost.Outcome's policy machinery is heavier than this one small type needs. Each component
// defines its own Error (memtap and clone-core carry codes) and an alias
// `template <class T> using Result = sfcommon::Result<T, Error>;`.
#pragma once

#include <utility>
#include <variant>

namespace sfcommon {

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

}  // namespace sfcommon
