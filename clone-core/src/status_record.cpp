// clone-core (sandbox driver): status records (see status_record.hpp).
#include "status_record.hpp"

#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>

namespace sf::status {
namespace {

std::uint32_t checksum_of(const Record& r) {
  return XXH32(&r, offsetof(Record, checksum), 0);
}

}  // namespace

Record make(Kind kind, std::uint32_t clone_id, std::int32_t value, std::int32_t error_code, const std::string& message) {
  Record r;
  r.kind = static_cast<std::uint16_t>(kind);
  r.clone_id = clone_id;
  r.value = value;
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  r.timestamp_ns = static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  r.error_code = error_code;
  std::strncpy(r.message, message.c_str(), sizeof r.message - 1);
  r.checksum = checksum_of(r);
  return r;
}

bool write_record(int fd, const Record& record) {
  for (;;) {
    ssize_t n = write(fd, &record, sizeof record);
    if (n == static_cast<ssize_t>(sizeof record)) return true;
    if (n < 0 && errno == EINTR) continue;
    return false;
  }
}

std::optional<Record> decode(const void* bytes, std::size_t size) {
  if (size != sizeof(Record)) return std::nullopt;
  Record r;
  std::memcpy(&r, bytes, sizeof r);
  if (r.magic != kMagic || r.version != kVersion || r.checksum != checksum_of(r)) return std::nullopt;
  if (r.kind < 1 || r.kind > 5) return std::nullopt;
  r.message[sizeof r.message - 1] = '\0';
  return r;
}

std::string describe(const Record& r) {
  static const char* const kNames[] = {"?", "ready", "synced", "exited", "signaled", "setup_failed"};
  std::string s = "clone " + std::to_string(r.clone_id) + " " + kNames[r.kind < 6 ? r.kind : 0] +
                  " value=" + std::to_string(r.value) + " t=" + std::to_string(r.timestamp_ns) + "ns";
  if (r.error_code != 0) s += " error=" + std::to_string(r.error_code);
  if (r.message[0] != '\0') s += " message=\"" + std::string(r.message) + "\"";
  return s;
}

}  // namespace sf::status
