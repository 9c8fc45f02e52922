// memtap end-to-end tests: the real CLI. `memtap serve` and `memtap mount` as separate
// processes; the FUSE file read with cmp, mapped MAP_PRIVATE, and read after the server died.
// Every mount is unmounted on every path (MountedImage's destructor).
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/mount.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "memtap/image.hpp"
#include "test_support.hpp"

using namespace sf::memtap::test;

namespace {

bool is_mounted(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.find(" " + path + " ") != std::string::npos) return true;
  }
  return false;
}

// memtap serve + memtap mount; the destructor stops both and makes sure nothing stays mounted.
struct MountedImage {
  TempDir dir;
  std::vector<char> data;
  ServerProcess server;
  Child mount;
  std::string mountpoint;

  explicit MountedImage(std::size_t pages, const std::vector<std::string>& mount_args = {}) {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) return;
    data = make_image(dir / "img", pages, 3, 1000);
    EXPECT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
    server = ServerProcess::start(dir, dir / "img");
    mountpoint = dir / "mnt";
    std::filesystem::create_directory(mountpoint);
    std::vector<std::string> argv{memtap_bin(), "mount", server.address(), mountpoint, "--token-file", dir / "img.token"};
    argv.insert(argv.end(), mount_args.begin(), mount_args.end());
    mount = Child::spawn(argv, {}, dir / "mount.out", dir / "mount.err");
    eventually([&] { return std::filesystem::exists(image()) || !mount.running(); }, 20s);
  }

  ~MountedImage() {
    if (mountpoint.empty()) return;
    mount.signal(SIGTERM);
    mount.wait_for(10s);
    if (is_mounted(mountpoint)) run_command("fusermount3 -u -z " + mountpoint + " 2>/dev/null");
    if (is_mounted(mountpoint)) ::umount2(mountpoint.c_str(), MNT_DETACH);
    server.child.signal(SIGTERM);
    server.child.wait_for(5s);
  }

  bool ready() { return !mountpoint.empty() && std::filesystem::exists(image()); }
  std::string image() const { return mountpoint + "/image"; }

  nlohmann::json server_stats() {
    std::string out = dir / "stats.json";
    run_command(memtap_bin() + " stats " + server.address() + " --token-file " + dir / "img.token" + " > " + out);
    return nlohmann::json::parse(read_file(out));
  }
};

#define REQUIRE_FUSE(m)                                                                  \
  if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "no usable /dev/fuse";  \
  ASSERT_TRUE((m).ready()) << read_file((m).dir / "mount.err")

}  // namespace

TEST(MemtapFuse, FileEqualsImageAndNoFetchPagesAreNotFetched) {
  MountedImage m(3000);
  REQUIRE_FUSE(m);
  EXPECT_EQ(std::filesystem::file_size(m.image()), m.data.size());
  EXPECT_EQ(run_command("cmp " + m.dir / "img" + " " + m.image()), 0);
  auto stats = m.server_stats();
  EXPECT_EQ(stats["nofetch_pages_requested"].get<std::uint64_t>(), 0u) << stats.dump();
  EXPECT_EQ(stats["pages_served"].get<std::uint64_t>(), 2000u + 1u) << stats.dump();  // 2/3 of 3000 + the tail page
  auto client = nlohmann::json::parse(read_file(m.mountpoint + "/stats"));
  EXPECT_EQ(client["pages_zero_served"].get<std::uint64_t>(), 1000u) << client.dump();
  EXPECT_EQ(client["fetch_errors"].get<std::uint64_t>(), 0u);
}

