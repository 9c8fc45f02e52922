// sf-common: fixed-width fields of the project's file and wire formats: little-endian (memtap's
// frames and images, sfd's remote-clone exchange) and the big-endian frame lengths of the
// length-prefixed protobuf channels (the control protocol, sf.ctl). Works on any host byte
// order and alignment; Byte is std::byte, unsigned char or char.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace sf {

template <class Byte>
concept OctetType = sizeof(Byte) == 1 && (std::is_same_v<Byte, std::byte> ||
                                          std::is_same_v<Byte, unsigned char> ||
                                          std::is_same_v<Byte, char>);

template <std::unsigned_integral T, OctetType Byte>
inline void put_le(Byte* p, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<Byte>(static_cast<unsigned char>(v >> (8 * i)));
}

template <std::unsigned_integral T, OctetType Byte>
inline T get_le(const Byte* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i)
    v |= static_cast<T>(static_cast<T>(static_cast<unsigned char>(p[i])) << (8 * i));
  return v;
}

template <std::unsigned_integral T, OctetType Byte>
inline void put_be(Byte* p, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i)
    p[i] = static_cast<Byte>(static_cast<unsigned char>(v >> (8 * (sizeof(T) - 1 - i))));
}

template <std::unsigned_integral T, OctetType Byte>
inline T get_be(const Byte* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v = static_cast<T>((v << 8) | static_cast<unsigned char>(p[i]));
  return v;
}

template <OctetType Byte> inline void put_le16(Byte* p, std::uint16_t v) { put_le(p, v); }
template <OctetType Byte> inline void put_le32(Byte* p, std::uint32_t v) { put_le(p, v); }
template <OctetType Byte> inline void put_le64(Byte* p, std::uint64_t v) { put_le(p, v); }
template <OctetType Byte> inline std::uint16_t get_le16(const Byte* p) { return get_le<std::uint16_t>(p); }
template <OctetType Byte> inline std::uint32_t get_le32(const Byte* p) { return get_le<std::uint32_t>(p); }
template <OctetType Byte> inline std::uint64_t get_le64(const Byte* p) { return get_le<std::uint64_t>(p); }
template <OctetType Byte> inline void put_be32(Byte* p, std::uint32_t v) { put_be(p, v); }
template <OctetType Byte> inline std::uint32_t get_be32(const Byte* p) { return get_be<std::uint32_t>(p); }

}  // namespace sf
