// mpirun-sf on an impromptu cluster of sandbox clones, end to end: ranks report different
// hostnames, collectives and point-to-point cross clones, failures anywhere end the whole
// cluster with mpirun's exit status, and nothing is left behind: no process carrying the
// test's environment marker, no bridge or veth of the cluster, no session directory.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <regex>
#include <set>
#include <sstream>

#include "run_command.hpp"

namespace {

using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;

constexpr const char* kMarker = "SFT_CLUSTER_MARKER";

std::string mpirun_sf() { return sf::test::build_path("bin/mpirun-sf"); }
std::string example(const std::string& name) { return sf::test::build_path("examples/" + name); }

std::string links_named(const std::string& prefix) {
  CommandResult r = sf::test::run_command({"ip", "-br", "link"}, {});
  std::istringstream in(r.stdout_text);
  std::string line, out;
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) out += line + "\n";
  return out;
}

class ClusterE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "sandbox clones need root (namespaces, CAP_NET_ADMIN)";
    marker_ = sf::test::unique_marker();
    shm_before_ = shm_entries();
  }
  static std::set<std::string> shm_entries() {
    std::set<std::string> out;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec))
      out.insert(e.path().filename().string());
    return out;
  }
  std::string new_shm_entries() const {
    std::string out;
    for (const auto& name : shm_entries())
      if (!shm_before_.count(name) && (name.rfind("mpirun-sf.", 0) == 0 || name.rfind("vader_segment.", 0) == 0))
        out += name + "\n";
    return out;
  }
  void TearDown() override {
    if (marker_.empty()) return;
    auto left = sf::test::wait_for_no_processes(
        [&] { return sf::test::processes_with_environment(kMarker, marker_); }, 10s);
    EXPECT_TRUE(left.empty()) << "left behind:\n" << sf::test::describe(left);
    // Nothing of a launcher left in /dev/shm: its shared-memory directory (mpirun-sf.<pid>.*)
    // holds Open MPI's segments and goes with it, also when ranks were killed.
    EXPECT_EQ(new_shm_entries(), "");
    if (!bridge_.empty()) {
      // The cluster's bridge and veths go with it (sfv<slot>_<i>).
      std::string slot = bridge_.substr(4);
      for (int i = 0; i < 50 && !(links_named(bridge_ + " ").empty() &&
                                  links_named("sfv" + slot + "_").empty());
           ++i)
        usleep(100000);
      EXPECT_EQ(links_named(bridge_ + " "), "");
      EXPECT_EQ(links_named("sfv" + slot + "_"), "");
    }
  }
  CommandOptions options(std::chrono::milliseconds timeout = 120s) {
    CommandOptions o;
    o.timeout = timeout;
    o.environment = {std::string(kMarker) + "=" + marker_, "SF_KILL_GRACE_MS=500"};
    return o;
  }
  std::vector<std::string> cmd(std::vector<std::string> args) {
    std::vector<std::string> v{mpirun_sf(), "--allow-run-as-root", "--display-map"};
    v.insert(v.end(), args.begin(), args.end());
    return v;
  }
  // Remembers the cluster's bridge from --display-map, for the leftover check.
  void note_bridge(const std::string& out) {
    std::smatch m;
    if (std::regex_search(out, m, std::regex("Interface: (sfbr[0-9]+)"))) bridge_ = m[1];
  }
  std::string marker_, bridge_;
  std::set<std::string> shm_before_;
};

TEST_F(ClusterE2E, HelloOnFourMachinesReportsFourHostnames) {
  CommandResult r = sf::test::run_command(cmd({"-np", "8", "--clones", "4", example("hello")}), options());
  note_bridge(r.stdout_text);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  std::regex line("Hello from rank ([0-9]+) of 8 on (\\S+) \\(pid");
  std::set<int> ranks;
  std::set<std::string> hosts;
  for (std::sregex_iterator it(r.stdout_text.begin(), r.stdout_text.end(), line), end; it != end; ++it) {
    ranks.insert(std::stoi((*it)[1]));
    hosts.insert((*it)[2]);
  }
  EXPECT_EQ(ranks.size(), 8u) << r.stdout_text;
  EXPECT_EQ(hosts.size(), 4u) << r.stdout_text;
  char self[256] = {};
  gethostname(self, sizeof self - 1);
  EXPECT_TRUE(hosts.count(self)) << "node 0 is the launching machine";
  EXPECT_TRUE(hosts.count(std::string(self) + "-sf3")) << r.stdout_text;
}

