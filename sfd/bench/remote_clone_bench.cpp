// sf-remote-clone-bench: remote clones of an idle TCG guest on namespace hosts (scripts/bench
// vm-remote). This host (the root namespace, a private bridge) serves the frozen guest;
// N = 1, 2, 4 clones start at once with `sfd remote-clone`, one per network namespace on the
// bridge. Prints one JSON document: per N and run the time until all N run and each clone's
// phases; per no-fetch setting the pages each clone fetched after running a fixed number of
// idle ticks.
//   sf-remote-clone-bench --sfd PATH [--mem MIB] [--runs R] [--ticks T]
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "sfd/clone.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/paths.hpp"
#include "sfd/remote_clone.hpp"
#include "sfd/vm.hpp"
#include "namespace_hosts.hpp"

namespace fs = std::filesystem;
using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

// SIGINT/SIGTERM: every wait loop throws, so the destructors stop the clones and remove the
// namespaces, the bridge and the files.
volatile sig_atomic_t g_stop = 0;
void on_signal(int) { g_stop = 1; }
void check_stop() {
  if (g_stop != 0) throw std::runtime_error("interrupted");
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int count_of(const std::string& s, const std::string& what) {
  int n = 0;
  for (auto p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// Namespace hosts on a private bridge (the tests' own test bed), subnet 10.78.X.0/24.
using Hosts = sf::test::NamespaceHosts;
Hosts::Options host_options() {
  Hosts::Options o;
  o.tag = "brc";
  o.net_base = "10.78";
  return o;
}

struct Remote {
  pid_t pid = -1;
  fs::path out;
  json running;
};

pid_t spawn(const std::string& ns, const std::string& sfd, const fs::path& ticket, const fs::path& out, int id) {
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen(out.c_str(), "w");
    if (f != nullptr) dup2(fileno(f), 1);
    const std::string ids = std::to_string(id);
    execlp("ip", "ip", "netns", "exec", ns.c_str(), sfd.c_str(), "remote-clone", "--ticket", ticket.c_str(), "--iface", "eth0",
           "--id", ids.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}

void stop(std::vector<Remote>& rs) {
  for (auto& r : rs) {
    if (r.pid > 0) kill(r.pid, SIGTERM);
  }
  for (auto& r : rs) {
    if (r.pid > 0) waitpid(r.pid, nullptr, 0);
    r.pid = -1;
  }
}

// Starts n clones at once; returns them running (or throws).
std::vector<Remote> start_n(const Hosts& h, const std::string& sfd, const fs::path& ticket, const fs::path& dir, int n,
                            double* wall_s) {
  std::vector<Remote> rs(static_cast<std::size_t>(n));
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    rs[i].out = dir / ("remote-" + std::to_string(i) + ".out");
    std::error_code ec;
    fs::remove(rs[i].out, ec);  // a previous run's output must not pass for this one's
    rs[i].pid = spawn(h.ns(i + 1), sfd, ticket, rs[i].out, i + 1);
  }
  const auto deadline = t0 + std::chrono::seconds(300);
  for (auto& r : rs) {
    for (;;) {
      const std::string text = read_file(r.out);
      if (const auto nl = text.find('\n'); nl != std::string::npos) {
        r.running = json::parse(text.substr(0, nl));
        break;
      }
      int status = 0;
      if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
        r.pid = -1;
        stop(rs);
        throw std::runtime_error("sfd remote-clone failed: " + read_file(r.out));
      }
      if (Clock::now() > deadline) {
        stop(rs);
        throw std::runtime_error("sfd remote-clone did not run in time");
      }
      if (g_stop != 0) {
        stop(rs);
        check_stop();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  *wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return rs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string sfd;
  std::uint64_t mem = 256;
  int runs = 3, ticks = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--sfd") sfd = argv[i + 1];
    else if (a == "--mem") mem = std::stoull(argv[i + 1]);
    else if (a == "--runs") runs = std::stoi(argv[i + 1]);
    else if (a == "--ticks") ticks = std::stoi(argv[i + 1]);
  }
  if (sfd.empty()) {
    std::fprintf(stderr, "usage: sf-remote-clone-bench --sfd PATH [--mem MIB] [--runs R] [--ticks T]\n");
    return 2;
  }
  spdlog::set_level(spdlog::level::warn);  // stdout is the JSON result
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGHUP, &sa, nullptr);
  char run_t[] = "/tmp/sft-rcb-XXXXXX";
  char ram_t[] = "/dev/shm/sft-rcb-XXXXXX";
  if (mkdtemp(run_t) == nullptr || mkdtemp(ram_t) == nullptr) return 1;
  const fs::path run = run_t, ram = ram_t;
  setenv("SF_RUNTIME_DIR", run.c_str(), 1);
  setenv("SF_RAM_DIR", ram.c_str(), 1);
  json result = {{"mem_mib", mem}, {"runs", runs}, {"ticks", ticks}};
  int rc = 0;
  try {
    Hosts hosts(4, host_options());
    if (!hosts.ok) throw std::runtime_error("cannot build the bridge and namespaces (needs root)");
    auto image = sf::sfd::ensure_host_guest_image();
    if (!image) throw std::runtime_error(image.error().message);
    sf::sfd::VmConfig cfg;
    cfg.image = *image;
    cfg.accel = sf::sfd::Accel::tcg;
    cfg.mem_mib = mem;
    cfg.mode = "idle";
    auto parent = sf::sfd::QemuVm::launch(cfg);
    if (!parent) throw std::runtime_error(parent.error().message);
    const auto boot_deadline = Clock::now() + std::chrono::seconds(300);
    while (read_file((*parent)->paths().console_log).find("sf-idle-tick 3") == std::string::npos) {
      check_stop();
      if (Clock::now() > boot_deadline) throw std::runtime_error("the idle guest did not boot" + (*parent)->diagnostics());
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    const fs::path desc = run / "parent.desc";
    auto d = sf::sfd::save_descriptor(**parent, desc);
    if (!d) throw std::runtime_error(d.error().message);
    result["descriptor"] = {{"bytes", d->bytes}, {"pause_us", d->pause.count()}, {"save_us", d->save.count()}};
    sf::sfd::FrozenImage frozen((*parent)->release_ram_file(), desc);
    parent->reset();

    for (bool map : {true, false}) {
      sf::sfd::RemoteOriginOptions oo;
      oo.address = hosts.net + "1";
      oo.interface = hosts.bridge;
      oo.no_fetch_map = map;
      auto t0 = Clock::now();
      auto origin = sf::sfd::RemoteCloneOrigin::start(cfg, frozen, oo);
      if (!origin) throw std::runtime_error(origin.error().message);
      const double serve_s = std::chrono::duration<double>(Clock::now() - t0).count();
      const fs::path ticket = run / "ticket.json";
      if (auto st = (*origin)->write_ticket(ticket); !st) throw std::runtime_error(st.error().message);
      json part = {{"no_fetch_pages", (*origin)->no_fetch().no_fetch_pages},
                   {"pages", (*origin)->no_fetch().pages},
                   {"origin_start_s", serve_s},
                   {"metadata_us", (*origin)->metadata_time().count()}};
      // Time until N run (with the map only: the map does not change the start path).
      if (map) {
        for (int n : {1, 2, 4}) {
          json rows = json::array();
          for (int r = 0; r < runs; ++r) {
            double wall = 0;
            auto rs = start_n(hosts, sfd, ticket, run, n, &wall);
            json clones = json::array();
            for (auto& x : rs) clones.push_back(x.running["timings_us"]);
            rows.push_back({{"wall_s", wall}, {"clones", clones}});
            stop(rs);
            std::fprintf(stderr, "N=%d run %d: all running in %.0f ms\n", n, r + 1, wall * 1000);
          }
          part["start"][std::to_string(n)] = rows;
        }
      }
      // Pages fetched by one clone that runs `ticks` idle ticks, then by 2 clones at once.
      for (int n : {1, 2}) {
        double wall = 0;
        auto rs = start_n(hosts, sfd, ticket, run, n, &wall);
        const auto deadline = Clock::now() + std::chrono::seconds(300);
        for (auto& x : rs) {
          const fs::path con = x.running["console"].get<std::string>();
          while (count_of(read_file(con), "sf-idle-tick") < ticks) {
            if (g_stop != 0 || Clock::now() > deadline) {
              stop(rs);
              check_stop();
              throw std::runtime_error("a clone did not tick");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
        }
        stop(rs);
        json fetched = json::array();
        for (auto& x : rs) {
          const std::string out = read_file(x.out);
          fetched.push_back(json::parse(out.substr(out.find('\n') + 1))["client"]);
        }
        part["fetched"][std::to_string(n)] = {{"clients", fetched},
                                              {"multicast", json::parse((*origin)->multicast_stats())},
                                              {"tcp", json::parse((*origin)->page_server_stats())}};
        std::fprintf(stderr, "map=%d N=%d: pages fetched by clone 1: %llu\n", map ? 1 : 0, n,
                     static_cast<unsigned long long>(fetched[0].value("pages_fetched", 0ull)));
        // Fresh origin counters for the next N: restart the origin.
        origin->reset();
        origin = sf::sfd::RemoteCloneOrigin::start(cfg, frozen, oo);
        if (!origin) throw std::runtime_error(origin.error().message);
        if (auto st = (*origin)->write_ticket(ticket); !st) throw std::runtime_error(st.error().message);
      }
      result[map ? "with_map" : "without_map"] = part;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sf-remote-clone-bench: %s\n", e.what());
    rc = 1;
  }
  std::printf("%s\n", result.dump().c_str());
  std::error_code ec;
  fs::remove_all(run, ec);
  fs::remove_all(ram, ec);
  return rc;
}
