// clone-core (sandbox driver): the fixed-size record a clone (or its init) writes to the
// parent over the cluster's status pipe. Spec: docs/protocols/clone-status.md. Records are
// smaller than PIPE_BUF, so concurrent writers never interleave.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace sf::status {

inline constexpr std::uint32_t kMagic = 0x53464353;  // "SFCS"
inline constexpr std::uint16_t kVersion = 1;

enum class Kind : std::uint16_t {
  ready = 1,         // the clone returned from clone(); value unused, timestamp set
  synced = 2,        // the clone called sync(value)
  exited = 3,        // the clone's process exited with code value (written by its init)
  signaled = 4,      // the clone's process died of signal value (written by its init)
  setup_failed = 5,  // the clone's init could not set it up; error_code = Errc, message set
};

struct Record {
  std::uint32_t magic = kMagic;
  std::uint16_t version = kVersion;
  std::uint16_t kind = 0;
  std::uint32_t clone_id = 0;
  std::int32_t value = 0;
  std::int64_t timestamp_ns = 0;  // CLOCK_MONOTONIC when written
  std::int32_t error_code = 0;
  char message[192] = {};
  std::uint32_t checksum = 0;     // XXH32 (seed 0) of all preceding bytes
};
static_assert(sizeof(Record) == 224, "the status record layout is part of the protocol");

Record make(Kind kind, std::uint32_t clone_id, std::int32_t value, std::int32_t error_code = 0,
            const std::string& message = {});
// Writes the record with one write(2); async-signal-safe apart from the checksum (pure code).
bool write_record(int fd, const Record& record);
// Checks magic, version, checksum; nullopt if the bytes are not a valid record.
std::optional<Record> decode(const void* bytes, std::size_t size);
std::string describe(const Record& record);

}  // namespace sf::status
