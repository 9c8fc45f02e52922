// Fuzz target: what one end of the link between sfd-xen and a host agent says to the other
// (sfd/xen/host_link.*): the input is written into one end of a socketpair and closed; a real
// HostLink adopts the other end and reads messages until the end, as both roles do, and every
// message is checked as the agent checks a restore request (parse_restore). Any bytes may come
// back as an Error; none may crash sfd-xen. Seeds are real conversations.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "host_link.hpp"
#include "socket_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 32768) return 0;  // the socket buffer holds it all: no writer thread needed
  const int fd = socket_with_input(data, size);
  sf::sfd::xen::HostLink link(fd);
  link.set_peer("peer");
  for (int i = 0; i < 64; ++i) {
    auto m = link.receive(std::chrono::milliseconds(100));
    if (!m) break;
    auto r = sf::sfd::xen::parse_restore(*m);
    if (r) (void)sf::sfd::xen::encode_restore(*r).dump();
  }
  return 0;
}
