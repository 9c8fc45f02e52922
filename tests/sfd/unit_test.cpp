// sfd unit tests: frame codec, option parsing, environment filtering, module ordering, image
// keys, QEMU's command line, and QmpClient against a fake QMP peer on a socketpair.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "sfd/family.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/paths.hpp"
#include "sfd/qmp_client.hpp"
#include "sfd/remote_clone.hpp"
#include "sfd/rootfs.hpp"
#include "sfd/slurm_grant.hpp"
#include "sfd/run.hpp"
#include "sfd/static_cluster.hpp"
#include "sfd/vm.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
namespace gio = sf::sfd::guest_io;

using sf::test::make_temp_dir;

namespace {

void write_file(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

}  // namespace

TEST(GuestIo, RoundTripsFramesFedByteByByte) {
  auto a = gio::encode(gio::FrameType::stdout_data, std::string("hello"));
  auto b = gio::encode(gio::FrameType::exit, std::string(R"({"code":3,"signal":0})"));
  a.insert(a.end(), b.begin(), b.end());
  gio::FrameDecoder d;
  std::vector<gio::Frame> got;
  for (auto byte : a) {
    d.feed({&byte, 1});
    auto f = d.next();
    ASSERT_TRUE(f.ok()) << f.error().message;
    if (*f) got.push_back(**f);
  }
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].type, gio::FrameType::stdout_data);
  EXPECT_EQ(got[0].text(), "hello");
  EXPECT_EQ(got[1].type, gio::FrameType::exit);
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(GuestIo, StdinFramesRoundTripAndAnEmptyOneIsEndOfInput) {
  auto a = gio::encode(gio::FrameType::stdin_data, std::string("line\n"));
  auto b = gio::encode(gio::FrameType::stdin_data, std::string());
  a.insert(a.end(), b.begin(), b.end());
  gio::FrameDecoder d;
  d.feed(a);
  auto f = d.next();
  ASSERT_TRUE(f.ok()) << f.error().message;
  ASSERT_TRUE(f->has_value());
  EXPECT_EQ((*f)->type, gio::FrameType::stdin_data);
  EXPECT_EQ((*f)->text(), "line\n");
  f = d.next();
  ASSERT_TRUE(f.ok() && f->has_value());
  EXPECT_TRUE((*f)->payload.empty());
}

TEST(GuestIo, EmptyPayloadIsAFrame) {
  auto a = gio::encode(gio::FrameType::stderr_data, std::string());
  gio::FrameDecoder d;
  d.feed(a);
  auto f = d.next();
  ASSERT_TRUE(f.ok());
  ASSERT_TRUE(f->has_value());
  EXPECT_TRUE((*f)->payload.empty());
}

TEST(GuestIo, RejectsBadMagicVersionChecksumAndOversize) {
  const auto good = gio::encode(gio::FrameType::stdout_data, std::string("x"));
  auto corrupt = [&](std::size_t index, std::uint8_t value) {
    auto bytes = good;
    bytes[index] = value;
    gio::FrameDecoder d;
    d.feed(bytes);
    return d.next();
  };
  EXPECT_FALSE(corrupt(0, 0x00).ok());                 // magic
  EXPECT_FALSE(corrupt(2, 9).ok());                    // version
  EXPECT_FALSE(corrupt(3, 77).ok());                   // type
  EXPECT_FALSE(corrupt(12, 'y').ok());                 // payload vs checksum
  auto big = good;
  big[7] = 0x7f;                                       // length far over the cap
  gio::FrameDecoder d;
  d.feed(big);
  auto f = d.next();
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message.find("cap"), std::string::npos);
}

TEST(RunOptions, ParsesMemorySizes) {
  EXPECT_EQ(*sf::sfd::parse_mem_mib("256"), 256u);
  EXPECT_EQ(*sf::sfd::parse_mem_mib("512M"), 512u);
  EXPECT_EQ(*sf::sfd::parse_mem_mib("1G"), 1024u);
  EXPECT_FALSE(sf::sfd::parse_mem_mib("lots").ok());
  EXPECT_FALSE(sf::sfd::parse_mem_mib("12K").ok());
  EXPECT_FALSE(sf::sfd::parse_mem_mib("16").ok());  // below the 64 MiB floor
}

TEST(RunOptions, ShellStatusMapsSignalsTo128PlusN) {
  EXPECT_EQ(sf::sfd::shell_status(3, 0), 3);
  EXPECT_EQ(sf::sfd::shell_status(0, 9), 137);
  EXPECT_EQ(sf::sfd::shell_status(0, 15), 143);
}

