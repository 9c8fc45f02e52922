// sfd component tests with real parts but no guest boot: the guest image built from this
// host's kernel and busybox into a private cache, QmpClient against a real QEMU, the sweep of
// files left by a dead sfd.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <thread>

#include "sfd/accel.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/paths.hpp"
#include "sfd/qmp_client.hpp"
#include "sfd/rootfs.hpp"
#include "sfd/vm.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;

using sf::test::make_temp_dir;

namespace {

std::string run_capture(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return out;
  char buf[4096];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  pclose(p);
  return out;
}

}  // namespace

TEST(GuestImageBuild, BuildsOnceFromTheHostKernelAndRebuildsWhenAnInputChanges) {
  auto inputs = sf::sfd::find_guest_inputs();
  if (!inputs) GTEST_SKIP() << "no usable guest kernel here: " << inputs.error().message;
  const auto cache = make_temp_dir("sfd");
  auto first = sf::sfd::ensure_guest_image(*inputs, cache);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE(first->built_now);
  EXPECT_TRUE(fs::exists(first->kernel));
  EXPECT_GT(fs::file_size(first->initramfs), 100000u);

  const auto listing = run_capture("gzip -dc '" + first->initramfs.string() + "' | cpio -t --quiet");
  EXPECT_NE(listing.find("init\n"), std::string::npos) << listing;
  EXPECT_NE(listing.find("bin/busybox"), std::string::npos);
  for (const char* m : {"9p.ko", "9pnet_virtio.ko", "overlay.ko", "virtio_console.ko", "virtio_pci.ko"})
    EXPECT_NE(listing.find(std::string("lib/modules/") + m), std::string::npos) << m;

  auto again = sf::sfd::ensure_guest_image(*inputs, cache);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->built_now);
  EXPECT_EQ(again->key, first->key);

  // A changed input (another busybox binary) gives another key and a fresh build.
  const auto other_busybox = cache / "busybox-copy";
  fs::copy_file(inputs->busybox, other_busybox);
  std::ofstream(other_busybox, std::ios::app) << "extra";
  auto changed = *inputs;
  changed.busybox = other_busybox;
  auto rebuilt = sf::sfd::ensure_guest_image(changed, cache);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.error().message;
  EXPECT_TRUE(rebuilt->built_now);
  EXPECT_NE(rebuilt->key, first->key);
  fs::remove_all(cache);
}

TEST(QmpClientWithQemu, TalksToARealQemu) {
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    dup2(sv[1], 3);
    const std::string qemu = sf::sfd::qemu_binary();
    execlp(qemu.c_str(), qemu.c_str(), "-nodefaults", "-nographic", "-machine", "none", "-S", "-chardev",
           "socket,id=q,fd=3", "-mon", "chardev=q,mode=control", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(sv[1]);
  auto qmp = sf::sfd::QmpClient::adopt(sv[0]);
  ASSERT_TRUE(qmp.ok());
  auto& c = **qmp;
  auto hs = c.handshake(std::chrono::seconds(60));
  ASSERT_TRUE(hs.ok()) << hs.error().message;
  EXPECT_EQ(c.greeting()["QMP"]["version"]["qemu"]["major"], 7);
  auto st = c.query_status();
  ASSERT_TRUE(st.ok()) << st.error().message;
  EXPECT_EQ((*st)["status"], "prelaunch");
  EXPECT_TRUE(c.migrate_set_capabilities({{"x-ignore-shared", true}}).ok());
  auto mig = c.query_migrate();
  ASSERT_TRUE(mig.ok()) << mig.error().message;
  auto bad = c.execute("no-such-command");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("no-such-command"), std::string::npos);
  EXPECT_TRUE(c.quit().ok());
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status));
}