TEST_F(ClusterE2E, AllreduceAndRingCrossClones) {
  CommandResult pi = sf::test::run_command(cmd({"-np", "8", "--clones", "4", example("pi")}), options());
  note_bridge(pi.stdout_text);
  ASSERT_TRUE(pi.exited_with(0)) << pi.describe();
  EXPECT_NE(pi.stdout_text.find("pi = 3.14159"), std::string::npos) << pi.stdout_text;
  EXPECT_NE(pi.stdout_text.find("8 ranks"), std::string::npos) << pi.stdout_text;
  CommandResult ring = sf::test::run_command(cmd({"-np", "6", "--map-by", "ppr:2:node", example("ring"), "3"}), options());
  ASSERT_TRUE(ring.exited_with(0)) << ring.describe();
  EXPECT_NE(ring.stdout_text.find("ring: 6 ranks"), std::string::npos) << ring.stdout_text;
  EXPECT_NE(ring.stdout_text.find(" OK"), std::string::npos) << ring.stdout_text;
}

// What a rank is given on a clone is what it is given on node 0 and under mpirun: stdout on
// a terminal, stdin /dev/null (rank 0 a pipe), stderr a pipe, nothing else; and the count of
// ranks against this machine's cores, which every clone shares.
TEST_F(ClusterE2E, RanksOnClonesGetATerminalNoStrayDescriptorsAndTheOversubscription) {
  CommandResult tty = sf::test::run_command(cmd({"-np", "4", "--clones", "2", example("semantics"), "fds"}), options());
  note_bridge(tty.stdout_text);
  ASSERT_TRUE(tty.exited_with(0)) << tty.describe();
  for (int rank = 0; rank < 4; ++rank) {
    std::string expected = "semantics: rank " + std::to_string(rank) + " fds 3: 0=" +
                           (rank == 0 ? "pipe" : "null") + " 1=tty 2=pipe\n";
    EXPECT_NE(tty.stdout_text.find(expected), std::string::npos) << expected << tty.describe();
  }
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  const int np = static_cast<int>(2 * cores + 2);  // more ranks than cores, spread over clones
  CommandResult over = sf::test::run_command(
      cmd({"-np", std::to_string(np), "--clones", "2", example("probe"), "OMPI_MCA_mpi_oversubscribe"}),
      options());
  ASSERT_TRUE(over.exited_with(0)) << over.describe();
  std::regex told("rank=[0-9]+ .* OMPI_MCA_mpi_oversubscribe=1");
  auto lines = std::distance(std::sregex_iterator(over.stdout_text.begin(), over.stdout_text.end(), told),
                             std::sregex_iterator());
  EXPECT_EQ(lines, np) << over.describe();
}

TEST_F(ClusterE2E, OutputPrintedOnACloneBeforeAnAbortOrACrashIsNotLost) {
  CommandResult abort = sf::test::run_command(
      cmd({"-np", "4", "--clones", "2", example("semantics"), "print-abort", "6"}), options());
  note_bridge(abort.stdout_text);
  EXPECT_TRUE(abort.exited_with(6)) << abort.describe();
  CommandResult crash = sf::test::run_command(
      cmd({"-np", "4", "--clones", "2", example("semantics"), "print-crash"}), options());
  EXPECT_TRUE(crash.exited_with(128 + SIGSEGV)) << crash.describe();
  for (const auto* r : {&abort, &crash})
    for (int rank = 0; rank < 4; ++rank)
      EXPECT_NE(r->stdout_text.find("semantics: I am " + std::to_string(rank) + " of 4\n"), std::string::npos)
          << r->describe();
}

TEST_F(ClusterE2E, SearchGivesTheSameAnswerOnClonesAsOnOneMachine) {
  auto checksum = [](const std::string& out) {
    std::smatch m;
    return std::regex_search(out, m, std::regex("checksum=([0-9a-f]+)")) ? m[1].str() : "";
  };
  CommandResult one = sf::test::run_command(
      {mpirun_sf(), "--allow-run-as-root", "-np", "1", example("seqsearch")}, options());
  ASSERT_TRUE(one.exited_with(0)) << one.describe();
  CommandResult many = sf::test::run_command(cmd({"-np", "8", "--clones", "4", example("seqsearch")}), options());
  note_bridge(many.stdout_text);
  ASSERT_TRUE(many.exited_with(0)) << many.describe();
  EXPECT_FALSE(checksum(one.stdout_text).empty());
  EXPECT_EQ(checksum(one.stdout_text), checksum(many.stdout_text));
}

TEST_F(ClusterE2E, NameServiceWorksOnOneMachineAndAcrossClones) {
  // MPI_Publish_name/Lookup_name/Unpublish_name: PMIx publish/lookup/unpublish, answered by
  // the coordinator's store on node 0 for ranks on any machine.
  for (const auto& args : {std::vector<std::string>{"-np", "2"},
                           std::vector<std::string>{"-np", "4", "--clones", "2"}}) {
    std::vector<std::string> argv = cmd(args);
    argv.push_back(example("pubsub"));
    CommandResult r = sf::test::run_command(argv, options());
    note_bridge(r.stdout_text);
    ASSERT_TRUE(r.exited_with(0)) << r.describe();
    int n = args.size() == 2 ? 2 : 4;
    for (int rank = 0; rank < n; ++rank)
      EXPECT_NE(r.stdout_text.find("pubsub: rank " + std::to_string(rank) + " found sf-port-" +
                                   std::to_string(n)),
                std::string::npos) << r.stdout_text;
    EXPECT_NE(r.stdout_text.find("pubsub: unpublished"), std::string::npos) << r.stdout_text;
    EXPECT_NE(r.stdout_text.find("pubsub: gone after unpublish"), std::string::npos) << r.stdout_text;
  }
}

