// sfd: the SnowFlock host daemon's command line.
//   sfd run [--mem M] [--cpus C] [--root disk|9p] [--stdin none] [--nodes N] [-v] -- COMMAND...   run COMMAND in a fresh VM
//   sfd build-guest [-v]                              build (or find) the cached guest image
//   sfd accel [-v] [--reprobe]                        say whether VMs use KVM or TCG, and why
//   sfd decode-frames < FILE                          print a guest I/O frame stream
//   sfd guest-agent                                   (inside the guest only: PID 1)
#include <signal.h>
#include <unistd.h>

#include <boost/program_options.hpp>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "sfd/accel.hpp"
#include "sfd/guest_agent.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/paths.hpp"
#include "sfd/remote_clone.hpp"
#include "sfd/remote_member.hpp"
#include "sfd/static_cluster.hpp"
#include "sfd/run.hpp"

extern char** environ;

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

constexpr const char* kUsage =
    "usage: sfd run [--mem M] [--cpus C] [--root disk|9p] [--stdin none] [--nodes N]\n"
    "               [--remote AGENT... --remote-iface IF] [-v] -- COMMAND [ARG...]\n"
    "       sfd run --allocator slurm --remote-iface IF [--partition P] [--account A]\n"
    "               [--time-limit T] [other run options] -- COMMAND [ARG...]\n"
    "       sfd rsh HOST COMMAND...        (Open MPI's rsh agent inside `sfd run --nodes N`)\n"
    "       sfd build-guest [-v]\n"
    "       sfd accel [-v] [--reprobe]\n"
    "       sfd remote-clone --ticket FILE --iface IF [--id N] [-v]\n"
    "       sfd remote-member [-v]          (started by `sfd run --remote` on the other host)\n"
    "       sfd decode-frames < FILE\n";

void setup_logging(bool verbose) {
  auto logger = spdlog::stderr_color_mt("sfd");
  logger->set_pattern("sfd: %^%l%$: %v");
  spdlog::set_default_logger(logger);
  spdlog::set_level(verbose ? spdlog::level::info : spdlog::level::warn);
}

fs::path self_path() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? fs::path() : p;
}