TEST(RunOptions, GuestEnvironmentDropsHostOnlyNames) {
  std::vector<std::string> in = {"PATH=/usr/bin", "SSH_AUTH_SOCK=/tmp/agent", "HOME=/root", "DISPLAY=:0", "OMPI_X=1"};
  std::vector<char*> env;
  for (auto& s : in) env.push_back(s.data());
  env.push_back(nullptr);
  auto out = sf::sfd::guest_environment(env.data());
  EXPECT_EQ(out, (std::vector<std::string>{"PATH=/usr/bin", "HOME=/root", "OMPI_X=1"}));
}

TEST(RunOptions, CommandSpecCarriesArgvEnvAndCwd) {
  sf::sfd::RunOptions o;
  o.argv = {"sh", "-c", "exit 3"};
  o.env = {"A=b"};
  o.cwd = "/work/x";
  auto j = sf::sfd::command_spec(o);
  EXPECT_EQ(j["argv"], nlohmann::json(o.argv));
  EXPECT_EQ(j["env"][0], "A=b");
  EXPECT_EQ(j["cwd"], "/work/x");
  // The default root is on disks: no 9p share for the agent to mount.
  EXPECT_EQ(j["work_dir"], "");
  o.root = sf::sfd::RootMode::ninep;
  EXPECT_EQ(sf::sfd::command_spec(o)["work_dir"], "/work/x");
}

TEST(RootFs, RootModeParses) {
  EXPECT_EQ(*sf::sfd::parse_root_mode("disk"), sf::sfd::RootMode::disk);
  EXPECT_EQ(*sf::sfd::parse_root_mode("9p"), sf::sfd::RootMode::ninep);
  EXPECT_FALSE(sf::sfd::parse_root_mode("nfs").ok());
}

TEST(RootFs, ExcludesKeepOnlyTheIncludedPathsAndTheirAncestors) {
  const auto dir = make_temp_dir("sfd");
  for (const char* f : {"usr/bin/sh", "usr/share/doc/x", "etc/passwd", "var/log/l", "home/u/job/a", "home/u/other/b", "home/v/c"})
    write_file(dir / f, "x");
  auto ex = sf::sfd::erofs_excludes_for(dir, {"usr", "etc", "home/u/job"}, {"usr/share/doc"});
  std::sort(ex.begin(), ex.end());
  EXPECT_EQ(ex, (std::vector<std::string>{"home/u/other", "home/v", "usr/share/doc", "var"}));
  fs::remove_all(dir);
}

TEST(RootFs, WorkImagePathsAddTheCommandsAndSfdsDirectoriesWhenElsewhere) {
  const auto dir = make_temp_dir("sfd");
  write_file(dir / "job/sub/prog", "x");
  write_file(dir / "tools/bin/tool", "x");
  fs::permissions(dir / "tools/bin/tool", fs::perms::owner_all);
  write_file(dir / "build/sfd/sfd", "x");
  sf::sfd::SystemImageSpec sys;
  sys.trees = {"usr", "etc"};
  sys.excludes = {"usr/src"};
  const auto job = dir / "job";
  // A command inside cwd and sfd in the system trees: cwd only.
  EXPECT_EQ(sf::sfd::work_image_paths(job, "./sub/prog", "", "/usr/bin/sfd", sys), (std::vector<fs::path>{job}));
  // A command found in PATH elsewhere, sfd in a build directory, a system command.
  auto p = sf::sfd::work_image_paths(job, "tool", "/nonexistent:" + (dir / "tools/bin").string(), dir / "build/sfd/sfd", sys);
  EXPECT_EQ(p, (std::vector<fs::path>{dir / "build/sfd", job, dir / "tools/bin"}));
  EXPECT_EQ(sf::sfd::work_image_paths(job, "/usr/bin/env", "", "/usr/src/sfd/sfd", sys),
            (std::vector<fs::path>{job, "/usr/src/sfd"}));  // an excluded part of /usr is not in the system image
  fs::remove_all(dir);
}

