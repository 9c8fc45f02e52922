// sfd end-to-end test support: a `sfd run` child with its output captured, private runtime
// and RAM directories, and checks for what a VM leaves behind.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

inline namespace sfd_e2e {

inline constexpr auto kBootDeadline = std::chrono::seconds(300);

// Private runtime and RAM directories, so the cleanup checks see only what these tests made.
struct TestDirs {
  fs::path work = sf::test::make_temp_dir("sfd");
  fs::path run = sf::test::make_temp_dir("sfd");
  fs::path ram = sf::test::make_temp_dir("sfd", "/dev/shm");
  ~TestDirs() {
    std::error_code ec;
    fs::remove_all(work, ec);
    fs::remove_all(run, ec);
    fs::remove_all(ram, ec);
  }
  // Hands the directories to an ordinary user that sfd will run as.
  void give_to(uid_t uid, gid_t gid) const {
    for (const auto& d : {work, run, ram}) EXPECT_EQ(chown(d.c_str(), uid, gid), 0) << d;
  }
  bool vm_files_left(std::string* what) const {
    bool left = false;
    for (const auto& d : {run, ram}) {
      for (const auto& e : fs::directory_iterator(d)) {
        *what += e.path().string() + " ";
        left = true;
      }
    }
    return left;
  }
};

// An ordinary user to run sfd as (sf-tester-a, made by scripts/setup): its uid, gid and home.
struct RunAs {
  uid_t uid = 0;
  gid_t gid = 0;
  std::string home;
  std::string sfd;  // the sfd binary to run: a copy the user can read (see stage())
};
inline std::optional<RunAs> ordinary_test_user() {
  const passwd* pw = getpwnam("sf-tester-a");
  if (pw == nullptr) return std::nullopt;
  return RunAs{pw->pw_uid, pw->pw_gid, pw->pw_dir, {}};
}

class SfdProcess {
 public:
  // sfd's stdin is `stdin_path` (default /dev/null: sfd forwards its stdin to the command).
  // With `as`, sfd runs as that ordinary user (uid, gid, no supplementary groups, its HOME).
  SfdProcess(const std::vector<std::string>& args, const TestDirs& dirs, const std::string& stdin_path = "/dev/null",
             const std::optional<RunAs>& as = std::nullopt) {
    int out[2], err[2];
    EXPECT_EQ(pipe2(out, O_CLOEXEC), 0);
    EXPECT_EQ(pipe2(err, O_CLOEXEC), 0);
    std::vector<std::string> argv = {as ? as->sfd : std::string(SFD_BINARY), "run"};
    argv.insert(argv.end(), args.begin(), args.end());
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      const int in = open(stdin_path.c_str(), O_RDONLY | O_CLOEXEC);
      if (in < 0) _exit(119);
      dup2(in, 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
      if (chdir(dirs.work.c_str()) != 0) _exit(120);
      setenv("SF_RUNTIME_DIR", dirs.run.c_str(), 1);
      setenv("SF_RAM_DIR", dirs.ram.c_str(), 1);
      setenv("SFT_MARKER", "from-the-host", 1);
      if (as) {
        setenv("HOME", as->home.c_str(), 1);
        unsetenv("XDG_RUNTIME_DIR");
        unsetenv("XDG_CACHE_HOME");
        unsetenv("SF_CACHE_DIR");
        if (setgroups(0, nullptr) != 0 || setgid(as->gid) != 0 || setuid(as->uid) != 0) _exit(122);
      }
      execv(cargv[0], cargv.data());
      _exit(121);
    }
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }
  ~SfdProcess() {
    if (!status_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    close(out_);
    close(err_);
  }
  pid_t pid() const { return pid_; }
  const std::string& out() const { return out_text_; }
  const std::string& err() const { return err_text_; }

  // Reads output until stdout contains `needle` (true) or sfd ends / the deadline (false).
  bool read_until(const std::string& needle, std::chrono::seconds limit = kBootDeadline) {
    const auto deadline = Clock::now() + limit;
    while (out_text_.find(needle) == std::string::npos) {
      if (!pump(deadline)) return out_text_.find(needle) != std::string::npos;
    }
    return true;
  }
  // Reads everything and waits for sfd to exit; nullopt if it did not within the deadline.
  std::optional<int> finish(std::chrono::seconds limit = kBootDeadline) {
    const auto deadline = Clock::now() + limit;
    while (pump(deadline)) {
    }
    while (Clock::now() < deadline) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) {
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return status_;
      }
      usleep(50000);
    }
    return std::nullopt;
  }

 private:
  // One round of reading; false when both pipes are at EOF or the deadline passed.
  bool pump(Clock::time_point deadline) {
    if (out_eof_ && err_eof_) return false;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd fds[2] = {{out_eof_ ? -1 : out_, POLLIN, 0}, {err_eof_ ? -1 : err_, POLLIN, 0}};
    poll(fds, 2, static_cast<int>(std::min<long>(left, 500)));
    char buf[4096];
    for (int i = 0; i < 2; ++i) {
      if (fds[i].revents == 0) continue;
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) (i == 0 ? out_eof_ : err_eof_) = true;
      else (i == 0 ? out_text_ : err_text_).append(buf, static_cast<std::size_t>(n));
    }
    return true;
  }

  pid_t pid_ = -1;
  int out_ = -1, err_ = -1;
  bool out_eof_ = false, err_eof_ = false;
  std::string out_text_, err_text_;
  std::optional<int> status_;
};