int cmd_run(int argc, char** argv) {
  po::options_description opts("sfd run");
  std::string mem = "256M";
  int cpus = 1;
  std::string root = "disk";
  std::string stdin_mode = "forward";
  unsigned nodes = 1;
  std::vector<std::string> remote;
  std::string remote_iface;
  std::string allocator = "local";
  sf::sfd::SlurmOptions slurm;
  opts.add_options()("mem,m", po::value(&mem), "guest RAM, e.g. 256M or 1G (default 256M)")(
      "cpus,c", po::value(&cpus), "vCPUs (default 1)")(
      "root", po::value(&root),
      "disk (default): the host's files on read-only disks, cwd writes stay in the VM, clonable; "
      "9p: the host's / over 9p, cwd shared read-write, not clonable")(
      "nodes", po::value(&nodes),
      "boot N VMs (a static cluster, not clonable): COMMAND runs on node 0, the others serve SSH for Debian's mpirun "
      "(node 0 gets SFD_HOSTS and Open MPI's rsh settings)")(
      "remote", po::value(&remote),
      "place the clones on another host: AGENT runs a command there (e.g. 'ssh node2'; repeat for more hosts, "
      "clones go round-robin); that host needs the same files and sfd at the same paths")(
      "remote-iface", po::value(&remote_iface), "this host's link to the --remote hosts or the Slurm nodes (it needs an IPv4 address)")(
      "allocator", po::value(&allocator),
      "local (default): clones run here (or on the --remote hosts); slurm: each clone request asks Slurm for one node per "
      "clone (salloc) and places the clones there through srun; the allocation ends with the clones")(
      "partition", po::value(&slurm.partition), "with --allocator slurm: the partition (also SF_SLURM_PARTITION)")(
      "account", po::value(&slurm.account), "with --allocator slurm: the account (also SF_SLURM_ACCOUNT)")(
      "time-limit", po::value(&slurm.time_limit), "with --allocator slurm: the time limit, in Slurm's syntax (also SF_SLURM_TIME_LIMIT)")(
      "stdin", po::value(&stdin_mode), "forward (default): sfd's stdin goes to the command, like mpirun's to rank 0; none: the command reads /dev/null")("verbose,v", "say what sfd does")("help,h", "this help")(
      "command", po::value<std::vector<std::string>>(), "the command");
  po::positional_options_description pos;
  pos.add("command", -1);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(opts).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    std::fprintf(stderr, "sfd run: %s\n%s", e.what(), kUsage);
    return 2;
  }
  if (vm.count("help") != 0) {
    std::cout << kUsage << opts;
    return 0;
  }
  setup_logging(vm.count("verbose") != 0);
  if (vm.count("command") == 0) {
    std::fprintf(stderr, "sfd run: no command\n%s", kUsage);
    return 2;
  }
  auto mib = sf::sfd::parse_mem_mib(mem);
  if (!mib) {
    std::fprintf(stderr, "sfd run: %s\n", mib.error().message.c_str());
    return 2;
  }
  if (cpus < 1 || cpus > 64) {
    std::fprintf(stderr, "sfd run: --cpus must be 1..64\n");
    return 2;
  }
  auto root_mode = sf::sfd::parse_root_mode(root);
  if (!root_mode) {
    std::fprintf(stderr, "sfd run: %s\n", root_mode.error().message.c_str());
    return 2;
  }
  if (stdin_mode != "forward" && stdin_mode != "none") {
    std::fprintf(stderr, "sfd run: --stdin must be forward or none, not '%s'\n", stdin_mode.c_str());
    return 2;
  }
  if (nodes < 1 || nodes > 64) {
    std::fprintf(stderr, "sfd run: --nodes must be 1..64\n");
    return 2;
  }
  if (allocator != "local" && allocator != "slurm") {
    std::fprintf(stderr, "sfd run: --allocator must be local or slurm, not '%s'\n", allocator.c_str());
    return 2;
  }
  const bool slurm_given = !slurm.partition.empty() || !slurm.account.empty() || !slurm.time_limit.empty();
  if (allocator != "slurm" && slurm_given) {
    std::fprintf(stderr, "sfd run: --partition, --account and --time-limit are what --allocator slurm asks for; add --allocator slurm\n");
    return 2;
  }
  if (allocator == "slurm") {
    if (!remote.empty()) {
      std::fprintf(stderr, "sfd run: --allocator slurm places the clones on the nodes Slurm grants; leave --remote out\n");
      return 2;
    }
    if (remote_iface.empty()) {
      std::fprintf(stderr, "sfd run: --allocator slurm needs --remote-iface, this host's link to the Slurm nodes\n");
      return 2;
    }
    if (nodes > 1) {
      std::fprintf(stderr, "sfd run: --allocator slurm places clones; a static cluster (--nodes) is not cloned\n");
      return 2;
    }
  }
  if (!remote.empty() && remote_iface.empty()) {
    std::fprintf(stderr, "sfd run: --remote needs --remote-iface, this host's link to the remote hosts\n");
    return 2;
  }
  if (remote.empty() && !remote_iface.empty() && allocator != "slurm") {
    std::fprintf(stderr, "sfd run: --remote-iface without --remote: name the remote hosts' agent with --remote\n");
    return 2;
  }
  if (!remote.empty() && nodes > 1) {
    std::fprintf(stderr, "sfd run: --remote places clones; a static cluster (--nodes) is not cloned\n");
    return 2;
  }
  sf::sfd::RunOptions o;
  o.nodes = nodes;
  o.remote = remote;
  o.remote_iface = remote_iface;
  if (allocator == "slurm") o.slurm = sf::common::slurm::with_environment(slurm, ::getenv);
  o.forward_stdin = stdin_mode == "forward";
  o.root = *root_mode;
  o.mem_mib = *mib;
  o.cpus = cpus;
  o.verbose = vm.count("verbose") != 0;
  o.argv = vm["command"].as<std::vector<std::string>>();
  std::error_code ec;
  o.cwd = fs::current_path(ec);
  if (ec) {
    std::fprintf(stderr, "sfd run: cannot tell the working directory: %s\n", ec.message().c_str());
    return sf::sfd::kSfdFailureExit;
  }
  o.env = sf::sfd::guest_environment(environ);
  o.agent = self_path();
  return sf::sfd::run_in_vm(o);
}