TEST(GuestImage, ModuleOrderPutsDependenciesFirst) {
  const auto dir = make_temp_dir("sfd");
  write_file(dir / "modules.dep",
             "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
             "kernel/net/9p/9pnet.ko:\n"
             "kernel/fs/netfs/netfs.ko:\n"
             "kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko\n"
             "kernel/drivers/virtio/virtio.ko:\n");
  auto order = sf::sfd::resolve_module_order(dir, {"9pnet_virtio", "9p"});
  ASSERT_TRUE(order.ok()) << order.error().message;
  auto pos = [&](const std::string& m) {
    return std::find(order->begin(), order->end(), m) - order->begin();
  };
  EXPECT_EQ(order->size(), 5u);
  EXPECT_LT(pos("kernel/net/9p/9pnet.ko"), pos("kernel/net/9p/9pnet_virtio.ko"));
  EXPECT_LT(pos("kernel/drivers/virtio/virtio.ko"), pos("kernel/net/9p/9pnet_virtio.ko"));
  EXPECT_LT(pos("kernel/fs/netfs/netfs.ko"), pos("kernel/fs/9p/9p.ko"));
  auto missing = sf::sfd::resolve_module_order(dir, {"overlay"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("overlay"), std::string::npos);
  fs::remove_all(dir);
}

TEST(GuestImage, KeyChangesWhenAnyInputChanges) {
  const auto dir = make_temp_dir("sfd");
  write_file(dir / "vmlinuz", "kernel-bytes");
  write_file(dir / "busybox", "busybox-bytes");
  write_file(dir / "mods/kernel/a.ko", "module-a");
  sf::sfd::GuestImageInputs in;
  in.kernel = dir / "vmlinuz";
  in.busybox = dir / "busybox";
  in.modules_dir = dir / "mods";
  const std::vector<std::string> mods = {"kernel/a.ko"};
  const auto k1 = sf::sfd::guest_image_key(in, mods);
  ASSERT_TRUE(k1.ok());
  EXPECT_EQ(*sf::sfd::guest_image_key(in, mods), *k1);  // deterministic
  write_file(dir / "mods/kernel/a.ko", "module-a2");
  const auto k2 = sf::sfd::guest_image_key(in, mods);
  EXPECT_NE(*k2, *k1);
  write_file(dir / "busybox", "busybox-bytes2");
  EXPECT_NE(*sf::sfd::guest_image_key(in, mods), *k2);
  write_file(dir / "vmlinuz", "kernel-bytes2");
  EXPECT_FALSE(sf::sfd::guest_image_key(in, {"kernel/missing.ko"}).ok());
  fs::remove_all(dir);
}

TEST(GuestImage, InitScriptIsCompiledIn) {
  const auto init = sf::sfd::guest_init_script();
  EXPECT_EQ(init.rfind("#!/bin/busybox sh", 0), 0u);
  EXPECT_NE(init.find(sf::sfd::kGuestProbeMarker), std::string_view::npos);
  EXPECT_NE(init.find("switch_root"), std::string_view::npos);
}

TEST(QemuCommandLine, RootOnReadOnlyDisksHasNo9p) {
  sf::sfd::VmConfig c;
  c.image.kernel = "/k";
  c.image.initramfs = "/i";
  c.agent = "/usr/bin/sfd";
  c.work_dir = "/home/u/job";  // ignored with the root on disks
  c.system_disk = "/cache/rootfs/k/system.erofs";
  c.work_disk = "/run/a,b/work.erofs";
  sf::sfd::VmPaths p;
  p.run_dir = "/run/snowflock/sf-vm-1-0";
  p.ram_file = "/dev/shm/sf-vm-1-0.ram";
  p.console_log = "/run/snowflock/sf-vm-1-0/console.log";
  std::string all;
  for (const auto& s : sf::sfd::qemu_command_line(c, p, 3, 4, 5, 6)) all += s + " ";
  EXPECT_NE(all.find("file=/cache/rootfs/k/system.erofs,format=raw,if=none,readonly=on"), std::string::npos) << all;
  EXPECT_NE(all.find("virtio-blk-pci,drive=sfsys,serial=sfsys"), std::string::npos) << all;
  EXPECT_NE(all.find("file=/run/a,,b/work.erofs,"), std::string::npos) << all;
  EXPECT_NE(all.find("serial=sfwork"), std::string::npos) << all;
  EXPECT_NE(all.find("sf.root=disk"), std::string::npos) << all;
  EXPECT_EQ(all.find("9p"), std::string::npos) << all;
  EXPECT_EQ(all.find("-fsdev"), std::string::npos) << all;
}

TEST(QemuCommandLine, SharedFileRamReadOnlyRootAndNoNetwork) {
  sf::sfd::VmConfig c;
  c.image.kernel = "/k";
  c.image.initramfs = "/i";
  c.mem_mib = 512;
  c.cpus = 2;
  c.agent = "/usr/bin/sfd";
  c.work_dir = "/home/u/job";
  sf::sfd::VmPaths p;
  p.run_dir = "/run/snowflock/sf-vm-1-0";
  p.ram_file = "/dev/shm/sf-vm-1-0.ram";
  p.console_log = "/run/snowflock/sf-vm-1-0/console.log";
  const auto a = sf::sfd::qemu_command_line(c, p, 3, 4, 5, 6);
  std::string all;
  for (const auto& s : a) all += s + " ";
  EXPECT_NE(all.find("memory-backend-file,id=ram,size=512M,mem-path=/dev/shm/sf-vm-1-0.ram,share=on"), std::string::npos);
  EXPECT_NE(all.find("memory-backend=ram,dump-guest-core=off"), std::string::npos);  // no guest RAM in a core
  EXPECT_NE(all.find("path=/,security_model=none,readonly=on"), std::string::npos);
  EXPECT_NE(all.find("path=/home/u/job,security_model=none"), std::string::npos);
  EXPECT_NE(all.find("-nic none"), std::string::npos);
  EXPECT_EQ(all.find("-netdev"), std::string::npos);
  EXPECT_NE(all.find("socket,id=qmp,fd=3"), std::string::npos);
  EXPECT_NE(all.find("socket,id=sfio,fd=4"), std::string::npos);
  EXPECT_NE(all.find("sf.agent=/usr/bin/sfd"), std::string::npos);
  EXPECT_NE(all.find("-smp 2"), std::string::npos);
}

TEST(Paths, OwnerPidOfVmNames) {
  EXPECT_EQ(sf::sfd::owner_pid_of("sf-vm-1234-0.ram"), 1234);
  EXPECT_EQ(sf::sfd::owner_pid_of("sf-vm-77-3"), 77);
  EXPECT_EQ(sf::sfd::owner_pid_of("sf-vm-x-3"), 0);
  EXPECT_EQ(sf::sfd::owner_pid_of("vader_segment.1"), 0);
}

// A fake QMP peer's side of a socketpair: one message per line, and QEMU's greeting first.
static void send_qmp(FILE* f, const std::string& message) {
  std::fputs((message + "\r\n").c_str(), f);
  std::fflush(f);
}
static FILE* greet_as_qmp(int fd) {
  FILE* f = fdopen(fd, "r+");
  send_qmp(f, R"({"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}})");
  return f;
}

