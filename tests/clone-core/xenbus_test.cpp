// clone-core's xenstore client (clone-core/src/xenbus.hpp) against a fake xenstored on the
// other end of a raw pseudo-terminal: the bytes on the wire (Xen's xs_wire.h header and
// NUL-separated strings), values with NUL bytes, ENOENT and other errors, directory listings,
// and watch events that arrive before a reply.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pty.h>
#include <termios.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <thread>

#include "xenbus.hpp"

namespace {

using namespace std::string_literals;

struct Msg {
  std::uint32_t type = 0, req_id = 0, tx_id = 0;
  std::string payload;
};

// The fake daemon's side: whole messages in and out of the pty's master.
class FakeXenstored {
 public:
  FakeXenstored() {
    int slave = -1;
    char name[64] = {};
    EXPECT_EQ(openpty(&master_, &slave, name, nullptr, nullptr), 0);
    termios t{};
    tcgetattr(slave, &t);
    cfmakeraw(&t);
    tcsetattr(slave, TCSANOW, &t);
    path_ = name;
    slave_ = slave;  // kept open so that the master never sees a hang-up between clients
  }
  ~FakeXenstored() {
    close(master_);
    close(slave_);
  }
  const std::string& path() const { return path_; }

  Msg receive() {
    std::string head = read_exact(16);
    Msg m;
    std::memcpy(&m.type, head.data(), 4);
    std::memcpy(&m.req_id, head.data() + 4, 4);
    std::memcpy(&m.tx_id, head.data() + 8, 4);
    std::uint32_t len = 0;
    std::memcpy(&len, head.data() + 12, 4);
    m.payload = read_exact(len);
    return m;
  }
  void send(std::uint32_t type, std::uint32_t req_id, const std::string& payload) {
    std::string out(16, '\0');
    const std::uint32_t len = static_cast<std::uint32_t>(payload.size());
    std::memcpy(out.data(), &type, 4);
    std::memcpy(out.data() + 4, &req_id, 4);
    std::memcpy(out.data() + 12, &len, 4);
    out += payload;
    ASSERT_EQ(write(master_, out.data(), out.size()), static_cast<ssize_t>(out.size()));
  }

 private:
  std::string read_exact(std::size_t n) {
    std::string s;
    while (s.size() < n) {
      char buf[4096];
      const ssize_t r = read(master_, buf, std::min(sizeof buf, n - s.size()));
      if (r <= 0) break;
      s.append(buf, static_cast<std::size_t>(r));
    }
    return s;
  }
  int master_ = -1, slave_ = -1;
  std::string path_;
};

constexpr std::uint32_t kDirectory = 1, kRead = 2, kWatch = 4, kWrite = 11, kRm = 13, kWatchEvent = 15, kError = 16;

TEST(Xenbus, WritesAndReadsValuesWithTheWireHeaderAndKeepsNulBytes) {
  FakeXenstored d;
  auto c = sf::xenbus::Client::open(d.path());
  ASSERT_TRUE(c) << c.error().message;
  std::thread server([&] {
    Msg w = d.receive();
    EXPECT_EQ(w.type, kWrite);
    EXPECT_EQ(w.tx_id, 0u);
    EXPECT_EQ(w.payload, "data/sf-ctl/request\0a\0b"s);
    d.send(kWrite, w.req_id, "OK\0"s);
    Msg r = d.receive();
    EXPECT_EQ(r.type, kRead);
    EXPECT_NE(r.req_id, w.req_id);
    EXPECT_EQ(r.payload, "data/sf-ctl/request\0"s);
    d.send(kRead, r.req_id, "a\0b"s);
  });
  EXPECT_TRUE(c->write("data/sf-ctl/request", "a\0b"s));
  auto v = c->read("data/sf-ctl/request");
  server.join();
  ASSERT_TRUE(v) << v.error().message;
  ASSERT_TRUE(v->has_value());
  EXPECT_EQ(**v, "a\0b"s);
}

TEST(Xenbus, EnoentIsNoValueAndOtherErrorsAreNamed) {
  FakeXenstored d;
  auto c = sf::xenbus::Client::open(d.path());
  ASSERT_TRUE(c);
  std::thread server([&] {
    Msg r = d.receive();
    d.send(kError, r.req_id, "ENOENT\0"s);
    Msg l = d.receive();
    EXPECT_EQ(l.type, kDirectory);
    d.send(kError, l.req_id, "ENOENT\0"s);
    Msg rm = d.receive();
    EXPECT_EQ(rm.type, kRm);
    d.send(kError, rm.req_id, "ENOENT\0"s);
    Msg w = d.receive();
    d.send(kError, w.req_id, "EACCES\0"s);
  });
  auto v = c->read("data/none");
  ASSERT_TRUE(v);
  EXPECT_FALSE(v->has_value());
  auto names = c->directory("data/none");
  ASSERT_TRUE(names);
  EXPECT_TRUE(names->empty());
  EXPECT_TRUE(c->remove("data/none"));
  auto st = c->write("/local/domain/0/x", "1");
  server.join();
  ASSERT_FALSE(st);
  EXPECT_NE(st.error().message.find("EACCES"), std::string::npos) << st.error().message;
  EXPECT_NE(st.error().message.find("/local/domain/0/x"), std::string::npos) << st.error().message;
}

TEST(Xenbus, WatchEventsBeforeAReplyAreKeptForLater) {
  FakeXenstored d;
  auto c = sf::xenbus::Client::open(d.path());
  ASSERT_TRUE(c);
  std::thread server([&] {
    Msg w = d.receive();
    EXPECT_EQ(w.type, kWatch);
    EXPECT_EQ(w.payload, "data/sf-ctl/host\0tok\0"s);
    // xenstored fires a new watch at once, here before its reply.
    d.send(kWatchEvent, 0, "data/sf-ctl/host\0tok\0"s);
    d.send(kWatch, w.req_id, "OK\0"s);
    Msg l = d.receive();
    d.send(kWatchEvent, 0, "data/sf-ctl/host/00000001\0tok\0"s);
    d.send(kDirectory, l.req_id, "00000002\0" "00000001\0"s);
  });
  EXPECT_TRUE(c->watch("data/sf-ctl/host", "tok"));
  auto names = c->directory("data/sf-ctl/host");
  server.join();
  ASSERT_TRUE(names);
  EXPECT_EQ(*names, (std::vector<std::string>{"00000002", "00000001"}));
  auto e1 = c->next_event(0);
  ASSERT_TRUE(e1 && e1->has_value());
  EXPECT_EQ(**e1, "data/sf-ctl/host");
  auto e2 = c->next_event(0);
  ASSERT_TRUE(e2 && e2->has_value());
  EXPECT_EQ(**e2, "data/sf-ctl/host/00000001");
  auto none = c->next_event(0);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
}

TEST(Xenbus, AMissingDeviceSaysTheGuestIsNotAXenGuest) {
  auto c = sf::xenbus::Client::open("/nonexistent/xenbus");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().code, sf::Errc::driver_unavailable);
  EXPECT_NE(c.error().message.find("/nonexistent/xenbus"), std::string::npos);
}

}  // namespace
