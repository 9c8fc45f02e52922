// Unit tests of the control protocol's receiving end: the TCP framing (control_frame.hpp) and
// the coordinator's handling of messages a node's agent sends (coordinator.cpp). A message that
// names a rank or node outside the job, or a malformed fence signature, is dropped: it must
// neither throw out of the event loop (which ended mpirun-sf) nor hang it. Found while writing
// tests/fuzz/control_frame_fuzz; its corpus holds these inputs as frames.
#include <gtest/gtest.h>

#include <array>
#include <string>
#include <vector>

#include "control_frame.hpp"
#include "coordinator.hpp"
#include "tcp_link.hpp"

namespace sf::mpirun {
namespace {

class RecordingLink : public Link {
 public:
  void send(Envelope m) override { sent.push_back(std::move(m)); }
  std::vector<Envelope> sent;
};

struct Job {
  Job() {
    ctx.map.nspace = "ns";
    ctx.map.nodes = {{"node0", {0, 1}}, {"node1", {2}}, {"node2", {3}}};
    for (int r = 0; r < 4; ++r) {
      pmix::RankPlacement p;
      p.node = r < 2 ? 0 : r - 1;
      ctx.map.ranks.push_back(p);
    }
    ctx.map.apps = {{0, 4}};
    coordinator = std::make_unique<Coordinator>(io, ctx, sink);
    for (int n = 0; n < 3; ++n) coordinator->connect_node(n, &links[n]);
  }
  boost::asio::io_context io;
  LaunchContext ctx;
  std::string printed;
  OutputSink sink{OutputOptions{}, [this](int, const std::string& b) { printed += b; }, [] { return std::time_t{0}; }};
  std::array<RecordingLink, 3> links;
  std::unique_ptr<Coordinator> coordinator;
};

Envelope fence(const std::string& signature, uint64_t seq) {
  Envelope m;
  m.mutable_fence()->set_signature(signature);
  m.mutable_fence()->set_seq(seq);
  m.mutable_fence()->set_data("d");
  return m;
}

TEST(ControlFrame, LengthIsBigEndianAndCapped) {
  EXPECT_EQ(decode_frame_length({0, 0, 1, 2}), 258u);
  EXPECT_EQ(decode_frame_length({0x04, 0, 0, 0}), kMaxControlFrame);
  EXPECT_FALSE(decode_frame_length({0x04, 0, 0, 1}));
  Envelope m;
  m.mutable_kill()->set_reason("x");
  const std::string frame = encode_frame(m);
  ASSERT_GE(frame.size(), 4u);
  std::array<unsigned char, 4> h;
  for (int i = 0; i < 4; ++i) h[i] = static_cast<unsigned char>(frame[i]);
  ASSERT_EQ(decode_frame_length(h), frame.size() - 4);
  Envelope back;
  ASSERT_TRUE(back.ParseFromString(frame.substr(4)));
  EXPECT_EQ(back.kill().reason(), "x");
}

// A peer announcing a frame over the limit: the link fails with the size it announced and the
// limit (the message a user sees when a node agent speaks something else on the port).
TEST(TcpLinkFraming, AnOversizeFrameFailsTheLinkNamingItsSize) {
  namespace asio = boost::asio;
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  asio::ip::tcp::socket peer(io);
  peer.connect(acceptor.local_endpoint());
  auto link = std::make_shared<TcpLink>(acceptor.accept());
  std::string error;
  bool got_message = false;
  link->start([&](Envelope) { got_message = true; }, [&](const std::string& why) { error = why; });
  const std::array<unsigned char, 4> header{0x7f, 0xff, 0xff, 0xff};
  asio::write(peer, asio::buffer(header));
  while (error.empty() && io.run_one() > 0) {
  }
  EXPECT_FALSE(got_message);
  EXPECT_EQ(error, "a frame of 2147483647 bytes exceeds the limit of " + std::to_string(kMaxControlFrame) + " bytes");
}

TEST(Coordinator, MessagesNamingRanksOutsideTheJobAreDropped) {
  Job job;
  Envelope m;
  m.mutable_rank_exited()->set_rank(4);
  m.mutable_rank_exited()->set_code(1);
  EXPECT_NO_THROW(job.coordinator->handle(1, m));
  m.Clear();
  m.mutable_launch_failed()->set_rank(1000);
  EXPECT_NO_THROW(job.coordinator->handle(1, m));
  m.Clear();
  m.mutable_abort()->set_rank(4294967295u);
  EXPECT_NO_THROW(job.coordinator->handle(2, m));
  m.Clear();
  m.mutable_modex_request()->set_rank(9);
  EXPECT_NO_THROW(job.coordinator->handle(2, m));
  m.Clear();
  m.mutable_modex_reply()->set_to_node(3);
  EXPECT_NO_THROW(job.coordinator->handle(2, m));
  m.Clear();
  m.mutable_output()->set_rank(77);
  m.mutable_output()->set_data("stray\n");
  EXPECT_NO_THROW(job.coordinator->handle(1, m));
  job.io.poll();
  EXPECT_FALSE(job.coordinator->outcome().failed());
  EXPECT_EQ(job.printed, "");
  for (auto& l : job.links) EXPECT_TRUE(l.sent.empty());
}

TEST(Coordinator, MessagesNamingRanksOfTheJobStillCount) {
  Job job;
  Envelope m;
  m.mutable_rank_exited()->set_rank(3);
  m.mutable_rank_exited()->set_code(1);
  job.coordinator->handle(2, m);
  EXPECT_TRUE(job.coordinator->outcome().failed());
  m.Clear();
  m.mutable_output()->set_rank(2);
  m.mutable_output()->set_data("line\n");
  job.coordinator->handle(1, m);
  EXPECT_EQ(job.printed, "line\n");
}

TEST(Coordinator, MalformedFenceSignaturesAreDropped) {
  Job job;
  // A rank that is no number, out of the job, empty; an empty signature.
  for (const std::string sig : {"ns:x;", "ns:4;", "ns:;", "ns:1;ns:99999999999999999999;", ";", ""}) {
    SCOPED_TRACE(sig);
    EXPECT_NO_THROW(job.coordinator->handle(1, fence(sig, 1)));
  }
  for (auto& l : job.links) EXPECT_TRUE(l.sent.empty());
}

TEST(Coordinator, FenceSignatureWithoutTrailingSemicolonCompletes) {
  // The last item without ';' made the parser start over at the beginning forever.
  Job job;
  job.coordinator->handle(1, fence("ns:2", 1));
  ASSERT_EQ(job.links[1].sent.size(), 1u);
  EXPECT_EQ(job.links[1].sent[0].fence_result().signature(), "ns:2");
  job.coordinator->handle(1, fence("ns:2;ns:3", 2));
  job.coordinator->handle(2, fence("ns:2;ns:3", 2));
  EXPECT_EQ(job.links[1].sent.size(), 2u);
  EXPECT_EQ(job.links[2].sent.size(), 1u);
  EXPECT_EQ(job.links[2].sent[0].fence_result().data(), "dd");
}

TEST(Coordinator, WellFormedFenceOfAllNodes) {
  Job job;
  for (int n = 0; n < 3; ++n) job.coordinator->handle(n, fence("ns:*;", 1));
  for (auto& l : job.links) {
    ASSERT_EQ(l.sent.size(), 1u);
    EXPECT_EQ(l.sent[0].fence_result().data(), "ddd");
  }
}

TEST(Coordinator, ANodeThatNeverHearsOfTheKillIsLostAfterTheGraceAndMargin) {
  // A clone whose link went down never gets KillJob nor sends NodeFinished: the job must
  // still end (it waited forever, past --timeout), with that node given up.
  Job job;
  job.ctx.kill_grace_ms = 0;
  job.ctx.teardown_margin_ms = 0;
  Envelope m;
  m.mutable_rank_exited()->set_rank(0);
  m.mutable_rank_exited()->set_code(5);
  job.coordinator->handle(0, m);
  for (int n : {0, 1}) {
    m.Clear();
    m.mutable_node_finished()->set_node(static_cast<uint32_t>(n));
    job.coordinator->handle(n, m);
  }
  EXPECT_FALSE(job.coordinator->done());
  EXPECT_FALSE(job.coordinator->abandoned_nodes());
  job.io.run_for(std::chrono::seconds(5));
  EXPECT_TRUE(job.coordinator->done());
  EXPECT_TRUE(job.coordinator->abandoned_nodes());
  EXPECT_EQ(job.coordinator->outcome().exit_code(), 5);
}

}  // namespace
}  // namespace sf::mpirun
