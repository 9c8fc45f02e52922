// memtap component tests: a real `memtap serve` process and userfaultfd clients (in this
// process, or as `memtap touch` child processes), talking over loopback TCP; and one test of
// serving through mcdist multicast between network namespaces on a bridge.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "memtap/image.hpp"
#include "memtap/local_page_source.hpp"
#include "memtap/tcp_page_source.hpp"
#include "memtap/uffd_region.hpp"
#include "test_support.hpp"
// mcdist's namespace-and-bridge test network (reused, not copied).
#include "multicast_testbed.hpp"

using namespace sf::memtap;
using namespace sf::memtap::test;

namespace {

// An image (pages random, every 5th page zero, a short last page), frozen, and served.
struct ServedImage {
  TempDir dir;
  std::vector<char> data;
  ServerProcess server;
  OwnerToken token{};

  explicit ServedImage(std::size_t pages = 2048, const std::vector<std::string>& server_env = {}) {
    data = make_image(dir / "img", pages, 5, 123);
    EXPECT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
    token = read_token_file(dir / "img.token").value();
    server = ServerProcess::start(dir, dir / "img", server_env);
    EXPECT_NE(server.port, 0) << read_file(server.err_path);
  }

  Endpoint endpoint() const { return Endpoint{"127.0.0.1", server.port}; }

  std::shared_ptr<TcpPageSource> connect(std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    TcpSourceOptions o;
    o.timeout = timeout;
    auto s = TcpPageSource::connect(endpoint(), token, o);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    return s.ok() ? *s : nullptr;
  }

  nlohmann::json server_stats() {
    auto src = connect();
    auto s = src->server_stats();
    EXPECT_TRUE(s.ok());
    return nlohmann::json::parse(s.ok() ? *s : std::string("{}"));
  }

  std::uint64_t nonzero_pages() const {
    std::uint64_t n = 0;
    for (std::size_t p = 0; p * 4096 < data.size(); ++p) {
      std::size_t len = std::min<std::size_t>(4096, data.size() - p * 4096);
      bool zero = true;
      for (std::size_t i = 0; i < len && zero; ++i) zero = data[p * 4096 + i] == 0;
      n += zero ? 0 : 1;
    }
    return n;
  }

  // `memtap touch` as a separate process.
  Child touch(const std::vector<std::string>& extra_args, const std::vector<std::string>& env, bool stdin_pipe) {
    std::vector<std::string> argv{memtap_bin(), "touch", server.address(), "--token-file", dir / "img.token"};
    argv.insert(argv.end(), extra_args.begin(), extra_args.end());
    // In the sanitizer build ASan would catch the SIGBUS these tests expect and exit 1.
    std::vector<std::string> full_env{"ASAN_OPTIONS=handle_sigbus=0:detect_leaks=0"};
    full_env.insert(full_env.end(), env.begin(), env.end());
    return Child::spawn(argv, full_env, dir / "touch.out", dir / "touch.err", stdin_pipe);
  }
};

bool region_equals(const UffdRegion& region, const std::vector<char>& data) {
  return std::memcmp(const_cast<UffdRegion&>(region).data(), data.data(), data.size()) == 0;
}

}  // namespace

TEST(MemtapUffd, LazilyFilledRegionEqualsImageUnderRandomAccess) {
  ServedImage img;
  auto src = img.connect();
  ASSERT_TRUE(src);
  UffdRegionOptions o;
  o.prefetch_pages = 4;
  auto region = UffdRegion::create(src, o);
  ASSERT_TRUE(region.ok()) << region.error().message;
  auto* base = reinterpret_cast<volatile char*>((*region)->data());
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<std::size_t> pick(0, img.data.size() - 1);
  for (int i = 0; i < 3000; ++i) {
    std::size_t off = pick(rng);
    ASSERT_EQ(base[off], img.data[off]) << "byte " << off;
  }
  EXPECT_TRUE(region_equals(**region, img.data));
  EXPECT_EQ((*region)->counters().fetch_errors.load(), 0u);
  EXPECT_GT((*region)->counters().pages_zero_served.load(), 0u);
}

