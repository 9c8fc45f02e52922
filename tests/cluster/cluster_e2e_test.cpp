// mpirun-sf on an impromptu cluster of sandbox clones, end to end: ranks report different
// hostnames, collectives and point-to-point cross clones, failures anywhere end the whole
// cluster with mpirun's exit status, and nothing is left behind: no process carrying the
// test's environment marker, no bridge or veth of the cluster, no session directory.
//
// Every test runs twice: as root, and as an ordinary user (sf-tester-a, created by
// scripts/setup) through setpriv, for whom the launcher builds the cluster inside a user
// namespace of its own. The ordinary user runs copies of the binaries in a world-readable
// directory, so the tests do not depend on where the build tree is or who may read it.
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <regex>
#include <set>
#include <sstream>

#include "run_command.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;

constexpr const char* kMarker = "SFT_CLUSTER_MARKER";
constexpr const char* kUser = "sf-tester-a";
constexpr const char* kOtherUser = "sf-tester-b";
const char* const kExamples[] = {"hello", "ring", "pi", "abort", "crash", "probe", "seqsearch", "pubsub", "semantics"};

std::string links_named(const std::string& prefix) {
  CommandResult r = sf::test::run_command({"ip", "-br", "link"}, {});
  std::istringstream in(r.stdout_text);
  std::string line, out;
  while (std::getline(in, line))
    if (line.rfind(prefix, 0) == 0) out += line + "\n";
  return out;
}

struct Account {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string home;
};
std::optional<Account> account(const char* name) {
  const passwd* pw = getpwnam(name);
  if (!pw) return std::nullopt;
  return Account{name, pw->pw_uid, pw->pw_gid, pw->pw_dir};
}

// mpirun-sf and the examples, copied once per test program into a directory every user can
// read; removed at the end.
class UserReachableCopies : public ::testing::Environment {
 public:
  static const std::string& dir() {
    static const std::string none;
    if (!dir_) {
      dir_ = std::make_unique<sf::test::TempDir>("cluster", "/var/tmp");
      if (!dir_->ok()) return none;
      chmod(dir_->path().c_str(), 0755);
      fs::copy_file(sf::test::build_path("bin/mpirun-sf"), *dir_ / "mpirun-sf");
      for (const char* name : kExamples)
        fs::copy_file(sf::test::build_path(std::string("examples/") + name), *dir_ / name);
    }
    return dir_->ok() ? dir_->path() : none;
  }
  void TearDown() override { dir_.reset(); }

 private:
  static inline std::unique_ptr<sf::test::TempDir> dir_;
};
[[maybe_unused]] auto* const g_copies = ::testing::AddGlobalTestEnvironment(new UserReachableCopies);

enum class Who { root, ordinary_user };
void PrintTo(Who who, std::ostream* os) { *os << (who == Who::root ? "root" : "an ordinary user"); }
std::string who_name(const ::testing::TestParamInfo<Who>& info) {
  return info.param == Who::root ? "Root" : "OrdinaryUser";
}

