// sfd: what the two roles of a remote clone share (remote_origin.cpp serves a frozen VM,
// remote_clone.cpp starts a clone of it on another host): the control protocol's constants
// (docs/protocols/remote-clone.md) and the private files both keep in sfd's runtime directory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include "sfd/result.hpp"

namespace sf::sfd::remote {

inline constexpr std::uint64_t kPage = 4096;
inline constexpr char kMagic[4] = {'S', 'F', 'R', 'C'};
inline constexpr std::uint32_t kProtocolVersion = 1;
inline constexpr std::uint32_t kMaxReplyJson = 1u << 20;
inline constexpr std::uint64_t kMaxDescriptor = 256ull << 20;

// 16 lower-case hex digits.
std::string hex64(std::uint64_t v);

// A private directory (0700) named after this sfd, so that the stale-file sweep removes it if
// this sfd is killed; `kind` says whose it is ("origin", "remote").
Result<std::filesystem::path> make_private_dir(const std::string& kind);

// Writes text to a new file only its owner can read (keys, tickets).
Status write_private_file(const std::filesystem::path& p, const std::string& text);

}  // namespace sf::sfd::remote
