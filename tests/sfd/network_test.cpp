// sfd component tests of the VMs' cluster network (vm_network.hpp, clone-core vm_identity.hpp):
// real namespaces and taps, real TCG guests. Every test checks that nothing is left behind:
// no QEMU, no link in the host's namespace, and no reference at all to the VM network's
// namespace (which has no name, so no reference means it is gone).
#include <gtest/gtest.h>
#include <ifaddrs.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "clone-core/vm_identity.hpp"
#include "e2e_support.hpp"
#include "clone-core/netlink_links.hpp"
#include "sfd/accel.hpp"
#include "sfd/guest_image.hpp"
#include "sfd/guest_io.hpp"
#include "sfd/vm.hpp"
#include "sfd/vm_network.hpp"

namespace {

namespace gio = sf::sfd::guest_io;

std::string link_target(const fs::path& p) {
  std::error_code ec;
  auto t = fs::read_symlink(p, ec);
  return ec ? std::string() : t.string();
}

ino_t inode_of_fd(int fd) {
  struct stat st{};
  EXPECT_EQ(fstat(fd, &st), 0);
  return st.st_ino;
}

// Every process's namespace and open fds, and /run/netns: does anything still hold `ino`?
std::string who_holds_netns(ino_t ino) {
  const std::string want = "net:[" + std::to_string(ino) + "]";
  std::string who;
  std::error_code ec;
  for (const auto& p : fs::directory_iterator("/proc", ec)) {
    const std::string pid = p.path().filename().string();
    if (pid.empty() || !std::isdigit(static_cast<unsigned char>(pid[0]))) continue;
    if (link_target(p.path() / "ns" / "net") == want) who += pid + "(ns) ";
    std::error_code ec2;
    for (const auto& fd : fs::directory_iterator(p.path() / "fd", ec2)) {
      if (link_target(fd.path()) == want) who += pid + "(fd) ";
    }
  }
  for (const auto& n : fs::directory_iterator("/run/netns", ec)) {
    struct stat st{};
    if (stat(n.path().c_str(), &st) == 0 && st.st_ino == ino) who += n.path().string() + " ";
  }
  return who;
}

// The netns inode of the first "net:[...]" fd of process `pid`, or 0.
ino_t netns_fd_inode_of(pid_t pid) {
  std::error_code ec;
  for (const auto& fd : fs::directory_iterator(fs::path("/proc") / std::to_string(pid) / "fd", ec)) {
    const auto t = link_target(fd.path());
    if (t.rfind("net:[", 0) == 0) return static_cast<ino_t>(std::stoull(t.substr(5, t.size() - 6)));
  }
  return 0;
}

// Links of our own (the host's) namespace that look like the VM network's.
std::string vm_links_in_host_namespace() {
  auto s = sf::netlink::Socket::open();
  if (!s) return "<netlink: " + s.error().message + ">";
  auto links = sf::netlink::list_links(*s);
  if (!links) return "<netlink: " + links.error().message + ">";
  std::string out;
  for (const auto& l : *links) {
    if (l.name == sf::sfd::VmNetwork::kBridge || l.name.rfind("sft", 0) == 0) out += l.name + " ";
  }
  return out;
}

// stdout of a shell command (popen forks from the calling thread: its namespace).
std::string command_output(const std::string& cmd) {
  std::string out;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[4096];
    std::size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
    pclose(f);
  }
  return out;
}

// A non-loopback IPv4 address of this host (never contacted: the guest must find no route).
std::string host_ipv4() {
  ifaddrs* ifs = nullptr;
  if (getifaddrs(&ifs) != 0) return {};
  std::string out;
  for (ifaddrs* i = ifs; i && out.empty(); i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET || (i->ifa_flags & IFF_LOOPBACK)) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(i->ifa_addr)->sin_addr, buf, sizeof buf);
    out = buf;
  }
  freeifaddrs(ifs);
  return out.empty() ? "192.0.2.1" : out;  // TEST-NET-1 if the host has none
}