class ClusterE2E : public ::testing::TestWithParam<Who> {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "these tests start the cluster as root and as other users: run them as root";
    if (as_user()) {
      auto a = account(kUser);
      ASSERT_TRUE(a) << "the ordinary test user " << kUser << " does not exist: run scripts/setup as root";
      user_ = *a;
      ASSERT_FALSE(UserReachableCopies::dir().empty()) << "cannot copy the binaries to /var/tmp";
      // A working directory of the user's own (not under /tmp: every clone overlays its own).
      work_dir_ = std::make_unique<sf::test::TempDir>("work", "/var/tmp");
      ASSERT_TRUE(work_dir_->ok()) << work_dir_->error();
      work_ = work_dir_->path();
      ASSERT_EQ(chown(work_.c_str(), user_.uid, user_.gid), 0);
    }
    marker_ = sf::test::unique_marker();
    shm_before_ = shm_entries();
  }
  bool as_user() const { return GetParam() == Who::ordinary_user; }
  std::string mpirun_sf() const {
    return as_user() ? UserReachableCopies::dir() + "/mpirun-sf" : sf::test::build_path("bin/mpirun-sf");
  }
  std::string example(const std::string& name) const {
    return as_user() ? UserReachableCopies::dir() + "/" + name : sf::test::build_path("examples/" + name);
  }
  // The per-user directory of cluster locks and state (see clone-core's run_dir()).
  std::string run_dir() const { return as_user() ? "/tmp/snowflock-" + std::to_string(user_.uid) : "/run/snowflock"; }
  static std::set<std::string> shm_entries() {
    std::set<std::string> out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/dev/shm", ec))
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
  std::string state_files() const {
    std::string out;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(run_dir(), ec))
      if (e.path().extension() == ".json") out += e.path().string() + "\n";
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
    if (as_user()) {
      // No state file stays; nothing of an ordinary user's cluster ever reaches the host's
      // network namespace (checked below by name too).
      EXPECT_EQ(state_files(), "");
    }
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
  CommandOptions options(std::chrono::milliseconds timeout = 120s) const {
    CommandOptions o;
    o.timeout = timeout;
    o.environment = {std::string(kMarker) + "=" + marker_, "SF_KILL_GRACE_MS=500"};
    if (as_user()) account_environment(o, user_, work_);
    return o;
  }
  static void account_environment(CommandOptions& o, const Account& a, const std::string& work) {
    o.environment.push_back("HOME=" + a.home);
    o.environment.push_back("USER=" + a.name);
    o.environment.push_back("LOGNAME=" + a.name);
    o.unset_environment = {"XDG_RUNTIME_DIR", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"};
    o.working_directory = work;
  }
  // argv run as the test's user: root as is, the ordinary user through setpriv.
  std::vector<std::string> as_who(std::vector<std::string> argv) const {
    return as_user() ? as_account(user_, std::move(argv)) : argv;
  }
  static std::vector<std::string> as_account(const Account& a, std::vector<std::string> argv) {
    std::vector<std::string> v{"setpriv", "--reuid=" + std::to_string(a.uid), "--regid=" + std::to_string(a.gid),
                               "--clear-groups", "--"};
    v.insert(v.end(), argv.begin(), argv.end());
    return v;
  }
  std::vector<std::string> mpirun(std::vector<std::string> args) const {
    std::vector<std::string> v{mpirun_sf()};
    if (!as_user()) v.push_back("--allow-run-as-root");
    v.insert(v.end(), args.begin(), args.end());
    return as_who(v);
  }
  std::vector<std::string> cmd(std::vector<std::string> args) const {
    args.insert(args.begin(), "--display-map");
    return mpirun(args);
  }
  // Remembers the cluster's bridge from --display-map, for the leftover check.
  void note_bridge(const std::string& out) {
    std::smatch m;
    if (std::regex_search(out, m, std::regex("Interface: (sfbr[0-9]+)"))) bridge_ = m[1];
  }
  std::unique_ptr<sf::test::TempDir> work_dir_;  // as_user(): the user's working directory
  std::string marker_, bridge_, work_;
  Account user_;
  std::set<std::string> shm_before_;
};

INSTANTIATE_TEST_SUITE_P(As, ClusterE2E, ::testing::Values(Who::root, Who::ordinary_user), who_name);

TEST_P(ClusterE2E, HelloOnFourMachinesReportsFourHostnames) {
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

TEST_P(ClusterE2E, AllreduceAndRingCrossClones) {
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
TEST_P(ClusterE2E, RanksOnClonesGetATerminalNoStrayDescriptorsAndTheOversubscription) {
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

TEST_P(ClusterE2E, OutputPrintedOnACloneBeforeAnAbortOrACrashIsNotLost) {
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

TEST_P(ClusterE2E, SearchGivesTheSameAnswerOnClonesAsOnOneMachine) {
  auto checksum = [](const std::string& out) {
    std::smatch m;
    return std::regex_search(out, m, std::regex("checksum=([0-9a-f]+)")) ? m[1].str() : "";
  };
  CommandResult one = sf::test::run_command(mpirun({"-np", "1", example("seqsearch")}), options());
  ASSERT_TRUE(one.exited_with(0)) << one.describe();
  CommandResult many = sf::test::run_command(cmd({"-np", "8", "--clones", "4", example("seqsearch")}), options());
  note_bridge(many.stdout_text);
  ASSERT_TRUE(many.exited_with(0)) << many.describe();
  EXPECT_FALSE(checksum(one.stdout_text).empty());
  EXPECT_EQ(checksum(one.stdout_text), checksum(many.stdout_text));
}

TEST_P(ClusterE2E, NameServiceWorksOnOneMachineAndAcrossClones) {
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

TEST_P(ClusterE2E, AbortInACloneEndsTheClusterWithTheAbortCode) {
  // Rank 5 lives on clone 2; the others block and must be killed on every machine.
  CommandResult r = sf::test::run_command(cmd({"-np", "8", "--clones", "4", example("abort"), "5", "9"}), options());
  note_bridge(r.stdout_text);
  EXPECT_TRUE(r.exited_with(9)) << r.describe();
  EXPECT_NE(r.stderr_text.find("MPI_ABORT was invoked on rank 5"), std::string::npos) << r.stderr_text;
}

TEST_P(ClusterE2E, CrashInACloneEndsTheClusterWith128PlusSignal) {
  CommandResult r = sf::test::run_command(cmd({"-np", "4", "--clones", "2", example("crash"), "3"}), options());
  note_bridge(r.stdout_text);
  EXPECT_TRUE(r.exited_with(139)) << r.describe();
  EXPECT_NE(r.stderr_text.find("rank 3"), std::string::npos) << r.stderr_text;
  EXPECT_NE(r.stderr_text.find("signal 11"), std::string::npos) << r.stderr_text;
}

TEST_P(ClusterE2E, StdinReachesRankZeroAndOutputIsTagged) {
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

TEST_P(ClusterE2E, SigtermToTheLauncherEndsEveryClone) {
  sf::test::RunningCommand run(cmd({"-np", "4", "--clones", "2", example("hello"), "--sleep", "60"}), options());
  ASSERT_TRUE(run.wait_for_output("Hello from rank 3", 60s)) << run.stdout_so_far() << run.stderr_so_far();
  note_bridge(run.stdout_so_far());
  run.send_signal(SIGTERM);
  CommandResult r = run.wait(30s);
  EXPECT_TRUE(r.exited_with(1)) << r.describe();
}

TEST_P(ClusterE2E, TimeoutEndsEveryClone) {
  CommandResult r = sf::test::run_command(
      cmd({"-np", "4", "--clones", "2", "--timeout", "3", example("hello"), "--sleep", "60"}), options());
  note_bridge(r.stdout_text);
  EXPECT_TRUE(r.exited_with(110)) << r.describe();
  EXPECT_NE(r.stderr_text.find("time limit"), std::string::npos) << r.stderr_text;
}

TEST_P(ClusterE2E, KilledLauncherTakesItsClonesAlongAndCleanupRemovesTheRest) {
  sf::test::RunningCommand run(cmd({"-np", "4", "--clones", "2", example("hello"), "--sleep", "60"}), options());
  ASSERT_TRUE(run.wait_for_output("Hello from rank 3", 60s)) << run.stdout_so_far() << run.stderr_so_far();
  note_bridge(run.stdout_so_far());
  run.send_signal(SIGKILL);
  run.wait(30s);
  // The clones die with their parent (PID-namespace init with a parent-death signal); the
  // ranks on node 0 die with it too (parent-death signal). What stays is the cluster's state
  // file (and, as root, its bridge in this network namespace; an ordinary user's links went
  // with the user's namespace): --cleanup must find and remove it.
  ASSERT_NE(state_files(), "") << "the killed launcher left nothing for --cleanup to remove";
  if (!as_user()) {
    EXPECT_NE(links_named(bridge_ + " "), "") << "the killed launcher's bridge is gone already";
  }
  CommandResult c = sf::test::run_command(as_who({mpirun_sf(), "--cleanup"}), options());
  EXPECT_TRUE(c.exited_with(0)) << c.describe();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(c.stdout_text, m, std::regex(R"(([0-9]+) stale cluster\(s\))"))) << c.describe();
  EXPECT_GE(std::stoi(m[1]), 1) << c.describe();
  EXPECT_EQ(state_files(), "") << c.describe();
  if (!as_user()) {
    EXPECT_EQ(links_named(bridge_ + " "), "") << c.describe();
  }
}

TEST_P(ClusterE2E, BadClusterRequestIsAClearError) {
  CommandResult r = sf::test::run_command(
      mpirun({"-np", "4", "--clones", "2", "--driver", "none", example("hello")}), options());
  EXPECT_TRUE(r.exited_with(1)) << r.describe();
  EXPECT_NE(r.stderr_text.find("--clones 2 needs a clone driver"), std::string::npos) << r.stderr_text;
  EXPECT_EQ(r.stderr_text.find('\n'), r.stderr_text.size() - 1) << "one line: " << r.stderr_text;
}

// What only concerns ordinary users: who the ranks are, isolation between users, and the
// refusal where user namespaces are disabled.
class OrdinaryUser : public ClusterE2E {};
INSTANTIATE_TEST_SUITE_P(As, OrdinaryUser, ::testing::Values(Who::ordinary_user), who_name);

TEST_P(OrdinaryUser, RanksAreTheUserWithoutCapabilitiesAndWhatTheyWriteIsTheUsers) {
  CommandResult r = sf::test::run_command(
      cmd({"-np", "4", "--clones", "2", "sh", "-c",
           "echo rank=$OMPI_COMM_WORLD_RANK uid=$(id -u) gid=$(id -g) $(grep CapEff /proc/self/status | tr -d '\\t');"
           " echo data > out.$OMPI_COMM_WORLD_RANK"}),
      options());
  note_bridge(r.stdout_text);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  for (int rank = 0; rank < 4; ++rank) {
    std::string line = "rank=" + std::to_string(rank) + " uid=" + std::to_string(user_.uid) +
                       " gid=" + std::to_string(user_.gid) + " CapEff:0000000000000000";
    EXPECT_NE(r.stdout_text.find(line), std::string::npos) << line << "\n" << r.describe();
    struct stat st {};
    std::string file = work_ + "/out." + std::to_string(rank);
    ASSERT_EQ(stat(file.c_str(), &st), 0) << file;
    EXPECT_EQ(st.st_uid, user_.uid) << file;
    EXPECT_EQ(st.st_gid, user_.gid) << file;
  }
}

TEST_P(OrdinaryUser, TwoUsersCannotSeeReachKillOrCleanEachOthersClusters) {
  auto other = account(kOtherUser);
  ASSERT_TRUE(other) << "the ordinary test user " << kOtherUser << " does not exist: run scripts/setup as root";
  const sf::test::TempDir other_dir("work", "/var/tmp");
  ASSERT_TRUE(other_dir.ok()) << other_dir.error();
  const std::string other_work = other_dir.path();
  ASSERT_EQ(chown(other_work.c_str(), other->uid, other->gid), 0);
  CommandOptions other_options = options();
  account_environment(other_options, *other, other_work);

  // The first user's cluster runs for a few seconds.
  sf::test::RunningCommand first(cmd({"-np", "4", "--clones", "2", example("hello"), "--sleep", "4"}), options());
  ASSERT_TRUE(first.wait_for_output("Hello from rank 3", 60s)) << first.stdout_so_far() << first.stderr_so_far();
  note_bridge(first.stdout_so_far());
  std::smatch m;
  std::string map = first.stdout_so_far();
  ASSERT_TRUE(std::regex_search(map, m, std::regex("Address: ([0-9.]+)"))) << map;
  const std::string node0_address = m[1];

  // Its network is not the host's: no address of it there, so nobody outside reaches it.
  CommandResult addresses = sf::test::run_command({"ip", "-br", "address"}, {});
  EXPECT_EQ(addresses.stdout_text.find(node0_address + "/"), std::string::npos) << addresses.stdout_text;
  // The other user cannot list its state, kill its launcher, or clean it up ...
  CommandResult list = sf::test::run_command(as_account(*other, {"ls", run_dir()}), other_options);
  EXPECT_FALSE(list.exited_with(0)) << list.describe();
  EXPECT_NE(list.stderr_text.find("Permission denied"), std::string::npos) << list.describe();
  CommandResult kill = sf::test::run_command(
      as_account(*other, {"kill", "-KILL", std::to_string(first.pid())}), other_options);
  EXPECT_FALSE(kill.exited_with(0)) << kill.describe();
  CommandResult cleanup = sf::test::run_command(as_account(*other, {mpirun_sf(), "--cleanup"}), other_options);
  EXPECT_TRUE(cleanup.exited_with(0)) << cleanup.describe();
  EXPECT_NE(cleanup.stdout_text.find("0 stale cluster(s), 0 link(s), 0 process(es)"), std::string::npos)
      << cleanup.describe();
  // ... and runs a cluster of its own on the same subnet at the same time.
  CommandResult second = sf::test::run_command(
      as_account(*other, {mpirun_sf(), "--display-map", "-np", "4", "--clones", "2", example("hello")}), other_options);
  EXPECT_TRUE(second.exited_with(0)) << second.describe();
  EXPECT_NE(second.stdout_text.find("Address: " + node0_address), std::string::npos) << second.stdout_text;

  // The first cluster was not disturbed: every rank finishes.
  CommandResult done = first.wait(60s);
  EXPECT_TRUE(done.exited_with(0)) << done.describe();
}

TEST_P(OrdinaryUser, DisabledUserNamespacesAreAClearErrorAndLeaveNothing) {
  // Simulated: inside a user namespace of the user's own whose user.max_user_namespaces is 0.
  // Its root has no privilege over the host's network namespace, so mpirun-sf needs a nested
  // user namespace to clone and must say why it cannot have one.
  std::vector<std::string> argv = as_who({"unshare", "--user", "--map-root-user", "--", "sh", "-c",
                                          "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\"",
                                          mpirun_sf(), "--allow-run-as-root", "-np", "4", "--clones", "2",
                                          example("hello")});
  CommandResult clones = sf::test::run_command(argv, options());
  EXPECT_TRUE(clones.exited_with(1)) << clones.describe();
  for (const char* text : {"user.max_user_namespaces is 0", "sysctl -w user.max_user_namespaces=",
                           "without --clones the job runs on this machine alone"})
    EXPECT_NE(clones.stderr_text.find(text), std::string::npos) << text << "\n" << clones.describe();
  EXPECT_EQ(clones.stdout_text, "");
  // Without --clones, more ranks than cores: refused with the reason and the fallback.
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  argv = as_who({"unshare", "--user", "--map-root-user", "--", "sh", "-c",
                 "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$0\" \"$@\"", mpirun_sf(),
                 "--allow-run-as-root", "-np", std::to_string(2 * cores), example("hello")});
  CommandResult np = sf::test::run_command(argv, options());
  EXPECT_TRUE(np.exited_with(1)) << np.describe();
  for (const char* text : {"user.max_user_namespaces is 0", "--oversubscribe"})
    EXPECT_NE(np.stderr_text.find(text), std::string::npos) << text << "\n" << np.describe();
}

}  // namespace
