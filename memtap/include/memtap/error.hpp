// memtap errors: every failing step returns a value naming the problem and what to do;
// no exception leaves the library.
#pragma once

#include <string>
#include <utility>
#include <variant>

#include "sf-common/result.hpp"

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

// A value or an Error (sf-common's Result).
template <class T>
using Result = sfcommon::Result<T, Error>;

using Status = Result<std::monostate>;
inline Status ok_status() { return Status(std::monostate{}); }

inline Error make_error(ErrorCode code, std::string message) {
  return Error{code, std::move(message)};
}

}  // namespace memtap
