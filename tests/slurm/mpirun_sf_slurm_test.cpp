// mpirun-sf inside Slurm allocations, end to end on the real Slurm test cluster
// (scripts/slurm-testbed: slurmctld on "ctl", slurmd on node1..node4, each a network
// namespace): batch scripts that say mpirun-sf where they said mpirun get the same output and
// exit codes as Debian's mpirun in the same kind of job; scancel, a lost node agent and
// mistakes end everything on every node. And `sfd run --allocator slurm`: a VM's clone request
// becomes a Slurm allocation, its clones run on the granted nodes, and the allocation ends with
// them. Every test runs as root and as the ordinary user sf-tester-a (made by scripts/setup).
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "program_output.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"
#include "testbed_leftovers.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;
using sf::test::RunningCommand;

constexpr const char* kMarker = "SF_TEST_MARKER";
constexpr const char* kUser = "sf-tester-a";
constexpr const char* kExamples[] = {"hello", "ring", "pi", "abort", "crash"};
const std::string kState = "/run/sft-slurm-mpirun-" + std::to_string(getpid());

std::string testbed() { return sf::test::source_path("scripts/slurm-testbed"); }

CommandResult testbed_command(std::vector<std::string> args, std::chrono::milliseconds timeout = 120s) {
  args.insert(args.begin(), testbed());
  CommandOptions o;
  o.timeout = timeout;
  o.environment = {"SF_SLURM_TESTBED=" + kState};
  return sf::test::run_command(args, o);
}

std::string testbed_leftovers() { return sf::test::slurm_testbed_leftovers(); }

// One testbed for the whole program, with mpirun-sf and the examples copied where every user
// can read them.
class Testbed : public ::testing::Environment {
 public:
  static bool up() { return up_; }
  static const std::string& bin() { return bin_; }
  void SetUp() override {
    if (geteuid() != 0) return;  // the tests skip themselves
    bin_dir_ = std::make_unique<sf::test::TempDir>("slurm", "/var/tmp");
    if (!bin_dir_->ok()) {
      error_ = bin_dir_->error();
      return;
    }
    bin_ = bin_dir_->path();
    chmod(bin_.c_str(), 0755);
    fs::copy_file(sf::test::build_path("bin/mpirun-sf"), fs::path(bin_) / "mpirun-sf");
    for (const char* name : kExamples)
      fs::copy_file(sf::test::build_path(std::string("examples/") + name), fs::path(bin_) / name);
    fs::copy_file(SFD_BINARY, fs::path(bin_) / "sfd");
    fs::copy_file(SF_SUM_BINARY, fs::path(bin_) / "sf_sum");
    if (!testbed_leftovers().empty()) {
      error_ = "a Slurm testbed (or Slurm daemons) already runs here:\n" + testbed_leftovers();
      return;
    }
    CommandResult r = testbed_command({"up", "4"});
    up_ = r.exited_with(0);
    if (!up_) error_ = r.describe();
  }
  void TearDown() override {
    if (geteuid() != 0) return;
    testbed_command({"down"});
    bin_dir_.reset();
  }
  static const std::string& error() { return error_; }

 private:
  static inline bool up_ = false;
  static inline std::unique_ptr<sf::test::TempDir> bin_dir_;
  static inline std::string bin_, error_;
};
[[maybe_unused]] auto* const g_testbed = ::testing::AddGlobalTestEnvironment(new Testbed);

enum class Who { root, ordinary_user };
void PrintTo(Who who, std::ostream* os) { *os << (who == Who::root ? "root" : "an ordinary user"); }
std::string who_name(const ::testing::TestParamInfo<Who>& info) {
  return info.param == Who::root ? "Root" : "OrdinaryUser";
}

// A job's results: sbatch --wait's exit status is the batch script's.
struct Job {
  CommandResult sbatch;
  std::string out, err;
};

// 8 hello lines, two ranks on each of node1..node4 in rank order (by block).
void expect_eight_ranks_by_block(const std::string& out, const std::string& context) {
  for (int rank = 0; rank < 8; ++rank)
    EXPECT_NE(out.find("Hello from rank " + std::to_string(rank) + " of 8 on node" + std::to_string(rank / 2 + 1) + " "),
              std::string::npos)
        << context;
}

std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Output lines with pids taken out, sorted: ranks print in any order.
std::vector<std::string> normalized_lines(const std::string& text) {
  std::vector<std::string> lines;
  for (auto line : sf::test::lines_of(text)) {
    line = std::regex_replace(line, std::regex(R"(\(pid [0-9]+\))"), "(pid N)");
    lines.push_back(line);
  }
  std::sort(lines.begin(), lines.end());
  return lines;
}

