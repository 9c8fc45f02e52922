// A rank's standard streams; see rank_stdio.hpp.
#include "rank_stdio.hpp"

#include <fcntl.h>
#include <linux/close_range.h>
#include <pty.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

namespace sf::mpirun {
namespace {

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

int take(int& fd) { return std::exchange(fd, -1); }

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("cannot set up a rank's " + what + ": " + strerror(errno));
}

// A terminal that passes the rank's bytes through as they are: no echo, no CR/LF translation
// (the settings mpirun gives its ranks' terminals).
bool open_output_terminal(int& master, int& slave, TerminalSize size) {
  winsize ws{};
  ws.ws_row = size.rows;
  ws.ws_col = size.columns;
  if (openpty(&master, &slave, nullptr, nullptr, size.rows ? &ws : nullptr) != 0) return false;
  termios t{};
  if (tcgetattr(slave, &t) == 0) {
    t.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHOE | ECHOK | ECHOCTL | ECHOKE | ECHONL);
    t.c_iflag &= ~static_cast<tcflag_t>(ICRNL | INLCR | ISTRIP | INPCK | IXON);
    t.c_oflag &= ~static_cast<tcflag_t>(OCRNL | ONLCR);
    tcsetattr(slave, TCSANOW, &t);
  }
  fcntl(master, F_SETFD, FD_CLOEXEC);
  fcntl(slave, F_SETFD, FD_CLOEXEC);
  return true;
}

}  // namespace

TerminalSize launcher_terminal_size() {
  winsize ws{};
  if (isatty(STDOUT_FILENO) && ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0)
    return TerminalSize{ws.ws_row, ws.ws_col};
  return {};
}

RankStdio::RankStdio(bool wants_stdin, bool merge_stderr, TerminalSize size) {
  try {
    if (!open_output_terminal(out_, child_out_, size)) {
      spdlog::debug("no pseudo-terminal for a rank's stdout ({}); using a pipe", strerror(errno));
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) fail("stdout pipe");
      out_ = p[0];
      child_out_ = p[1];
    }
    if (merge_stderr) {
      child_err_ = fcntl(child_out_, F_DUPFD_CLOEXEC, 0);
      if (child_err_ < 0) fail("stderr");
    } else {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) fail("stderr pipe");
      err_ = p[0];
      child_err_ = p[1];
    }
    if (wants_stdin) {
      int p[2];
      if (pipe2(p, O_CLOEXEC) != 0) fail("stdin pipe");
      child_in_ = p[0];
      in_ = p[1];
    } else {
      child_in_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (child_in_ < 0) fail("stdin (/dev/null)");
    }
  } catch (...) {
    close_all();
    throw;
  }
}

RankStdio::~RankStdio() { close_all(); }

void RankStdio::close_all() {
  close_child_ends();
  close_fd(out_);
  close_fd(err_);
  close_fd(in_);
}

SF_NO_SANITIZE void RankStdio::become_child_stdio() const {
  // dup2 clears close-on-exec on 0, 1 and 2. A source already on its target would keep the
  // flag, but our descriptors never sit on 0-2: the launcher's own 0-2 are open.
  dup2(child_in_, STDIN_FILENO);
  dup2(child_out_, STDOUT_FILENO);
  dup2(child_err_, STDERR_FILENO);
  // Everything else the launcher holds (PMIx's and Asio's descriptors, other ranks' pipes,
  // whatever the launcher inherited) closes at exec; mpirun's ranks hold only 0, 1 and 2.
  if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536) max = 65536;
    for (int fd = 3; fd < max; ++fd) {
      int flags = fcntl(fd, F_GETFD);
      if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
  }
}

void RankStdio::close_child_ends() {
  close_fd(child_in_);
  close_fd(child_out_);
  close_fd(child_err_);
}

int RankStdio::take_stdout() { return take(out_); }
int RankStdio::take_stderr() { return take(err_); }
int RankStdio::take_stdin() { return take(in_); }

}  // namespace sf::mpirun
