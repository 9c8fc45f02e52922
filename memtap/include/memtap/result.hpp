// memtap errors: every failing step returns a value naming the problem and what to do;
// no exception leaves the library. The vocabulary is sf-common's
// (common/include/sf-common/result.hpp) with memtap's codes.
#pragma once

#include "sf-common/result.hpp"

namespace sf::memtap {

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

using Error = sf::common::Error<ErrorCode>;
using sf::common::make_error;

// A value or an Error (sf-common's Result); Status for steps that return nothing.
template <class T>
using Result = sf::common::Result<T, Error>;
using Status = sf::common::Status<Error>;
using sf::common::Ok;
using sf::common::ok_status;

}  // namespace sf::memtap