class SlurmJobs : public ::testing::TestWithParam<Who> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "the Slurm testbed needs root: run these tests as root";
    ASSERT_TRUE(Testbed::up()) << "the Slurm testbed did not come up:\n" << Testbed::error();
    if (as_user()) {
      const passwd* pw = getpwnam(kUser);
      ASSERT_NE(pw, nullptr) << "the ordinary test user " << kUser << " does not exist: run scripts/setup as root";
      uid_ = pw->pw_uid;
      gid_ = pw->pw_gid;
      home_ = pw->pw_dir;
    }
    work_dir_ = std::make_unique<sf::test::TempDir>("slurm-work", "/var/tmp");
    ASSERT_TRUE(work_dir_->ok()) << work_dir_->error();
    work_ = work_dir_->path();
    ASSERT_EQ(chown(work_.c_str(), uid_, gid_), 0);
    marker_ = sf::test::unique_marker();
  }
  void TearDown() override {
    if (marker_.empty()) return;
    // Nothing of the job on any node: every node's processes are this machine's.
    auto left = sf::test::wait_for_no_processes(
        [&] { return sf::test::processes_with_environment(kMarker, marker_); }, 15s);
    EXPECT_TRUE(left.empty()) << "left behind:\n" << sf::test::describe(left);
    EXPECT_EQ(queue(), "") << "a job outlived the test";
    EXPECT_EQ(session_dirs(), "");
  }
  bool as_user() const { return GetParam() == Who::ordinary_user; }
  std::string bin(const std::string& name) const { return Testbed::bin() + "/" + name; }
  // mpirun-sf (or Debian's mpirun) as this user runs it.
  std::string launcher(bool ours) const {
    std::string l = ours ? bin("mpirun-sf") : "mpirun";
    return as_user() ? l : l + " --allow-run-as-root";
  }
  // Runs argv on the login node as this test's user.
  std::vector<std::string> on_login_node(std::vector<std::string> argv) const {
    std::vector<std::string> v{testbed(), "exec", "ctl"};
    if (as_user())
      v.insert(v.end(), {"setpriv", "--reuid=" + std::to_string(uid_), "--regid=" + std::to_string(gid_),
                         "--clear-groups", "--"});
    v.insert(v.end(), argv.begin(), argv.end());
    return v;
  }
  CommandOptions options(std::chrono::milliseconds timeout = 120s) const {
    CommandOptions o;
    o.timeout = timeout;
    o.environment = {"SF_SLURM_TESTBED=" + kState, std::string(kMarker) + "=" + marker_,
                     "SF_KILL_GRACE_MS=500", "HOME=" + (as_user() ? home_ : std::string("/root"))};
    o.unset_environment = {"OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "SLURM_JOB_ID",
                           "SLURM_JOBID"};
    o.working_directory = work_;
    return o;
  }
  fs::path write_script(const std::string& name, const std::string& body) const {
    fs::path p = fs::path(work_) / name;
    std::ofstream(p) << "#!/bin/sh\n" << body << "\n";
    fs::permissions(p, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read |
                           fs::perms::group_exec | fs::perms::others_exec);
    return p;
  }
  // sbatch --wait of a script of one command, on 4 nodes with 2 tasks each (as in the user
  // guide's example).
  Job batch(const std::string& name, const std::string& command, std::vector<std::string> sbatch_args = {}) const {
    Job j;
    j.sbatch = sf::test::run_command(sbatch_wait(name, command, sbatch_args), options());
    j.out = read_file(fs::path(work_) / (name + ".out"));
    j.err = read_file(fs::path(work_) / (name + ".err"));
    return j;
  }
  // The login node's `sbatch --wait` of the script `name`.sh of one command, on 4 nodes with 2
  // tasks each (unless sbatch_args say otherwise), its output in `name`.out and `name`.err.
  std::vector<std::string> sbatch_wait(const std::string& name, const std::string& command,
                                       const std::vector<std::string>& sbatch_args = {}) const {
    fs::path script = write_script(name + ".sh", command);
    std::vector<std::string> argv{"sbatch", "--wait", "-N4", "--ntasks-per-node=2", "-D", work_,
                                  "-o", (fs::path(work_) / (name + ".out")).string(),
                                  "-e", (fs::path(work_) / (name + ".err")).string()};
    argv.insert(argv.end(), sbatch_args.begin(), sbatch_args.end());
    argv.push_back(script.string());
    return on_login_node(argv);
  }
  // Kills `victim` (a process of the running batch job `job`, named `name`) with SIGKILL: the
  // job ends with 137, its ranks counting as killed. Returns the job's stderr.
  std::string kill_and_expect_lost(RunningCommand& job, pid_t victim, const std::string& name) const {
    EXPECT_EQ(kill(victim, SIGKILL), 0);
    CommandResult done = job.wait(60s);
    EXPECT_FALSE(done.timed_out) << done.describe();
    EXPECT_TRUE(done.exited_with(137)) << done.describe();
    return read_file(fs::path(work_) / (name + ".err"));
  }
  static std::string describe(const Job& j) {
    return j.sbatch.describe() + "\njob stdout:\n" + j.out + "\njob stderr:\n" + j.err;
  }
  std::string queue() const {
    CommandResult q = testbed_command({"exec", "ctl", "squeue", "-h"});
    return q.stdout_text;
  }
  // Session and shared-memory directories of launchers and agents that are gone.
  std::string session_dirs() const {
    std::string out;
    for (const char* dir : {"/tmp", "/dev/shm"}) {
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(dir, ec)) {
        std::string n = e.path().filename().string();
        struct stat st {};
        if (n.rfind("mpirun-sf.", 0) == 0 && lstat(e.path().c_str(), &st) == 0 && st.st_uid == uid_) {
          long pid = atol(n.substr(10).c_str());
          if (kill(static_cast<pid_t>(pid), 0) != 0) out += e.path().string() + "\n";
        }
      }
    }
    return out;
  }
  // A job's processes named `name`, on every node.
  std::vector<sf::test::ProcessEntry> job_processes(const std::string& name) const {
    std::vector<sf::test::ProcessEntry> out;
    for (const auto& p : sf::test::processes_with_environment(kMarker, marker_))
      if (p.name == name) out.push_back(p);
    return out;
  }
  // Another job that holds every node, so that the next request waits in the queue.
  std::string hold_every_node() const {
    const std::string name = "sft-holder-" + marker_;
    CommandResult holder = sf::test::run_command(
        on_login_node({"salloc", "--no-shell", "--job-name=" + name, "-N4", "--ntasks-per-node=2"}), options());
    EXPECT_TRUE(holder.exited_with(0)) << holder.describe();
    return name;
  }
  // After a kill -9 of the requester: no job whose (truncated) name starts with `prefix` is
  // left in the queue, the holder still runs; then the holder is cancelled.
  void expect_request_gone(const std::string& prefix, const std::string& holder) const {
    std::string q;
    for (int i = 0; i < 150; ++i) {
      q = queue();
      if (q.find(prefix) == std::string::npos) break;
      std::this_thread::sleep_for(100ms);
    }
    EXPECT_EQ(q.find(prefix), std::string::npos) << "the request outlived its requester:\n" << q;
    EXPECT_NE(q.find(" R "), std::string::npos) << "the other job should still run:\n" << q;
    CommandResult cancel = sf::test::run_command(on_login_node({"scancel", "--name=" + holder}), options());
    EXPECT_TRUE(cancel.exited_with(0)) << cancel.describe();
  }
  bool wait_for_processes(const std::string& name, size_t count, std::chrono::milliseconds deadline) const {
    auto end = std::chrono::steady_clock::now() + deadline;
    while (std::chrono::steady_clock::now() < end) {
      if (job_processes(name).size() >= count) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // A batch job of `command`, which runs 8 ranks of `sleep 600` and `launchers` mpirun-sf
  // processes in all, cancelled with scancel once they run: it ends, cancelled (TearDown
  // checks that nothing of it is left on any node). Not by sbatch --wait's status: that can
  // return 0 while the cancelled job is still completing (Slurm 22.05).
  void scancel_eight_sleeping_ranks(const std::string& command, size_t launchers) const {
    RunningCommand job(sbatch_wait("long", command), options());
    ASSERT_TRUE(wait_for_processes("sleep", 8, 30s)) << "the ranks did not start:\n"
                                                     << sf::test::describe(job_processes("sleep"));
    EXPECT_EQ(job_processes("mpirun-sf").size(), launchers) << sf::test::describe(job_processes("mpirun-sf"));
    std::string id = std::regex_replace(queue(), std::regex(R"(^\s*([0-9]+)[\s\S]*)"), "$1");
    ASSERT_FALSE(id.empty());
    CommandResult cancel = sf::test::run_command(on_login_node({"scancel", id}), options());
    EXPECT_TRUE(cancel.exited_with(0)) << cancel.describe();
    CommandResult done = job.wait(60s);
    EXPECT_FALSE(done.timed_out) << done.describe();
    std::string state;
    for (int i = 0; i < 300; ++i) {  // completing: the nodes' epilogs and kills are not done
      state = testbed_command({"exec", "ctl", "scontrol", "show", "job", id}).stdout_text;
      if (state.find("JobState=COMPLETING") == std::string::npos) break;
      std::this_thread::sleep_for(100ms);
    }
    EXPECT_NE(state.find("JobState=CANCELLED"), std::string::npos) << state;
  }

  uid_t uid_ = 0;
  gid_t gid_ = 0;
  std::unique_ptr<sf::test::TempDir> work_dir_;
  std::string home_, work_, marker_;
};

// The user guide's batch script: 8 ranks on node1..node4 by block, as under mpirun.
TEST_P(SlurmJobs, ABatchScriptRunsEightRanksOnTheFourNodesByBlockAsMpirunDoes) {
  Job ours = batch("ours", launcher(true) + " -np 8 " + bin("hello"));
  ASSERT_TRUE(ours.sbatch.exited_with(0)) << describe(ours);
  expect_eight_ranks_by_block(ours.out, describe(ours));
  EXPECT_EQ(ours.err, "") << describe(ours);
  Job theirs = batch("theirs", launcher(false) + " -np 8 " + bin("hello"));
  ASSERT_TRUE(theirs.sbatch.exited_with(0)) << describe(theirs);
  EXPECT_EQ(normalized_lines(ours.out), normalized_lines(theirs.out));

  // Without -np: one rank per task of the allocation, here 3 nodes with 1 task each.
  Job slots = batch("slots", launcher(true) + " " + bin("hello"), {"-N3", "--ntasks-per-node=1"});
  ASSERT_TRUE(slots.sbatch.exited_with(0)) << describe(slots);
  EXPECT_EQ(sf::test::lines_of(slots.out).size(), 3u) << describe(slots);
  EXPECT_NE(slots.out.find("Hello from rank 2 of 3 on node3 "), std::string::npos) << describe(slots);
}

TEST_P(SlurmJobs, RingAndAllreduceAcrossTheNodes) {
  Job ring = batch("ring", launcher(true) + " -np 8 " + bin("ring") + " 100");
  ASSERT_TRUE(ring.sbatch.exited_with(0)) << describe(ring);
  EXPECT_EQ(ring.out, "ring: 8 ranks, 100 laps, token = 3600 (expected 3600) OK\n") << describe(ring);
  Job pi = batch("pi", launcher(true) + " -np 8 " + bin("pi") + " 1000000");
  ASSERT_TRUE(pi.sbatch.exited_with(0)) << describe(pi);
  EXPECT_NE(pi.out.find("pi = 3.14159"), std::string::npos) << describe(pi);
  EXPECT_NE(pi.out.find("8 ranks"), std::string::npos) << describe(pi);
}

// MPI_Abort(7) from rank 4, which runs on node3, and a SIGSEGV in rank 5 (node3): the job's
// exit status is mpirun's, 7 and 139, and every rank on every node is gone.
TEST_P(SlurmJobs, AbortAndCrashOnAnotherNodeGiveMpirunsExitStatus) {
  Job ours = batch("abort", launcher(true) + " -np 8 " + bin("abort") + " 4 7");
  EXPECT_TRUE(ours.sbatch.exited_with(7)) << describe(ours);
  EXPECT_NE(ours.err.find("MPI_ABORT was invoked on rank 4"), std::string::npos) << describe(ours);
  Job theirs = batch("abort-mpirun", launcher(false) + " -np 8 " + bin("abort") + " 4 7");
  EXPECT_TRUE(theirs.sbatch.exited_with(7)) << describe(theirs);

  Job crash = batch("crash", launcher(true) + " -np 8 " + bin("crash") + " 5");
  EXPECT_TRUE(crash.sbatch.exited_with(139)) << describe(crash);
  EXPECT_NE(crash.out.find("crash: rank 5 raising SIGSEGV"), std::string::npos) << describe(crash);
  EXPECT_NE(crash.err.find("node3"), std::string::npos) << describe(crash);
  Job mpirun_crash = batch("crash-mpirun", launcher(false) + " -np 8 " + bin("crash") + " 5");
  EXPECT_TRUE(mpirun_crash.sbatch.exited_with(139)) << describe(mpirun_crash);
}

// scancel of a running job ends the launcher, srun, every node agent and every rank.
TEST_P(SlurmJobs, ScancelEndsEveryRankOnEveryNode) {
  // The launcher (node1's agent too) and the agents of node2..node4.
  scancel_eight_sleeping_ranks(launcher(true) + " -np 8 sleep 600", 4);
}

// A node agent killed with SIGKILL: the job ends on every node with a message naming the node.
TEST_P(SlurmJobs, ALostNodeAgentEndsTheJob) {
  RunningCommand job(sbatch_wait("lost", launcher(true) + " -np 8 sleep 600"), options());
  ASSERT_TRUE(wait_for_processes("sleep", 8, 30s)) << "the ranks did not start";
  pid_t agent = -1;
  for (const auto& p : job_processes("mpirun-sf"))
    if (p.command_line.find("--slurm-node-agent") != std::string::npos) agent = p.pid;
  ASSERT_GT(agent, 0) << sf::test::describe(job_processes("mpirun-sf"));
  std::string err = kill_and_expect_lost(job, agent, "lost");
  EXPECT_NE(err.find("was lost"), std::string::npos) << err;
  // A process killed with SIGKILL cannot remove its session and shared-memory directories
  // (nor can mpirun's orted); `mpirun-sf --cleanup` on that node does.
  EXPECT_NE(session_dirs().find("mpirun-sf." + std::to_string(agent) + "."), std::string::npos) << session_dirs();
  std::istringstream words(launcher(true) + " --cleanup");
  std::vector<std::string> argv;
  for (std::string w; words >> w;) argv.push_back(w);
  CommandResult cleanup = sf::test::run_command(on_login_node(argv), options());
  EXPECT_TRUE(cleanup.exited_with(0)) << cleanup.describe();
}

// Node 3 given an RDMA device (in its own mount namespace, /sys/class/infiniband/mlx5_0 on a
// tmpfs over /sys/class): its ranks get no OMPI_MCA_pml, so that Open MPI picks its PML there
// as under mpirun (UCX, PSM2 or libfabric on a real fabric); the other nodes' ranks get ob1.
TEST_P(SlurmJobs, OnANodeWithAFabricDeviceOpenMpiChoosesThePml) {
  CommandResult fake = testbed_command(
      {"exec", "node3", "sh", "-c", "mount -t tmpfs sft-fabric /sys/class && mkdir -p /sys/class/infiniband/mlx5_0"});
  ASSERT_TRUE(fake.exited_with(0)) << fake.describe();
  struct Unmount {
    ~Unmount() { (void)testbed_command({"exec", "node3", "umount", "/sys/class"}); }
  } unmount;
  Job job = batch("fabric", launcher(true) + " -np 8 sh -c 'echo \"$(hostname) ${OMPI_MCA_pml:-unset}\"'");
  ASSERT_TRUE(job.sbatch.exited_with(0)) << describe(job);
  std::vector<std::string> lines = sf::test::lines_of(job.out);
  std::sort(lines.begin(), lines.end());
  EXPECT_EQ(lines, (std::vector<std::string>{"node1 ob1", "node1 ob1", "node2 ob1", "node2 ob1", "node3 unset",
                                             "node3 unset", "node4 ob1", "node4 ob1"}))
      << describe(job);
  // A choice of the user's wins everywhere.
  Job chosen = batch("chosen", launcher(true) + " --mca pml ob1 -np 8 sh -c 'echo \"$(hostname) $OMPI_MCA_pml\"'");
  ASSERT_TRUE(chosen.sbatch.exited_with(0)) << describe(chosen);
  EXPECT_NE(chosen.out.find("node3 ob1"), std::string::npos) << describe(chosen);
}

// Nodes x clones: --clones 2 in a batch job forks each of the 4 nodes into 2 machines (the
// node and a sandbox clone sharing its network), one rank on each by block; MPI traffic crosses
// clones and nodes; abort and crash on clones give mpirun's statuses; scancel ends every
// rank on every clone (TearDown: nothing of the job left anywhere).
TEST_P(SlurmJobs, ClonesOfEveryNodeRunRanksByBlockAndEndWithTheJob) {
  Job hello = batch("hello", launcher(true) + " --clones 2 -np 8 " + bin("hello"));
  ASSERT_TRUE(hello.sbatch.exited_with(0)) << describe(hello);
  EXPECT_EQ(hello.err, "") << describe(hello);
  EXPECT_EQ(sf::test::lines_of(hello.out).size(), 8u) << describe(hello);
  for (int rank = 0; rank < 8; ++rank) {
    std::string host = "node" + std::to_string(rank / 2 + 1) + (rank % 2 ? "-sf1" : "");
    EXPECT_NE(hello.out.find("Hello from rank " + std::to_string(rank) + " of 8 on " + host + " "), std::string::npos)
        << "rank " << rank << " not on " << host << "\n" << describe(hello);
  }
  Job ring = batch("ring", launcher(true) + " --clones 2 -np 8 " + bin("ring") + " 100");
  ASSERT_TRUE(ring.sbatch.exited_with(0)) << describe(ring);
  EXPECT_EQ(ring.out, "ring: 8 ranks, 100 laps, token = 3600 (expected 3600) OK\n") << describe(ring);
  Job abort = batch("abort", launcher(true) + " --clones 2 -np 8 " + bin("abort") + " 5 7");
  EXPECT_TRUE(abort.sbatch.exited_with(7)) << describe(abort);
  EXPECT_NE(abort.err.find("MPI_ABORT was invoked on rank 5"), std::string::npos) << describe(abort);
  Job crash = batch("crash", launcher(true) + " --clones 2 -np 8 " + bin("crash") + " 3");
  EXPECT_TRUE(crash.sbatch.exited_with(139)) << describe(crash);
  EXPECT_NE(crash.err.find("node2-sf1"), std::string::npos) << describe(crash);

  // The launcher, 4 node agents and their 4 clones (each an init and the clone's agent).
  scancel_eight_sleeping_ranks(launcher(true) + " --clones 2 -np 8 sleep 600", 13);
}

// A clone of a node killed with SIGKILL (its PID namespace's init): its ranks die with it, the
// job ends on every node with a message naming the lost machine, and nothing is left.
TEST_P(SlurmJobs, ALostCloneOfANodeEndsTheJob) {
  RunningCommand job(sbatch_wait("lost-clone", launcher(true) + " --clones 2 -np 8 sleep 600"), options());
  ASSERT_TRUE(wait_for_processes("sleep", 8, 30s)) << "the ranks did not start";
  pid_t init = -1;
  for (const auto& p : job_processes("mpirun-sf")) {
    // NSpid: the pid here, then the pid in the clone's PID namespace, where its init is 1.
    std::string status = read_file("/proc/" + std::to_string(p.pid) + "/status");
    if (std::regex_search(status, std::regex(R"(\nNSpid:\s+[0-9]+\s+1\n)"))) init = p.pid;
  }
  ASSERT_GT(init, 0) << sf::test::describe(job_processes("mpirun-sf"));
  std::string err = kill_and_expect_lost(job, init, "lost-clone");
  EXPECT_TRUE(std::regex_search(err, std::regex(R"(node [0-9] \(node[1-4]-sf1\) was lost)"))) << err;
}

// salloc on the login node: the launcher runs no ranks itself; every node gets an agent.
TEST_P(SlurmJobs, FromTheLoginNodeInSalloc) {
  std::vector<std::string> argv{"salloc", "-N4", "--ntasks-per-node=2"};
  std::istringstream words(launcher(true) + " -np 8 " + bin("hello"));
  for (std::string w; words >> w;) argv.push_back(w);
  CommandResult r = sf::test::run_command(on_login_node(argv), options());
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  expect_eight_ranks_by_block(r.stdout_text, r.describe());
}

TEST_P(SlurmJobs, MistakesAreNamed) {
  Job slots = batch("slots", launcher(true) + " -np 9 " + bin("hello"));
  EXPECT_TRUE(slots.sbatch.exited_with(1)) << describe(slots);
  EXPECT_NE(slots.err.find("not enough slots"), std::string::npos) << describe(slots);
  EXPECT_EQ(slots.out, "");
  Job clones = batch("clones", launcher(true) + " --clones 2 --driver qemu -np 2 " + bin("hello"));
  EXPECT_TRUE(clones.sbatch.exited_with(1)) << describe(clones);
  EXPECT_NE(clones.err.find("--clones inside a Slurm allocation forks each node into sandbox clones"),
            std::string::npos)
      << describe(clones);
  EXPECT_EQ(clones.out, "");
  // Outside an allocation, --allocator slurm must know what to ask for.
  CommandResult shapeless = sf::test::run_command(
      on_login_node(words(launcher(true) + " --allocator slurm " + bin("hello"))), options());
  EXPECT_TRUE(shapeless.exited_with(1)) << shapeless.describe();
  EXPECT_NE(shapeless.stderr_text.find("give -np for every program, or --clones N"), std::string::npos)
      << shapeless.describe();
}

// --allocator slurm on the login node: mpirun-sf gets its nodes from Slurm (salloc), runs
// the job there and releases them; an unknown partition is salloc's clear error.
TEST_P(SlurmJobs, TheSlurmAllocatorGetsTheNodesFromTheLoginNodeAndReleasesThem) {
  CommandResult r = sf::test::run_command(
      on_login_node(words(launcher(true) + " --allocator slurm -np 8 " + bin("hello"))), options());
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  expect_eight_ranks_by_block(r.stdout_text, r.describe());
  EXPECT_NE(r.stderr_text.find("Granted job allocation"), std::string::npos) << r.describe();
  EXPECT_EQ(queue(), "");

  CommandResult abort = sf::test::run_command(
      on_login_node(words(launcher(true) + " --allocator slurm --clones 4 -np 8 " + bin("abort") + " 6 7")),
      options());
  EXPECT_TRUE(abort.exited_with(7)) << abort.describe();
  EXPECT_EQ(queue(), "");

  CommandResult bad = sf::test::run_command(
      on_login_node(words(launcher(true) + " --allocator slurm --partition nosuch -np 2 " + bin("hello"))),
      options());
  EXPECT_TRUE(bad.exited_with(1)) << bad.describe();
  EXPECT_NE(bad.stderr_text.find("invalid partition specified: nosuch"), std::string::npos) << bad.describe();
  EXPECT_EQ(bad.stdout_text, "");
}

// kill -9 of the launcher, once while its job runs and once while its request waits in the
// queue behind another job: no allocation, request or process of it is left.
TEST_P(SlurmJobs, KillNineOfTheLauncherLeavesNoAllocation) {
  auto launcher_pid = [&] {  // salloc's parent
    for (const auto& p : job_processes("salloc"))
      if (p.command_line.find("--job-name=mpirun-sf.") != std::string::npos) return p.parent;
    return pid_t(-1);
  };
  {
    RunningCommand job(on_login_node(words(launcher(true) + " --allocator slurm -np 8 sleep 600")), options());
    ASSERT_TRUE(wait_for_processes("sleep", 8, 30s)) << job.stderr_so_far();
    pid_t outer = launcher_pid();
    ASSERT_GT(outer, 0);
    ASSERT_EQ(kill(outer, SIGKILL), 0);
    job.wait(30s);
    auto left = sf::test::wait_for_no_processes([&] { return job_processes("sleep"); }, 15s);
    EXPECT_TRUE(left.empty()) << sf::test::describe(left);
    for (int i = 0; i < 100 && !queue().empty(); ++i) std::this_thread::sleep_for(100ms);
    EXPECT_EQ(queue(), "");
  }
  // Another job holds every node, so the request waits.
  const std::string holder_name = hold_every_node();
  RunningCommand waiting(on_login_node(words(launcher(true) + " --allocator slurm -np 8 " + bin("hello"))),
                         options());
  ASSERT_TRUE(waiting.wait_for_error_output("queued and waiting for resources", 30s)) << waiting.stderr_so_far();
  pid_t outer = launcher_pid();
  ASSERT_GT(outer, 0);
  ASSERT_EQ(kill(outer, SIGKILL), 0);
  waiting.wait(30s);
  expect_request_gone("mpirun-s", holder_name);
}

// sfd run --allocator slurm on the login node: the C API example's ticket becomes a Slurm
// allocation of one node per clone; its 4 clones run on node1..node4 with their memory from
// the login node (memtap over mcdist); the sum is right and the allocation ends with the clones.
TEST_P(SlurmJobs, SfdGetsTheClonesOfACApiTicketFromSlurm) {
  CommandResult r = sf::test::run_command(
      on_login_node({"env", "--chdir=" + work_, bin("sfd"), "run", "-v", "--allocator", "slurm", "--remote-iface", "eth0", "--mem", "512M", "--",
                     bin("sf_sum"), "4", "1000000"}),
      options(300s));
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_NE(r.stdout_text.find("granted 4 of 4 clones"), std::string::npos) << r.stdout_text;
  EXPECT_NE(r.stdout_text.find("sum 499500000 (expected 499500000): ok"), std::string::npos) << r.stdout_text;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.stderr_text, m, std::regex(R"(Slurm granted allocation ([0-9]+) after)"))) << r.stderr_text;
  const std::string job = m[1].str();
  for (int node = 1; node <= 4; ++node) {
    const std::string placed = "clone " + std::to_string(node) + ": placed on 'srun --jobid=" + job +
                               " --overlap --nodes=1 --ntasks=1 --nodelist=node" + std::to_string(node);
    EXPECT_NE(r.stderr_text.find(placed), std::string::npos) << placed << "\n" << r.stderr_text;
    EXPECT_TRUE(std::regex_search(r.stderr_text, std::regex("clone " + std::to_string(node) +
                                                           " on 'srun [^']*' stopped \\(.*\\): fetched [0-9]+ of 131072 pages")))
        << r.stderr_text;
  }
  EXPECT_NE(r.stderr_text.find("every clone ended: releasing Slurm allocation " + job), std::string::npos) << r.stderr_text;
  EXPECT_EQ(queue(), "") << "the allocation outlived its clones";
}

