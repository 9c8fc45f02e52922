// sfd component test of remote clones: boot an idle TCG guest, freeze it, serve it from this
// host (the root namespace, on a private bridge) and start clones with `sfd remote-clone` in
// a second network namespace ("host") on that bridge: RAM from memtap's FUSE export over
// mcdist. The clone must run on (console ticks) with pages fetched through the page server;
// SIGTERM and SIGKILL of the remote sfd must leave no QEMU, FUSE export or file behind.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "sfd/clone.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/paths.hpp"
#include "sfd/remote_clone.hpp"
#include "sfd/vm.hpp"
#include "namespace_hosts.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;

using sf::test::NamespaceHosts;

using sf::test::make_temp_dir;

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool wait_for_text(const fs::path& file, const std::string& text, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (read_file(file).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

bool alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

struct RemoteProcess {
  pid_t pid = -1;
  fs::path out;
  json running;
};

// `ip netns exec NS sfd remote-clone ...`, stdout to `out`; waits for the "running" line.
RemoteProcess spawn_remote(const NamespaceHosts& h, const fs::path& ticket, const fs::path& out, int id) {
  RemoteProcess r;
  r.out = out;
  r.pid = fork();
  if (r.pid == 0) {
    FILE* f = std::fopen(out.c_str(), "w");
    if (f != nullptr) dup2(fileno(f), 1);
    const std::string ids = std::to_string(id);
    execlp("ip", "ip", "netns", "exec", h.ns(1).c_str(), SFD_BINARY, "remote-clone", "--ticket", ticket.c_str(), "--iface", "eth0",
           "--id", ids.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(300);
  while (std::chrono::steady_clock::now() < deadline) {
    const std::string text = read_file(out);
    if (const auto nl = text.find('\n'); nl != std::string::npos) {
      r.running = json::parse(text.substr(0, nl), nullptr, false);
      return r;
    }
    int status = 0;
    if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
      r.pid = -1;
      return r;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return r;
}

int wait_exit(pid_t pid, std::chrono::seconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      return -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

TEST(RemoteClone, RunsOnANamespaceHostWithMemoryFromMemtapOverMcdistAndCleansUp) {
  NamespaceHosts hosts(1, "rc");
  ASSERT_TRUE(hosts.ok) << "cannot build the bridge and namespace (needs root)";
  auto image = sf::sfd::ensure_host_guest_image();
  ASSERT_TRUE(image.ok()) << image.error().message;
  const auto run = make_temp_dir("rc");
  const auto ram = make_temp_dir("rc", "/dev/shm");
  setenv("SF_RUNTIME_DIR", run.c_str(), 1);
  setenv("SF_RAM_DIR", ram.c_str(), 1);
  {
    sf::sfd::VmConfig cfg;
    cfg.image = *image;
    cfg.accel = sf::sfd::Accel::tcg;
    cfg.mem_mib = 256;
    cfg.mode = "idle";
    auto parent = sf::sfd::QemuVm::launch(cfg);
    ASSERT_TRUE(parent.ok()) << parent.error().message;
    ASSERT_TRUE(wait_for_text((*parent)->paths().console_log, "sf-idle-tick", std::chrono::seconds(300)))
        << (*parent)->diagnostics();
    const fs::path desc = run / "parent.desc";
    auto d = sf::sfd::save_descriptor(**parent, desc);
    ASSERT_TRUE(d.ok()) << d.error().message;
    sf::sfd::FrozenImage frozen((*parent)->release_ram_file(), desc);
    parent->reset();

    sf::sfd::RemoteOriginOptions oo;
    oo.address = hosts.net + "1";
    oo.interface = hosts.bridge;
    auto origin = sf::sfd::RemoteCloneOrigin::start(cfg, frozen, oo);
    ASSERT_TRUE(origin.ok()) << origin.error().message;
    EXPECT_GT((*origin)->no_fetch().zero_pages, 0u);
    const fs::path ticket = run / "ticket.json";
    ASSERT_TRUE((*origin)->write_ticket(ticket).ok());

    // 1. A clone runs on the other host and is stopped with SIGTERM.
    auto r = spawn_remote(hosts, ticket, run / "remote1.out", 1);
    ASSERT_GT(r.pid, 0) << "sfd remote-clone failed: " << read_file(r.out);
    ASSERT_EQ(r.running.value("event", ""), "running") << read_file(r.out);
    const pid_t qemu = r.running["qemu_pid"].get<pid_t>();
    const pid_t fuse = r.running["fuse_pid"].get<pid_t>();
    EXPECT_TRUE(alive(qemu));
    EXPECT_TRUE(alive(fuse));
    const fs::path console = r.running["console"].get<std::string>();
    EXPECT_TRUE(wait_for_text(console, "sf-idle-tick", std::chrono::seconds(120))) << read_file(console);
    const json served = json::parse((*origin)->multicast_stats());
    EXPECT_GT(served["pages_answered"].get<std::uint64_t>(), 0u) << served.dump();
    EXPECT_EQ((*origin)->descriptors_sent(), 1u);
    kill(r.pid, SIGTERM);
    EXPECT_EQ(wait_exit(r.pid, std::chrono::seconds(60)), 0) << read_file(r.out);
    const std::string out = read_file(r.out);
    const auto stopped = json::parse(out.substr(out.find('\n') + 1), nullptr, false);
    ASSERT_TRUE(stopped.is_object()) << out;
    EXPECT_EQ(stopped.value("event", ""), "stopped");
    EXPECT_GT(stopped["client"]["pages_fetched"].get<std::uint64_t>(), 0u) << out;
    EXPECT_GT(stopped["client"]["pages_zero_served"].get<std::uint64_t>(), 0u) << out;
    EXPECT_FALSE(alive(qemu));
    EXPECT_FALSE(alive(fuse));

    // 2. The remote sfd is SIGKILLed while its clone runs: QEMU and the FUSE export die with
    // it (PR_SET_PDEATHSIG), the next sfd's sweep removes its files.
    auto k = spawn_remote(hosts, ticket, run / "remote2.out", 2);
    ASSERT_GT(k.pid, 0) << read_file(k.out);
    ASSERT_EQ(k.running.value("event", ""), "running") << read_file(k.out);
    const pid_t qemu2 = k.running["qemu_pid"].get<pid_t>();
    const pid_t fuse2 = k.running["fuse_pid"].get<pid_t>();
    // `ip netns exec` execs sfd, so r.pid is sfd itself.
    kill(k.pid, SIGKILL);
    waitpid(k.pid, nullptr, 0);
    for (int i = 0; i < 200 && (alive(qemu2) || alive(fuse2)); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_FALSE(alive(qemu2)) << "QEMU outlived its sfd";
    EXPECT_FALSE(alive(fuse2)) << "the FUSE export outlived its sfd";
    EXPECT_EQ(read_file("/proc/mounts").find(run.string()), std::string::npos) << "a FUSE mount is left";
    sf::sfd::sweep_stale_vm_files();
  }
  // The origin, image and parent are gone; nothing may be left in either directory.
  fs::remove(run / "ticket.json");
  for (const char* f : {"remote1.out", "remote2.out"}) fs::remove(run / f);
  EXPECT_TRUE(fs::is_empty(ram)) << "RAM or descriptor files left";
  std::string left;
  for (const auto& e : fs::directory_iterator(run)) left += e.path().filename().string() + " ";
  EXPECT_TRUE(left.empty()) << "runtime files left: " << left;
  unsetenv("SF_RUNTIME_DIR");
  unsetenv("SF_RAM_DIR");
  fs::remove_all(run);
  fs::remove_all(ram);
}