TEST(MemtapUffd, LazilyFilledRegionEqualsImageUnderMultithreadedAccess) {
  ServedImage img(4096);
  auto src = img.connect();
  ASSERT_TRUE(src);
  UffdRegionOptions o;
  o.prefetch_pages = 8;
  o.handler_threads = 3;
  auto region = UffdRegion::create(src, o);
  ASSERT_TRUE(region.ok()) << region.error().message;
  const std::size_t pages = (img.data.size() + 4095) / 4096;
  auto* base = reinterpret_cast<volatile char*>((*region)->data());
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<unsigned>(t));
      std::vector<std::size_t> order(pages);
      for (std::size_t i = 0; i < pages; ++i) order[i] = i;
      std::shuffle(order.begin(), order.end(), rng);  // every thread touches every page, in its own order
      for (auto p : order) {
        std::size_t off = p * 4096 + (rng() % std::min<std::size_t>(4096, img.data.size() - p * 4096));
        if (base[off] != img.data[off]) mismatches.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
  EXPECT_TRUE(region_equals(**region, img.data));
}

TEST(MemtapUffd, NoFetchPagesAreNeverFetchedCountedAtTheServer) {
  ServedImage img;
  auto src = img.connect();
  ASSERT_TRUE(src);
  UffdRegionOptions o;
  o.prefetch_pages = 16;
  auto region = UffdRegion::create(src, o);
  ASSERT_TRUE(region.ok()) << region.error().message;
  EXPECT_TRUE(region_equals(**region, img.data));
  auto stats = img.server_stats();
  EXPECT_EQ(stats["nofetch_pages_requested"].get<std::uint64_t>(), 0u) << stats.dump();
  // Every other page exactly once.
  EXPECT_EQ(stats["pages_served"].get<std::uint64_t>(), img.nonzero_pages()) << stats.dump();
  EXPECT_EQ((*region)->counters().pages_zero_served.load(), src->metadata().no_fetch_count());
}

TEST(MemtapUffd, WithoutTheMapEveryPageIsFetched) {
  ServedImage img(256);
  auto src = img.connect();
  UffdRegionOptions o;
  o.use_no_fetch_map = false;
  auto region = UffdRegion::create(src, o);
  ASSERT_TRUE(region.ok());
  EXPECT_TRUE(region_equals(**region, img.data));
  auto stats = img.server_stats();
  EXPECT_EQ(stats["pages_served"].get<std::uint64_t>(), src->metadata().page_count());
}

TEST(MemtapUffd, UnsolicitedPagesAreInstalledWithoutAFetch) {
  // A source that, like a multicast receiver, pushes pages nobody asked for.
  TempDir dir;
  auto data = make_image(dir / "img", 64, 0);
  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  auto frozen = FrozenImage::open(dir / "img");
  ASSERT_TRUE(frozen.ok());
  auto shared = std::make_shared<const FrozenImage>(std::move(frozen).value());
  struct PushingSource : LocalPageSource {
    using LocalPageSource::LocalPageSource;
    void set_unsolicited_sink(UnsolicitedPageSink s) override { sink = std::move(s); }
    UnsolicitedPageSink sink;
  };
  auto src = std::make_shared<PushingSource>(shared);
  auto region = UffdRegion::create(src, {});
  ASSERT_TRUE(region.ok());
  ASSERT_TRUE(src->sink);
  for (std::uint64_t p = 0; p < 32; ++p) src->sink(p, shared->page(p));
  EXPECT_EQ((*region)->counters().pages_unsolicited.load(), 32u);
  EXPECT_EQ(std::memcmp((*region)->data(), data.data(), 32 * 4096), 0);
  EXPECT_EQ((*region)->counters().fetches.load(), 0u);
  // A page with a wrong checksum is ignored.
  std::vector<std::byte> junk(4096, std::byte{7});
  src->sink(40, junk);
  EXPECT_EQ((*region)->counters().pages_unsolicited.load(), 32u);
  EXPECT_TRUE(region_equals(**region, data));
}

TEST(MemtapServer, WrongTokenIsRefused) {
  ServedImage img(16);
  OwnerToken wrong = img.token;
  wrong[0] ^= 0xff;
  auto s = TcpPageSource::connect(img.endpoint(), wrong);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kBadToken);
  EXPECT_NE(s.error().message.find("token"), std::string::npos) << s.error().message;
  EXPECT_EQ(img.server_stats()["hello_refused"].get<std::uint64_t>(), 1u);
}