// A fake QMP peer: greets, answers each command by script, and can send events in between.
TEST(QmpClient, HandshakeCommandsEventsAndErrorsAgainstAFakePeer) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  std::vector<std::string> received;
  std::thread peer([&] {
    FILE* f = greet_as_qmp(sv[1]);
    auto send = [f](const std::string& s) { send_qmp(f, s); };
    char line[4096];
    while (std::fgets(line, sizeof line, f) != nullptr) {
      auto j = nlohmann::json::parse(line);
      received.push_back(j["execute"]);
      const auto id = j["id"];
      const std::string cmd = j["execute"];
      if (cmd == "query-status") {
        send(R"({"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 0}})");
        send(nlohmann::json{{"return", {{"status", "paused"}, {"running", false}}}, {"id", id}}.dump());
      } else if (cmd == "migrate") {
        send(nlohmann::json{{"error", {{"class", "GenericError"}, {"desc", "no migration here"}}}, {"id", id}}.dump());
      } else if (cmd == "quit") {
        break;  // close without answering, as QEMU may
      } else {
        send(nlohmann::json{{"return", nlohmann::json::object()}, {"id", id}}.dump());
      }
    }
    std::fclose(f);
  });
  auto qmp = sf::sfd::QmpClient::adopt(sv[0]);
  ASSERT_TRUE(qmp.ok());
  auto& c = **qmp;
  ASSERT_TRUE(c.handshake().ok());
  EXPECT_TRUE(c.stop().ok());
  auto st = c.query_status();
  ASSERT_TRUE(st.ok());
  EXPECT_EQ((*st)["status"], "paused");
  auto ev = c.wait_event("STOP", std::chrono::milliseconds(100));
  EXPECT_TRUE(ev.ok());
  EXPECT_TRUE(c.migrate_set_capabilities({{"x-ignore-shared", true}}).ok());
  auto m = c.migrate("exec:cat > /dev/null");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.error().message.find("no migration here"), std::string::npos);
  EXPECT_TRUE(c.cont().ok());
  EXPECT_TRUE(c.quit().ok());
  peer.join();
  EXPECT_EQ(received, (std::vector<std::string>{"qmp_capabilities", "stop", "query-status",
                                                "migrate-set-capabilities", "migrate", "cont", "quit"}));
}

// An error reply of another shape than QEMU's ({"class", "desc": string}) is an Error that
// shows what came, not an exception out of sfd.
TEST(QmpClient, MisshapenErrorRepliesAreErrors) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  std::thread peer([&] {
    FILE* f = greet_as_qmp(sv[1]);
    auto send = [f](const std::string& s) { send_qmp(f, s); };
    const std::vector<nlohmann::json> errors{nlohmann::json::object(), "not an object", {{"desc", 5}},
                                             {{"class", "GenericError"}}};
    char line[4096];
    for (std::size_t n = 0; std::fgets(line, sizeof line, f) != nullptr; ++n) {
      auto j = nlohmann::json::parse(line);
      if (n == 0)
        send(nlohmann::json{{"return", nlohmann::json::object()}, {"id", j["id"]}}.dump());
      else
        send(nlohmann::json{{"error", errors.at(n)}, {"id", j["id"]}}.dump());
      if (n + 1 == errors.size()) break;
    }
    std::fclose(f);
  });
  auto qmp = sf::sfd::QmpClient::adopt(sv[0]);
  ASSERT_TRUE(qmp.ok());
  auto& c = **qmp;
  ASSERT_TRUE(c.handshake().ok());
  auto a = c.stop();
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.error().message.find("stop failed: \"not an object\""), std::string::npos) << a.error().message;
  auto b = c.cont();
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.error().message.find(R"({"desc":5})"), std::string::npos) << b.error().message;
  auto d = c.query_status();
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.error().message.find("GenericError"), std::string::npos) << d.error().message;
  peer.join();
}

