// Little-endian field access for memtap's file and wire formats (memcpy: no alignment needs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace memtap {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "memtap formats assume a little-endian host");

inline void put_le16(std::byte* p, std::uint16_t v) { std::memcpy(p, &v, 2); }
inline void put_le32(std::byte* p, std::uint32_t v) { std::memcpy(p, &v, 4); }
inline void put_le64(std::byte* p, std::uint64_t v) { std::memcpy(p, &v, 8); }
inline std::uint16_t get_le16(const std::byte* p) { std::uint16_t v; std::memcpy(&v, p, 2); return v; }
inline std::uint32_t get_le32(const std::byte* p) { std::uint32_t v; std::memcpy(&v, p, 4); return v; }
inline std::uint64_t get_le64(const std::byte* p) { std::uint64_t v; std::memcpy(&v, p, 8); return v; }

}  // namespace memtap