TEST(VmNetwork, BridgeAndTapsLiveOnlyInAPrivateNamespaceAndVanish) {
  ino_t ino = 0;
  {
    auto net = sf::sfd::VmNetwork::create();
    ASSERT_TRUE(net) << net.error().message;
    ino = inode_of_fd((*net)->netns_fd());
    struct stat own{};
    ASSERT_EQ(stat("/proc/thread-self/ns/net", &own), 0);
    EXPECT_NE(ino, own.st_ino);
    auto t0 = (*net)->add_tap(0);
    ASSERT_TRUE(t0) << t0.error().message;
    auto t1 = (*net)->add_tap(1);
    ASSERT_TRUE(t1) << t1.error().message;
    EXPECT_EQ((*t0)->mac, "52:54:00:53:46:00");
    EXPECT_EQ((*t1)->mac, "52:54:00:53:46:01");
    EXPECT_GE((*t0)->fd, 0);
    auto links = (*net)->links();
    ASSERT_TRUE(links) << links.error().message;
    auto has = [&](const std::string& n) { return std::find(links->begin(), links->end(), n) != links->end(); };
    EXPECT_TRUE(has(sf::sfd::VmNetwork::kBridge));
    EXPECT_TRUE(has((*t0)->name));
    EXPECT_TRUE(has((*t1)->name));
    EXPECT_EQ(vm_links_in_host_namespace(), "");
    // Each tap's MAC is pinned to its port (static FDB entry), learning is off on the ports.
    std::string fdb, ports;
    std::thread look([&] {
      if (setns((*net)->netns_fd(), CLONE_NEWNET) != 0) return;
      fdb = command_output("bridge fdb show br sfvmbr 2>&1");  // runs in this thread's namespace
      ports = command_output("bridge -d link show 2>&1");
    });
    look.join();
    EXPECT_NE(fdb.find("52:54:00:53:46:00 dev " + (*t0)->name + " master sfvmbr static"), std::string::npos) << fdb;
    EXPECT_NE(fdb.find("52:54:00:53:46:01 dev " + (*t1)->name + " master sfvmbr static"), std::string::npos) << fdb;
    EXPECT_NE(ports.find("learning off"), std::string::npos) << ports;
    EXPECT_EQ(ports.find("learning on"), std::string::npos) << ports;
    // A tap goes away with its last fd.
    const std::string gone = (*t1)->name;
    t1 = sf::sfd::Result<std::shared_ptr<const sf::sfd::TapDevice>>(std::shared_ptr<const sf::sfd::TapDevice>());
    links = (*net)->links();
    ASSERT_TRUE(links);
    EXPECT_FALSE(has(gone));
    EXPECT_TRUE(has((*t0)->name));
  }
  EXPECT_EQ(who_holds_netns(ino), "");
  EXPECT_EQ(vm_links_in_host_namespace(), "");
}

TEST(VmIdentity, AppliesNameMacAndAddressesToALinkInANamespace) {
  // All in a thread inside a throw-away namespace: the host's links are never touched.
  std::string failure;
  std::vector<std::string> addrs;
  sf::netlink::LinkEntry after;
  bool lo_up = false;
  std::thread t([&] {
    if (unshare(CLONE_NEWNET) != 0) {
      failure = "unshare";
      return;
    }
    // A tap named sf0 stands in for the guest's NIC (found by name).
    const int tun = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, IFNAMSIZ, "sf0");
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (tun < 0 || ioctl(tun, TUNSETIFF, &ifr) != 0) {
      failure = "tap";
      return;
    }
    auto s = sf::netlink::Socket::open();
    auto idx = sf::netlink::link_index(*s, "sf0");
    // The parent's address, as a clone inherits it.
    if (sf::Status st = sf::netlink::add_ipv4(*s, *idx, (10u << 24) | (213u << 16) | 1u, 24, "sf0"); !st) failure = st.error().message;
    if (sf::Status st = sf::apply_vm_identity("sf0", "52:54:00:53:46:07", "10.213.0.8/24", ""); !st) failure = st.error().message;
    // Applying the same identity again changes nothing (clone 0 re-applies the parent's).
    if (sf::Status st = sf::apply_vm_identity("sf0", "52:54:00:53:46:07", "10.213.0.8/24", ""); !st) failure = st.error().message;
    auto a = sf::netlink::ipv4_addresses(*s, *idx);
    if (a) addrs = *a;
    auto links = sf::netlink::list_links(*s);
    for (const auto& l : *links) {
      if (l.name == "sf0") after = l;
      if (l.name == "lo") lo_up = (l.flags & IFF_UP) != 0;
    }
    close(tun);
  });
  t.join();
  ASSERT_EQ(failure, "");
  EXPECT_EQ(addrs, std::vector<std::string>{"10.213.0.8/24"});
  EXPECT_EQ(after.mac, (std::array<std::uint8_t, 6>{0x52, 0x54, 0x00, 0x53, 0x46, 0x07}));
  EXPECT_TRUE(after.flags & IFF_UP);
  EXPECT_TRUE(lo_up);
}

TEST(VmIdentity, ReportsAMissingNic) {
  std::string message;
  std::thread t([&] {
    if (unshare(CLONE_NEWNET) != 0) return;
    sf::Status st = sf::apply_vm_identity("sf0", "52:54:00:53:46:07", "10.213.0.8/24", "");
    if (!st) message = st.error().message;
  });
  t.join();
  EXPECT_NE(message.find("no network interface"), std::string::npos) << message;
}

