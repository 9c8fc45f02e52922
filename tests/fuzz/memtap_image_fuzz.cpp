// Fuzz target: memtap's image metadata (docs/formats/memtap-image.md) as a client reads it
// from a page server (GET_METADATA) or memtap reads IMAGE.memtap: ImageMetadata::parse. What
// parses must be usable (every accessor in range), and what serialize() makes of it must
// parse to the same image.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "memtap/image.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  auto md = sf::memtap::ImageMetadata::parse(bytes);
  if (!md) return 0;
  std::uint64_t sum = md->no_fetch_count() + md->header_checksum() + md->image_id();
  for (std::uint64_t p = 0; p < md->page_count(); ++p) {
    sum += md->no_fetch(p) + md->checksum(p) + md->bytes_in_page(p);
  }
  const auto again = md->serialize(md->has_token());
  if (again.size() != size) std::abort();
  auto reparsed = sf::memtap::ImageMetadata::parse(again);
  if (!reparsed || reparsed->image_id() != md->image_id() || reparsed->page_count() != md->page_count() ||
      reparsed->no_fetch_count() != md->no_fetch_count() || reparsed->has_token() != md->has_token())
    std::abort();
  return sum == 42 ? 0 : 0;
}
