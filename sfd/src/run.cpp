// sfd: `sfd run` (see run.hpp). One Boost.Asio loop watches the guest I/O socket, sfd's own
// signals and QEMU's exit; every way out goes through QemuVm's destructor, which removes the
// QEMU process, the RAM file and the runtime directory.
#include "sfd/run.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cctype>
#include <cstring>
#include <optional>
#include <spdlog/spdlog.h>

#include "sfd/accel.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/paths.hpp"
#include "sfd/vm.hpp"

namespace sfd {
namespace asio = boost::asio;
namespace gio = guest_io;

std::vector<std::string> guest_environment(char** env) {
  // Names that point at host-only things (sockets, displays, the host's runtime dir).
  static const std::array<const char*, 12> host_only = {
      "SSH_AUTH_SOCK", "SSH_AGENT_PID", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "DISPLAY",
      "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "TMUX", "TMUX_PANE", "XAUTHORITY"};
  std::vector<std::string> out;
  for (char** e = env; e != nullptr && *e != nullptr; ++e) {
    const std::string kv = *e;
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    const std::string name = kv.substr(0, eq);
    bool skip = false;
    for (const char* h : host_only) skip = skip || name == h;
    if (!skip) out.push_back(kv);
  }
  return out;
}

Result<std::uint64_t> parse_mem_mib(const std::string& text) {
  std::size_t i = 0;
  std::uint64_t n = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])) && n < (1ull << 40)) n = n * 10 + static_cast<std::uint64_t>(text[i++] - '0');
  if (i == 0) return make_error("--mem: '" + text + "' is not a size; use e.g. 256M or 1G");
  const std::string unit = text.substr(i);
  if (unit == "G" || unit == "g" || unit == "GiB") n *= 1024;
  else if (!(unit.empty() || unit == "M" || unit == "m" || unit == "MiB"))
    return make_error("--mem: unknown unit '" + unit + "'; use M or G");
  if (n < 64 || n > 64 * 1024) return make_error("--mem: " + std::to_string(n) + " MiB is outside 64M..64G");
  return n;
}

nlohmann::json command_spec(const RunOptions& o) {
  return {{"argv", o.argv}, {"env", o.env}, {"cwd", o.cwd.string()}, {"work_dir", o.cwd.string()}, {"hostname", "sf-vm"}};
}

int shell_status(int code, int signal) { return signal != 0 ? 128 + signal : code; }

