// Fuzz target: a VM descriptor's metadata as a remote host receives it (docs/formats/
// vm-descriptor.md, docs/protocols/remote-clone.md): the origin's control reply, the JSON that
// describes the descriptor and the VM (parse_origin_reply), and the guest's free-page report,
// FIRST+COUNT hex ranges (decode_page_ranges), which reaches sfd in a guest's clone request
// and the descriptor metadata. The first byte picks which. Accepted values must be in range.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "clone-core/free_pages.hpp"
#include "sfd/remote_clone.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    auto r = sf::sfd::parse_origin_reply(text);
    if (r) {
      if (r->descriptor_bytes == 0 || r->mcast_port == 0 || r->vm.cpus < 1 || r->vm.mem_mib == 0) std::abort();
    }
  } else {
    auto ranges = sf::decode_page_ranges(text, 1024);
    if (ranges) {
      std::uint64_t end = 0;
      for (const auto& r : *ranges) {
        if (r.count == 0 || r.first < end || r.first + r.count < r.first) std::abort();
        end = r.first + r.count;
      }
      if (sf::decode_page_ranges(sf::encode_page_ranges(*ranges), 1024).value().size() != ranges->size()) std::abort();
    }
  }
  return 0;
}
