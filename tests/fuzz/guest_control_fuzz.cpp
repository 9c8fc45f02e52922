// Fuzz target: the guest control channel "sf.ctl" (docs/protocols/vm-clone.md) as both ends
// read it through clone-core/guest_control.hpp: the byte stream is fed to a FrameReader in
// chunks whose sizes come from the input; every body is decoded as a Request (what sfd reads
// from a guest, including the free-page ranges of a clone request) and as a HostMessage (what
// the qemu driver reads from sfd, including the clone ends). The first byte picks the chunk
// size. A corrupt stream is an Error, never a crash; no body exceeds the cap; whatever decodes
// encodes to a frame that decodes to the same message.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "clone-core/free_pages.hpp"
#include "clone-core/guest_control.hpp"

namespace gc = sf::guest_control;

namespace {

template <class M, class Decode>
void round_trip(const M& message, Decode decode) {
  auto frame = gc::encode_frame(message);
  if (!frame) return;  // a decoded body is within the cap, but a re-encoding may be longer
  gc::FrameReader reader;
  reader.feed(frame->data(), frame->size());
  auto body = reader.next();
  if (!body || !*body || reader.buffered() != 0) std::abort();
  auto again = decode(**body);
  if (!again || again->SerializeAsString() != message.SerializeAsString()) std::abort();
}

void check_request(const std::string& body) {
  auto r = gc::decode_request(body);
  if (!r) return;
  (void)gc::op_name(*r);
  if (r->version() != gc::kVersion) (void)gc::version_mismatch(gc::kVersion, r->version());
  if (r->has_clone()) (void)sf::decode_page_ranges(r->clone().free_pages());
  round_trip(*r, gc::decode_request);
}

void check_host_message(const std::string& body) {
  auto m = gc::decode_host_message(body);
  if (!m) return;
  if (m->has_ended()) (void)gc::from_wire(m->ended().end());
  if (m->has_join()) {
    for (const auto& s : m->join().statuses()) {
      if (auto end = gc::from_wire(s.end()); end && gc::to_wire(*end) != s.end()) std::abort();
    }
  }
  round_trip(*m, gc::decode_host_message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t chunk = 1 + data[0] % 64;
  gc::FrameReader reader;
  std::size_t pos = 1;
  while (pos < size) {
    const std::size_t n = std::min(chunk, size - pos);
    reader.feed(data + pos, n);
    pos += n;
    for (;;) {
      auto body = reader.next();
      if (!body) {
        if (reader.finish().ok()) std::abort();  // a broken stream stays broken
        return 0;
      }
      if (!*body) break;
      if ((*body)->size() > gc::kMaxFrame) std::abort();
      check_request(**body);
      check_host_message(**body);
    }
  }
  (void)reader.finish();
  return 0;
}
