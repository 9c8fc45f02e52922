// Clones on other hosts: `sfd run --remote AGENT --remote-iface IF` places
// the clones of the master VM on other hosts, here network namespaces on a private bridge
// (namespace_hosts.hpp). Each remote clone's RAM comes from memtap over mcdist, its NIC is
// relayed to the cluster network. Real TCG guests; deadlines are bounds against hangs only.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "e2e_support.hpp"
#include "namespace_hosts.hpp"

namespace {

using json = nlohmann::json;

// SFD_STATS for the sfd runs of one test (inherited through fork): one JSON line per remote
// clone when it stops.
struct StatsFile {
  fs::path path;
  explicit StatsFile(const TestDirs& dirs) : path(dirs.run.parent_path() / (dirs.run.filename().string() + ".stats")) {
    setenv("SFD_STATS", path.c_str(), 1);
  }
  ~StatsFile() {
    unsetenv("SFD_STATS");
    std::error_code ec;
    fs::remove(path, ec);
  }
  std::vector<json> lines() const {
    std::vector<json> v;
    std::istringstream in(read_file(path));
    std::string line;
    while (std::getline(in, line)) v.push_back(json::parse(line, nullptr, false));
    return v;
  }
};

bool mounted_under(const fs::path& dir) { return read_file("/proc/mounts").find(dir.string()) != std::string::npos; }

// Waits (bounded) until no process runs in any of the hosts' namespaces.
bool hosts_quiet(const NamespaceHosts& h) {
  for (int i = 0; i < 300; ++i) {
    bool busy = false;
    for (unsigned k = 1; k <= h.count; ++k) busy = busy || h.has_processes(k);
    if (!busy) return true;
    usleep(100000);
  }
  return false;
}

std::vector<std::string> remote_args(const NamespaceHosts& h) {
  std::vector<std::string> a;
  for (unsigned k = 1; k <= h.count; ++k) a.insert(a.end(), {"--remote", h.agent(k)});
  a.insert(a.end(), {"--remote-iface", h.bridge});
  return a;
}

std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

// The clone API across hosts: clone 1 on one namespace host, clone 2 on the other; each has
// its own identity and private memory after the clone, reaches its parent over the cluster
// network and nothing outside, and fetched only a part of the guest's RAM.
TEST(VmRemote, ClonesOnTwoNamespaceHostsHaveTheirOwnIdentityAndMemory) {
  NamespaceHosts hosts(2, "rm");
  ASSERT_TRUE(hosts.ok) << "cannot build the bridge and namespaces (needs root)";
  TestDirs dirs;
  StatsFile stats(dirs);
  SfdProcess p(cat(remote_args(hosts), {"--", stage(dirs, VM_CLONE_PROBE), "2"}), dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  expect_probe_clones(p.out(), 2);
  const auto lines = stats.lines();
  ASSERT_EQ(lines.size(), 2u) << read_file(stats.path);
  std::set<std::string> where;
  for (const auto& l : lines) {
    ASSERT_TRUE(l.is_object());
    where.insert(l.value("host", ""));
    EXPECT_GT(l.value("frames_relayed", 0), 0) << l.dump();  // it talked to its parent
    EXPECT_GT(l["client"].value("pages_fetched", 0), 0) << l.dump();
    EXPECT_EQ(l["client"].value("fetch_errors", 1), 0) << l.dump();
  }
  EXPECT_EQ(where, (std::set<std::string>{hosts.agent(1), hosts.agent(2)}));
  EXPECT_FALSE(qemu_running_for(p.pid()));
  EXPECT_TRUE(hosts_quiet(hosts));
  EXPECT_FALSE(mounted_under(dirs.run));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// The figure: a remote clone running MPI hello fetches under 15% of the guest's RAM
// with the no-fetch map (a count, not a time). Then an MPI_Abort on the remote clone ends the
// job with its code and takes every VM along.
TEST(VmRemote, MpirunSfRunsRanksOnANamespaceHost) {
  NamespaceHosts hosts(1, "rm");
  ASSERT_TRUE(hosts.ok) << "cannot build the bridge and namespace (needs root)";
  TestDirs dirs;
  StatsFile stats(dirs);
  const std::string hello = stage(dirs, HELLO_EXAMPLE), abort = stage(dirs, ABORT_EXAMPLE);
  {
    SfdProcess p(cat(remote_args(hosts), {"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "2", "--clones", "2", hello}),
                 dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    ASSERT_EQ(*st, 0) << p.out() << p.err();
    EXPECT_NE(p.out().find("Hello from rank 0 of 2 on sf-vm "), std::string::npos) << p.out();
    EXPECT_NE(p.out().find("Hello from rank 1 of 2 on sf-vm-sf1 "), std::string::npos) << p.out();
    const auto lines = stats.lines();
    ASSERT_EQ(lines.size(), 1u) << read_file(stats.path);
    const double pages = lines[0].value("ram_pages", 0.0), fetched = lines[0]["client"].value("pages_fetched", 0.0);
    ASSERT_GT(pages, 0.0);
    RecordProperty("remote_hello_fetched_percent_of_ram", std::to_string(100.0 * fetched / pages));
    EXPECT_LT(fetched / pages, 0.15) << lines[0].dump();
  }
  {
    SfdProcess p(cat(remote_args(hosts), {"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "2", "--clones", "2", abort, "1", "9"}),
                 dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 9) << p.out() << p.err();
    EXPECT_NE(p.err().find("MPI_ABORT was invoked on rank 1"), std::string::npos) << p.err();
    EXPECT_FALSE(qemu_running_for(p.pid()));
  }
  EXPECT_TRUE(hosts_quiet(hosts));
  EXPECT_FALSE(mounted_under(dirs.run));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// SIGKILL of sfd: the agent dies with it (and on a real remote shell its stdin ends), the
// member stops its QEMU and unmounts memtap; the next sfd sweeps the origin's files.
TEST(VmRemote, SigkillOfSfdEndsTheRemoteClone) {
  NamespaceHosts hosts(1, "rm");
  ASSERT_TRUE(hosts.ok) << "cannot build the bridge and namespace (needs root)";
  TestDirs dirs;
  const std::string probe = stage(dirs, VM_CLONE_PROBE);
  SfdProcess p(cat(remote_args(hosts), {"--", probe, "1", "hold"}), dirs);
  ASSERT_TRUE(p.read_until("node1.holding")) << p.out() << p.err();
  ASSERT_TRUE(p.read_until("node0.holding")) << p.out() << p.err();
  EXPECT_TRUE(hosts.has_processes(1));
  kill(p.pid(), SIGKILL);
  ASSERT_TRUE(p.finish(std::chrono::seconds(60)).has_value());
  EXPECT_TRUE(hosts_quiet(hosts)) << "a remote member or its QEMU outlived the SIGKILLed sfd";
  for (int i = 0; i < 300 && qemu_running_for(p.pid()); ++i) usleep(100000);
  EXPECT_FALSE(qemu_running_for(p.pid()));
  EXPECT_FALSE(mounted_under(dirs.run));
  SfdProcess next({"--", "true"}, dirs);
  const auto st = next.finish();
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(*st, 0) << next.err();
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// An agent that cannot run the member: the error names the clone, the agent and its status
// and says what to check; the master VM is stopped and nothing is left.
TEST(VmRemote, AFailingAgentIsNamedAndNothingIsLeft) {
  NamespaceHosts hosts(1, "rm");
  ASSERT_TRUE(hosts.ok) << "cannot build the bridge and namespace (needs root)";
  TestDirs dirs;
  SfdProcess p({"--remote", "false", "--remote-iface", hosts.bridge, "--", stage(dirs, VM_CLONE_PROBE), "1"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  EXPECT_NE(*st, 0) << p.out() << p.err();
  EXPECT_NE(p.err().find("clone 1 on 'false': the agent exited with status 1 before the member connected"), std::string::npos) << p.err();
  EXPECT_NE(p.err().find("--remote-iface"), std::string::npos) << p.err();
  EXPECT_FALSE(qemu_running_for(p.pid()));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// Option mistakes are reported before any VM boots, with what to do.
TEST(VmRemote, OptionMistakesAreNamedBeforeAnyBoot) {
  TestDirs dirs;
  struct Case {
    std::vector<std::string> args;
    std::string says;
  } cases[] = {
      {{"--remote", "ssh other", "--", "true"}, "--remote needs --remote-iface"},
      {{"--remote-iface", "lo", "--", "true"}, "--remote-iface without --remote"},
      {{"--remote", "ssh other", "--remote-iface", "lo", "--nodes", "2", "--", "true"}, "--remote places clones"},
      {{"--remote", "ssh other", "--remote-iface", "sft-no-such-if", "--", "true"}, "there is no interface 'sft-no-such-if'"},
  };
  for (const auto& c : cases) {
    SfdProcess p(c.args, dirs);
    const auto st = p.finish(std::chrono::seconds(120));
    ASSERT_TRUE(st.has_value());
    EXPECT_NE(*st, 0) << p.err();
    EXPECT_NE(p.err().find(c.says), std::string::npos) << p.err();
    EXPECT_FALSE(qemu_running_for(p.pid()));
  }
}