namespace {

bool write_all(int fd, const std::uint8_t* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;  // e.g. our stdout is a closed pipe: keep running, drop output
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// The loop's state: what has happened so far.
struct RunState {
  std::optional<int> exit_code;      // from the guest's exit frame
  std::optional<int> signal_received;
  std::string guest_error;
  bool io_closed = false;
  bool qemu_gone = false;
};

}  // namespace

int run_in_vm(const RunOptions& o) {
  const auto fail = [](const std::string& msg) {
    spdlog::error("{}", msg);
    return kSfdFailureExit;
  };
  // Handle the signals from the start: a Ctrl-C while the image builds or QEMU starts is
  // acted on (and everything cleaned up) as soon as the loop runs.
  asio::io_context io;
  asio::signal_set stop_signals(io, SIGINT, SIGTERM, SIGHUP);
  asio::signal_set child_signal(io, SIGCHLD);
  if (int n = sweep_stale_vm_files(); n > 0) spdlog::info("removed {} file(s) left by a killed sfd", n);
  if (o.cwd == "/") return fail("run: the working directory is /, which cannot be shared read-write; cd to a directory first");
  for (const auto& p : {o.agent.string(), o.cwd.string()}) {
    for (char ch : p) {
      if (std::isspace(static_cast<unsigned char>(ch)) || ch == ',')
        return fail("run: the path '" + p + "' has a space or comma, which QEMU's and the kernel's option syntax cannot carry; use another directory");
    }
  }

  auto image = ensure_host_guest_image();
  if (!image) return fail(image.error().message);
  spdlog::info("guest image {} ({}){}", image->dir.string(), image->kernel_version, image->built_now ? ", built now" : "");
  auto accel = choose_accel(*image);
  if (!accel) return fail(accel.error().message);
  spdlog::info("accelerator: {}", accel->reason);


  VmConfig cfg;
  cfg.image = *image;
  cfg.accel = accel->accel;
  cfg.mem_mib = o.mem_mib;
  cfg.cpus = o.cpus;
  cfg.agent = o.agent;
  cfg.work_dir = o.cwd;
  auto launched = QemuVm::launch(cfg);
  if (!launched) return fail(launched.error().message);
  QemuVm& vm = **launched;
  spdlog::info("VM {} started (pid {}, {} MiB, {} vCPU, RAM {})", vm.paths().run_dir.filename().string(), vm.pid(), o.mem_mib, o.cpus,
               vm.paths().ram_file.string());

  asio::local::stream_protocol::socket io_sock(io);
  {
    boost::system::error_code ec;
    io_sock.assign(asio::local::stream_protocol(), vm.take_io_fd(), ec);
    if (ec) return fail("run: guest I/O socket: " + ec.message());
    // The spec waits in the socket until the guest agent opens the port.
    const std::string spec = command_spec(o).dump();
    if (spec.size() > gio::kMaxPayload) return fail("run: the command and environment exceed 1 MiB; trim the environment");
    const auto frame = gio::encode(gio::FrameType::spec, spec);
    asio::write(io_sock, asio::buffer(frame), ec);
    if (ec) return fail("run: cannot send the command to the VM: " + ec.message());
  }

  RunState state;
  gio::FrameDecoder decoder;
  std::array<std::uint8_t, 65536> buf{};
  asio::steady_timer shutdown_timer(io);

  const auto finish_if_done = [&] {
    if (state.qemu_gone && state.io_closed) io.stop();
  };
  const auto stop_vm = [&](std::chrono::milliseconds grace) {
    // Ask QEMU to quit; if it does not within the grace period, the timer kills it.
    if (!state.qemu_gone) {
      if (auto st = vm.qmp().quit(std::chrono::milliseconds(3000)); !st) spdlog::info("quit: {}", st.error().message);
    }
    shutdown_timer.expires_after(grace);
    shutdown_timer.async_wait([&](const boost::system::error_code& ec) {
      if (ec) return;
      spdlog::info("QEMU did not exit in time; killing it");
      vm.terminate(std::chrono::milliseconds(500));
      state.qemu_gone = true;
      state.io_closed = true;
      io.stop();
    });
  };

  std::function<void()> read_more = [&] {
    io_sock.async_read_some(asio::buffer(buf), [&](const boost::system::error_code& ec, std::size_t n) {
      if (ec) {
        state.io_closed = true;
        finish_if_done();
        return;
      }
      decoder.feed({buf.data(), n});
      for (;;) {
        auto f = decoder.next();
        if (!f) {
          spdlog::error("{}", f.error().message);
          state.guest_error = f.error().message;
          state.io_closed = true;
          stop_vm(std::chrono::seconds(5));
          return;
        }
        if (!*f) break;
        const gio::Frame& frame = **f;
        switch (frame.type) {
          case gio::FrameType::stdout_data: write_all(1, frame.payload.data(), frame.payload.size()); break;
          case gio::FrameType::stderr_data: write_all(2, frame.payload.data(), frame.payload.size()); break;
          case gio::FrameType::error: {
            auto j = nlohmann::json::parse(frame.text(), nullptr, false);
            state.guest_error = j.is_object() ? j.value("message", frame.text()) : frame.text();
            spdlog::error("in the guest: {}", state.guest_error);
            break;
          }
          case gio::FrameType::exit: {
            auto j = nlohmann::json::parse(frame.text(), nullptr, false);
            state.exit_code = j.is_object() ? shell_status(j.value("code", 0), j.value("signal", 0)) : kSfdFailureExit;
            spdlog::info("the command exited with status {}; stopping the VM", *state.exit_code);
            stop_vm(std::chrono::seconds(10));
            break;
          }
          case gio::FrameType::spec: break;
        }
      }
      read_more();
    });
  };
  read_more();

  stop_signals.async_wait([&](const boost::system::error_code& ec, int sig) {
    if (ec) return;
    state.signal_received = sig;
    spdlog::info("got signal {}; stopping the VM", sig);
    // No grace for QMP here: the user wants out now.
    vm.terminate(std::chrono::milliseconds(1000));
    state.qemu_gone = true;
    io.stop();
  });
  std::function<void()> watch_child = [&] {
    child_signal.async_wait([&](const boost::system::error_code& ec, int) {
      if (ec) return;
      if (vm.try_reap()) {
        state.qemu_gone = true;
        finish_if_done();
        return;
      }
      watch_child();
    });
  };
  watch_child();
  // QEMU may have exited before the SIGCHLD handler was installed by the first async_wait.
  if (vm.try_reap()) state.qemu_gone = true;

  io.run();

  if (state.signal_received) {
    // launched's destructor cleans up on return.
    return 128 + *state.signal_received;
  }
  if (state.exit_code) return *state.exit_code;
  std::string why = "the VM stopped before the command finished";
  if (auto st = vm.exit_status(); st && WIFSIGNALED(*st)) why = "QEMU was killed by signal " + std::to_string(WTERMSIG(*st));
  else if (!state.guest_error.empty()) why += " (" + state.guest_error + ")";
  else why += " (guest crash or power-off)";
  return fail("run: " + why + vm.diagnostics());
}

}  // namespace sfd
