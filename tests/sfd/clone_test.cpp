// sfd component tests of local cloning with real TCG guests: boot a guest (idle, or running a
// command with its root on read-only EROFS disks as `sfd run` does), save its descriptor,
// clone it twice; every VM (the re-instantiated parent too) runs on, the frozen RAM file is
// never written, and everything is gone after the set is destroyed.
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <chrono>
#include <fcntl.h>
#include <poll.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <thread>

#include "sfd/accel.hpp"
#include "sfd/clone.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/paths.hpp"
#include "sfd/rootfs.hpp"
#include "sfd/vm.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;

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

std::uint64_t hash_file(const fs::path& p) {
  const std::string s = read_file(p);
  return XXH3_64bits(s.data(), s.size());
}

// Reads a VM's guest I/O stream (sf.io) and collects its stdout.
class GuestOutput {
 public:
  explicit GuestOutput(int fd) : fd_(fd) { fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK); }
  ~GuestOutput() { close(fd_); }
  GuestOutput(const GuestOutput&) = delete;
  GuestOutput& operator=(const GuestOutput&) = delete;
  bool send_spec(const std::string& json) {
    const auto frame = sf::sfd::guest_io::encode(sf::sfd::guest_io::FrameType::spec, json);
    return write(fd_, frame.data(), frame.size()) == static_cast<ssize_t>(frame.size());
  }
  // Reads until stdout holds `text`; false at EOF, on a bad frame or after `limit`.
  bool wait_for(const std::string& text, std::chrono::seconds limit) {
    return wait_until([&] { return out_.find(text) != std::string::npos; }, limit);
  }
  // The highest "tick-N" in the output so far (0 if none).
  int last_tick() const {
    static const std::regex tick("tick-([0-9]+)");
    int n = 0;
    for (std::sregex_iterator i(out_.begin(), out_.end(), tick), end; i != end; ++i) n = std::max(n, std::stoi((*i)[1]));
    return n;
  }
  // Reads until `done()`; false at EOF, on a bad frame or after `limit`.
  template <typename Done>
  bool wait_until(Done done, std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      pollfd p{fd_, POLLIN, 0};
      poll(&p, 1, 200);
      std::uint8_t buf[4096];
      const ssize_t n = read(fd_, buf, sizeof buf);
      if (n == 0) return false;
      if (n < 0) continue;
      decoder_.feed({buf, static_cast<std::size_t>(n)});
      for (;;) {
        auto f = decoder_.next();
        if (!f) return false;
        if (!*f) break;
        if ((*f)->type == sf::sfd::guest_io::FrameType::stdout_data || (*f)->type == sf::sfd::guest_io::FrameType::stderr_data)
          out_ += (*f)->text();
      }
    }
    return true;
  }
  const std::string& out() const { return out_; }

 private:
  int fd_;
  sf::sfd::guest_io::FrameDecoder decoder_;
  std::string out_;
};

}  // namespace

