// memtap local page source (see local_page_source.hpp).
#include "memtap/local_page_source.hpp"

#include <cstring>

#include "fault_injection.hpp"

namespace sf::memtap {

LocalPageSource::LocalPageSource(std::shared_ptr<const FrozenImage> image) : image_(std::move(image)) {}

Status LocalPageSource::fetch(std::span<const PageRange> ranges, std::span<std::byte> out) {
  if (fault_fires(FaultKind::kFetchFail)) {
    return make_error(ErrorCode::kInjected, "fetch failed by MEMTAP_FAULT=fetch-fail");
  }
  const auto& md = image_->metadata();
  std::size_t off = 0;
  for (const auto& r : ranges) {
    if (r.first + r.count > md.page_count() || r.first + r.count < r.first) {
      return make_error(ErrorCode::kOutOfRange, "pages outside the image");
    }
    for (std::uint32_t i = 0; i < r.count; ++i) {
      if (off + md.page_size() > out.size()) return make_error(ErrorCode::kInvalidArgument, "output buffer too small");
      auto pg = image_->page(r.first + i);
      std::memcpy(out.data() + off, pg.data(), pg.size());
      off += md.page_size();
    }
  }
  return ok_status();
}

}  // namespace sf::memtap
