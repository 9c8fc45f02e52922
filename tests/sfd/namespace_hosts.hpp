// Test hosts that are network namespaces: this host's end is a private bridge with an address
// in the root namespace; each other host is a namespace with a veth ("eth0") on that bridge
// and its own address. No route anywhere else. Removed on every path (the destructor).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

struct NamespaceHosts {
  std::string prefix;
  std::string bridge;
  std::string net;  // "10.79.X." : the bridge is net+"1", host k (1-based) is net+(10+k)
  unsigned count = 0;
  bool ok = false;

  // `tag` keeps the names of different suites apart ("rc", "rm", ...).
  explicit NamespaceHosts(unsigned hosts, const std::string& tag = "h")
      : prefix("sft" + tag + std::to_string(getpid() % 100000)),
        bridge(prefix + "br"),
        net("10.79." + std::to_string(getpid() % 200 + 20) + "."),
        count(hosts) {
    ok = sh("ip link add " + bridge + " type bridge mcast_snooping 0") == 0 && sh("ip addr add " + net + "1/24 dev " + bridge) == 0 &&
         sh("ip link set " + bridge + " up") == 0;
    for (unsigned k = 1; ok && k <= count; ++k) {
      const std::string n = ns(k), veth = prefix + "h" + std::to_string(k);
      ok = sh("ip netns add " + n) == 0 && sh("ip link add " + veth + " type veth peer name eth0 netns " + n) == 0 &&
           sh("ip link set " + veth + " master " + bridge + " up") == 0 && sh("ip -n " + n + " link set lo up") == 0 &&
           sh("ip -n " + n + " addr add " + net + std::to_string(10 + k) + "/24 dev eth0") == 0 &&
           sh("ip -n " + n + " link set eth0 up") == 0;
    }
  }
  ~NamespaceHosts() {
    for (unsigned k = 1; k <= count; ++k) {
      sh("ip netns del " + ns(k));
      sh("ip link del " + prefix + "h" + std::to_string(k));
    }
    sh("ip link del " + bridge);
  }
  NamespaceHosts(const NamespaceHosts&) = delete;
  NamespaceHosts& operator=(const NamespaceHosts&) = delete;

  std::string ns(unsigned k) const { return prefix + "-" + std::to_string(k); }
  // The agent that runs a command on host k (for `sfd run --remote`).
  std::string agent(unsigned k) const { return "ip netns exec " + ns(k); }
  // True if any process runs in host k's namespace.
  bool has_processes(unsigned k) const { return sh("test -n \"$(ip netns pids " + ns(k) + ")\"") == 0; }

  static int sh(const std::string& cmd) {
    const int rc = std::system(("(" + cmd + ") >/dev/null 2>&1").c_str());
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  }
};
