// sfd: the family's guest I/O (sf.io, docs/sfd.md "Guest I/O protocol"): members' output
// and exit frames, and sfd's stdin forwarded to the master's command without blocking the loop.
#include <linux/sockios.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <span>

#include "family_impl.hpp"

namespace sf::sfd::detail {
using socket_io::write_all;

void Family::read_io(Member& m, bool drain) {
  if (m.io < 0) return;
  std::array<std::uint8_t, 65536> buf{};
  for (;;) {
    if (drain) {
      pollfd p{m.io, POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) return;
    }
    const ssize_t n = ::read(m.io, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(m.io);
      m.io = -1;
      return;
    }
    m.decoder.feed({buf.data(), static_cast<std::size_t>(n)});
    for (;;) {
      auto f = m.decoder.next();
      if (!f) {
        spdlog::error("VM {}: {}", m.id, f.error().message);
        if (m.id == 0) failure_ = "run: " + f.error().message;
        ::close(m.io);
        m.io = -1;
        return;
      }
      if (!*f) break;
      const gio::Frame& frame = **f;
      switch (frame.type) {
        case gio::FrameType::stdout_data: write_all(1, frame.payload.data(), frame.payload.size()); break;
        case gio::FrameType::stderr_data: write_all(2, frame.payload.data(), frame.payload.size()); break;
        case gio::FrameType::error: {
          const std::string msg = gio::parse_error_message(frame.text());
          spdlog::error("in the guest{}: {}", m.id == 0 ? "" : " (clone " + std::to_string(m.id) + ")", msg);
          if (m.id == 0) guest_error_ = msg;
          break;
        }
        case gio::FrameType::exit: {
          // A payload that is not {"code": N, "signal": S} is sfd's failure, not a crash.
          const auto status = gio::parse_exit(frame.text());
          const int code = status ? status->code : kSfdFailureExit;
          const int sig = status ? status->signal : 0;
          if (m.id == 0) {
            exit_code_ = status ? shell_status(code, sig) : kSfdFailureExit;
            spdlog::info("the command exited with status {}; stopping the VMs", *exit_code_);
          } else if (m.synced) {
            end_clone(m, CloneEnd::synced, m.sync_value);
            return;
          } else {
            end_clone(m, sig != 0 ? CloneEnd::signaled : CloneEnd::exited, sig != 0 ? sig : code);
            return;
          }
          break;
        }
        case gio::FrameType::spec:
        case gio::FrameType::stdin_data: break;  // host -> guest only
      }
    }
    if (!drain) return;
  }
}

void Family::read_stdin() {
  std::array<std::uint8_t, 65536> buf{};
  const ssize_t n = ::read(stdin_fd_, buf.data(), buf.size());
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n > 0) {
    to_guest_ = gio::encode(gio::FrameType::stdin_data, std::span<const std::uint8_t>(buf.data(), static_cast<std::size_t>(n)));
  } else {  // end of input (or an unreadable stdin): the command sees end of file
    to_guest_ = gio::encode(gio::FrameType::stdin_data, std::string());
    stdin_fd_ = -1;
  }
}

void Family::write_to_guest(Member& m0) {
  if (to_guest_.empty() || m0.io < 0) return;
  const ssize_t n = ::send(m0.io, to_guest_.data(), to_guest_.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n > 0) {
    to_guest_.erase(to_guest_.begin(), to_guest_.begin() + n);
  } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
    spdlog::info("VM 0: cannot forward stdin ({}); the command's stdin ends", std::strerror(errno));
    to_guest_.clear();
    stdin_fd_ = -1;
  }
}

// Before a clone: the stdin frame being written is finished and QEMU has taken every byte of
// it into the guest (a byte still in the socket would be lost with the old QEMU).
bool Family::settle_stdin(Member& m0, std::chrono::milliseconds limit) {
  const auto deadline = Clock::now() + limit;
  for (;;) {
    write_to_guest(m0);
    int queued = 0;
    if (m0.io < 0 || (to_guest_.empty() && ::ioctl(m0.io, SIOCOUTQ, &queued) == 0 && queued == 0)) return true;
    if (Clock::now() > deadline) return false;
    pollfd p{m0.io, static_cast<short>(to_guest_.empty() ? 0 : POLLOUT), 0};
    ::poll(&p, 1, 10);
  }
}

}  // namespace sf::sfd::detail
