// Fuzz target: the control protocol of mpirun-sf (docs/protocols/control.md) as the
// coordinator receives it from a clone's node agent over TCP: the input is a byte stream cut
// into frames by decode_frame_length, each body parsed as an Envelope and, if it parses,
// handed to a real Coordinator of a small job (3 nodes, 4 ranks) as node 1 or 2 would.
// A message must never crash the launcher, whatever ranks, nodes or signatures it names.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "control_frame.hpp"
#include "coordinator.hpp"

namespace {

using namespace sf::mpirun;

class NullLink : public Link {
 public:
  void send(Envelope) override {}
};

LaunchContext make_context() {
  LaunchContext ctx;
  ctx.map.nspace = "fuzz";
  ctx.map.nodes = {{"node0", {0, 1}}, {"node1", {2}}, {"node2", {3}}};
  for (int r = 0; r < 4; ++r) {
    sf::pmix::RankPlacement p;
    p.node = r < 2 ? 0 : r - 1;
    p.app_rank = r;
    ctx.map.ranks.push_back(p);
  }
  ctx.map.apps = {{0, 4}};
  ctx.map.universe_size = 4;
  ctx.plan.machines = 3;
  ctx.plan.np = 4;
  return ctx;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const LaunchContext ctx = make_context();
  boost::asio::io_context io;
  OutputSink sink(OutputOptions{}, [](int, const std::string&) {}, [] { return std::time_t{0}; });
  Coordinator coordinator(io, ctx, sink);
  NullLink links[3];
  for (int n = 0; n < 3; ++n) coordinator.connect_node(n, &links[n]);
  std::size_t pos = 0;
  while (size - pos >= 4) {
    std::array<unsigned char, 4> header;
    std::memcpy(header.data(), data + pos, 4);
    pos += 4;
    auto length = decode_frame_length(header);
    if (!length) break;  // the link fails
    // Fuzz inputs are short; lengths beyond the input are the link waiting for more.
    if (*length > size - pos) break;
    Envelope m;
    const bool ok = m.ParseFromArray(data + pos, static_cast<int>(*length));
    pos += *length;
    if (!ok) break;  // "a frame is not a valid control message": the link fails
    // The first byte of each body chooses the sending node (1 or 2: clones' links).
    const int from = 1 + (*length > 0 ? data[pos - *length] & 1 : 0);
    coordinator.handle(from, std::move(m));
    io.poll();
  }
  return 0;
}