// kill -9 of sfd while its clones run on Slurm nodes, and while its request waits in the
// queue: the allocation or request is cancelled (the watchdog) and nothing of the job is left
// on any node (checked by TearDown: no process of the job, QEMU and the members included, and
// an empty queue).
TEST_P(SlurmJobs, KillNineOfSfdEndsTheAllocationAndTheClones) {
  std::vector<std::string> argv{"env", "--chdir=" + work_, bin("sfd"), "run", "-v", "--allocator", "slurm",
                                "--remote-iface", "eth0", "--mem", "512M", "--"};
  // The command runs as root inside the VM, whoever runs sfd.
  for (auto& w : words(bin("mpirun-sf") + " --allow-run-as-root --clones 2 -np 2 sleep 600")) argv.push_back(w);
  RunningCommand run(on_login_node(argv), options(300s));
  // --clones 2: node 0 (the master) and one clone, on a Slurm node.
  ASSERT_TRUE(run.wait_for_error_output("cloned into 1 clone(s)", 240s)) << run.stderr_so_far();
  std::size_t qemus = 0;  // the master's and the clone's (on node1)
  for (const auto& p : sf::test::processes_with_environment(kMarker, marker_)) qemus += p.name.rfind("qemu", 0) == 0;
  EXPECT_EQ(qemus, 2u) << sf::test::describe(sf::test::processes_with_environment(kMarker, marker_));
  EXPECT_NE(queue().find(" R "), std::string::npos) << queue();
  pid_t sfd = -1;
  for (const auto& p : job_processes("sfd"))
    if (p.command_line.find("--allocator") != std::string::npos) sfd = p.pid;
  ASSERT_GT(sfd, 0) << sf::test::describe(job_processes("sfd"));
  ASSERT_EQ(kill(sfd, SIGKILL), 0);
  run.wait(60s);
  std::string q;
  for (int i = 0; i < 150 && !(q = queue()).empty(); ++i) std::this_thread::sleep_for(100ms);
  EXPECT_EQ(q, "") << "the allocation outlived sfd";

  // Again while the request waits in the queue behind a job that holds every node: salloc's
  // queue lines reach the user, and the request does not outlive sfd.
  const std::string holder_name = hold_every_node();
  RunningCommand waiting(on_login_node({"env", "--chdir=" + work_, bin("sfd"), "run", "--allocator", "slurm",
                                        "--remote-iface", "eth0", "--mem", "512M", "--", bin("sf_sum"), "2", "1000"}),
                         options(300s));
  ASSERT_TRUE(waiting.wait_for_error_output("queued and waiting for resources", 240s)) << waiting.stderr_so_far();
  EXPECT_NE(queue().find("sfd."), std::string::npos) << queue();
  sfd = -1;
  for (const auto& p : job_processes("sfd"))
    if (p.command_line.find("--allocator") != std::string::npos) sfd = p.pid;
  ASSERT_GT(sfd, 0) << sf::test::describe(job_processes("sfd"));
  ASSERT_EQ(kill(sfd, SIGKILL), 0);
  waiting.wait(60s);
  expect_request_gone("sfd.", holder_name);
}