TEST(MemtapServer, CorruptOrTruncatedMetadataIsRefusedAtStart) {
  TempDir dir;
  make_image(dir / "img", 16, 2);
  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  {
    std::fstream f(dir / "img.memtap", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(30);
    f.put('\x55');  // inside image_length: the header checksum no longer matches
  }
  auto s = ServerProcess::start(dir, dir / "img");
  auto st = s.child.wait_for(10s);
  ASSERT_TRUE(st.has_value());
  EXPECT_NE(WEXITSTATUS(*st), 0);
  EXPECT_NE(read_file(s.err_path).find("header checksum mismatch"), std::string::npos) << read_file(s.err_path);

  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  std::filesystem::resize_file(dir / "img.memtap", std::filesystem::file_size(dir / "img.memtap") - 8);
  auto s2 = ServerProcess::start(dir, dir / "img", {}, "server2");
  auto st2 = s2.child.wait_for(10s);
  ASSERT_TRUE(st2.has_value());
  EXPECT_NE(WEXITSTATUS(*st2), 0);
  EXPECT_NE(read_file(s2.err_path).find("truncated"), std::string::npos) << read_file(s2.err_path);
}

TEST(MemtapServer, PageChangedAfterFreezeIsRefused) {
  ServedImage img(64);
  {
    std::fstream f(img.dir / "img", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(7 * 4096 + 5);
    f.put('\x01');
  }
  auto src = img.connect();
  std::vector<std::byte> out(4096);
  PageRange r{7, 1};
  auto st = src->fetch({&r, 1}, out);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error().code, ErrorCode::kCorrupt);
  EXPECT_NE(st.error().message.find("changed after it was frozen"), std::string::npos) << st.error().message;
  PageRange ok{8, 1};
  EXPECT_TRUE(src->fetch({&ok, 1}, out).ok());
}

TEST(MemtapServer, CorruptedReplyIsCaughtByThePageChecksum) {
  ServedImage img(64, {"MEMTAP_FAULT=serve-corrupt"});
  auto src = img.connect();
  std::vector<std::byte> out(4096);
  PageRange r{3, 1};
  ASSERT_TRUE(src->fetch({&r, 1}, out).ok());  // the frame is intact...
  EXPECT_FALSE(src->metadata().verify_page(3, out));  // ...but the page is not what was frozen
  // A region refuses it: the touching process gets SIGBUS.
  auto child = img.touch({"--timeout-ms", "2000"}, {}, false);
  auto st = child.wait_for(20s);
  ASSERT_TRUE(st.has_value()) << "memtap touch hung";
  ASSERT_TRUE(WIFSIGNALED(*st)) << read_file(img.dir / "touch.err");
  EXPECT_EQ(WTERMSIG(*st), SIGBUS);
  EXPECT_NE(read_file(img.dir / "touch.err").find("does not match its checksum"), std::string::npos);
}

TEST(MemtapServer, BindsOnlyTheAddressItIsTold) {
  ServedImage img(8);
  auto s = TcpPageSource::connect(Endpoint{"127.0.0.2", img.server.port}, img.token);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().code, ErrorCode::kUnavailable) << s.error().message;
}

// The server dies under a running client: the faulting thread gets SIGBUS and the message
// names the server, instead of the client hanging. (The stalled-server test below is the one
// where only the configured bound can end the wait.)
TEST(MemtapFailure, ServerKilledMidRunGivesTheFaultingThreadSigbusNamingTheServer) {
  ServedImage img(2048);
  auto child = img.touch({"--timeout-ms", "2000", "--prefetch", "1", "--pause-after", "500"}, {}, true);
  ASSERT_TRUE(eventually([&] { return read_file(img.dir / "touch.out").find("paused") != std::string::npos; }, 20s))
      << read_file(img.dir / "touch.err");
  img.server.child.signal(SIGKILL);
  ASSERT_TRUE(img.server.child.wait_for(5s).has_value());
  child.send_line("go");
  auto st = child.wait_for(20s);
  ASSERT_TRUE(st.has_value()) << "client hung after the server died";
  ASSERT_TRUE(WIFSIGNALED(*st)) << read_file(img.dir / "touch.err");
  EXPECT_EQ(WTERMSIG(*st), SIGBUS);
  auto err = read_file(img.dir / "touch.err");
  EXPECT_NE(err.find("cannot serve page"), std::string::npos) << err;
  EXPECT_NE(err.find(img.server.address()), std::string::npos) << err;
}

