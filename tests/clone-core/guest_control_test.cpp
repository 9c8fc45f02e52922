// clone-core unit tests of the sf.ctl codec (clone-core/guest_control.hpp): every message
// through a frame and back, chunked streams, the version carried, and the errors on oversize,
// garbage and truncated frames.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "clone-core/guest_control.hpp"

namespace {

namespace gc = sf::guest_control;

// All frames of `stream`, fed `chunk` bytes at a time.
std::vector<std::string> read_all(const std::string& stream, std::size_t chunk) {
  gc::FrameReader reader;
  std::vector<std::string> bodies;
  for (std::size_t pos = 0; pos < stream.size(); pos += chunk) {
    reader.feed(stream.data() + pos, std::min(chunk, stream.size() - pos));
    for (;;) {
      auto body = reader.next();
      EXPECT_TRUE(body) << body.error().message;
      if (!body || !*body) break;
      bodies.push_back(**body);
    }
  }
  EXPECT_TRUE(reader.finish().ok());
  return bodies;
}

std::string frame_of(const gc::Request& r) {
  auto f = gc::encode_frame(r);
  EXPECT_TRUE(f) << f.error().message;
  return f ? *f : std::string();
}

std::string frame_of(const gc::HostMessage& m) {
  auto f = gc::encode_frame(m);
  EXPECT_TRUE(f) << f.error().message;
  return f ? *f : std::string();
}

TEST(GuestControl, EveryRequestRoundTripsWithTheVersion) {
  std::vector<gc::Request> sent;
  {
    gc::Request r = gc::make_request();
    auto& t = *r.mutable_ticket();
    t.set_clones(3);
    t.set_min_clones(2);
    t.set_procs_per_clone(4);
    t.set_hostname("node");
    sent.push_back(r);
  }
  {
    gc::Request r = gc::make_request();
    r.mutable_clone()->set_free_pages("100+400,1a00+2");
    r.mutable_clone()->set_free_page_count(0x402);
    sent.push_back(r);
  }
  {
    gc::Request r = gc::make_request();
    r.mutable_sync()->set_status(-7);
    sent.push_back(r);
  }
  gc::Request join = gc::make_request();
  join.mutable_join();
  sent.push_back(join);
  gc::Request kill = gc::make_request();
  kill.mutable_kill();
  sent.push_back(kill);

  std::string stream;
  for (const auto& r : sent) stream += frame_of(r);
  for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{4096}}) {
    const auto bodies = read_all(stream, chunk);
    ASSERT_EQ(bodies.size(), sent.size());
    for (std::size_t i = 0; i < sent.size(); ++i) {
      auto r = gc::decode_request(bodies[i]);
      ASSERT_TRUE(r) << r.error().message;
      EXPECT_EQ(r->version(), gc::kVersion);
      EXPECT_EQ(r->SerializeAsString(), sent[i].SerializeAsString());
      EXPECT_STREQ(gc::op_name(*r), gc::op_name(sent[i]));
    }
  }
  auto t = gc::decode_request(read_all(stream, 4096).front());
  ASSERT_TRUE(t);
  EXPECT_EQ(t->ticket().hostname(), "node");
  EXPECT_EQ(t->ticket().procs_per_clone(), 4u);
  EXPECT_STREQ(gc::op_name(*t), "ticket");
}

TEST(GuestControl, HostMessagesRoundTrip) {
  gc::HostMessage ticket = gc::make_host_message();
  ticket.mutable_ticket()->set_granted(1);
  ticket.mutable_ticket()->set_subnet("10.213.0.0/24");
  for (unsigned i = 0; i < 2; ++i) {
    auto& n = *ticket.mutable_ticket()->add_nodes();
    n.set_id(i);
    n.set_address("10.213.0." + std::to_string(i + 1));
    n.set_prefix(24);
    n.set_mac("52:54:00:53:46:0" + std::to_string(i));
    n.set_hostname(i == 0 ? "h" : "h-1");
  }
  gc::HostMessage join = gc::make_host_message();
  auto& s = *join.mutable_join()->add_statuses();
  s.set_id(1);
  s.set_end(gc::to_wire(sf::CloneEnd::signaled));
  s.set_value(11);
  gc::HostMessage refusal = gc::make_host_message();
  refusal.set_error("one ticket per sfd run");

  const std::string stream = frame_of(ticket) + frame_of(join) + frame_of(refusal);
  const auto bodies = read_all(stream, 5);
  ASSERT_EQ(bodies.size(), 3u);
  auto t = gc::decode_host_message(bodies[0]);
  ASSERT_TRUE(t);
  ASSERT_TRUE(t->has_ticket());
  EXPECT_EQ(t->ticket().nodes_size(), 2);
  EXPECT_EQ(t->ticket().nodes(1).mac(), "52:54:00:53:46:01");
  auto j = gc::decode_host_message(bodies[1]);
  ASSERT_TRUE(j);
  ASSERT_EQ(j->join().statuses_size(), 1);
  auto end = gc::from_wire(j->join().statuses(0).end());
  ASSERT_TRUE(end);
  EXPECT_EQ(*end, sf::CloneEnd::signaled);
  auto r = gc::decode_host_message(bodies[2]);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->version(), gc::kVersion);
  EXPECT_EQ(r->error(), "one ticket per sfd run");
}