int cmd_build_guest(int argc, char** argv) {
  const bool verbose = argc > 1 && std::string(argv[1]) == "-v";
  setup_logging(verbose);
  auto image = sf::sfd::ensure_host_guest_image();
  if (!image) {
    spdlog::error("{}", image.error().message);
    return 1;
  }
  std::printf("%s\n", image->dir.c_str());
  spdlog::info("kernel {} ({}), {}", image->kernel.string(), image->kernel_version, image->built_now ? "built now" : "from the cache");
  return 0;
}

int cmd_accel(int argc, char** argv) {
  bool verbose = false, reprobe = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "-v") verbose = true;
    else if (a == "--reprobe") reprobe = true;
    else {
      std::fprintf(stderr, "sfd accel: unknown option %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  setup_logging(verbose);
  auto image = sf::sfd::ensure_host_guest_image();
  if (!image) {
    spdlog::error("{}", image.error().message);
    return 1;
  }
  sf::sfd::AccelProbeOptions o;
  o.reprobe = reprobe;
  auto choice = sf::sfd::choose_accel(*image, o);
  if (!choice) {
    spdlog::error("{}", choice.error().message);
    return 1;
  }
  std::printf("%s\n", sf::sfd::to_string(choice->accel).c_str());
  spdlog::info("{}", choice->reason);
  return 0;
}

// Prints a guest I/O frame stream (e.g. captured from the port) one frame per line.
int cmd_decode_frames() {
  sf::sfd::guest_io::FrameDecoder dec;
  std::vector<std::uint8_t> buf(65536);
  static const char* names[] = {"?", "spec", "stdout", "stderr", "exit", "error", "stdin"};
  for (;;) {
    const ssize_t n = read(0, buf.data(), buf.size());
    if (n <= 0) break;
    dec.feed({buf.data(), static_cast<std::size_t>(n)});
    for (;;) {
      auto f = dec.next();
      if (!f) {
        std::fprintf(stderr, "sfd decode-frames: %s\n", f.error().message.c_str());
        return 1;
      }
      if (!*f) break;
      const auto t = static_cast<int>((*f)->type);
      std::string text = (*f)->text();
      if (text.size() > 200) text = text.substr(0, 200) + "...";
      std::printf("%-6s %6zu %s\n", names[t], (*f)->payload.size(), nlohmann::json(text).dump().c_str());
    }
  }
  if (dec.buffered() != 0) {
    std::fprintf(stderr, "sfd decode-frames: %zu trailing bytes (a cut frame)\n", dec.buffered());
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "run") {
    // A closed stdout (e.g. `sfd run ... | head`) must not kill sfd before it stops its VM:
    // writes then fail with EPIPE and the output is dropped. (Only here: the guest agent's
    // commands must get the default SIGPIPE.)
    signal(SIGPIPE, SIG_IGN);
    return cmd_run(argc - 1, argv + 1);
  }
  if (cmd == "build-guest") return cmd_build_guest(argc - 1, argv + 1);
  if (cmd == "accel") return cmd_accel(argc - 1, argv + 1);
  if (cmd == "remote-clone") {
    setup_logging(false);
    return sf::sfd::remote_clone_command(argc - 1, argv + 1);
  }
  if (cmd == "remote-member") {
    setup_logging(false);
    return sf::sfd::remote_member_command(argc - 1, argv + 1);
  }
  if (cmd == "decode-frames") return cmd_decode_frames();
  if (cmd == "rsh") return sf::sfd::rsh_command(argc - 1, argv + 1);
  if (cmd == "guest-agent") {
    if (getpid() != 1) {
      std::fprintf(stderr, "sfd guest-agent runs only as PID 1 inside a SnowFlock guest\n");
      return 2;
    }
    return sf::sfd::guest_agent_main();
  }
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  std::fprintf(stderr, "sfd: unknown command '%s'\n%s", cmd.c_str(), kUsage);
  return 2;
}