TEST_F(ClusterE2E, AbortInACloneEndsTheClusterWithTheAbortCode) {
  // Rank 5 lives on clone 2; the others block and must be killed on every machine.
  CommandResult r = sf::test::run_command(cmd({"-np", "8", "--clones", "4", example("abort"), "5", "9"}), options());
  note_bridge(r.stdout_text);
  EXPECT_TRUE(r.exited_with(9)) << r.describe();
  EXPECT_NE(r.stderr_text.find("MPI_ABORT was invoked on rank 5"), std::string::npos) << r.stderr_text;
}

TEST_F(ClusterE2E, CrashInACloneEndsTheClusterWith128PlusSignal) {
  CommandResult r = sf::test::run_command(cmd({"-np", "4", "--clones", "2", example("crash"), "3"}), options());
  note_bridge(r.stdout_text);
  EXPECT_TRUE(r.exited_with(139)) << r.describe();
  EXPECT_NE(r.stderr_text.find("rank 3"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("signal 11"), std::string::npos) << r.stderr_text;
}

TEST_F(ClusterE2E, StdinReachesRankZeroAndOutputIsTagged) {
  CommandOptions o = options();
  o.stdin_data = std::string(100000, 'x');
  CommandResult r = sf::test::run_command(
      cmd({"-np", "4", "--clones", "2", "--tag-output", example("probe"), "--stdin"}), o);
  note_bridge(r.stdout_text);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_NE(r.stdout_text.find("stdin_bytes=100000"), std::string::npos) << r.stdout_text;
  for (int rank = 0; rank < 4; ++rank)
    EXPECT_NE(r.stdout_text.find("[1," + std::to_string(rank) + "]<stdout>:rank=" + std::to_string(rank)),
              std::string::npos) << r.stdout_text;
}

TEST_F(ClusterE2E, SigtermToTheLauncherEndsEveryClone) {
  sf::test::RunningCommand run(cmd({"-np", "4", "--clones", "2", example("hello"), "--sleep", "60"}), options());
  ASSERT_TRUE(run.wait_for_output("Hello from rank 3", 60s)) << run.stdout_so_far() << run.stderr_so_far();
  note_bridge(run.stdout_so_far());
  run.send_signal(SIGTERM);
  CommandResult r = run.wait(30s);
  EXPECT_TRUE(r.exited_with(1)) << r.describe();
}

TEST_F(ClusterE2E, TimeoutEndsEveryClone) {
  CommandResult r = sf::test::run_command(
      cmd({"-np", "4", "--clones", "2", "--timeout", "3", example("hello"), "--sleep", "60"}), options());
  note_bridge(r.stdout_text);
  EXPECT_TRUE(r.exited_with(110)) << r.describe();
  EXPECT_NE(r.stderr_text.find("time limit"), std::string::npos) << r.stderr_text;
}

TEST_F(ClusterE2E, KilledLauncherTakesItsClonesAlongAndCleanupRemovesTheRest) {
  sf::test::RunningCommand run(cmd({"-np", "4", "--clones", "2", example("hello"), "--sleep", "60"}), options());
  ASSERT_TRUE(run.wait_for_output("Hello from rank 3", 60s)) << run.stdout_so_far() << run.stderr_so_far();
  note_bridge(run.stdout_so_far());
  run.send_signal(SIGKILL);
  run.wait(30s);
  // The clones die with their parent (PID-namespace init with a parent-death signal); the
  // ranks on node 0 die with it too (parent-death signal). What stays is cleaned up here.
  CommandResult c = sf::test::run_command({mpirun_sf(), "--cleanup"}, options());
  EXPECT_TRUE(c.exited_with(0)) << c.describe();
}

TEST_F(ClusterE2E, BadClusterRequestIsAClearError) {
  CommandResult r = sf::test::run_command(
      {mpirun_sf(), "--allow-run-as-root", "-np", "4", "--clones", "2", "--driver", "none", example("hello")},
      options());
  EXPECT_TRUE(r.exited_with(1)) << r.describe();
  EXPECT_NE(r.stderr_text.find("--clones 2 needs a clone driver"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(r.stderr_text.find('\n'), r.stderr_text.size() - 1) << "one line: " << r.stderr_text;
}

}  // namespace
