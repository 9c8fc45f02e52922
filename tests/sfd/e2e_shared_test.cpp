// sfd end-to-end test: one boot, one shell script, many observations. Registered with ctest
// as a single test (a whole-suite run), so the guest boots once for all of them.
#include <gtest/gtest.h>

#include "e2e_support.hpp"

// One boot, one shell script, many observations.
class SfdRunShared : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dirs_ = new TestDirs();
    std::ofstream(dirs_->work / "input.txt") << "data-from-the-host-cwd\n";
    const std::string script =
        "echo out-line; echo err-line >&2; "
        "echo \"pwd=$(pwd)\"; "
        "echo \"input=$(cat input.txt)\"; "
        "echo \"debian=$(cat /etc/debian_version)\"; "
        "echo \"marker=$SFT_MARKER\"; "
        "echo \"host=$(hostname)\"; "
        "echo guest-wrote > output.txt; echo \"readback=$(cat output.txt)\"; "
        "echo \"mounts=$(grep -c ' 9p ' /proc/mounts)\"; "
        "echo private > /etc/sft-overlay-probe && echo \"overlay=$(cat /etc/sft-overlay-probe)\"; "
        "exit 3";
    SfdProcess p({"--", "sh", "-c", script}, *dirs_);
    status_ = p.finish();
    out_ = p.out();
    err_ = p.err();
  }
  static void TearDownTestSuite() {
    delete dirs_;
    dirs_ = nullptr;
  }
  static inline TestDirs* dirs_ = nullptr;
  static inline std::optional<int> status_;
  static inline std::string out_, err_;
};

TEST_F(SfdRunShared, ExitStatusOfTheCommandIsPropagated) {
  ASSERT_TRUE(status_.has_value()) << "sfd run did not finish; stderr: " << err_;
  EXPECT_EQ(*status_, 3) << "stdout: " << out_ << "\nstderr: " << err_;
}

TEST_F(SfdRunShared, StdoutAndStderrArriveApart) {
  EXPECT_NE(out_.find("out-line\n"), std::string::npos) << out_;
  EXPECT_EQ(out_.find("err-line"), std::string::npos) << out_;
  EXPECT_NE(err_.find("err-line\n"), std::string::npos) << err_;
}

TEST_F(SfdRunShared, RunsInTheCallersWorkingDirectoryWithItsEnvironment) {
  EXPECT_NE(out_.find("pwd=" + dirs_->work.string() + "\n"), std::string::npos) << out_;
  EXPECT_NE(out_.find("input=data-from-the-host-cwd\n"), std::string::npos) << out_;
  EXPECT_NE(out_.find("marker=from-the-host\n"), std::string::npos) << out_;
  EXPECT_NE(out_.find("host=sf-vm\n"), std::string::npos) << out_;
}

TEST_F(SfdRunShared, SeesTheHostsFilesAndWritesStayPrivate) {
  EXPECT_NE(out_.find("debian=" + read_file("/etc/debian_version")), std::string::npos) << out_;
  // The write into /etc succeeded in the guest's overlay and never reached the host.
  EXPECT_NE(out_.find("overlay=private\n"), std::string::npos) << out_;
  EXPECT_FALSE(fs::exists("/etc/sft-overlay-probe"));
}

// The default root is on read-only disks: the working directory is a copy, writable in the
// VM, and nothing is mounted over 9p (so the VM could be cloned).
TEST_F(SfdRunShared, WritesToTheWorkingDirectoryStayInTheVm) {
  EXPECT_NE(out_.find("readback=guest-wrote\n"), std::string::npos) << out_;
  EXPECT_FALSE(fs::exists(dirs_->work / "output.txt"));
  EXPECT_NE(out_.find("mounts=0\n"), std::string::npos) << out_;
}

TEST_F(SfdRunShared, NothingIsLeftBehind) {
  std::string what;
  EXPECT_FALSE(dirs_->vm_files_left(&what)) << what;
}

