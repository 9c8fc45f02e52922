// Test support: hosts that are network namespaces, for the tests and benchmarks that need more
// than one machine (mcdist, memtap, sfd's remote clones). One private bridge in the root
// namespace (optionally with an address: "this host"), and per host a namespace with a veth
// "eth0" on that bridge and its own address. No route anywhere else. Names carry a
// per-process prefix "sft<tag><pid>" and everything is removed in the destructor, on every
// path. Needs root (CAP_NET_ADMIN).
//
//   sf::test::NamespaceHosts hosts(2, "rc");        hosts 1 and 2, bridge address net+"1"
//   ASSERT_TRUE(hosts.ok);
//   hosts.ns(1)   -> "sftrc1234-1"                  (ip netns exec ...)
//   hosts.address(1) -> "10.79.54.11"               (host k is net + (10 + k))
//
//   NamespaceHosts::Options o;                       named hosts with chosen last octets, jumbo
//   o.tag = "mc"; o.mtu = 9000; o.bridge_address = false;   frames, no address on the bridge
//   sf::test::NamespaceHosts bed({{"s", 1}, {"1", 11}, {"2", 12}}, o);
//   bed.ns("s"), bed.veth("s") (the bridge port of host s), bed.address("s")
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>
#include <vector>

namespace sf::test {

class NamespaceHosts {
 public:
  struct Options {
    std::string tag = "h";         // keeps the names of different suites apart ("rc", "mc", ...)
    int mtu = 0;                   // 0: the kernel's default
    bool bridge_address = true;    // the bridge gets net + "1" (the root namespace is a host)
    std::string net_base = "10.79";  // the subnet is net_base.<20..219 by pid>.0/24
  };
  struct Host {
    std::string name;
    int octet;  // the last octet of its address
  };

  // Hosts "1".."count" at net + (10 + k).
  explicit NamespaceHosts(unsigned count, const std::string& tag = "h") : NamespaceHosts(numbered(count), with_tag(tag)) {}
  NamespaceHosts(unsigned count, const Options& options) : NamespaceHosts(numbered(count), options) {}

  NamespaceHosts(std::vector<Host> hosts, const Options& options)
      : prefix("sft" + options.tag + std::to_string(getpid() % 100000)),
        bridge(prefix + "br"),
        net(options.net_base + "." + std::to_string(getpid() % 200 + 20) + "."),
        count(static_cast<unsigned>(hosts.size())),
        hosts_(std::move(hosts)) {
    const std::string mtu = options.mtu > 0 ? " mtu " + std::to_string(options.mtu) : "";
    ok = sh("ip link add " + bridge + " type bridge mcast_snooping 0") == 0 &&
         (!options.bridge_address || sh("ip addr add " + net + "1/24 dev " + bridge) == 0) &&
         sh("ip link set " + bridge + mtu + " up") == 0;
    for (const Host& h : hosts_) {
      const std::string n = ns(h.name), v = veth(h.name);
      ok = ok && sh("ip netns add " + n) == 0 && sh("ip link add " + v + " type veth peer name eth0 netns " + n) == 0 &&
           sh("ip link set " + v + " master " + bridge + mtu + " up") == 0 && sh("ip -n " + n + " link set lo up") == 0 &&
           sh("ip -n " + n + " link set eth0" + mtu + " up") == 0 &&
           sh("ip -n " + n + " addr add " + net + std::to_string(h.octet) + "/24 dev eth0") == 0;
    }
  }
  ~NamespaceHosts() {
    for (const Host& h : hosts_) {
      sh("ip netns del " + ns(h.name));
      sh("ip link del " + veth(h.name));
    }
    sh("ip link del " + bridge);
  }
  NamespaceHosts(const NamespaceHosts&) = delete;
  NamespaceHosts& operator=(const NamespaceHosts&) = delete;

  std::string prefix;
  std::string bridge;
  std::string net;  // "10.79.X." : the bridge (if it has an address) is net+"1"
  unsigned count = 0;
  bool ok = false;

  std::string ns(const std::string& name) const { return prefix + "-" + name; }
  std::string ns(unsigned k) const { return ns(std::to_string(k)); }
  // Host name's end of its veth, on the bridge.
  std::string veth(const std::string& name) const { return prefix + "h" + name; }
  std::string address(const std::string& name) const {
    for (const Host& h : hosts_)
      if (h.name == name) return net + std::to_string(h.octet);
    return {};
  }
  std::string address(unsigned k) const { return address(std::to_string(k)); }
  const std::vector<Host>& hosts() const { return hosts_; }
  // The agent that runs a command on host k (for `sfd run --remote`).
  std::string agent(unsigned k) const { return "ip netns exec " + ns(k); }
  // True if any process runs in host k's namespace.
  bool has_processes(unsigned k) const { return sh("test -n \"$(ip netns pids " + ns(k) + ")\"") == 0; }

  // Runs cmd with sh, its output discarded; its exit status (-1 if it did not exit).
  static int sh(const std::string& cmd) {
    const int rc = std::system(("(" + cmd + ") >/dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }

 private:
  static std::vector<Host> numbered(unsigned count) {
    std::vector<Host> v;
    for (unsigned k = 1; k <= count; ++k) v.push_back({std::to_string(k), static_cast<int>(10 + k)});
    return v;
  }
  static Options with_tag(const std::string& tag) {
    Options o;
    o.tag = tag;
    return o;
  }

  std::vector<Host> hosts_;
};

}  // namespace sf::test
