// The example programs under Debian's own `mpirun`: checks that every example works and
// records the reference behaviour (exit codes and messages, see docs/examples.md) that the
// mpirun-sf end-to-end tests compare against. After every run no process carrying the run's
// environment marker may be left.
#include <gtest/gtest.h>
#include <signal.h>

#include <cstdint>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "program_output.hpp"
#include "run_command.hpp"

namespace {

using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;

constexpr const char* kMarkerName = "SFT_EXAMPLES_MARKER";

std::string example(const std::string& name) { return sf::test::build_path("examples/" + name); }

class ExamplesUnderMpirun : public ::testing::Test {
 protected:
  void SetUp() override {
    if (sf::test::run_command({"mpirun", "--version"}, {}).exit_code != 0)
      GTEST_SKIP() << "Debian's mpirun is not installed (scripts/setup installs openmpi-bin)";
  }

  CommandOptions options() const {
    CommandOptions o;
    o.timeout = 60s;
    o.environment = {std::string(kMarkerName) + "=" + marker_,
                     // Containers often forbid the cross-memory attach that vader would use.
                     "OMPI_MCA_btl_vader_single_copy_mechanism=none",
                     "OMPI_MCA_rmaps_base_oversubscribe=1"};
    return o;
  }

  std::vector<std::string> mpirun(std::vector<std::string> arguments) const {
    std::vector<std::string> argv = {"mpirun", "--oversubscribe", "--allow-run-as-root"};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    return argv;
  }

  CommandResult run(std::vector<std::string> arguments, CommandOptions o) const {
    return sf::test::run_command(mpirun(std::move(arguments)), o);
  }
  CommandResult run(std::vector<std::string> arguments) const { return run(std::move(arguments), options()); }

  void TearDown() override {
    auto left = sf::test::wait_for_no_processes(
        [&] { return sf::test::processes_with_environment(kMarkerName, marker_); }, 10s);
    EXPECT_TRUE(left.empty()) << "processes left behind:\n" << sf::test::describe(left);
  }