TEST(QmpClient, SilentPeerTimesOutInsteadOfHanging) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto qmp = sf::sfd::QmpClient::adopt(sv[0]);
  ASSERT_TRUE(qmp.ok());
  auto st = (*qmp)->handshake(std::chrono::milliseconds(200));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("deadline"), std::string::npos);
  close(sv[1]);
}

TEST(CloneGrant, AllOrNothingWithinMemoryAndTheLimit) {
  std::string why;
  // 512 MiB guest: 64 + 128 = 192 MiB per clone.
  EXPECT_EQ(sf::sfd::clone_memory_estimate_mib(512), 192u);
  EXPECT_EQ(sf::sfd::grant_clones(8, 64, 512, 8 * 192, &why), 8u);
  EXPECT_EQ(sf::sfd::grant_clones(8, 64, 512, 8 * 192 - 1, &why), 0u);
  EXPECT_NE(why.find("fits 7"), std::string::npos) << why;
  EXPECT_EQ(sf::sfd::grant_clones(65, 64, 256, 1u << 30, &why), 0u);
  EXPECT_NE(why.find("SF_MAX_CLONES"), std::string::npos) << why;
  EXPECT_EQ(sf::sfd::grant_clones(0, 64, 256, 1u << 30, &why), 0u);
  // The count alone (--allocator slurm): no memory limit, the same bounds.
  EXPECT_EQ(sf::sfd::grant_clone_count(64, 64, &why), 64u);
  EXPECT_EQ(sf::sfd::grant_clone_count(65, 64, &why), 0u);
  EXPECT_NE(why.find("SF_MAX_CLONES"), std::string::npos) << why;
  EXPECT_EQ(sf::sfd::grant_clone_count(0, 64, &why), 0u);
  EXPECT_EQ(why, "a ticket for 0 clones");
}

TEST(DescriptorMetadata, CarriesShapeLayoutFreePagesAndNetwork) {
  sf::sfd::FamilyConfig c;
  c.mem_mib = 512;
  c.cpus = 2;
  c.accel = "tcg";
  c.subnet = "10.213.0.0/24";
  std::vector<sf::sfd::NodeIdentity> nodes(2);
  nodes[0] = {0, "10.213.0.1", 24, "52:54:00:53:46:00", "sf-vm"};
  nodes[1] = {1, "10.213.0.2", 24, "52:54:00:53:46:01", "sf-vm-sf1"};
  const auto j = sf::sfd::descriptor_metadata(c, "x.desc", 755316, "100+400", 1024, nodes);
  EXPECT_EQ(j["format"], "snowflock-vm-descriptor");
  EXPECT_EQ(j["version"], 1);
  EXPECT_EQ(j["qemu_stream"]["bytes"], 755316);
  EXPECT_EQ(j["machine"]["cpus"], 2);
  EXPECT_EQ(j["ram"]["bytes"], 512ull << 20);
  EXPECT_EQ(j["ram"]["below_4g"], 512ull << 20);
  EXPECT_EQ(j["free_pages"]["ranges"], "100+400");
  EXPECT_EQ(j["free_pages"]["pages"], 1024);
  ASSERT_EQ(j["network"]["nodes"].size(), 2u);
  EXPECT_EQ(j["network"]["nodes"][1]["hostname"], "sf-vm-sf1");
  EXPECT_EQ(j["network"]["subnet"], "10.213.0.0/24");
}

TEST(StaticCluster, HexRoundTripsAnyBytesAndRejectsGarbage) {
  std::string bytes;
  for (int i = 0; i < 256; ++i) bytes.push_back(static_cast<char>(i));
  const std::string hex = sf::sfd::to_hex(bytes);
  EXPECT_EQ(hex.substr(0, 8), "00010203");
  EXPECT_EQ(*sf::sfd::from_hex(hex), bytes);
  EXPECT_EQ(*sf::sfd::from_hex("ABff"), std::string("\xab\xff"));
  EXPECT_FALSE(sf::sfd::from_hex("abc").ok());
  EXPECT_FALSE(sf::sfd::from_hex("zz").ok());
}

