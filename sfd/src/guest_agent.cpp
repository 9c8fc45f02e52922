// sfd: the guest agent (see guest_agent.hpp). Runs inside the VM as PID 1, so it reaps every
// orphan and never returns (PID 1 exiting panics the kernel).
#include "sfd/guest_agent.hpp"

#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "clone-core/virtio_port.hpp"
#include "clone-core/vm_identity.hpp"
#include "sf-common/fd_io.hpp"
#include "sfd/guest_io.hpp"

extern char** environ;

namespace sf::sfd {
namespace fs = std::filesystem;
namespace gio = guest_io;

namespace {

void say(const std::string& msg) { std::fprintf(stderr, "sfd guest-agent: %s\n", msg.c_str()); }

[[noreturn]] void power_off() {
  ::sync();
  reboot(RB_POWER_OFF);
  for (;;) pause();
}

// The device node of the virtio-serial port named `name`, waiting up to 10 s for the driver.
std::string find_port(const std::string& name) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    if (auto port = sf::find_virtio_port(name)) return *port;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return {};
}

void send(int port, gio::FrameType type, const std::string& payload) {
  const auto frame = gio::encode(type, payload);
  if (!sf::write_all(port, frame.data(), frame.size())) say(std::string("write to the host failed: ") + std::strerror(errno));
}

void send_error_and_exit_status(int port, const std::string& msg, int code) {
  say(msg);
  send(port, gio::FrameType::error, nlohmann::json{{"message", msg}}.dump());
  send(port, gio::FrameType::exit, nlohmann::json{{"code", code}, {"signal", 0}}.dump());
}

void mkdir_p(const fs::path& p) {
  std::error_code ec;
  fs::create_directories(p, ec);
}

}  // namespace