TEST(MemtapFailure, StalledServerMakesTheClientFailWithinTheBound) {
  ServedImage img(512, {"MEMTAP_FAULT=serve-stall@20"});
  auto child = img.touch({"--timeout-ms", "1000", "--prefetch", "1"}, {}, false);
  auto st = child.wait_for(20s);
  ASSERT_TRUE(st.has_value()) << "client hung on a stalled server";
  ASSERT_TRUE(WIFSIGNALED(*st)) << read_file(img.dir / "touch.err");
  EXPECT_EQ(WTERMSIG(*st), SIGBUS);
  EXPECT_NE(read_file(img.dir / "touch.err").find("did not answer"), std::string::npos) << read_file(img.dir / "touch.err");
}

TEST(MemtapFailure, InjectedFetchFailureGivesSigbus) {
  ServedImage img(64);
  auto child = img.touch({"--timeout-ms", "1000"}, {"MEMTAP_FAULT=fetch-fail@3"}, false);
  auto st = child.wait_for(20s);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(WIFSIGNALED(*st)) << read_file(img.dir / "touch.err");
  EXPECT_EQ(WTERMSIG(*st), SIGBUS);
  EXPECT_NE(read_file(img.dir / "touch.err").find("MEMTAP_FAULT=fetch-fail"), std::string::npos);
}

TEST(MemtapFailure, InjectedFetchStallTimesOutWithSigbus) {
  ServedImage img(64);
  auto child = img.touch({"--timeout-ms", "500"}, {"MEMTAP_FAULT=fetch-stall"}, false);
  auto st = child.wait_for(20s);
  ASSERT_TRUE(st.has_value()) << "client hung";
  ASSERT_TRUE(WIFSIGNALED(*st));
  EXPECT_EQ(WTERMSIG(*st), SIGBUS);
}

TEST(MemtapCli, TouchProcessFillsRegionEqualToImage) {
  ServedImage img(1024);
  auto child = img.touch({"--compare", img.dir / "img", "--threads", "4", "--order", "random"}, {}, false);
  auto st = child.wait_for(30s);
  ASSERT_TRUE(st.has_value());
  ASSERT_TRUE(WIFEXITED(*st)) << read_file(img.dir / "touch.err");
  EXPECT_EQ(WEXITSTATUS(*st), 0) << read_file(img.dir / "touch.err");
  auto j = nlohmann::json::parse(read_file(img.dir / "touch.out"));
  EXPECT_TRUE(j["equal"].get<bool>());
}

namespace {

// The last line of a `memtap touch` output (its counters as JSON).
nlohmann::json last_json_line(const std::string& path) {
  std::istringstream in(read_file(path));
  std::string line, last;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '{') last = line;
  }
  return last.empty() ? nlohmann::json::object() : nlohmann::json::parse(last, nullptr, false);
}

std::vector<std::string> in_netns(const std::string& ns, std::vector<std::string> argv) {
  argv.insert(argv.begin(), {"/usr/sbin/ip", "netns", "exec", ns});
  return argv;
}

}  // namespace

// A page server in namespace "s" serving by multicast (demand only, no push) and two
// `memtap touch` clients in namespaces "1" and "2" on one bridge. Client 2 touches one page and
// pauses; client 1 then faults in the whole image, and the server answers each request by
// multicast, so client 2 stores those pages without asking. Both regions must equal the image.
TEST(MemtapMulticast, TwoClientsInNamespacesGetTheImageAndTheSecondStoresPagesItNeverAskedFor) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root for network namespaces";
#if defined(__SANITIZE_ADDRESS__)
  const std::size_t pages = 256;  // the sanitizer variant stays small
#else
  const std::size_t pages = 2048;