TEST(MemtapFuse, MapPrivateReadsTheImageAndKeepsWritesPrivate) {
  MountedImage m(512);
  REQUIRE_FUSE(m);
  int fd = ::open(m.image().c_str(), O_RDWR);  // as QEMU opens guest RAM
  ASSERT_GE(fd, 0) << std::strerror(errno);
  void* p = ::mmap(nullptr, m.data.size(), PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  ASSERT_NE(p, MAP_FAILED) << std::strerror(errno);
  auto* mem = static_cast<char*>(p);
  EXPECT_EQ(std::memcmp(mem, m.data.data(), m.data.size()), 0);
  std::memset(mem + 4096 * 10, 'X', 4096);
  mem[1] = 'Y';
  EXPECT_EQ(mem[4096 * 10 + 7], 'X');
  // A second private mapping and a plain read still see the frozen image.
  void* q = ::mmap(nullptr, m.data.size(), PROT_READ, MAP_PRIVATE, fd, 0);
  ASSERT_NE(q, MAP_FAILED);
  EXPECT_EQ(std::memcmp(q, m.data.data(), m.data.size()), 0);
  ::munmap(q, m.data.size());
  ::munmap(p, m.data.size());
  char buf[16];
  EXPECT_EQ(::pread(fd, buf, sizeof buf, 4096 * 10), static_cast<ssize_t>(sizeof buf));
  EXPECT_EQ(std::memcmp(buf, &m.data[4096 * 10], sizeof buf), 0);
  // write(2) into the frozen image is refused.
  EXPECT_EQ(::pwrite(fd, "z", 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  ::close(fd);
  EXPECT_EQ(run_command("cmp " + m.dir / "img" + " " + m.image()), 0);
}

// The server dies under a mounted image: a read of a page never fetched fails with EIO (the
// kernel's read returns; nothing waits forever), pages known to be zero still read.
TEST(MemtapFuse, ReadAfterServerKilledFailsWithEio) {
  MountedImage m(2048, {"--timeout-ms", "1000", "--readahead-pages", "1"});
  REQUIRE_FUSE(m);
  int fd = ::open(m.image().c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char buf[4096];
  ASSERT_EQ(::pread(fd, buf, sizeof buf, 4096), 4096);
  m.server.child.signal(SIGKILL);
  ASSERT_TRUE(m.server.child.wait_for(5s).has_value());
  // Page 1000 was never read (1000 % 3 != 0: not a no-fetch page).
  ssize_t n = ::pread(fd, buf, sizeof buf, 4096 * 1000);
  int e = errno;
  EXPECT_EQ(n, -1);
  EXPECT_EQ(e, EIO);
  // No-fetch pages still read as zeros without the server.
  ASSERT_EQ(::pread(fd, buf, sizeof buf, 4096 * 999), 4096);
  EXPECT_EQ(buf[0], 0);
  ::close(fd);
  EXPECT_NE(read_file(m.dir / "mount.err").find("returning EIO"), std::string::npos);
}

TEST(MemtapFuse, WrongTokenMountIsRefusedAndLeavesNoMount) {
  TempDir dir;
  make_image(dir / "img", 16, 2);
  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  auto server = ServerProcess::start(dir, dir / "img");
  std::ofstream(dir / "bad.token") << std::string(64, 'a') << "\n";
  std::filesystem::create_directory(dir / "mnt");
  auto c = Child::spawn({memtap_bin(), "mount", server.address(), dir / "mnt", "--token-file", dir / "bad.token"}, {},
                        dir / "m.out", dir / "m.err");
  auto st = c.wait_for(20s);
  ASSERT_TRUE(st.has_value());
  EXPECT_NE(WEXITSTATUS(*st), 0);
  EXPECT_NE(read_file(dir / "m.err").find("BAD_TOKEN"), std::string::npos) << read_file(dir / "m.err");
  EXPECT_FALSE(is_mounted(dir / "mnt"));
}

TEST(MemtapCli, InspectPrintsHeaderAndMapAndRefusesCorruption) {
  TempDir dir;
  make_image(dir / "img", 10, 2);
  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  ASSERT_EQ(run_command(memtap_bin() + " inspect " + dir / "img" + " --map > " + dir / "out"), 0);
  auto out = read_file(dir / "out");
  EXPECT_NE(out.find("format version:  1"), std::string::npos) << out;
  EXPECT_NE(out.find("no-fetch pages:  5 "), std::string::npos) << out;
  EXPECT_NE(out.find("  8-8"), std::string::npos) << out;
  {
    std::fstream f(dir / "img.memtap", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(16);
    f.put('\x01');
  }
  EXPECT_NE(run_command(memtap_bin() + " inspect " + dir / "img" + " 2> " + dir / "err"), 0);
  EXPECT_NE(read_file(dir / "err").find("header checksum mismatch"), std::string::npos);
}

TEST(MemtapCli, FetchCopiesTheWholeImage) {
  TempDir dir;
  make_image(dir / "img", 300, 4, 77);
  ASSERT_EQ(run_command(memtap_bin() + " create " + dir / "img" + " > /dev/null"), 0);
  auto server = ServerProcess::start(dir, dir / "img");
  ASSERT_EQ(run_command(memtap_bin() + " fetch " + server.address() + " " + dir / "copy" + " --token-file " +
                        dir / "img.token" + " > /dev/null"),
            0);
  EXPECT_EQ(run_command("cmp " + dir / "img" + " " + dir / "copy"), 0);
}
