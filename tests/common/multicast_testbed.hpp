// mcdist's and memtap's multicast tests: a throw-away network of namespaces on one bridge
// (hosts "s", 1..N and optionally "i" for an injector; tests/common/namespace_hosts.hpp),
// link impairments with nftables and htb (netem is not in this kernel), and child processes
// run inside the namespaces. Everything is named with a per-process prefix and removed in the
// destructor, on every path.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "namespace_hosts.hpp"

namespace sf::mcdist::test {

inline int sh(const std::string& cmd) {
  int rc = std::system(("(" + cmd + ") >/dev/null 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Testbed {
 public:
  explicit Testbed(int receivers, bool injector = false, int mtu = 9000)
      : hosts_(host_list(receivers, injector), options(mtu)), prefix_(hosts_.prefix) {
    tmp_ = "/tmp/" + prefix_ + "-mcdist";
    sh("rm -rf " + tmp_);
    sh("mkdir -p " + tmp_);
  }

  ~Testbed() {
    for (pid_t p : children_) {
      kill(p, SIGKILL);
      waitpid(p, nullptr, 0);
    }
    for (const auto& h : hosts_.hosts()) sh("nft delete table netdev " + prefix_ + "_" + h.name);
    sh("rm -rf " + tmp_);
  }  // then hosts_ removes the namespaces, veths and bridge

  bool ok() const { return hosts_.ok; }
  const std::string& prefix() const { return prefix_; }
  const std::string& tmp() const { return tmp_; }
  std::string netns(const std::string& h) const { return hosts_.ns(h); }
  std::string host_veth(const std::string& h) const { return hosts_.veth(h); }
  // Host h's address: "s" the sender, "i" the injector, "1".."N" the receivers.
  std::string address(const std::string& h) const { return hosts_.address(h); }
  std::string receiver(int i) const { return std::to_string(i); }

  // Impairs the link towards host h (egress of its bridge port): loss and duplication with
  // nftables (random per packet), reordering by sending every 16th datagram (by the low bits
  // of the mcdist sequence number) through a slow htb class so it arrives late.
  bool impair(const std::string& h, int loss_permille, int dup_permille, bool reorder) {
    std::string dev = host_veth(h), table = prefix_ + "_" + h;
    std::string rules = "table netdev " + table + " { chain impair { type filter hook egress device \"" + dev +
                        "\" priority 0;\n";
    if (loss_permille) rules += "meta l4proto udp numgen random mod 1000 < " + std::to_string(loss_permille) + " drop\n";
    if (dup_permille) rules += "meta l4proto udp numgen random mod 1000 < " + std::to_string(dup_permille) + " dup to \"" + dev + "\"\n";
    rules += "}\n}";
    std::ofstream(tmp_ + "/nft-" + h) << rules << "\n";
    if (sh("nft -f " + tmp_ + "/nft-" + h) != 0) return false;
    if (!reorder) return true;
    return sh("tc qdisc add dev " + dev + " root handle 1: htb default 10 r2q 1000") == 0 &&
           sh("tc class add dev " + dev + " parent 1: classid 1:10 htb rate 10gbit") == 0 &&
           sh("tc class add dev " + dev + " parent 1: classid 1:20 htb rate 8mbit ceil 8mbit") == 0 &&
           // u32 offsets count from the IP header: 20 IP + 8 UDP + 40 = the sequence's low byte.
           sh("tc filter add dev " + dev + " parent 1: protocol ip u32 match u8 0x03 0x0f at 68 flowid 1:20") == 0;
  }

  // Starts `args` inside host h's namespace; stdout+stderr go to tmp()/<log>.
  pid_t spawn(const std::string& h, const std::vector<std::string>& args, const std::string& log) {
    std::vector<std::string> full = {"ip", "netns", "exec", netns(h)};
    full.insert(full.end(), args.begin(), args.end());
    std::string path = tmp_ + "/" + log;
    pid_t pid = fork();
    if (pid == 0) {
      FILE* f = std::fopen(path.c_str(), "w");
      if (f) {
        dup2(fileno(f), 1);
        dup2(fileno(f), 2);
      }
      std::vector<char*> argv;
      for (auto& a : full) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      execvp(argv[0], argv.data());
      _exit(127);
    }
    children_.push_back(pid);
    return pid;
  }

  // Exit code of pid, or -1 if it did not exit within the deadline (then it is killed).
  int wait(pid_t pid, std::chrono::seconds deadline) {
    auto end = std::chrono::steady_clock::now() + deadline;
    for (;;) {
      int status = 0;
      pid_t r = waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        std::erase(children_, pid);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      }
      if (std::chrono::steady_clock::now() >= end) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
        std::erase(children_, pid);
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  void kill_now(pid_t pid) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    std::erase(children_, pid);
  }

 private:
  static std::vector<sf::test::NamespaceHosts::Host> host_list(int receivers, bool injector) {
    std::vector<sf::test::NamespaceHosts::Host> v{{"s", 1}};
    for (int i = 1; i <= receivers; ++i) v.push_back({std::to_string(i), 10 + i});
    if (injector) v.push_back({"i", 9});
    return v;
  }
  static sf::test::NamespaceHosts::Options options(int mtu) {
    sf::test::NamespaceHosts::Options o;
    o.tag = "mc";
    o.mtu = mtu;
    o.bridge_address = false;
    o.net_base = "10.77";
    return o;
  }

  sf::test::NamespaceHosts hosts_;
  std::string prefix_;
  std::vector<pid_t> children_;
  std::string tmp_;
};

}  // namespace sf::mcdist::test
