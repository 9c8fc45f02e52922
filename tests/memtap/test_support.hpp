// memtap test support: temporary directories, test images, and real child processes
// (`memtap serve`, `memtap touch`, `memtap mount`) with deadlines and cleanup on every path.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "temp_dir.hpp"

namespace sf::memtap::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

#ifdef MEMTAP_BIN
inline std::string memtap_bin() { return MEMTAP_BIN; }
#endif

// A directory under /tmp named sft-memtap-*, removed with everything in it.
class TempDir : public sf::test::TempDir {
 public:
  TempDir() : sf::test::TempDir("memtap") {}
};

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes `pages` pages of 4096 bytes: every page whose index is a multiple of zero_every
// is all zero, the others random (seeded); plus `tail` extra bytes (a short last page).
inline std::vector<char> make_image(const std::string& path, std::size_t pages, std::size_t zero_every,
                                    std::size_t tail = 0, unsigned seed = 1) {
  std::vector<char> data(pages * 4096 + tail, 0);
  std::mt19937 rng(seed);
  for (std::size_t p = 0; p < pages; ++p) {
    if (zero_every && p % zero_every == 0) continue;
    for (std::size_t i = 0; i < 4096; i += 4) {
      std::uint32_t v = rng() | 1;  // never an all-zero page
      std::memcpy(&data[p * 4096 + i], &v, 4);
    }
  }
  for (std::size_t i = 0; i < tail; ++i) data[pages * 4096 + i] = static_cast<char>('a' + i % 26);
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
  return data;
}

// A child process; killed (SIGKILL) and reaped on destruction if still running.
class Child {
 public:
  // argv[0] is the program path. stdout/stderr go to files; stdin is a pipe when asked.
  static Child spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                     const std::string& out_path, const std::string& err_path, bool stdin_pipe = false) {
    Child c;
    int in_pipe[2] = {-1, -1};
    if (stdin_pipe && ::pipe2(in_pipe, O_CLOEXEC) != 0) return c;
    pid_t pid = ::fork();
    if (pid == 0) {
      // Die with the test process, even when it aborts (a sanitizer stop) and no destructor runs.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (stdin_pipe) ::dup2(in_pipe[0], 0);
      int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      ::dup2(out, 1);
      ::dup2(err, 2);
      for (const auto& e : extra_env) ::putenv(const_cast<char*>(e.c_str()));
      std::vector<char*> av;
      for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
      av.push_back(nullptr);
      ::execv(av[0], av.data());
      ::_exit(127);
    }
    c.pid_ = pid;
    if (stdin_pipe) {
      ::close(in_pipe[0]);
      c.stdin_fd_ = in_pipe[1];
    }
    return c;
  }

  Child() = default;
  Child(Child&& o) noexcept
      : pid_(std::exchange(o.pid_, -1)), stdin_fd_(std::exchange(o.stdin_fd_, -1)), status_(o.status_) {}
  Child& operator=(Child&& o) noexcept {
    std::swap(pid_, o.pid_);
    std::swap(stdin_fd_, o.stdin_fd_);
    std::swap(status_, o.status_);
    return *this;
  }
  ~Child() {
    if (stdin_fd_ >= 0) ::close(stdin_fd_);
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, 0);
    }
  }

  pid_t pid() const { return pid_; }
  void send_line(const std::string& s) {
    std::string l = s + "\n";
    [[maybe_unused]] auto n = ::write(stdin_fd_, l.data(), l.size());
  }
  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }
  // Waits up to `deadline`; returns the wait status, or nothing if still running.
  std::optional<int> wait_for(std::chrono::milliseconds deadline) {
    auto until = std::chrono::steady_clock::now() + deadline;
    while (pid_ > 0) {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        status_ = st;
        return st;
      }
      if (std::chrono::steady_clock::now() > until) return std::nullopt;
      std::this_thread::sleep_for(10ms);
    }
    return status_;
  }
  // Reaps the child if it has exited.
  bool running() { return pid_ > 0 && !wait_for(std::chrono::milliseconds(0)).has_value(); }

 private:
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  std::optional<int> status_;
};

// Waits until `pred` holds or the deadline passes.
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds deadline = 10s) {
  auto until = std::chrono::steady_clock::now() + deadline;
  while (std::chrono::steady_clock::now() < until) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

#ifdef MEMTAP_BIN
// A running `memtap serve` on 127.0.0.1 with an ephemeral port.
struct ServerProcess {
  Child child;
  std::uint16_t port = 0;
  std::string err_path;

  static ServerProcess start(const TempDir& dir, const std::string& image, const std::vector<std::string>& env = {},
                             const std::string& name = "server") {
    ServerProcess s;
    std::string port_file = dir / (name + ".port");
    s.err_path = dir / (name + ".err");
    s.child = Child::spawn({memtap_bin(), "serve", image, "--listen", "127.0.0.1:0", "--port-file", port_file}, env,
                           dir / (name + ".out"), s.err_path);
    if (eventually([&] { return fs::exists(port_file) || !s.child.running(); })) {
      s.port = static_cast<std::uint16_t>(std::atoi(read_file(port_file).c_str()));
    }
    return s;
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};
#endif

inline int run_command(const std::string& cmd) {
  int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace sf::memtap::test
