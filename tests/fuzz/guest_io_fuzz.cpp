// Fuzz target: the guest's "sf.io" channel (docs/sfd.md, "Guest I/O protocol") as sfd and the
// guest agent read it: the byte stream is fed to a FrameDecoder in chunks whose sizes come
// from the input, and every frame's payload is read as its type says: exit and error (what
// sfd reads from a guest), spec (what the guest agent reads from sfd). The first byte picks
// the chunk size. A corrupt stream is an Error, never a crash; a frame's payload is within
// the cap.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "sfd/guest_io.hpp"

namespace gio = sf::sfd::guest_io;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::size_t chunk = 1 + data[0] % 64;
  gio::FrameDecoder decoder;
  std::size_t pos = 1;
  while (pos < size) {
    const std::size_t n = std::min(chunk, size - pos);
    decoder.feed({data + pos, n});
    pos += n;
    for (;;) {
      auto f = decoder.next();
      if (!f) return 0;  // the stream is unusable from here
      if (!*f) break;
      const gio::Frame& frame = **f;
      if (frame.payload.size() > gio::kMaxPayload) std::abort();
      switch (frame.type) {
        case gio::FrameType::exit: (void)gio::parse_exit(frame.text()); break;
        case gio::FrameType::error: (void)gio::parse_error_message(frame.text()); break;
        case gio::FrameType::spec: (void)gio::parse_spec(frame.text()); break;
        case gio::FrameType::stdout_data:
        case gio::FrameType::stderr_data:
        case gio::FrameType::stdin_data: break;
        default: std::abort();  // next() refuses unknown types
      }
      // What the encoder makes of a frame decodes to the same frame.
      gio::FrameDecoder again;
      again.feed(gio::encode(frame.type, frame.payload));
      auto g = again.next();
      if (!g || !*g || (*g)->type != frame.type || (*g)->payload != frame.payload) std::abort();
    }
  }
  return 0;
}