TEST(StaticCluster, NodeZeroGetsTheHostsTheKeyAndOpenMpisRshSettings) {
  const auto env = sf::sfd::node0_environment("/opt/sf/sfd", "abcd", {"10.213.0.1", "10.213.0.2"}, 2);
  auto has = [&](const std::string& e) { return std::find(env.begin(), env.end(), e) != env.end(); };
  EXPECT_TRUE(has("SFD_RSH_KEY=abcd"));
  EXPECT_TRUE(has("SFD_HOSTS=10.213.0.1:2,10.213.0.2:2"));
  EXPECT_TRUE(has("OMPI_MCA_plm_rsh_agent=/opt/sf/sfd rsh"));
  EXPECT_TRUE(has("OMPI_MCA_plm_rsh_no_tree_spawn=1"));
  EXPECT_TRUE(has("OMPI_MCA_btl_tcp_if_include=sf0"));
}

TEST(StaticCluster, ComputeNodesServeSshOnlyOnTheirClusterAddress) {
  const auto argv = sf::sfd::compute_node_argv("/opt/sf/sfd", "10.213.0.3");
  ASSERT_EQ(argv.size(), 3u);
  EXPECT_EQ(argv[0], "/bin/sh");
  EXPECT_NE(argv[2].find("dropbear -F -E -s -r /tmp/.sfd-rsh/key -p 10.213.0.3:22"), std::string::npos) << argv[2];
  EXPECT_NE(argv[2].find("\"/opt/sf/sfd\" rsh --write-key /tmp/.sfd-rsh/key"), std::string::npos) << argv[2];
}

// ---- payloads read from the other side (found by tests/fuzz/guest_io_fuzz, vm_descriptor_fuzz) ----

TEST(GuestIoPayloads, ExitStatusOfWrongTypeIsNoStatusNotAnException) {
  // sfd read {"code": "0"} with json::value<int>, which throws: a guest could end sfd.
  EXPECT_FALSE(gio::parse_exit(R"({"code": "0"})"));
  EXPECT_FALSE(gio::parse_exit(R"({"code": 0, "signal": [9]})"));
  EXPECT_FALSE(gio::parse_exit(R"({"code": 4294967296})"));
  EXPECT_FALSE(gio::parse_exit(R"({"code": 1.5})"));
  EXPECT_FALSE(gio::parse_exit("[1]"));
  EXPECT_FALSE(gio::parse_exit("not json"));
  auto s = gio::parse_exit(R"({"code": 3, "signal": 0})");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->code, 3);
  EXPECT_EQ(s->signal, 0);
  s = gio::parse_exit(R"({"signal": 9})");
  ASSERT_TRUE(s);
  EXPECT_EQ(s->code, 0);
  EXPECT_EQ(s->signal, 9);
  EXPECT_EQ(gio::parse_exit("{}")->code, 0);
}

TEST(GuestIoPayloads, ErrorMessageFallsBackToThePayload) {
  EXPECT_EQ(gio::parse_error_message(R"({"message": "cannot run x"})"), "cannot run x");
  EXPECT_EQ(gio::parse_error_message(R"({"message": 5})"), R"({"message": 5})");
  EXPECT_EQ(gio::parse_error_message("plain text"), "plain text");
}

TEST(GuestIoPayloads, SpecWithWrongTypesIsAnErrorNotAnException) {
  // The guest agent (PID 1) read "argv" with json::value<vector<string>>, which throws.
  EXPECT_FALSE(gio::parse_spec(R"({"argv": "echo"})"));
  EXPECT_FALSE(gio::parse_spec(R"({"argv": ["echo", 1]})"));
  EXPECT_FALSE(gio::parse_spec(R"({"argv": ["echo"], "stdin": "yes"})"));
  EXPECT_FALSE(gio::parse_spec(R"({"argv": ["echo"], "net": {"mac": 1}})"));
  EXPECT_FALSE(gio::parse_spec("[]"));
  auto s = gio::parse_spec(R"({"argv": ["echo", "hi"], "env": ["A=1"], "stdin": true,
                               "net": {"address": "10.213.0.2/24", "mac": "52:54:00:53:46:01"}})");
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(s->argv, (std::vector<std::string>{"echo", "hi"}));
  EXPECT_EQ(s->env, (std::vector<std::string>{"A=1"}));
  EXPECT_EQ(s->cwd, "/");
  EXPECT_EQ(s->hostname, "sf-vm");
  EXPECT_TRUE(s->forward_stdin);
  ASSERT_TRUE(s->net);
  EXPECT_EQ(s->net->interface, "sf0");
  EXPECT_EQ(s->net->hostname, "sf-vm");
  EXPECT_EQ(s->net->address, "10.213.0.2/24");
}

