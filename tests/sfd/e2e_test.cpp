// sfd end-to-end tests: the real `sfd run` booting real TCG guests. Boots are slow (seconds
// each, tens under load), so each test here boots once. Deadlines are bounds against hangs,
// never measurements.
#include <gtest/gtest.h>

#include <fstream>

#include "e2e_support.hpp"

TEST(SfdRun, EchoHiPrintsHiAndExitsZero) {
  TestDirs dirs;
  SfdProcess p({"--", "/bin/echo", "hi"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << "sfd run did not finish; stderr: " << p.err();
  EXPECT_EQ(*st, 0) << p.err();
  EXPECT_EQ(p.out(), "hi\n");
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// sfd's stdin reaches the command byte for byte (3 MB, more than any buffer on the way, so
// flow control is exercised), ends with end of file; --stdin none gives /dev/null.
TEST(SfdRun, StdinIsForwardedToTheCommandAndNoneGivesEndOfFile) {
  TestDirs dirs;
  const fs::path data = dirs.work / "stdin.bin";
  {
    std::ofstream out(data, std::ios::binary);
    std::uint32_t x = 2463534242u;
    for (int i = 0; i < 3000000; ++i) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      out.put(static_cast<char>(x));
    }
  }
  {
    // The data file is also on the VM's work disk (the working directory): cmp compares.
    SfdProcess p({"--", "cmp", "-", "stdin.bin"}, dirs, data.string());
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 0) << p.out() << p.err();
  }
  {
    SfdProcess p({"--stdin", "none", "--", "sh", "-c", "echo bytes=$(wc -c)"}, dirs, data.string());
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 0) << p.err();
    EXPECT_EQ(p.out(), "bytes=0\n");
  }
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(SfdRun, ACommandKilledBySignalGives128PlusN) {
  TestDirs dirs;
  SfdProcess p({"--mem", "192M", "--", "sh", "-c", "kill -KILL $$"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  EXPECT_EQ(*st, 137) << p.err();
}

// Output arrives while the command runs: the guest waits for a file that the test creates
// only after it has seen the first line, so the order proves streaming without any timing.
// With --root 9p the working directory is shared both ways (host file seen, guest file kept).
TEST(SfdRun, OutputIsStreamedWhileTheCommandRunsAndThe9pRootSharesTheCwd) {
  TestDirs dirs;
  SfdProcess p({"--root", "9p", "--", "sh", "-c", "echo first; while [ ! -e go ]; do sleep 0.2; done; echo second; echo guest-wrote > output.txt"}, dirs);
  ASSERT_TRUE(p.read_until("first\n")) << "stdout: " << p.out() << "\nstderr: " << p.err();
  EXPECT_EQ(p.out().find("second"), std::string::npos);
  std::ofstream(dirs.work / "go") << "";
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  EXPECT_EQ(*st, 0) << p.err();
  EXPECT_EQ(p.out(), "first\nsecond\n");
  EXPECT_EQ(read_file(dirs.work / "output.txt"), "guest-wrote\n");
}

TEST(SfdRun, AnUnknownRootModeIsAUsageError) {
  TestDirs dirs;
  SfdProcess p({"--root", "nfs", "--", "true"}, dirs);
  const auto st = p.finish(std::chrono::seconds(30));
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(*st, 2);
  EXPECT_NE(p.err().find("use disk"), std::string::npos) << p.err();
}

TEST(SfdRun, SigtermToSfdStopsTheVmAndCleansUp) {
  TestDirs dirs;
  SfdProcess p({"--", "sh", "-c", "echo ready; sleep 600"}, dirs);
  ASSERT_TRUE(p.read_until("ready\n")) << p.err();
  EXPECT_TRUE(qemu_running_for(p.pid()));
  kill(p.pid(), SIGTERM);
  const auto st = p.finish(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value()) << "sfd did not exit after SIGTERM";
  EXPECT_EQ(*st, 128 + SIGTERM);
  EXPECT_FALSE(qemu_running_for(p.pid()));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(SfdRun, QemuDyingIsReportedAndCleanedUp) {
  TestDirs dirs;
  SfdProcess p({"--", "sh", "-c", "echo ready; sleep 600"}, dirs);
  ASSERT_TRUE(p.read_until("ready\n")) << p.err();
  // Kill the QEMU that belongs to this sfd.
  const std::string needle = "sf-vm-" + std::to_string(p.pid()) + "-";
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (ss.str().find(needle) != std::string::npos) kill(std::atoi(e.path().filename().c_str()), SIGKILL);
  }
  const auto st = p.finish(std::chrono::seconds(60));
  ASSERT_TRUE(st.has_value()) << "sfd did not exit after QEMU died";
  EXPECT_EQ(*st, 125) << p.err();
  EXPECT_NE(p.err().find("QEMU was killed by signal 9"), std::string::npos) << p.err();
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(SfdRun, GuestKernelPanicIsReportedAndCleanedUp) {
  TestDirs dirs;
  // sysrq 'c' panics the guest kernel; panic=-1 and -no-reboot make QEMU exit.
  SfdProcess p({"--", "sh", "-c", "echo ready; echo c > /proc/sysrq-trigger; sleep 600"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << "sfd did not exit after the guest panicked";
  EXPECT_EQ(*st, 125) << p.err();
  EXPECT_NE(p.err().find("the VM stopped before the command finished"), std::string::npos) << p.err();
  EXPECT_FALSE(qemu_running_for(p.pid()));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}
