// `sfd run --nodes N` (a static cluster of booted VMs, the benchmark's peer): Debian's mpirun
// across real TCG guests through dropbear, its exit status, and cleanup. Deadlines are bounds
// against hangs only.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "e2e_support.hpp"

TEST(StaticCluster, DebianMpirunRunsAcrossTwoBootedVmsAndItsExitStatusComesBack) {
  TestDirs dirs;
  const std::string hello = stage(dirs, HELLO_EXAMPLE);
  {
    SfdProcess p({"--nodes", "2", "--mem", "384M", "--", "sh", "-c",
                  "mpirun --allow-run-as-root --host \"$SFD_HOSTS\" --oversubscribe -np 4 " + hello},
                 dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    ASSERT_EQ(*st, 0) << p.out() << p.err();
    std::set<std::string> hosts;
    std::set<int> ranks;
    std::regex line("Hello from rank ([0-9]+) of 4 on ([^ ]+)");
    for (std::sregex_iterator it(p.out().begin(), p.out().end(), line), end; it != end; ++it) {
      ranks.insert(std::stoi((*it)[1].str()));
      hosts.insert((*it)[2].str());
    }
    EXPECT_EQ(ranks.size(), 4u) << p.out();
    EXPECT_EQ(hosts, (std::set<std::string>{"sf-vm", "sf-vm-sf1"})) << p.out();
    EXPECT_EQ(p.err().find("skipping hostkey check"), std::string::npos) << p.err();
  }
  {
    // A rank exits 3 on node 1: mpirun's status is the run's.
    SfdProcess p({"--nodes", "2", "--mem", "384M", "--", "sh", "-c",
                  "mpirun --allow-run-as-root --host \"$SFD_HOSTS\" --oversubscribe -np 4 sh -c 'exit 3'"},
                 dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 3) << p.out() << p.err();
    EXPECT_TRUE(wait_no_qemu(p.pid()));
  }
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(StaticCluster, SigkillOfSfdTakesEveryNodeAlong) {
  TestDirs dirs;
  SfdProcess p({"--nodes", "3", "--mem", "256M", "--", "sh", "-c", "echo node0.up; sleep 600"}, dirs);
  ASSERT_TRUE(p.read_until("node0.up")) << p.out() << p.err();
  ASSERT_TRUE(qemu_running_for(p.pid())) << "the QEMUs of this run are not where the check looks";
  kill(p.pid(), SIGKILL);
  ASSERT_TRUE(p.finish(std::chrono::seconds(60)).has_value());
  EXPECT_TRUE(wait_no_qemu(p.pid())) << "a QEMU outlived its SIGKILLed sfd";
  SfdProcess next({"--", "true"}, dirs);  // sweeps what the killed one left
  const auto st = next.finish();
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(*st, 0) << next.err();
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}