TEST(OriginReply, ParsesWhatTheOriginSends) {
  const std::string text = R"({"version":1,"memtap":"10.213.0.1:40000",
    "mcast":{"group":"239.1.2.3","port":5000,"key":"00ff"},"image_id":"1",
    "vm":{"mem_mib":512,"cpus":2,"mode":"run","accel":"kvm","image_key":"k","agent":"/usr/bin/sfd",
          "system_disk":"/var/lib/root.img"},
    "descriptor_bytes":755316,"descriptor_xxh3":"0123456789abcdef"})";
  auto r = sf::sfd::parse_origin_reply(text);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->descriptor_bytes, 755316u);
  EXPECT_EQ(r->mcast_port, 5000);
  EXPECT_EQ(r->mcast_group, "239.1.2.3");
  EXPECT_EQ(r->memtap, "10.213.0.1:40000");
  EXPECT_EQ(r->vm.mem_mib, 512u);
  EXPECT_EQ(r->vm.cpus, 2);
  EXPECT_EQ(r->vm.accel, sf::sfd::Accel::kvm);
  EXPECT_EQ(r->vm.system_disk, fs::path("/var/lib/root.img"));
  EXPECT_FALSE(r->vm.work_disk);
  EXPECT_EQ(r->image_key, "k");
}

