// sfd remote-clone: start one clone of a VM served by another host's sfd (remote_clone.hpp).
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <string>

#include "sfd/paths.hpp"
#include "sfd/remote_clone.hpp"

namespace sf::sfd {

namespace {

constexpr const char* kRemoteUsage =
    "usage: sfd remote-clone --ticket FILE --iface IF [--id N] [--fetch-timeout-ms MS] [-v]\n"
    "  Starts a clone of the VM an origin sfd serves (the ticket names it: control address and\n"
    "  token), with its RAM from memtap over mcdist on interface IF. Prints one JSON line when\n"
    "  the clone runs, then serves until SIGINT/SIGTERM/SIGHUP or the VM ends.\n";

long long us(std::chrono::microseconds d) { return static_cast<long long>(d.count()); }

}  // namespace

int remote_clone_command(int argc, char** argv) {
  RemoteCloneOptions o;
  std::string ticket;
  bool verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "sfd remote-clone: %s needs a value\n%s", name, kRemoteUsage);
        return nullptr;
      }
      return argv[++i];
    };
    const char* v = nullptr;
    if (a == "--ticket") {
      if ((v = value("--ticket")) == nullptr) return 2;
      ticket = v;
    } else if (a == "--iface") {
      if ((v = value("--iface")) == nullptr) return 2;
      o.interface = v;
    } else if (a == "--id") {
      if ((v = value("--id")) == nullptr) return 2;
      o.clone_id = static_cast<std::uint32_t>(std::stoul(v));
    } else if (a == "--fetch-timeout-ms") {
      if ((v = value("--fetch-timeout-ms")) == nullptr) return 2;
      o.fetch_timeout = std::chrono::milliseconds(std::stoul(v));
    } else if (a == "-v" || a == "--verbose") {
      verbose = true;
    } else if (a == "-h" || a == "--help") {
      std::fputs(kRemoteUsage, stdout);
      return 0;
    } else {
      std::fprintf(stderr, "sfd remote-clone: unknown option %s\n%s", a.c_str(), kRemoteUsage);
      return 2;
    }
  }
  if (verbose) spdlog::set_level(spdlog::level::info);
  if (ticket.empty() || o.interface.empty()) {
    std::fprintf(stderr, "sfd remote-clone: --ticket and --iface are required\n%s", kRemoteUsage);
    return 2;
  }
  if (auto st = read_ticket(ticket, o); !st) {
    std::fprintf(stderr, "sfd remote-clone: %s\n", st.error().message.c_str());
    return 1;
  }
  // Signals are read below; QEMU and the FUSE export reset their masks.
  sigset_t set;
  sigemptyset(&set);
  for (int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set, s);
  sigprocmask(SIG_BLOCK, &set, nullptr);
  signal(SIGPIPE, SIG_IGN);
  if (int n = sweep_stale_vm_files(); n > 0) spdlog::info("removed {} file(s) left by a killed sfd", n);

  RemoteCloneTimings t;
  auto rc = RemoteClone::start(o, &t);
  if (!rc) {
    std::fprintf(stderr, "sfd remote-clone: %s\n", rc.error().message.c_str());
    return 1;
  }
  nlohmann::json running = {
      {"event", "running"},
      {"qemu_pid", (*rc)->vm().pid()},
      {"fuse_pid", (*rc)->fuse_pid()},
      {"console", (*rc)->vm().paths().console_log.string()},
      {"mountpoint", (*rc)->mountpoint().string()},
      {"timings_us",
       {{"descriptor", us(t.descriptor)}, {"mount", us(t.mount)}, {"start", us(t.start)}, {"load", us(t.load)}, {"resume", us(t.resume)}}},
  };
  std::printf("%s\n", running.dump().c_str());
  std::fflush(stdout);

  int rc_exit = 0;
  std::string why;
  for (;;) {
    timespec ts{0, 200'000'000};
    const int sig = sigtimedwait(&set, nullptr, &ts);
    if (sig > 0) {
      why = std::string("signal ") + strsignal(sig);
      break;
    }
    if (auto st = (*rc)->vm().try_reap()) {
      why = "the VM ended";
      rc_exit = 1;
      std::fprintf(stderr, "sfd remote-clone: the VM ended (wait status %d)%s\n", *st, (*rc)->vm().diagnostics().c_str());
      break;
    }
    if (auto ex = (*rc)->fuse_exited()) {
      why = *ex;
      rc_exit = 1;
      std::fprintf(stderr, "sfd remote-clone: %s\n", ex->c_str());
      break;
    }
  }
  nlohmann::json stopped = {{"event", "stopped"}, {"why", why}};
  try {
    stopped["client"] = nlohmann::json::parse((*rc)->client_stats());
  } catch (const std::exception&) {
    stopped["client"] = nullptr;
  }
  rc->reset();
  std::printf("%s\n", stopped.dump().c_str());
  std::fflush(stdout);
  return rc_exit;
}

}  // namespace sf::sfd
