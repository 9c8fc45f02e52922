// Fuzz target: memtap's wire protocol (docs/protocols/memtap.md) as either end reads it: the
// 32-byte frame header (decode_header), the HELLO reply a client reads, and the FETCH body a
// page server checks against its image (decode_fetch_request). The first byte picks which.
// A FETCH the server accepts must lie inside the image and within the batch cap.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "memtap/protocol.hpp"

namespace proto = sf::memtap::protocol;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::uint8_t which = data[0];
  const std::span<const std::byte> rest(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  switch (which % 3) {
    case 0: {
      if (rest.size() < proto::kHeaderSize) return 0;
      auto h = proto::decode_header(rest.first<proto::kHeaderSize>());
      if (!h) return 0;
      if (h->body_length > proto::kMaxBody) std::abort();
      (void)proto::to_string(h->status);
      (void)proto::error_code_for(h->status);
      auto again = proto::encode_header(*h);
      auto h2 = proto::decode_header(again);
      if (!h2 || h2->body_length != h->body_length || h2->request_id != h->request_id) std::abort();
      break;
    }
    case 1: {
      auto r = proto::decode_hello_reply(rest);
      if (r && r->max_batch_pages == 0) std::abort();
      break;
    }
    case 2: {
      // The image geometry and the batch cap come from the input too (first 12 bytes).
      if (rest.size() < 12) return 0;
      std::uint64_t page_count = 0;
      std::uint32_t max_batch = 0;
      for (int i = 0; i < 8; ++i) page_count |= std::uint64_t(std::to_integer<std::uint8_t>(rest[i])) << (8 * i);
      for (int i = 0; i < 4; ++i) max_batch |= std::uint32_t(std::to_integer<std::uint8_t>(rest[8 + i])) << (8 * i);
      auto req = proto::decode_fetch_request(rest.subspan(12), page_count, max_batch);
      if (req.status != proto::WireStatus::kOk) {
        if (req.error.empty() || !req.ranges.empty()) std::abort();
        return 0;
      }
      std::uint64_t pages = 0;
      for (const auto& r : req.ranges) {
        if (r.first >= page_count || r.count > page_count - r.first) std::abort();
        pages += r.count;
      }
      if (pages != req.pages || pages > max_batch || req.ranges.size() > proto::kMaxRanges) std::abort();
      auto again = proto::encode_fetch_request(req.ranges);
      if (again.size() != rest.size() - 12) std::abort();
      break;
    }
  }
  return 0;
}