// A partition Slurm does not know: the program's ticket request fails with Slurm's reason,
// nothing is allocated; and option mistakes are named before anything boots.
TEST_P(SlurmJobs, SfdNamesAnUnknownPartitionAndOptionMistakes) {
  CommandResult r = sf::test::run_command(
      on_login_node({"env", "--chdir=" + work_, bin("sfd"), "run", "--allocator", "slurm", "--partition", "nosuch", "--remote-iface", "eth0", "--mem",
                     "512M", "--", bin("sf_sum"), "2", "1000"}),
      options(300s));
  EXPECT_FALSE(r.exited_with(0)) << r.describe();
  EXPECT_NE(r.stderr_text.find("Slurm did not grant 2 node(s)"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("invalid partition"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(queue(), "");
  const std::vector<std::pair<std::vector<std::string>, std::string>> mistakes = {
      {{"--allocator", "slurm", "--", "true"}, "--allocator slurm needs --remote-iface"},
      {{"--allocator", "ege", "--", "true"}, "--allocator must be local or slurm"},
      {{"--partition", "debug", "--", "true"}, "add --allocator slurm"},
      {{"--allocator", "slurm", "--remote", "ssh x", "--remote-iface", "eth0", "--", "true"}, "leave --remote out"},
  };
  for (const auto& [args, message] : mistakes) {
    std::vector<std::string> argv{"env", "--chdir=" + work_, bin("sfd"), "run"};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult m = sf::test::run_command(on_login_node(argv), options());
    EXPECT_TRUE(m.exited_with(2)) << m.describe();
    EXPECT_NE(m.stderr_text.find(message), std::string::npos) << message << "\n" << m.stderr_text;
  }
}

INSTANTIATE_TEST_SUITE_P(As, SlurmJobs, ::testing::Values(Who::root, Who::ordinary_user), who_name);

}  // namespace