// ---- real guests ----

struct Guest {
  std::unique_ptr<sf::sfd::QemuVm> vm;
  int io = -1;
  gio::FrameDecoder decoder;
  std::string out;
  std::optional<int> exit_code;
  ~Guest() {
    if (io >= 0) close(io);
  }
};

sf::sfd::VmConfig base_config() {
  sf::sfd::VmConfig cfg;
  auto image = sf::sfd::ensure_host_guest_image();
  EXPECT_TRUE(image) << image.error().message;
  if (image) cfg.image = *image;
  auto accel = sf::sfd::choose_accel(cfg.image);
  EXPECT_TRUE(accel) << accel.error().message;
  if (accel) cfg.accel = accel->accel;
  cfg.agent = SFD_BINARY;
  return cfg;
}

// Starts node `id` on `net` running `script` under busybox sh.
std::unique_ptr<Guest> start_guest(const sf::sfd::VmConfig& base, sf::sfd::VmNetwork& net, unsigned id, const std::string& script) {
  auto g = std::make_unique<Guest>();
  sf::sfd::VmConfig cfg = base;
  auto tap = net.add_tap(id);
  EXPECT_TRUE(tap) << tap.error().message;
  if (!tap) return nullptr;
  cfg.nic = *tap;
  auto vm = sf::sfd::QemuVm::launch(cfg);
  EXPECT_TRUE(vm) << vm.error().message;
  if (!vm) return nullptr;
  g->vm = std::move(*vm);
  g->io = g->vm->take_io_fd();
  auto node = sf::sfd::vm_node_identity(id, "sf-vm");
  nlohmann::json spec = {{"argv", {"/bin/busybox", "sh", "-c", script}},
                         {"env", {"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}},
                         {"cwd", "/"},
                         {"work_dir", ""},
                         {"hostname", node->hostname},
                         {"net", sf::sfd::net_spec(*node)}};
  const auto frame = gio::encode(gio::FrameType::spec, spec.dump());
  EXPECT_EQ(write(g->io, frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
  return g;
}

// Reads every guest's frames until all have sent their exit frame (or the boot deadline).
void run_to_exit(std::vector<Guest*> guests) {
  const auto deadline = Clock::now() + kBootDeadline;
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<Guest*> open;
    for (Guest* g : guests) {
      if (!g->exit_code) {
        fds.push_back({g->io, POLLIN, 0});
        open.push_back(g);
      }
    }
    if (open.empty() || Clock::now() > deadline) return;
    poll(fds.data(), fds.size(), 500);
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      std::uint8_t buf[65536];
      const ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        open[i]->exit_code = -1;
        continue;
      }
      open[i]->decoder.feed({buf, static_cast<std::size_t>(n)});
      for (;;) {
        auto f = open[i]->decoder.next();
        if (!f || !*f) break;
        if ((*f)->type == gio::FrameType::stdout_data || (*f)->type == gio::FrameType::stderr_data) open[i]->out += (*f)->text();
        if ((*f)->type == gio::FrameType::error) open[i]->out += "[agent error] " + (*f)->text();
        if ((*f)->type == gio::FrameType::exit) open[i]->exit_code = nlohmann::json::parse((*f)->text()).value("code", -1);
      }
    }
  }
}

TEST(VmNetworkGuests, TwoVmsOnOneNetworkReachEachOtherAndNothingElse) {
  TestDirs dirs;
  setenv("SF_RUNTIME_DIR", dirs.run.c_str(), 1);
  setenv("SF_RAM_DIR", dirs.ram.c_str(), 1);
  const sf::sfd::VmConfig base = base_config();
  ASSERT_FALSE(HasFailure());
  const std::string outside = host_ipv4();
  ino_t ino = 0;
  {
    auto net = sf::sfd::VmNetwork::create();
    ASSERT_TRUE(net) << net.error().message;
    ino = inode_of_fd((*net)->netns_fd());
    // Each pings the other until it answers (the two boots finish at different times), then
    // shows that the host's own address has no route.
    const auto script = [&](const std::string& peer) {
      return "ok=0; for n in $(seq 200); do if ping -c1 -W1 " + peer + " >/dev/null 2>&1; then ok=1; break; fi; done; "
             "echo reached=$ok; hostname; ip route; ip route get " + outside + " 2>&1; echo routeget=$?; "
             "ping -c1 -W1 " + outside + " 2>&1; echo outside=$?; [ $ok = 1 ]";
    };
    auto a = start_guest(base, **net, 0, script("10.213.0.2"));
    auto b = start_guest(base, **net, 1, script("10.213.0.1"));
    ASSERT_TRUE(a && b);
    run_to_exit({a.get(), b.get()});
    for (Guest* g : {a.get(), b.get()}) {
      SCOPED_TRACE(g->out + g->vm->diagnostics());
      EXPECT_EQ(g->exit_code, 0);
      EXPECT_NE(g->out.find("reached=1"), std::string::npos);
      EXPECT_EQ(g->out.find("default"), std::string::npos);  // no default route
      EXPECT_NE(g->out.find("routeget=2"), std::string::npos);  // "Network is unreachable"
      EXPECT_EQ(g->out.find("outside=0"), std::string::npos);
    }
    EXPECT_NE(a->out.find("sf-vm\n"), std::string::npos);
    EXPECT_NE(b->out.find("sf-vm-sf1\n"), std::string::npos);
    EXPECT_NE(a->out.find("10.213.0.0/24 dev sf0"), std::string::npos);
  }
  EXPECT_EQ(who_holds_netns(ino), "");
  EXPECT_EQ(vm_links_in_host_namespace(), "");
  std::string left;
  EXPECT_FALSE(dirs.vm_files_left(&left)) << left;
  unsetenv("SF_RUNTIME_DIR");
  unsetenv("SF_RAM_DIR");
}

TEST(SfdRunNetwork, GuestHasItsAddressMacAndHostnameAndNoRouteOut) {
  TestDirs dirs;
  const std::string outside = host_ipv4();
  SfdProcess sfd({"--", "/bin/busybox", "sh", "-c",
                  "ip -4 addr show sf0; ip link show sf0; hostname; ip route; echo ROUTES-END; ip route get " + outside +
                      " 2>&1; echo routeget=$?; ping -c1 -W1 " + outside + " 2>&1; echo outside=$?; echo NET-DONE; sleep 5"},
                 dirs);
  ASSERT_TRUE(sfd.read_until("NET-DONE")) << sfd.out() << sfd.err();
  const ino_t ino = netns_fd_inode_of(sfd.pid());
  EXPECT_NE(ino, 0u) << "sfd holds no network namespace fd";
  const auto status = sfd.finish();
  ASSERT_TRUE(status);
  EXPECT_EQ(*status, 0) << sfd.err();
  const std::string& out = sfd.out();
  EXPECT_NE(out.find("inet 10.213.0.1/24"), std::string::npos) << out;
  EXPECT_NE(out.find("link/ether 52:54:00:53:46:00"), std::string::npos) << out;
  EXPECT_NE(out.find("\nsf-vm\n"), std::string::npos) << out;
  const std::string routes = out.substr(0, out.find("ROUTES-END"));
  EXPECT_EQ(routes.find("default"), std::string::npos) << out;
  EXPECT_NE(out.find("routeget=2"), std::string::npos) << out;
  EXPECT_EQ(out.find("outside=0"), std::string::npos) << out;
  EXPECT_FALSE(qemu_running_for(sfd.pid()));
  if (ino != 0) {
    EXPECT_EQ(who_holds_netns(ino), "");
  }
  EXPECT_EQ(vm_links_in_host_namespace(), "");
  std::string left;
  EXPECT_FALSE(dirs.vm_files_left(&left)) << left;
}

// SIGTERM: sfd cleans up. SIGKILL: QEMU dies with sfd (PDEATHSIG), the unnamed namespace with
// the last fd; a later sfd sweeps the files.
TEST(SfdRunNetwork, NothingOfTheNetworkSurvivesSigtermOrSigkill) {
  for (int sig : {SIGTERM, SIGKILL}) {
    SCOPED_TRACE("signal " + std::to_string(sig));
    TestDirs dirs;
    SfdProcess sfd({"--", "/bin/busybox", "sh", "-c", "echo ready; sleep 600"}, dirs);
    ASSERT_TRUE(sfd.read_until("ready")) << sfd.err();
    const ino_t ino = netns_fd_inode_of(sfd.pid());
    ASSERT_NE(ino, 0u);
    EXPECT_NE(who_holds_netns(ino), "");
    kill(sfd.pid(), sig);
    ASSERT_TRUE(sfd.finish());
    // QEMU goes with sfd; wait for the kernel to finish it off after a SIGKILL.
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (qemu_running_for(sfd.pid()) && Clock::now() < deadline) usleep(50000);
    EXPECT_FALSE(qemu_running_for(sfd.pid()));
    EXPECT_EQ(who_holds_netns(ino), "");
    EXPECT_EQ(vm_links_in_host_namespace(), "");
    if (sig == SIGKILL) {
      // A later sfd removes the files the killed one left.
      SfdProcess later({"--", "/bin/true"}, dirs);
      EXPECT_EQ(later.finish(), 0) << later.err();
    }
    std::string left;
    EXPECT_FALSE(dirs.vm_files_left(&left)) << left;
  }
}

}  // namespace
