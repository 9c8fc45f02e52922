// Fuzz target: QMP replies as sfd's QmpClient reads them from QEMU (sfd/src/qmp_client.cpp):
// the input is everything the peer says (greeting, replies, events), written into one end of a
// socketpair and closed; a real QmpClient adopts the other end and runs the handshake and the
// calls sfd makes (stop, query-status, query-migrate, wait_event). Any bytes may come back as
// an Error; none may crash sfd. Replies carry ids 1, 2, ... in order, so the seeds are real
// conversations.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "sfd/qmp_client.hpp"
#include "socket_input.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 32768) return 0;  // the socket buffer holds it all: no writer thread needed
  const int fd = socket_with_input(data, size);
  auto client = sf::sfd::QmpClient::adopt(fd);
  if (!client) std::abort();
  auto& c = **client;
  constexpr std::chrono::milliseconds t{200};
  if (!c.handshake(t)) return 0;
  (void)c.greeting().dump();
  (void)c.execute("stop", {}, t);
  (void)c.query_status();
  (void)c.query_migrate();
  (void)c.wait_event("STOP", t);
  for (const auto& e : c.take_events()) (void)e.dump();
  return 0;
}