// What cloning needs of `sfd run`: its guests, root on read-only disks (no 9p device), can be
// cloned while their command runs. The command counts in a file in /tmp (the VM's RAM) and
// prints the count; each clone carries the count on from where the parent was frozen.
TEST(LocalClone, ARunningGuestWithItsRootOnDisksClonesAndEveryCopyRunsOn) {
  auto image = sf::sfd::ensure_host_guest_image();
  ASSERT_TRUE(image.ok()) << image.error().message;
  auto system = sf::sfd::ensure_host_system_image();
  ASSERT_TRUE(system.ok()) << system.error().message;
  const auto run = make_temp_dir("sfd");
  const auto ram = make_temp_dir("sfd", "/dev/shm");
  const auto work = make_temp_dir("sfd");
  std::ofstream(work / "start") << "40\n";
  setenv("SF_RUNTIME_DIR", run.c_str(), 1);
  setenv("SF_RAM_DIR", ram.c_str(), 1);
  {
    auto spec = sf::sfd::host_system_image_spec();
    ASSERT_TRUE(spec.ok()) << spec.error().message;
    auto work_image = sf::sfd::WorkImage::build(sf::sfd::work_image_paths(work, "sh", "/usr/bin:/bin", SFD_BINARY, *spec));
    ASSERT_TRUE(work_image.ok()) << work_image.error().message;
    sf::sfd::VmConfig cfg;
    cfg.image = *image;
    cfg.accel = sf::sfd::Accel::tcg;
    cfg.mem_mib = 256;
    cfg.agent = SFD_BINARY;
    cfg.system_disk = system->file;
    cfg.work_disk = (*work_image)->file();
    auto parent = sf::sfd::QemuVm::launch(cfg);
    ASSERT_TRUE(parent.ok()) << parent.error().message;
    const auto argv = nlohmann::json::array(
        {"sh", "-c", "cp start /tmp/n; while :; do n=$(($(cat /tmp/n)+1)); echo $n > /tmp/n; echo tick-$n; sleep 0.5; done"});
    const nlohmann::json cmd = {{"argv", argv}, {"env", nlohmann::json::array({"PATH=/usr/bin:/bin"})}, {"cwd", work.string()}, {"work_dir", ""}, {"hostname", "sf-vm"}};
    GuestOutput parent_out((*parent)->take_io_fd());
    ASSERT_TRUE(parent_out.send_spec(cmd.dump()));
    ASSERT_TRUE(parent_out.wait_for("tick-42\n", std::chrono::seconds(300))) << parent_out.out() << (*parent)->diagnostics();

    auto set = sf::sfd::clone_vm(std::move(*parent), cfg, 2, run);
    ASSERT_TRUE(set.ok()) << set.error().message;
    auto& s = **set;
    ASSERT_EQ(s.clones.size(), 2u);
    // The old parent QEMU is gone: read what it sent up to the freeze (until EOF).
    parent_out.wait_until([] { return false; }, std::chrono::seconds(10));
    const int frozen_at = parent_out.last_tick();
    std::vector<sf::sfd::QemuVm*> all = {s.parent.get(), s.clones[0].get(), s.clones[1].get()};
    for (auto* vm : all) {
      auto st = vm->qmp().query_status();
      ASSERT_TRUE(st.ok()) << st.error().message;
      EXPECT_EQ((*st)["status"], "running");
      // A copy's stream starts empty; counts past the frozen one show its command went on
      // with the parent's /tmp and processes.
      GuestOutput out(vm->take_io_fd());
      EXPECT_TRUE(out.wait_until([&] { return out.last_tick() >= frozen_at + 2; }, std::chrono::seconds(120)))
          << "frozen at " << frozen_at << ", got: " << out.out() << vm->diagnostics();
    }
    set->reset();
  }
  EXPECT_TRUE(fs::is_empty(ram)) << "RAM or descriptor files left";
  EXPECT_TRUE(fs::is_empty(run)) << "runtime files left";
  unsetenv("SF_RUNTIME_DIR");
  unsetenv("SF_RAM_DIR");
  fs::remove_all(run);
  fs::remove_all(ram);
  fs::remove_all(work);
}

TEST(LocalClone, TwoClonesAndTheParentRunOnFromAFrozenImage) {
  auto inputs = sf::sfd::find_guest_inputs();
  ASSERT_TRUE(inputs.ok()) << inputs.error().message;
  auto image = sf::sfd::ensure_guest_image(*inputs, sf::sfd::cache_dir());
  ASSERT_TRUE(image.ok()) << image.error().message;
  const auto run = make_temp_dir("sfd");
  const auto ram = make_temp_dir("sfd", "/dev/shm");
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
    const fs::path parent_console = (*parent)->paths().console_log;
    ASSERT_TRUE(wait_for_text(parent_console, "sf-idle-tick", std::chrono::seconds(300)))
        << (*parent)->diagnostics();

    auto set = sf::sfd::clone_vm(std::move(*parent), cfg, 2, run);
    ASSERT_TRUE(set.ok()) << set.error().message;
    auto& s = **set;
    EXPECT_GT(s.descriptor.bytes, 0u);
    EXPECT_LT(s.descriptor.bytes, (256ull << 20) / 100) << "descriptor over 1% of guest RAM";
    ASSERT_EQ(s.clones.size(), 2u);
    ASSERT_TRUE(fs::exists(s.image->ram_file()));
    const auto frozen_hash = hash_file(s.image->ram_file());

    std::vector<sf::sfd::QemuVm*> all = {s.parent.get(), s.clones[0].get(), s.clones[1].get()};
    for (auto* vm : all) {
      auto st = vm->qmp().query_status();
      ASSERT_TRUE(st.ok()) << st.error().message;
      EXPECT_EQ((*st)["status"], "running");
      // A clone's console starts empty; the idle loop's next tick proves it went on.
      EXPECT_TRUE(wait_for_text(vm->paths().console_log, "sf-idle-tick", std::chrono::seconds(120)))
          << vm->diagnostics();
    }
    // Three VMs ran and wrote their own memory; the image they map did not change.
    EXPECT_EQ(hash_file(s.image->ram_file()), frozen_hash);
    set->reset();
  }
  EXPECT_TRUE(fs::is_empty(ram)) << "RAM or descriptor files left";
  EXPECT_TRUE(fs::is_empty(run)) << "runtime files left";
  unsetenv("SF_RUNTIME_DIR");
  unsetenv("SF_RAM_DIR");
  fs::remove_all(run);
  fs::remove_all(ram);
}