  std::string marker_ = sf::test::unique_marker();
};

using sf::test::fields_of;
using sf::test::lines_of;

// All probe lines, keyed by rank.
std::map<int, std::map<std::string, std::string>> probe_lines(const std::string& out) {
  std::map<int, std::map<std::string, std::string>> ranks;
  for (const auto& line : lines_of(out)) {
    auto fields = fields_of(line);
    if (fields.count("rank") != 0) ranks[std::stoi(fields["rank"])] = fields;
  }
  return ranks;
}

TEST_F(ExamplesUnderMpirun, HelloPrintsOneLinePerRank) {
  auto r = run({"-np", "4", example("hello")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  const std::regex shape(R"(Hello from rank (\d+) of (\d+) on (\S+) \(pid (\d+)\))");
  std::set<int> ranks;
  for (const auto& line : lines_of(r.stdout_text)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, shape)) << "unexpected line: " << line;
    EXPECT_EQ(m[2], "4");
    ranks.insert(std::stoi(m[1]));
  }
  EXPECT_EQ(ranks, (std::set<int>{0, 1, 2, 3})) << r.describe();
}

TEST_F(ExamplesUnderMpirun, HelloSleepsWhenAskedAndRejectsBadArguments) {
  auto slept = run({"-np", "2", example("hello"), "--sleep", "0.2"});
  EXPECT_TRUE(slept.exited_with(0)) << slept.describe();
  EXPECT_EQ(lines_of(slept.stdout_text).size(), 2u) << slept.describe();

  auto bad = run({"-np", "2", example("hello"), "--bogus"});
  EXPECT_TRUE(bad.exited_with(2)) << bad.describe();
  EXPECT_NE(bad.stderr_text.find("hello: usage:"), std::string::npos) << bad.describe();
}

TEST_F(ExamplesUnderMpirun, RingPassesTheTokenAroundEveryRank) {
  auto r = run({"-np", "4", example("ring"), "5"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(r.stdout_text, "ring: 4 ranks, 5 laps, token = 50 (expected 50) OK\n");
}

TEST_F(ExamplesUnderMpirun, PiAgreesOnEveryRankAndIsAccurate) {
  auto r = run({"-np", "4", example("pi"), "1000000"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.stdout_text, m,
                                std::regex(R"(^pi = (3\.14159265\d+) error = (\S+) \(1000000 intervals, 4 ranks\)\n$)")))
      << r.describe();
  EXPECT_LT(std::stod(m[2]), 1e-9);
}

// The hit and checksum lines of a seqsearch run (the time line varies).
std::string search_result(const std::string& out) {
  std::string result;
  for (const auto& line : lines_of(out))
    if (line.rfind("hit ", 0) == 0 || line.rfind("checksum=", 0) == 0) result += line + "\n";
  return result;
}

TEST_F(ExamplesUnderMpirun, SeqsearchFindsTheSameHitsOnAnyNumberOfRanks) {
  const std::vector<std::string> args = {example("seqsearch"), "--db-size", "20000", "--queries", "13"};
  auto one = run([&] { std::vector<std::string> a = {"-np", "1"}; a.insert(a.end(), args.begin(), args.end()); return a; }());
  ASSERT_TRUE(one.exited_with(0)) << one.describe();
  const std::string expected = search_result(one.stdout_text);
  ASSERT_EQ(lines_of(expected).size(), 14u) << one.describe();  // 13 hits + checksum
  // Queries 0, 2, 4, ... are mutated copies of database stretches: they must score high
  // (64 bases, ~10% substitutions: about 58 matches * 2 - 6 * 3).
  std::smatch best;
  ASSERT_TRUE(std::regex_search(expected, best, std::regex(R"(best=(\d+))")));
  EXPECT_GE(std::stoi(best[1]), 80);
  EXPECT_NE(one.stdout_text.find("seqsearch: 13 queries x 64 bp against 20000 bp, seed 2009, 1 ranks"),
            std::string::npos);

  for (const char* ranks : {"3", "4"}) {
    std::vector<std::string> a = {"-np", ranks};
    a.insert(a.end(), args.begin(), args.end());
    auto r = run(a);
    ASSERT_TRUE(r.exited_with(0)) << r.describe();
    EXPECT_EQ(search_result(r.stdout_text), expected) << "with " << ranks << " ranks";
  }
}

TEST_F(ExamplesUnderMpirun, AbortExitsWithTheAbortCodeAndKillsTheOtherRanks) {
  auto r = run({"-np", "4", example("abort"), "1", "7"});
  EXPECT_TRUE(r.exited_with(7)) << r.describe();
  EXPECT_NE(r.stdout_text.find("abort: rank 1 calling MPI_Abort with code 7"), std::string::npos);
  // The MPI_ABORT box is printed by the rank but forwarded through ORTE's show_help relay;
  // Debian's mpirun 4.1.4 sometimes loses it there (seen twice in CI, with an ORTE_ERROR_LOG
  // from show_help.c in place of the box: "Data unpack would read past end of buffer" and
  // "Out of resource"). That is the peer's fault and not behaviour mpirun-sf must copy, so
  // only a failure reported by that relay excuses the missing box.
  const bool orte_lost_the_box =
      std::regex_search(r.stderr_text, std::regex(R"(ORTE_ERROR_LOG: [^\n]* in file [^\n]*orte/util/show_help\.c)"));
  if (!orte_lost_the_box) {
    EXPECT_NE(r.stderr_text.find("MPI_ABORT was invoked on rank 1 in communicator MPI_COMM_WORLD\n"
                                 "with errorcode 7."),
              std::string::npos)
        << r.describe();
  }
}

TEST_F(ExamplesUnderMpirun, AbortFromRankZeroWithAnotherCode) {
  auto r = run({"-np", "3", example("abort"), "0", "42"});
  EXPECT_TRUE(r.exited_with(42)) << r.describe();
}

TEST_F(ExamplesUnderMpirun, NonZeroExitOfOneRankIsTheJobsStatus) {
  auto r = run({"-np", "4", example("exitcode"), "2", "5"});
  EXPECT_TRUE(r.exited_with(5)) << r.describe();
  EXPECT_NE(r.stderr_text.find("mpirun detected that one or more processes exited with non-zero status"),
            std::string::npos)
      << r.describe();
  EXPECT_TRUE(std::regex_search(r.stderr_text, std::regex(R"(Process name: \[\[\d+,1\],2\]\n\s+Exit code:\s+5)")))
      << r.describe();
}

TEST_F(ExamplesUnderMpirun, ACrashingRankKillsTheJobWithSignalStatus) {
  auto r = run({"-np", "4", example("crash"), "1"});
  // mpirun reports a rank killed by signal S as exit status 128 + S.
  EXPECT_TRUE(r.exited_with(128 + SIGSEGV)) << r.describe();
  EXPECT_NE(r.stderr_text.find("mpirun noticed that process rank 1 with PID"), std::string::npos) << r.describe();
  EXPECT_NE(r.stderr_text.find("exited on signal 11 (Segmentation fault)"), std::string::npos) << r.describe();
}

TEST_F(ExamplesUnderMpirun, ProbeReportsRankSizeEnvironmentAndWorkingDirectory) {
  auto r = run({"-np", "4", "--wdir", "/tmp", "-x", "SFT_PROBE_VALUE=a=b c", example("probe"),
                "SFT_PROBE_VALUE", "SFT_PROBE_NOT_SET"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto ranks = probe_lines(r.stdout_text);
  ASSERT_EQ(ranks.size(), 4u) << r.describe();
  for (auto& [rank, fields] : ranks) {
    EXPECT_EQ(fields["size"], "4");
    EXPECT_EQ(fields["appnum"], "0");
    EXPECT_EQ(fields["cwd"], "/tmp");
    EXPECT_EQ(fields["SFT_PROBE_VALUE"], "a=b%20c");  // values are percent-encoded
    EXPECT_EQ(fields["SFT_PROBE_NOT_SET"], "(unset)");
    EXPECT_FALSE(fields["host"].empty());
    EXPECT_FALSE(fields["universe_size"].empty());
  }
}

TEST_F(ExamplesUnderMpirun, ProbeSeesAppNumbersOfAnMpmdJob) {
  auto r = run({"-np", "1", example("probe"), ":", "-np", "2", example("probe")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto ranks = probe_lines(r.stdout_text);
  ASSERT_EQ(ranks.size(), 3u) << r.describe();
  EXPECT_EQ(ranks[0]["appnum"], "0");
  EXPECT_EQ(ranks[1]["appnum"], "1");
  EXPECT_EQ(ranks[2]["appnum"], "1");
  for (auto& [rank, fields] : ranks) EXPECT_EQ(fields["size"], "3");
}

TEST_F(ExamplesUnderMpirun, ProbeStdinReachesRankZero) {
  std::string data;
  for (int i = 0; i < 100000; ++i) data.push_back(static_cast<char>('a' + (i * 7) % 26));
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));

  auto o = options();
  o.stdin_data = data;
  auto r = run({"-np", "2", example("probe"), "--stdin"}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto ranks = probe_lines(r.stdout_text);
  ASSERT_EQ(ranks.size(), 2u) << r.describe();
  EXPECT_EQ(ranks[0]["stdin_bytes"], "100000");
  EXPECT_EQ(ranks[0]["stdin_fnv1a"], hex);
  EXPECT_EQ(ranks[1].count("stdin_bytes"), 0u);
}

TEST_F(ExamplesUnderMpirun, ProbePromptWithoutNewlineStillAppears) {
  auto r = run({"-np", "1", example("probe"), "--partial"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  ASSERT_GE(r.stdout_text.size(), 7u);
  EXPECT_EQ(r.stdout_text.substr(r.stdout_text.size() - 7), "probe> ") << r.describe();

  // With more ranks mpirun forwards the prompt at once, so another rank's line may follow it
  // on the same output line: only its presence is the reference.
  auto several = run({"-np", "3", example("probe"), "--partial"});
  ASSERT_TRUE(several.exited_with(0)) << several.describe();
  EXPECT_NE(several.stdout_text.find("probe> "), std::string::npos) << several.describe();
}

TEST_F(ExamplesUnderMpirun, ProbePromptAppearsBeforeStdinIsClosed) {
  auto o = options();
  o.keep_stdin_open = true;
  sf::test::RunningCommand command(mpirun({"-np", "1", example("probe"), "--partial", "--stdin"}), o);
  ASSERT_TRUE(command.started()) << command.start_error();
  ASSERT_TRUE(command.wait_for_output("probe> ", 30s)) << command.stdout_so_far();
  EXPECT_TRUE(command.write_stdin("xyz"));
  command.close_stdin();
  auto r = command.wait(30s);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_NE(r.stdout_text.find("probe> \nrank=0 "), std::string::npos) << r.describe();
  EXPECT_NE(r.stdout_text.find(" stdin_bytes=3 "), std::string::npos) << r.describe();
}

TEST_F(ExamplesUnderMpirun, ProbeWritesToStderrWhenAsked) {
  auto r = run({"-np", "3", example("probe"), "--stderr"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  for (int rank = 0; rank < 3; ++rank)
    EXPECT_NE(r.stderr_text.find("probe: stderr from rank " + std::to_string(rank) + "\n"), std::string::npos)
        << r.describe();
}

TEST_F(ExamplesUnderMpirun, Mpi4pyAllreduceSumsOverAllRanks) {
  if (sf::test::run_command({"/usr/bin/python3", "-c", "import mpi4py"}).exit_code != 0)
    GTEST_SKIP() << "Debian's python3-mpi4py is not installed (scripts/setup installs it)";
  auto r = run({"-np", "4", "/usr/bin/python3", sf::test::source_path("examples/mpi4py/allreduce.py")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  for (int rank = 0; rank < 4; ++rank)
    EXPECT_NE(r.stdout_text.find("mpi4py: rank=" + std::to_string(rank) + " size=4 sum=10 expected=10 OK\n"),
              std::string::npos)
        << r.describe();
}

// Launcher behaviour that is not about one example, recorded for mpirun-sf to match.

TEST_F(ExamplesUnderMpirun, TimeoutKillsTheJobAndSaysSo) {
  auto r = run({"--timeout", "1", "-np", "2", example("hello"), "--sleep", "60"});
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_NE(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.stderr_text.find("The user-provided time limit for job execution has been reached"),
            std::string::npos)
      << r.describe();
  RecordProperty("mpirun_timeout_exit_code", r.exit_code);  // 110 with Open MPI 4.1.4
}

TEST_F(ExamplesUnderMpirun, SigtermToTheLauncherEndsTheJob) {
  sf::test::RunningCommand command(mpirun({"-np", "2", example("hello"), "--sleep", "60"}), options());
  ASSERT_TRUE(command.started()) << command.start_error();
  // Both ranks are up once both have printed.
  ASSERT_TRUE(command.wait_for_output("Hello from rank 0 of 2", 30s)) << command.stdout_so_far();
  ASSERT_TRUE(command.wait_for_output("Hello from rank 1 of 2", 30s)) << command.stdout_so_far();
  ASSERT_TRUE(command.send_signal(SIGTERM));
  auto r = command.wait(30s);
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_TRUE(r.exited_with(1)) << r.describe();
}

TEST_F(ExamplesUnderMpirun, UnknownOptionIsRejected) {
  auto r = run({"--no-such-option", "-np", "2", example("hello")});
  EXPECT_TRUE(r.exited_with(1)) << r.describe();
  EXPECT_NE(r.stderr_text.find("unknown option \"--no-such-option\""), std::string::npos) << r.describe();
}

TEST_F(ExamplesUnderMpirun, MissingProgramFailsToStart) {
  auto r = run({"-np", "2", example("no-such-program")});
  EXPECT_NE(r.exit_code, 0) << r.describe();
  EXPECT_NE(r.stderr_text.find("could not access\nor execute an executable"), std::string::npos) << r.describe();
}

}  // namespace
