// memtap errors: every failing step returns a value naming the problem and what to do;
// no exception leaves the library.
#pragma once

#include <string>
#include <utility>
#include <variant>

namespace memtap {

enum class ErrorCode {
  kIo,               // a file or socket operation failed
  kFormat,           // a malformed or truncated image, metadata file or frame
  kCorrupt,          // a checksum mismatch
  kBadToken,         // the token does not own the image
  kProtocol,         // the peer broke the protocol
  kTimeout,          // the peer did not answer within the deadline
  kUnavailable,      // the peer is gone (connection refused or closed)
  kOutOfRange,       // a page outside the image
  kInvalidArgument,  // a bad option or argument
  kInjected,         // a failure made on purpose by MEMTAP_FAULT
  kInternal,
};

const char* to_string(ErrorCode code);

struct Error {
  ErrorCode code;
  std::string message;
};

// A value or an Error. Small on purpose: C++20 has no std::expected.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT: implicit by design
  Result(Error error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

using Status = Result<std::monostate>;
inline Status ok_status() { return Status(std::monostate{}); }

inline Error make_error(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

}  // namespace memtap
