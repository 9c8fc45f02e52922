// memtap frozen image metadata: geometry, the no-fetch (zero/free) map, per-page checksums
// and the owner token. The on-disk format is docs/formats/memtap-image.md (version 1).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "memtap/result.hpp"

namespace sf::memtap {

using OwnerToken = std::array<std::uint8_t, 32>;

// Random token from getrandom(2).
Result<OwnerToken> random_token();
std::string token_hex(const OwnerToken& token);
// Short, non-secret name for a token (first 8 hex digits of its XXH3 hash) for log lines.
std::string token_fingerprint(const OwnerToken& token);
Result<OwnerToken> parse_token_hex(const std::string& text);
Result<OwnerToken> read_token_file(const std::string& path);
Status write_token_file(const std::string& path, const OwnerToken& token);
// Constant-time comparison (the token guards the parent's memory).
bool tokens_equal(const OwnerToken& a, const OwnerToken& b);

// XXH3-64 of one page; `data` may be shorter than page_size (the last page), it is then
// hashed as if zero-padded.
std::uint64_t page_checksum(std::span<const std::byte> data, std::uint32_t page_size);

// IMAGE -> IMAGE.memtap
std::string metadata_path_for(const std::string& image_path);

class ImageMetadata {
 public:
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::uint32_t kHeaderSize = 128;
  static constexpr std::uint32_t kMinPageSize = 4096;
  static constexpr std::uint32_t kMaxPageSize = 1u << 20;
  static constexpr std::uint64_t kMaxImageLength = 1ull << 40;
  static constexpr std::uint64_t kMaxPageCount = 1ull << 28;
  static constexpr std::uint32_t kFlagTokenValid = 1;

  // Scans IMAGE: checksums every page and, with zero_map, marks all-zero pages no-fetch.
  static Result<ImageMetadata> build(const std::string& image_path, std::uint32_t page_size,
                                     const OwnerToken& token, bool zero_map);
  static Result<ImageMetadata> parse(std::span<const std::byte> bytes);
  static Result<ImageMetadata> load(const std::string& metadata_path);

  // include_token=false zeroes the token (the copy a server sends to its clients).
  std::vector<std::byte> serialize(bool include_token) const;
  // Writes atomically (temporary file + rename), mode 0600.
  Status save(const std::string& metadata_path) const;
  // Re-scans IMAGE and sets the no-fetch bit of exactly the all-zero pages.
  Status rebuild_zero_map(const std::string& image_path);

  std::uint32_t page_size() const { return page_size_; }
  std::uint64_t image_length() const { return image_length_; }
  std::uint64_t page_count() const { return page_count_; }
  std::uint64_t image_id() const { return image_id_; }
  std::uint64_t header_checksum() const;
  bool has_token() const { return has_token_; }
  const OwnerToken& token() const { return token_; }

  bool no_fetch(std::uint64_t page) const {
    return (no_fetch_[page / 8] >> (page % 8)) & 1u;
  }
  void set_no_fetch(std::uint64_t page, bool value);
  std::uint64_t no_fetch_count() const;
  std::uint64_t checksum(std::uint64_t page) const { return checksums_[page]; }
  // Checks one full page (page_size bytes) against its checksum.
  bool verify_page(std::uint64_t page, std::span<const std::byte> data) const;
  // Length of page `page` inside the image (page_size except for a short last page).
  std::uint32_t bytes_in_page(std::uint64_t page) const;

 private:
  void recompute_image_id();

  std::uint32_t page_size_ = 0;
  std::uint64_t image_length_ = 0;
  std::uint64_t page_count_ = 0;
  std::uint64_t image_id_ = 0;
  bool has_token_ = false;
  OwnerToken token_{};
  std::vector<std::uint8_t> no_fetch_;
  std::vector<std::uint64_t> checksums_;
};

// A frozen image opened for serving: the metadata plus a read-only mapping of IMAGE.
class FrozenImage {
 public:
  // metadata_path empty -> metadata_path_for(image_path).
  static Result<FrozenImage> open(const std::string& image_path,
                                  const std::string& metadata_path = {});
  FrozenImage(FrozenImage&& other) noexcept;
  FrozenImage& operator=(FrozenImage&& other) noexcept;
  FrozenImage(const FrozenImage&) = delete;
  FrozenImage& operator=(const FrozenImage&) = delete;
  ~FrozenImage();

  const ImageMetadata& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  // A full page (page_size bytes); the short last page is served from a zero-padded copy.
  std::span<const std::byte> page(std::uint64_t index) const;

 private:
  FrozenImage() = default;
  ImageMetadata metadata_;
  std::string path_;
  const std::byte* map_ = nullptr;
  std::size_t map_length_ = 0;
  std::vector<std::byte> padded_last_page_;
};

}  // namespace sf::memtap
