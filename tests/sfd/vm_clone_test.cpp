// VM cloning from inside the guest: `sfd run` a program that calls the clone API
// (qemu driver), and `mpirun-sf` inside a VM forking it into a cluster of VMs. Real TCG
// guests; each test boots once and clones. Deadlines are bounds against hangs only.
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "e2e_support.hpp"

TEST(VmClone, ThreeClonesEachWithItsOwnIdAddressAndMemory) {
  TestDirs dirs;
  SfdProcess p({"--", stage(dirs, VM_CLONE_PROBE), "3"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  expect_probe_clones(p.out(), 3);
  // Every line is one of the probe's facts, each as often as the probe states it, and nothing else.
  std::map<std::string, int> keys, expected{{"driver", 1}, {"granted", 1}, {"subnet", 1}, {"parent.heard_from", 3},
                                            {"node0.final", 1}};
  for (int i = 0; i <= 3; ++i) {
    const std::string n = "node" + std::to_string(i);
    for (const char* fact : {".hostname", ".address", ".before", ".after"}) expected[n + fact] = 1;
    if (i > 0) {
      expected[n + ".reached_parent"] = expected[n + ".outside"] = 1;
      expected["clone" + std::to_string(i) + ".end"] = 1;
    }
  }
  std::istringstream lines(p.out());
  for (std::string line; std::getline(lines, line);) ++keys[line.substr(0, line.find('='))];
  EXPECT_EQ(keys, expected) << p.out();
  EXPECT_FALSE(qemu_running_for(p.pid()));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(VmClone, ACrashingCloneIsReportedAndTheOthersSync) {
  TestDirs dirs;
  SfdProcess p({"--", stage(dirs, VM_CLONE_PROBE), "2", "crash"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  auto f = facts(p.out());
  EXPECT_EQ(f["clone1.end"], "signaled:11") << p.out();
  EXPECT_EQ(f["clone2.end"], "synced:0") << p.out();
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(VmClone, KillEndsEveryCloneAndLeavesNothing) {
  TestDirs dirs;
  SfdProcess p({"--", stage(dirs, VM_CLONE_PROBE), "2", "kill"}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  EXPECT_EQ(facts(p.out())["killed"], "ok") << p.out();
  EXPECT_FALSE(qemu_running_for(p.pid()));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(VmClone, SigkillOfSfdTakesEveryVmAlongAndTheNextRunSweeps) {
  TestDirs dirs;
  const std::string probe = stage(dirs, VM_CLONE_PROBE);
  SfdProcess p({"--", probe, "2", "hold"}, dirs);
  ASSERT_TRUE(p.read_until("node2.holding")) << p.out() << p.err();
  ASSERT_TRUE(p.read_until("node1.holding")) << p.out() << p.err();
  ASSERT_TRUE(qemu_running_for(p.pid())) << "the QEMUs of this run are not where the check looks";
  kill(p.pid(), SIGKILL);
  ASSERT_TRUE(p.finish(std::chrono::seconds(60)).has_value());
  EXPECT_TRUE(wait_no_qemu(p.pid())) << "a QEMU outlived its SIGKILLed sfd";
  std::string what;
  EXPECT_TRUE(dirs.vm_files_left(&what));  // the RAM image, descriptor, run dirs: swept next
  SfdProcess next({"--", "true"}, dirs);
  const auto st = next.finish();
  ASSERT_TRUE(st.has_value());
  EXPECT_EQ(*st, 0) << next.err();
  what.clear();
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// `hello` of 8 ranks printed every rank once, from the master VM and its 3 clones.
void expect_hello_on_four_vms(const std::string& out) {
  std::set<std::string> hosts;
  std::set<int> ranks;
  std::regex line("Hello from rank ([0-9]+) of 8 on ([^ ]+)");
  for (std::sregex_iterator it(out.begin(), out.end(), line), end; it != end; ++it) {
    ranks.insert(std::stoi((*it)[1].str()));
    hosts.insert((*it)[2].str());
  }
  EXPECT_EQ(ranks.size(), 8u) << out;
  EXPECT_EQ(hosts, (std::set<std::string>{"sf-vm", "sf-vm-sf1", "sf-vm-sf2", "sf-vm-sf3"})) << out;
}

TEST(VmMpi, MpirunSfInsideAVmForksItIntoFourVms) {
  TestDirs dirs;
  const std::string hello = stage(dirs, HELLO_EXAMPLE);
  SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "8", "--clones", "4", hello}, dirs);
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  expect_hello_on_four_vms(p.out());
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// The same as an ordinary user, with no privilege and no setuid helper: sfd makes the VMs'
// network (bridge, taps) in a user namespace of its own, builds that user's system image of
// what the user can read (cached in the user's home), and runs QEMU as the user. The output
// and exit status are root's; nothing is left in the run and RAM directories, and no process
// of the user survives.
TEST(VmMpi, AnOrdinaryUserForksAVmIntoFourVmsAsRootDoes) {
  auto user = ordinary_test_user();
  ASSERT_TRUE(user) << "the ordinary test user sf-tester-a does not exist: run scripts/setup as root";
  TestDirs dirs;
  dirs.give_to(user->uid, user->gid);
  user->sfd = (dirs.work / fs::path(stage(dirs, SFD_BINARY)).filename()).string();
  const std::string mpirun_sf = stage(dirs, MPIRUN_SF);
  const std::string hello = stage(dirs, HELLO_EXAMPLE);
  SfdProcess p({"--mem", "512M", "--", mpirun_sf, "--allow-run-as-root", "-np", "8", "--clones", "4", hello}, dirs,
               "/dev/null", user);
  const auto st = p.finish(std::chrono::seconds(600));  // the user's first run builds its system image
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  expect_hello_on_four_vms(p.out());
  EXPECT_TRUE(wait_no_qemu(p.pid()));
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
  // Nothing of the run in the host's network namespace: the bridge and taps were the user's.
  std::ifstream dev("/proc/net/dev");
  std::string devices((std::istreambuf_iterator<char>(dev)), std::istreambuf_iterator<char>());
  EXPECT_EQ(devices.find("sft0-"), std::string::npos) << devices;
}

// mpirun forwards its stdin to rank 0; so does mpirun-sf inside a VM that it forks, with the
// input coming through sfd (its stdin) and the guest agent.
TEST(VmMpi, SfdStdinReachesRankZeroAfterTheVmIsCloned) {
  TestDirs dirs;
  const std::string probe = stage(dirs, PROBE_EXAMPLE);
  const fs::path input = dirs.work / "input";
  std::ofstream(input) << std::string(100000, 'x');
  SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "4", "--clones", "2", probe, "--stdin"}, dirs,
               input.string());
  const auto st = p.finish();
  ASSERT_TRUE(st.has_value()) << p.err();
  ASSERT_EQ(*st, 0) << p.out() << p.err();
  EXPECT_NE(p.out().find("rank=0 size=4"), std::string::npos) << p.out();
  EXPECT_NE(p.out().find("stdin_bytes=100000"), std::string::npos) << p.out();
  EXPECT_NE(p.out().find("host=sf-vm-sf1"), std::string::npos) << p.out();
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

// Ranks in VMs get what mpirun gives ranks: stdout on a terminal, so a line printed with
// printf just before MPI_Abort on another VM still arrives; stdin /dev/null (rank 0 a pipe),
// stderr a pipe, and no other descriptor.
TEST(VmMpi, RanksInVmsGetATerminalAndLoseNoLineBeforeAnAbort) {
  TestDirs dirs;
  const std::string semantics = stage(dirs, SEMANTICS_EXAMPLE);
  {
    SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "4", "--clones", "2", semantics, "fds"}, dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 0) << p.out() << p.err();
    for (int rank = 0; rank < 4; ++rank) {
      std::string expected = "semantics: rank " + std::to_string(rank) + " fds 3: 0=" +
                             (rank == 0 ? "pipe" : "null") + " 1=tty 2=pipe\n";
      EXPECT_NE(p.out().find(expected), std::string::npos) << expected << p.out();
    }
  }
  {
    SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "4", "--clones", "2", semantics, "print-abort", "9"}, dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 9) << p.out() << p.err();
    for (int rank = 0; rank < 4; ++rank)
      EXPECT_NE(p.out().find("semantics: I am " + std::to_string(rank) + " of 4\n"), std::string::npos) << p.out();
  }
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}

TEST(VmMpi, AllreduceRingAndAbortCodeAcrossVms) {
  TestDirs dirs;
  const std::string pi = stage(dirs, PI_EXAMPLE), ring = stage(dirs, RING_EXAMPLE), abort = stage(dirs, ABORT_EXAMPLE);
  // One VM runs the three jobs one after the other; each clones its own cluster... but one
  // sfd run grants one ticket, so each job gets its own `sfd run`.
  {
    SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "4", "--clones", "2", pi}, dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 0) << p.out() << p.err();
    EXPECT_NE(p.out().find("pi = 3.14159"), std::string::npos) << p.out();
  }
  {
    SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "4", "--clones", "2", ring, "3"}, dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 0) << p.out() << p.err();
    EXPECT_NE(p.out().find("ring: 4 ranks"), std::string::npos) << p.out();
    EXPECT_NE(p.out().find(" OK"), std::string::npos) << p.out();
  }
  {
    // Rank 3 lives on the clone; its MPI_Abort(9) ends every VM with mpirun's code.
    SfdProcess p({"--mem", "512M", "--", MPIRUN_SF, "--allow-run-as-root", "-np", "4", "--clones", "2", abort, "3", "9"}, dirs);
    const auto st = p.finish();
    ASSERT_TRUE(st.has_value()) << p.err();
    EXPECT_EQ(*st, 9) << p.out() << p.err();
    EXPECT_NE(p.err().find("MPI_ABORT was invoked on rank 3"), std::string::npos) << p.err();
    EXPECT_FALSE(qemu_running_for(p.pid()));
  }
  std::string what;
  EXPECT_FALSE(dirs.vm_files_left(&what)) << what;
}