inline bool qemu_running_for(pid_t sfd_pid) {
  // QEMU's command line names the RAM file sf-vm-<sfd pid>-<n>.ram.
  const std::string needle = "sf-vm-" + std::to_string(sfd_pid) + "-";
  for (const auto& e : fs::directory_iterator("/proc")) {
    std::ifstream in(e.path() / "cmdline", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    if (ss.str().find(needle) != std::string::npos) return true;
  }
  return false;
}

inline std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Copies a host program into the test's working directory (the VM's work disk); returns
// "./NAME" for the command line. The copy is readable and executable by everyone, so an
// ordinary user can run it wherever the build tree is.
inline std::string stage(const TestDirs& dirs, const std::string& path) {
  const fs::path to = dirs.work / fs::path(path).filename();
  fs::copy_file(path, to, fs::copy_options::overwrite_existing);
  fs::permissions(to, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                          fs::perms::others_exec);
  return "./" + to.filename().string();
}

// "key=value" lines of a probe's output (the last value of a key wins).
inline std::map<std::string, std::string> facts(const std::string& out) {
  std::map<std::string, std::string> f;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) f[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return f;
}

// Waits (bounded, 60 s) until no QEMU of this sfd runs.
inline bool wait_no_qemu(pid_t sfd_pid) {
  for (int i = 0; i < 600; ++i) {
    if (!qemu_running_for(sfd_pid)) return true;
    usleep(100000);
  }
  return false;
}

// The checks of a vm_clone_probe run that cloned into `clones` VMs (default mode): each node
// has its own hostname and address, a value written before the clone is seen everywhere and
// one written after it stays private, each clone reached its parent and nothing outside, and
// every clone synced.
inline void expect_probe_clones(const std::string& out, int clones) {
  auto f = facts(out);
  EXPECT_EQ(f["driver"], "qemu") << out;
  EXPECT_EQ(f["granted"], std::to_string(clones)) << out;
  EXPECT_EQ(f["subnet"], "10.213.0.0/24") << out;
  for (int i = 0; i <= clones; ++i) {
    const std::string n = "node" + std::to_string(i);
    EXPECT_EQ(f[n + ".hostname"], i == 0 ? "sf-vm" : "sf-vm-sf" + std::to_string(i)) << out;
    EXPECT_EQ(f[n + ".address"], "10.213.0." + std::to_string(1 + i)) << out;
    EXPECT_EQ(f[n + ".before"], "4242") << out;
    EXPECT_EQ(f[n + ".after"], std::to_string(1000 + i)) << out;
    if (i == 0) continue;
    EXPECT_EQ(f[n + ".reached_parent"], "yes") << out;
    EXPECT_EQ(f[n + ".outside"], "unreachable") << out;
    EXPECT_EQ(f["clone" + std::to_string(i) + ".end"], "synced:0") << out;
  }
  EXPECT_EQ(f["node0.final"], "1000") << out;
}

}  // namespace sfd_e2e