#endif
  TempDir dir;
  auto data = make_image(dir / "img", pages, 5, 321);
  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  std::ofstream(dir / "key") << "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
  std::string prefix;
  {
    sf::mcdist::test::Testbed net(2);
    prefix = net.prefix();
    ASSERT_TRUE(net.ok()) << "cannot build the test network (ip netns / bridge / veth)";
    const std::vector<std::string> mcast{"--mcast-iface", "eth0", "--mcast-group", "239.255.77.9", "--mcast-port", "7709",
                                         "--mcast-key-file", dir / "key"};
    const std::vector<std::string> env{};  // no SIGBUS expected: the sanitizers check the clients fully
    std::vector<std::string> serve{memtap_bin(), "serve", dir / "img", "--listen", net.address("s") + ":0", "--port-file", dir / "port"};
    serve.insert(serve.end(), mcast.begin(), mcast.end());
    Child server = Child::spawn(in_netns(net.netns("s"), serve), {}, dir / "server.out", dir / "server.err", false);
    ASSERT_TRUE(eventually([&] { return fs::exists(dir / "port") || !server.running(); }));
    ASSERT_TRUE(fs::exists(dir / "port")) << read_file(dir / "server.err");
    const std::string address = net.address("s") + ":" + std::to_string(std::atoi(read_file(dir / "port").c_str()));

    auto touch = [&](const std::string& host, std::vector<std::string> extra, bool pipe) {
      std::vector<std::string> argv{memtap_bin(), "touch", address, "--token-file", dir / "img.token", "--compare",
                                    dir / "img", "--mcast-id", host};
      argv.insert(argv.end(), mcast.begin(), mcast.end());
      argv.insert(argv.end(), extra.begin(), extra.end());
      return Child::spawn(in_netns(net.netns(host), argv), env, dir / ("touch" + host + ".out"),
                          dir / ("touch" + host + ".err"), pipe);
    };
    // Client 2 joins the group, touches one page and waits.
    Child second = touch("2", {"--pause-after", "1"}, true);
    ASSERT_TRUE(eventually([&] { return read_file(dir / "touch2.out").find("paused") != std::string::npos || !second.running(); },
                           30s))
        << read_file(dir / "touch2.err");
    ASSERT_TRUE(second.running()) << read_file(dir / "touch2.err");
    // Client 1 faults in everything; every answer is multicast to both.
    Child first = touch("1", {}, false);
    auto st1 = first.wait_for(60s);
    ASSERT_TRUE(st1.has_value()) << "client 1 hangs";
    EXPECT_TRUE(WIFEXITED(*st1) && WEXITSTATUS(*st1) == 0) << read_file(dir / "touch1.err");
    second.send_line("go");
    auto st2 = second.wait_for(60s);
    ASSERT_TRUE(st2.has_value()) << "client 2 hangs";
    EXPECT_TRUE(WIFEXITED(*st2) && WEXITSTATUS(*st2) == 0) << read_file(dir / "touch2.err");

    auto c1 = last_json_line(dir / "touch1.out");
    auto c2 = last_json_line(dir / "touch2.out");
    std::cout << "client 1: " << c1.dump() << "\nclient 2: " << c2.dump() << "\n";
    EXPECT_EQ(c1.value("equal", false), true) << c1.dump();
    EXPECT_EQ(c2.value("equal", false), true) << c2.dump();
    EXPECT_EQ(c1.value("fetch_errors", 1), 0) << c1.dump();
    EXPECT_EQ(c2.value("fetch_errors", 1), 0) << c2.dump();
    // Client 2 received (and installed) pages it never asked for, and asked for fewer.
    EXPECT_GT(c2.value("pages_unsolicited", 0), 0) << c2.dump();
    EXPECT_GT(c2["mcdist"].value("pages_unsolicited", 0), 0) << c2.dump();
    EXPECT_LT(c2.value("pages_fetched", 0), c1.value("pages_fetched", 0)) << c1.dump() << "\n" << c2.dump();
    EXPECT_GT(c1.value("pages_fetched", 0), 0) << c1.dump();

    server.signal(SIGTERM);
    auto st = server.wait_for(20s);
    ASSERT_TRUE(st.has_value()) << "server did not stop";
    EXPECT_TRUE(WIFEXITED(*st) && WEXITSTATUS(*st) == 0) << read_file(dir / "server.err");
    EXPECT_NE(read_file(dir / "server.err").find("multicast counters"), std::string::npos) << read_file(dir / "server.err");
  }
  // Nothing left behind: namespaces, bridge, veths.
  EXPECT_EQ(sf::mcdist::test::sh("ip netns list | grep -q " + prefix), 1);
  EXPECT_NE(sf::mcdist::test::sh("ip link show " + prefix + "br"), 0);
  EXPECT_EQ(sf::mcdist::test::sh("ip link | grep -q " + prefix), 1);
}