TEST(OriginReply, RefusalsAndMalformedRepliesAreErrors) {
  auto r = sf::sfd::parse_origin_reply(R"({"error":"wrong token"})");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "refused: wrong token");
  // A refusal whose "error" is not a string threw out of the old reader.
  r = sf::sfd::parse_origin_reply(R"({"error":{"why":1}})");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("refused"), std::string::npos);
  EXPECT_FALSE(sf::sfd::parse_origin_reply("not json"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply("[]"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply(R"({"descriptor_bytes":0})"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply(R"({"descriptor_bytes":"5"})"));
  // A float too large for an integer was converted with undefined behaviour (UBSan, found by
  // tests/fuzz/vm_descriptor_fuzz); so were negative and fractional counts.
  EXPECT_FALSE(sf::sfd::parse_origin_reply(R"({"descriptor_bytes":5.1e132})"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply(R"({"descriptor_bytes":-1})"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply(R"({"descriptor_bytes":1.5})"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply(
      R"({"descriptor_bytes":5,"descriptor_xxh3":"x","memtap":"a:1","mcast":{"group":"g","port":5000,"key":"k"},
          "vm":{"mem_mib":512,"cpus":1e300,"mode":"run","accel":"tcg","agent":"a","image_key":"k"}})"));
  EXPECT_FALSE(sf::sfd::parse_origin_reply(
      R"({"descriptor_bytes":5,"descriptor_xxh3":"x","memtap":"a:1","mcast":{"group":"g","port":70000,"key":"k"}})"));
}

// --allocator slurm: what sfd asks salloc for, how it reads the grant, how it reaches a node.
TEST(SlurmGrant, SallocAsksForOneTaskOnEachNodeUnderTheJobsName) {
  EXPECT_EQ(sf::sfd::salloc_grant_argv(4, {}, "sfd.1.ab"),
            (std::vector<std::string>{"salloc", "--no-shell", "--job-name=sfd.1.ab", "--nodes=4", "--ntasks-per-node=1"}));
  const auto argv = sf::sfd::salloc_grant_argv(2, {"debug", "physics", "10:00"}, "n");
  EXPECT_EQ(std::vector<std::string>(argv.begin() + 5, argv.end()),
            (std::vector<std::string>{"--partition=debug", "--account=physics", "--time=10:00"}));
}

TEST(SlurmGrant, TheJobIdComesFromSallocsGrantedLine) {
  EXPECT_EQ(sf::sfd::granted_job_id("salloc: Pending job allocation 17\nsalloc: job 17 queued and waiting for resources\n"
                                "salloc: job 17 has been allocated resources\nsalloc: Granted job allocation 17\n"),
            "17");
  EXPECT_FALSE(sf::sfd::granted_job_id("salloc: error: invalid partition specified: nosuch\n"));
  EXPECT_FALSE(sf::sfd::granted_job_id(""));
}

TEST(SlurmGrant, TheAgentIsOneTaskOfTheAllocationOnThatNode) {
  EXPECT_EQ(sf::sfd::srun_agent("17", "node3"), (std::vector<std::string>{"srun", "--jobid=17", "--overlap", "--nodes=1",
                                                                       "--ntasks=1", "--nodelist=node3", "--quiet"}));
}

TEST(SlurmGrant, OptionsWinOverTheEnvironment) {
  std::map<std::string, const char*> env{{"SF_SLURM_PARTITION", "envpart"}, {"SF_SLURM_ACCOUNT", "envacct"},
                                         {"SF_SLURM_TIME_LIMIT", ""}};
  const auto o = sf::common::slurm::with_environment({"given", "", ""}, [&](const char* n) -> const char* {
    auto it = env.find(n);
    return it == env.end() ? nullptr : it->second;
  });
  EXPECT_EQ(o.partition, "given");
  EXPECT_EQ(o.account, "envacct");
  EXPECT_EQ(o.time_limit, "");  // an empty variable is no choice
}

// The watchdog that sfd and mpirun-sf leave behind a request: a real /bin/sh, with a fake
// scancel first in PATH that records its arguments.
class SlurmWatchdog : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(tmp_.ok()) << tmp_.error();
    dir_ = tmp_.fs_path();
    std::ofstream(dir_ / "scancel") << "#!/bin/sh\necho \"$@\" >> '" << (dir_ / "cancelled").string() << "'\n";
    fs::permissions(dir_ / "scancel", fs::perms::owner_all);
    const char* path = getenv("PATH");
    saved_path_ = path ? path : "";
    setenv("PATH", (dir_.string() + ":" + saved_path_).c_str(), 1);
  }
  void TearDown() override { setenv("PATH", saved_path_.c_str(), 1); }
  std::string cancelled() const {
    std::ifstream in(dir_ / "cancelled");
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  sf::test::TempDir tmp_{"watchdog"};
  fs::path dir_;
  std::string saved_path_;
};

TEST_F(SlurmWatchdog, ItsEndCancelsByNameAndUserAndEndsTheNamedProcess) {
  pid_t sleeper = fork();
  if (sleeper == 0) {
    execlp("sleep", "sleep", "60", nullptr);
    _exit(127);
  }
  auto dog = sf::common::slurm::Watchdog::start("sfd.1.ab");
  ASSERT_TRUE(dog) << dog.error().message;
  dog->name_job_process(sleeper);
  dog->finish();  // waits for the watchdog: its work is done when finish() returns
  EXPECT_EQ(cancelled(), "--quiet --name=sfd.1.ab --user=" + std::to_string(getuid()) + "\n");
  int st = 0;
  ASSERT_EQ(waitpid(sleeper, &st, 0), sleeper);
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM) << st;
}

TEST_F(SlurmWatchdog, DisarmedItCancelsNothing) {
  auto dog = sf::common::slurm::Watchdog::start("sfd.1.ab");
  ASSERT_TRUE(dog) << dog.error().message;
  dog->disarm();
  dog->finish();
  EXPECT_EQ(cancelled(), "");
}

TEST_F(SlurmWatchdog, ItCancelsWhenItsOwnerIsKilled) {
  int done[2];
  ASSERT_EQ(pipe(done), 0);
  pid_t owner = fork();
  if (owner == 0) {
    auto dog = sf::common::slurm::Watchdog::start("owner.job");
    if (!dog) _exit(1);
    (void)!write(done[1], "x", 1);
    pause();  // killed below, the lifeline with it
    _exit(0);
  }
  ::close(done[1]);
  char c;
  ASSERT_EQ(read(done[0], &c, 1), 1);
  ::close(done[0]);
  // The watchdog is not our child: its scancel reports through a FIFO, awaited with a bound.
  const fs::path fifo = dir_ / "report";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  int report = open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  ASSERT_GE(report, 0);
  std::ofstream(dir_ / "scancel") << "#!/bin/sh\necho \"$@\" > '" << fifo.string() << "'\n";
  kill(owner, SIGKILL);
  waitpid(owner, nullptr, 0);
  std::string text;
  for (;;) {
    pollfd p{report, POLLIN, 0};
    ASSERT_EQ(poll(&p, 1, 30000), 1) << "no scancel within 30 s of the owner's death";
    char buf[256];
    const ssize_t n = read(report, buf, sizeof buf);
    if (n > 0) text.append(buf, static_cast<size_t>(n));
    if (n <= 0 || text.find('\n') != std::string::npos) break;  // 0: POLLHUP before any writer
  }
  ::close(report);
  EXPECT_EQ(text, "--quiet --name=owner.job --user=" + std::to_string(getuid()) + "\n");
}

TEST(SlurmTools, AFailingToolGivesWhatItPrintedAndAMissingOneNamesThePackage) {
  auto ok = sf::common::slurm::run_tool({"sh", "-c", "echo out; echo err >&2"});
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(*ok, "out\n");
  auto bad = sf::common::slurm::run_tool({"sh", "-c", "echo 'invalid partition' >&2; exit 1"});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message, "sh failed: invalid partition");
  auto missing = sf::common::slurm::run_tool({"sft-no-such-slurm-tool"});
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("slurm-client"), std::string::npos) << missing.error().message;
}