TEST(StaleSweep, RemovesFilesOfADeadSfdAndKeepsLiveOnes) {
  const auto dir = make_temp_dir("sfd");
  setenv("SF_RAM_DIR", (dir / "ram").c_str(), 1);
  setenv("SF_RUNTIME_DIR", (dir / "run").c_str(), 1);
  fs::create_directories(dir / "ram");
  fs::create_directories(dir / "run");
  // A pid that is certainly dead: a child we reaped.
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  const std::string dead_name = "sf-vm-" + std::to_string(dead) + "-0";
  const std::string live_name = "sf-vm-" + std::to_string(getpid()) + "-0";
  std::ofstream(dir / "ram" / (dead_name + ".ram")) << "x";
  std::ofstream(dir / "ram" / (live_name + ".ram")) << "x";
  fs::create_directories(dir / "run" / dead_name);
  std::ofstream(dir / "ram" / "unrelated.file") << "x";
  EXPECT_EQ(sf::sfd::sweep_stale_vm_files(), 2);
  EXPECT_FALSE(fs::exists(dir / "ram" / (dead_name + ".ram")));
  EXPECT_FALSE(fs::exists(dir / "run" / dead_name));
  EXPECT_TRUE(fs::exists(dir / "ram" / (live_name + ".ram")));
  EXPECT_TRUE(fs::exists(dir / "ram" / "unrelated.file"));
  unsetenv("SF_RAM_DIR");
  unsetenv("SF_RUNTIME_DIR");
  fs::remove_all(dir);
}

TEST(AccelChoice, ProbesOnceSaysWhyAndHonoursSfAccel) {
  auto inputs = sf::sfd::find_guest_inputs();
  ASSERT_TRUE(inputs.ok()) << inputs.error().message;
  const auto cache = make_temp_dir("sfd");
  auto image = sf::sfd::ensure_guest_image(*inputs, cache);
  ASSERT_TRUE(image.ok()) << image.error().message;
  setenv("SF_CACHE_DIR", cache.c_str(), 1);
  unsetenv("SF_ACCEL");
  auto first = sf::sfd::choose_accel(*image);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_FALSE(first->reason.empty());
  EXPECT_FALSE(first->from_cache);
  if (access("/dev/kvm", R_OK | W_OK) != 0) {
    EXPECT_EQ(first->accel, sf::sfd::Accel::tcg);
  }
  auto second = sf::sfd::choose_accel(*image);
  ASSERT_TRUE(second.ok());
  if (access("/dev/kvm", R_OK | W_OK) == 0) {
    EXPECT_TRUE(second->from_cache);  // the probe boot ran once
  }
  EXPECT_EQ(second->accel, first->accel);
  setenv("SF_ACCEL", "tcg", 1);
  auto forced = sf::sfd::choose_accel(*image);
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(forced->accel, sf::sfd::Accel::tcg);
  setenv("SF_ACCEL", "fast", 1);
  EXPECT_FALSE(sf::sfd::choose_accel(*image).ok());
  unsetenv("SF_ACCEL");
  unsetenv("SF_CACHE_DIR");
  fs::remove_all(cache);
}

namespace {
void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}
}  // namespace

