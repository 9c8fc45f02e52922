// memtap local page source: serves pages straight from a frozen image on this host (no
// network). Used for same-host clients and as the baseline in the benchmark.
#pragma once

#include <memory>

#include "memtap/image.hpp"
#include "memtap/page_source.hpp"

namespace sf::memtap {

class LocalPageSource : public PageSource {
 public:
  explicit LocalPageSource(std::shared_ptr<const FrozenImage> image);
  const ImageMetadata& metadata() const override { return image_->metadata(); }
  Status fetch(std::span<const PageRange> ranges, std::span<std::byte> out) override;
  std::uint32_t max_batch_pages() const override { return 1u << 16; }
  std::string describe() const override { return "local " + image_->path(); }

 private:
  std::shared_ptr<const FrozenImage> image_;
};

}  // namespace sf::memtap
