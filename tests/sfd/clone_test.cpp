// sfd component test of local cloning with a real TCG guest: boot an idle guest, save its
// descriptor, clone it twice; every VM (the re-instantiated parent too) runs on, the frozen
// RAM file is never written, and everything is gone after the set is destroyed.
#include <gtest/gtest.h>
#include <unistd.h>
#include <xxhash.h>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include "sfd/accel.hpp"
#include "sfd/clone.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/paths.hpp"
#include "sfd/vm.hpp"

namespace fs = std::filesystem;

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

fs::path make_temp_dir(const fs::path& base) {
  std::string t = (base / "sft-sfd-XXXXXX").string();
  EXPECT_NE(mkdtemp(t.data()), nullptr);
  return t;
}

}  // namespace

TEST(LocalClone, TwoClonesAndTheParentRunOnFromAFrozenImage) {
  auto inputs = sfd::find_guest_inputs();
  ASSERT_TRUE(inputs.ok()) << inputs.error().message;
  auto image = sfd::ensure_guest_image(*inputs, sfd::cache_dir());
  ASSERT_TRUE(image.ok()) << image.error().message;
  const auto run = make_temp_dir("/tmp");
  const auto ram = make_temp_dir("/dev/shm");
  setenv("SF_RUNTIME_DIR", run.c_str(), 1);
  setenv("SF_RAM_DIR", ram.c_str(), 1);
  {
    sfd::VmConfig cfg;
    cfg.image = *image;
    cfg.accel = sfd::Accel::tcg;
    cfg.mem_mib = 256;
    cfg.mode = "idle";
    auto parent = sfd::QemuVm::launch(cfg);
    ASSERT_TRUE(parent.ok()) << parent.error().message;
    const fs::path parent_console = (*parent)->paths().console_log;
    ASSERT_TRUE(wait_for_text(parent_console, "sf-idle-tick", std::chrono::seconds(300)))
        << (*parent)->diagnostics();

    auto set = sfd::clone_vm(std::move(*parent), cfg, 2, run);
    ASSERT_TRUE(set.ok()) << set.error().message;
    auto& s = **set;
    EXPECT_GT(s.descriptor.bytes, 0u);
    EXPECT_LT(s.descriptor.bytes, (256ull << 20) / 100) << "descriptor over 1% of guest RAM";
    ASSERT_EQ(s.clones.size(), 2u);
    ASSERT_TRUE(fs::exists(s.image->ram_file()));
    const auto frozen_hash = hash_file(s.image->ram_file());

    std::vector<sfd::QemuVm*> all = {s.parent.get(), s.clones[0].get(), s.clones[1].get()};
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