// The system image from a small stand-in for the host's / (SF_GUEST_ROOT): built once, reused,
// rebuilt (and the old one removed) when an included file changes, not when an excluded one
// does; the image holds the included trees and the merged-/usr links, not the rest.
TEST(SystemImage, ReusedUntilAnIncludedFileChangesThenRebuilt) {
  const auto dir = make_temp_dir("sfd");
  const auto root = dir / "root";
  write_text(root / "usr/bin/prog", "program-v1");
  write_text(root / "usr/share/doc/readme", "docs");
  write_text(root / "etc/conf", "conf");
  write_text(root / "var/log/big", "not a system tree");
  fs::create_directory_symlink("usr/bin", root / "bin");
  setenv("SF_GUEST_ROOT", root.c_str(), 1);
  setenv("SF_GUEST_EXCLUDE", "usr/share/doc", 1);
  auto spec = sf::sfd::host_system_image_spec();
  unsetenv("SF_GUEST_ROOT");
  unsetenv("SF_GUEST_EXCLUDE");
  ASSERT_TRUE(spec.ok()) << spec.error().message;
  EXPECT_EQ(spec->trees, (std::vector<std::string>{"usr", "etc", "bin"}));
  const auto cache = dir / "cache";

  auto first = sf::sfd::ensure_system_image(*spec, cache);
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_TRUE(first->built_now);
  const auto out = dir / "extracted";
  ASSERT_EQ(std::system(("fsck.erofs --extract=" + out.string() + " " + first->file.string() + " >/dev/null").c_str()), 0);
  std::ifstream prog(out / "usr/bin/prog");
  std::string text;
  prog >> text;
  EXPECT_EQ(text, "program-v1");
  EXPECT_TRUE(fs::exists(out / "etc/conf"));
  EXPECT_TRUE(fs::is_symlink(out / "bin"));
  EXPECT_FALSE(fs::exists(out / "usr/share/doc"));
  EXPECT_FALSE(fs::exists(out / "var"));

  auto again = sf::sfd::ensure_system_image(*spec, cache);
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->built_now);
  EXPECT_EQ(again->key, first->key);

  write_text(root / "usr/share/doc/readme", "other docs");  // excluded: same key
  EXPECT_EQ(*sf::sfd::system_image_key(*spec), first->key);

  // Same size, another mtime: a changed included file gives a new key and a rebuild.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  write_text(root / "usr/bin/prog", "program-v2");
  // `first` and `again` still hold the old image in use (a running sfd would): it is kept.
  auto rebuilt = sf::sfd::ensure_system_image(*spec, cache);
  ASSERT_TRUE(rebuilt.ok()) << rebuilt.error().message;
  EXPECT_TRUE(rebuilt->built_now);
  EXPECT_NE(rebuilt->key, first->key);
  EXPECT_TRUE(fs::exists(first->file)) << "an image in use was removed";
  EXPECT_TRUE(fs::exists(rebuilt->file));

  // Released, the next build removes it; the one `rebuilt` holds stays.
  first->in_use.reset();
  again->in_use.reset();
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  write_text(root / "usr/bin/prog", "program-v3");
  auto third = sf::sfd::ensure_system_image(*spec, cache);
  ASSERT_TRUE(third.ok()) << third.error().message;
  EXPECT_TRUE(third->built_now);
  EXPECT_FALSE(fs::exists(first->file)) << "the old image was not removed";
  EXPECT_TRUE(fs::exists(rebuilt->file)) << "an image in use was removed";
  EXPECT_TRUE(fs::exists(third->file));
  fs::remove_all(dir);
}

TEST(WorkImage, PacksThePathsAndRefusesTooMuchData) {
  const auto dir = make_temp_dir("sfd");
  write_text(dir / "job/input", "0123456789");
  write_text(dir / "tools/t", "tool");
  write_text(dir / "unrelated", "no");
  setenv("SF_RUNTIME_DIR", (dir / "run").c_str(), 1);
  fs::path file;
  {
    auto img = sf::sfd::WorkImage::build({dir / "job", dir / "tools"});
    ASSERT_TRUE(img.ok()) << img.error().message;
    file = (*img)->file();
    EXPECT_TRUE(fs::exists(file));
    const auto out = dir / "extracted";
    ASSERT_EQ(std::system(("fsck.erofs --extract=" + out.string() + " " + file.string() + " >/dev/null").c_str()), 0);
    const auto rel = dir.relative_path();
    EXPECT_TRUE(fs::exists(out / rel / "job/input"));
    EXPECT_TRUE(fs::exists(out / rel / "tools/t"));
    EXPECT_FALSE(fs::exists(out / rel / "unrelated"));
    EXPECT_FALSE(fs::exists(out / rel / "run"));
  }
  EXPECT_FALSE(fs::exists(file)) << "the work image outlived its owner";
  auto big = sf::sfd::WorkImage::build({dir / "job"}, 5);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.error().message.find("cd into a smaller directory"), std::string::npos) << big.error().message;
  EXPECT_TRUE(fs::is_empty(dir / "run"));
  unsetenv("SF_RUNTIME_DIR");
  fs::remove_all(dir);
}