TEST(GuestControl, CloneEndsMatchCloneCore) {
  for (auto e : {sf::CloneEnd::synced, sf::CloneEnd::exited, sf::CloneEnd::signaled, sf::CloneEnd::killed, sf::CloneEnd::lost}) {
    auto back = gc::from_wire(gc::to_wire(e));
    ASSERT_TRUE(back);
    EXPECT_EQ(*back, e);
  }
  auto unknown = gc::from_wire(99);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("unknown clone end 99"), std::string::npos);
}

TEST(GuestControl, AnotherVersionIsReadAndNamed) {
  // A program of a later version: its version and op still decode, so sfd can refuse it.
  gc::Request future = gc::make_request();
  future.set_version(gc::kVersion + 1);
  future.mutable_join();
  auto r = gc::decode_request(read_all(frame_of(future), 7).front());
  ASSERT_TRUE(r);
  EXPECT_EQ(r->version(), gc::kVersion + 1);
  const std::string why = gc::version_mismatch(gc::kVersion, r->version());
  const std::string expected = "sfd speaks sf.ctl version " + std::to_string(gc::kVersion) + ", this program version " +
                               std::to_string(gc::kVersion + 1) + ": rebuild";
  EXPECT_EQ(why.rfind(expected, 0), 0u)
      << why;

  // sfd's refusal of another version: version and error are fields 1 and 2 in every version.
  gc::HostMessage refusal;
  refusal.set_version(7);
  refusal.set_error("go away");
  auto m = gc::decode_host_message(read_all(frame_of(refusal), 64).front());
  ASSERT_TRUE(m);
  EXPECT_EQ(m->version(), 7u);
  EXPECT_EQ(m->error(), "go away");

  // A request without a version (an empty message) reads as version 0.
  auto empty = gc::decode_request("");
  ASSERT_TRUE(empty);
  EXPECT_EQ(empty->version(), 0u);
  EXPECT_STREQ(gc::op_name(*empty), "empty");
}

TEST(GuestControl, OversizeFramesAreRefused) {
  gc::Request big = gc::make_request();
  big.mutable_clone()->set_free_pages(std::string(gc::kMaxFrame, '1'));
  auto f = gc::encode_frame(big);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().message.find("exceeds the frame limit"), std::string::npos) << f.error().message;

  // A header announcing one byte more than the limit breaks the stream for good.
  const std::uint32_t n = gc::kMaxFrame + 1;
  const std::string header{static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8), static_cast<char>(n)};
  gc::FrameReader reader;
  reader.feed(header.data(), header.size());
  auto body = reader.next();
  ASSERT_FALSE(body);
  EXPECT_NE(body.error().message.find("more than the limit"), std::string::npos) << body.error().message;
  const std::string ok = frame_of(gc::make_request());
  reader.feed(ok.data(), ok.size());
  EXPECT_FALSE(reader.next());
  EXPECT_FALSE(reader.finish().ok());

  // Exactly the limit is a frame (here: one that is not a request).
  const std::uint32_t m = gc::kMaxFrame;
  std::string at_limit{static_cast<char>(m >> 24), static_cast<char>(m >> 16), static_cast<char>(m >> 8), static_cast<char>(m)};
  at_limit += std::string(gc::kMaxFrame, '\xff');
  gc::FrameReader r2;
  r2.feed(at_limit.data(), at_limit.size());
  auto b2 = r2.next();
  ASSERT_TRUE(b2);
  ASSERT_TRUE(*b2);
  EXPECT_EQ((*b2)->size(), gc::kMaxFrame);
  EXPECT_FALSE(gc::decode_request(**b2));
}

TEST(GuestControl, JsonLinesOfVersionOneAreNamed) {
  const std::string line = "{\"op\":\"ticket\",\"clones\":2}\n";
  gc::FrameReader reader;
  reader.feed(line.data(), line.size());
  auto body = reader.next();
  ASSERT_FALSE(body);
  EXPECT_NE(body.error().message.find("sf.ctl version 1"), std::string::npos) << body.error().message;
}

TEST(GuestControl, TruncatedFramesWaitThenFailAtTheEnd) {
  gc::Request r = gc::make_request();
  r.mutable_ticket()->set_hostname("a-rather-long-hostname");
  const std::string frame = frame_of(r);
  for (std::size_t cut : {std::size_t{1}, gc::kHeaderBytes, frame.size() - 1}) {
    gc::FrameReader reader;
    reader.feed(frame.data(), cut);
    auto body = reader.next();
    ASSERT_TRUE(body);
    EXPECT_FALSE(*body) << "cut at " << cut;
    const sf::Status end = reader.finish();
    ASSERT_FALSE(end) << "cut at " << cut;
    EXPECT_NE(end.error().message.find("ended inside a frame"), std::string::npos) << end.error().message;
  }
}

TEST(GuestControl, GarbageBodiesAreErrors) {
  // A well-framed body that is not protobuf: the frame is consumed, decoding says why.
  const std::string garbage = std::string("\0\0\0\3", 4) + "\xff\xff\xff";
  gc::FrameReader reader;
  reader.feed(garbage.data(), garbage.size());
  auto body = reader.next();
  ASSERT_TRUE(body);
  ASSERT_TRUE(*body);
  auto r = gc::decode_request(**body);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("not a request"), std::string::npos) << r.error().message;
  EXPECT_FALSE(gc::decode_host_message(**body));
  EXPECT_TRUE(reader.finish().ok());
}

}  // namespace