int guest_agent_main() {
  const std::string port_path = find_port(gio::kIoPort);
  if (port_path.empty()) {
    say(std::string("no virtio-serial port named ") + gio::kIoPort + "; powering off");
    power_off();
  }
  const int port = open(port_path.c_str(), O_RDWR | O_CLOEXEC);
  if (port < 0) {
    say("cannot open " + port_path + ": " + std::strerror(errno));
    power_off();
  }

  // 1. The spec.
  gio::FrameDecoder decoder;
  std::optional<gio::CommandSpec> spec;
  while (!spec) {
    std::uint8_t buf[65536];
    const ssize_t n = read(port, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      say("the host closed the port before sending a command");
      power_off();
    }
    decoder.feed({buf, static_cast<std::size_t>(n)});
    auto f = decoder.next();
    if (!f) {
      say(f.error().message);
      power_off();
    }
    if (*f && (*f)->type == gio::FrameType::spec) {
      auto parsed = gio::parse_spec((*f)->text());
      if (!parsed) {
        send_error_and_exit_status(port, parsed.error().message, 125);
        power_off();
      }
      spec = std::move(*parsed);
    }
  }

  std::vector<std::string> argv = spec->argv;
  std::vector<std::string> env = spec->env;
  const std::string cwd = spec->cwd;
  const std::string work = spec->work_dir;
  const std::string hostname = spec->hostname;
  sethostname(hostname.data(), hostname.size());
  // The cluster network (docs/sfd.md, "Network"): lo up; the NIC named, its MAC and address set.
  if (const auto& net = spec->net) {
    if (sf::Status st = sf::apply_vm_identity(net->interface, net->mac, net->address, net->hostname); !st) {
      send_error_and_exit_status(port, "cannot set up the network: " + st.error().message, 125);
      power_off();
    }
  }
  if (argv.empty()) {
    send_error_and_exit_status(port, "empty command", 125);
    power_off();
  }
  // 2. The shared working directory, read-write, at the same path as on the host.
  if (!work.empty()) {
    mkdir_p(work);
    if (mount("sfwork", work.c_str(), "9p", 0, "trans=virtio,version=9p2000.L,msize=262144") != 0) {
      send_error_and_exit_status(port, "cannot mount the shared directory " + work + ": " + std::strerror(errno), 125);
      power_off();
    }
  }

  // 3. The command, with stdout and stderr on pipes we forward as frames, and stdin from the
  // host's stdin frames (spec "stdin": true) or /dev/null.
  const bool forward_stdin = spec->forward_stdin;
  int out_pipe[2], err_pipe[2], in_pipe[2] = {-1, -1};
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0 ||
      (forward_stdin && pipe2(in_pipe, O_CLOEXEC) != 0)) {
    send_error_and_exit_status(port, std::string("pipe: ") + std::strerror(errno), 125);
    power_off();
  }
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : env) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  const pid_t child = fork();
  if (child == 0) {
    setsid();
    dup2(forward_stdin ? in_pipe[0] : open("/dev/null", O_RDONLY), 0);
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
    if (chdir(cwd.c_str()) != 0) {
      dprintf(2, "sfd: cannot enter %s in the guest: %s\n", cwd.c_str(), std::strerror(errno));
      _exit(126);
    }
    environ = cenv.data();  // so execvp searches the caller's PATH
    execvp(cargv[0], cargv.data());
    const int err = errno;
    dprintf(2, "sfd: cannot run %s in the guest: %s\n", cargv[0], std::strerror(err));
    _exit(err == ENOENT ? 127 : 126);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (forward_stdin) {
    close(in_pipe[0]);
    fcntl(in_pipe[1], F_SETFL, O_NONBLOCK);
    signal(SIGPIPE, SIG_IGN);  // here only: the command keeps the default
  }
  if (child < 0) {
    send_error_and_exit_status(port, std::string("fork: ") + std::strerror(errno), 125);
    power_off();
  }

  // stdin: frames from the port are queued (up to kStdinQueue, then the port is left unread so
  // the host holds back) and written to the command's pipe as it takes them; an empty frame
  // closes the pipe once the queue is written. A command that closes its stdin discards the rest.
  constexpr std::size_t kStdinQueue = 4 << 20;
  std::string to_command;
  int in_w = forward_stdin ? in_pipe[1] : -1;
  bool in_eof = false, port_open = forward_stdin;
  auto take_stdin_frames = [&] {
    for (;;) {
      auto f = decoder.next();
      if (!f) {
        say("stdin from the host: " + f.error().message);
        port_open = false;
        in_eof = true;
        return;
      }
      if (!*f) return;
      if ((*f)->type != gio::FrameType::stdin_data) continue;
      if ((*f)->payload.empty()) in_eof = true;
      else if (in_w >= 0) to_command.append((*f)->payload.begin(), (*f)->payload.end());
    }
  };
  take_stdin_frames();  // frames that came with the spec

  pollfd fds[4] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLOUT, 0}};
  bool open_fds[2] = {true, true};
  int status = 0;
  bool child_done = false;
  std::chrono::steady_clock::time_point child_done_at;
  for (;;) {
    for (int i = 0; i < 2; ++i) fds[i].fd = open_fds[i] ? (i == 0 ? out_pipe[0] : err_pipe[0]) : -1;
    if (in_w >= 0 && to_command.empty() && in_eof) {
      close(in_w);
      in_w = -1;
    }
    fds[2].fd = port_open && !in_eof && to_command.size() < kStdinQueue ? port : -1;
    fds[3].fd = in_w >= 0 && !to_command.empty() ? in_w : -1;
    poll(fds, 4, 100);
    if (fds[2].fd >= 0 && fds[2].revents != 0) {
      std::uint8_t buf[65536];
      const ssize_t n = read(port, buf, sizeof buf);
      if (n > 0) {
        decoder.feed({buf, static_cast<std::size_t>(n)});
        take_stdin_frames();
      } else if (n == 0 || errno != EINTR) {
        port_open = false;  // the host went away: the command's stdin ends
        in_eof = true;
      }
    }
    if (fds[3].fd >= 0 && fds[3].revents != 0) {
      const ssize_t n = write(in_w, to_command.data(), to_command.size());
      if (n > 0) {
        to_command.erase(0, static_cast<std::size_t>(n));
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {  // EPIPE: the command closed its stdin
        to_command.clear();
        close(in_w);
        in_w = -1;
      }
    }
    for (int i = 0; i < 2; ++i) {
      if (!open_fds[i] || fds[i].revents == 0) continue;
      char buf[65536];
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        open_fds[i] = false;
        close(fds[i].fd);
        continue;
      }
      send(port, i == 0 ? gio::FrameType::stdout_data : gio::FrameType::stderr_data,
           std::string(buf, static_cast<std::size_t>(n)));
    }
    // Reap everything (we are PID 1); remember the command's own status.
    for (;;) {
      int st = 0;
      const pid_t r = waitpid(-1, &st, WNOHANG);
      if (r <= 0) break;
      if (r == child) {
        status = st;
        child_done = true;
        child_done_at = std::chrono::steady_clock::now();
      }
    }
    if (child_done && !open_fds[0] && !open_fds[1]) break;
    // Background processes the command left behind may hold the pipes open forever; stop
    // forwarding 2 s after the command itself ended.
    if (child_done && std::chrono::steady_clock::now() - child_done_at > std::chrono::seconds(2)) break;
  }

  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
  const int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  send(port, gio::FrameType::exit, nlohmann::json{{"code", code}, {"signal", sig}}.dump());
  ::sync();
  // The host stops QEMU when it has the status; power off ourselves if it does not.
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < give_up) {
    int st = 0;
    if (waitpid(-1, &st, WNOHANG) <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  power_off();
}

}  // namespace sf::sfd
