// scripts/slurm-testbed, end to end: it builds a real Slurm cluster (slurmctld, 4 slurmd,
// munge) of network-namespace nodes, runs job steps, batch jobs and PMIx MPI jobs on it, also
// for an ordinary user, refuses what it cannot do with a clear error, and `down` leaves no
// daemon, namespace, link or file.
#include <gtest/gtest.h>
#include <pwd.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "run_command.hpp"
#include "testbed_leftovers.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;

const std::string kState = "/run/sft-slurm-testbed-" + std::to_string(getpid());

std::string testbed() { return sf::test::source_path("scripts/slurm-testbed"); }
CommandOptions options() {
  CommandOptions o;
  o.timeout = 120s;
  o.environment = {"SF_SLURM_TESTBED=" + kState};
  return o;
}
CommandResult run(std::vector<std::string> args) {
  args.insert(args.begin(), testbed());
  return sf::test::run_command(args, options());
}
// What the testbed can leave, and its state directory.
std::string leftovers() {
  std::string out = sf::test::slurm_testbed_leftovers();
  if (fs::exists(kState)) out += kState + " exists\n";
  return out;
}

class SlurmTestbed : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the testbed starts daemons in network namespaces: run as root";
    ASSERT_EQ(leftovers(), "") << "a testbed (or Slurm daemons) already runs here";
  }
  void TearDown() override {
    run({"down"});
    EXPECT_EQ(leftovers(), "");
  }
};

TEST_F(SlurmTestbed, RunsStepsBatchJobsAndMpiOnEveryNodeAlsoForAnOrdinaryUserAndDownLeavesNothing) {
  CommandResult up = run({"up", "4"});
  ASSERT_TRUE(up.exited_with(0)) << up.describe();
  EXPECT_NE(up.stdout_text.find("4 nodes idle"), std::string::npos) << up.describe();

  CommandResult hosts = run({"exec", "ctl", "srun", "-N4", "hostname"});
  ASSERT_TRUE(hosts.exited_with(0)) << hosts.describe();
  std::set<std::string> names;
  std::istringstream in(hosts.stdout_text);
  for (std::string line; std::getline(in, line);) names.insert(line);
  EXPECT_EQ(names, (std::set<std::string>{"node1", "node2", "node3", "node4"})) << hosts.describe();

  // A batch script sees its allocation, as on a real cluster.
  const fs::path work = fs::temp_directory_path() / ("sft-slurm-" + std::to_string(getpid()));
  fs::create_directories(work);
  fs::permissions(work, fs::perms::all);
  std::ofstream(work / "job.sh") << "#!/bin/sh\necho nodes=$SLURM_JOB_NODELIST tasks=$SLURM_TASKS_PER_NODE "
                                    "host=$(hostname)\n";
  CommandResult batch = run({"exec", "ctl", "sbatch", "--wait", "-N", "4", "--ntasks-per-node=2", "-D", work.string(),
                             "-o", (work / "out.txt").string(), (work / "job.sh").string()});
  ASSERT_TRUE(batch.exited_with(0)) << batch.describe();
  std::ifstream out_file(work / "out.txt");
  std::string out((std::istreambuf_iterator<char>(out_file)), std::istreambuf_iterator<char>());
  EXPECT_EQ(out, "nodes=node[1-4] tasks=2(x4) host=node1\n");

  // Open MPI through Slurm's PMIx plugin: 8 ranks, two per node, by block.
  CommandResult mpi = run({"exec", "ctl", "srun", "--mpi=pmix", "-N4", "-n8", sf::test::build_path("examples/hello")});
  ASSERT_TRUE(mpi.exited_with(0)) << mpi.describe();
  for (int rank = 0; rank < 8; ++rank)
    EXPECT_NE(mpi.stdout_text.find("Hello from rank " + std::to_string(rank) + " of 8 on node" +
                                   std::to_string(rank / 2 + 1) + " "),
              std::string::npos)
        << mpi.describe();

  // An ordinary user's job runs as that user.
  const passwd* pw = getpwnam("sf-tester-a");
  ASSERT_NE(pw, nullptr) << "the ordinary test user sf-tester-a does not exist: run scripts/setup as root";
  CommandResult user = run({"exec", "ctl", "setpriv", "--reuid=sf-tester-a", "--regid=sf-tester-a", "--clear-groups",
                            "--", "srun", "-N2", "id", "-u"});
  ASSERT_TRUE(user.exited_with(0)) << user.describe();
  EXPECT_EQ(user.stdout_text, std::to_string(pw->pw_uid) + "\n" + std::to_string(pw->pw_uid) + "\n");
  std::error_code ec;
  fs::remove_all(work, ec);

  CommandResult down = run({"down"});
  EXPECT_TRUE(down.exited_with(0)) << down.describe();
  EXPECT_EQ(leftovers(), "");
}

TEST_F(SlurmTestbed, MistakesAreNamedAndLeaveNothing) {
  CommandResult bad = run({"up", "zero"});
  EXPECT_TRUE(bad.exited_with(1)) << bad.describe();
  EXPECT_NE(bad.stderr_text.find("NODES must be 1..99"), std::string::npos) << bad.describe();
  EXPECT_EQ(leftovers(), "");
  CommandResult not_up = run({"exec", "node1", "hostname"});
  EXPECT_TRUE(not_up.exited_with(1)) << not_up.describe();
  EXPECT_NE(not_up.stderr_text.find("not running"), std::string::npos) << not_up.describe();
  ASSERT_TRUE(run({"up", "1"}).exited_with(0));
  CommandResult twice = run({"up", "1"});
  EXPECT_TRUE(twice.exited_with(1)) << twice.describe();
  EXPECT_NE(twice.stderr_text.find("already runs"), std::string::npos) << twice.describe();
  CommandResult usage = run({"frobnicate"});
  EXPECT_TRUE(usage.exited_with(2)) << usage.describe();
}

// A daemon that will not start, half-way through `up` (after the bridge, the namespaces,
// munged and slurmctld): `up` says so and removes all of it.
TEST_F(SlurmTestbed, AFailedUpRemovesWhatItMade) {
  const fs::path fake = fs::temp_directory_path() / ("sft-fake-slurmd-" + std::to_string(getpid()));
  fs::create_directories(fake);
  std::ofstream(fake / "slurmd") << "#!/bin/sh\necho 'slurmd: fatal: injected by the test' >&2\nexit 1\n";
  fs::permissions(fake / "slurmd", fs::perms::owner_all);
  CommandOptions o = options();
  o.environment.push_back("PATH=" + fake.string() + ":" + std::getenv("PATH"));
  CommandResult up = sf::test::run_command({testbed(), "up", "2"}, o);
  EXPECT_TRUE(up.exited_with(1)) << up.describe();
  EXPECT_NE(up.stderr_text.find("injected by the test"), std::string::npos) << up.describe();
  EXPECT_NE(up.stderr_text.find("up failed; removing what it made"), std::string::npos) << up.describe();
  EXPECT_EQ(leftovers(), "");
  std::error_code ec;
  fs::remove_all(fake, ec);
}

}  // namespace
