// End-to-end tests of mpirun-sf: the real binary (${CMAKE_BINARY_DIR}/bin/mpirun-sf) running
// the real example MPI programs compiled with Debian's Open MPI, as a user would. Where the
// issue asks for "the same results and exit codes as mpirun", the test runs Debian's mpirun on
// the same program in the same test and compares.
//
// After every test: no process carrying the test's environment marker is left (the marker is
// inherited by the launcher and every rank, and by nothing else), and no session directory
// /tmp/mpirun-sf.<pid>.* or shared-memory directory /dev/shm/mpirun-sf.<pid>.* of a launcher
// the test started is left.
//
// The jobs stay on this machine (--oversubscribe or at most as many ranks as cores, or
// --driver none): cloning has its own tests. Deadlines are generous (other engineers compile
// on the same 2 cores); nothing here asserts a duration.
#include <glob.h>
#include <sched.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <iostream>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "program_output.hpp"
#include "run_command.hpp"

namespace {

using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;
using sf::test::RunningCommand;
namespace fs = std::filesystem;

constexpr const char* kMarkerName = "SFT_MPIRUN_SF_MARKER";
constexpr auto kDeadline = 90s;  // per command; a healthy run takes well under a second

std::string example(const std::string& name) { return sf::test::build_path("examples/" + name); }

using sf::test::fields_of;
using sf::test::lines_of;

// All probe lines, keyed by rank; `prefix` is stripped from each line first if present.
std::map<int, std::map<std::string, std::string>> probe_lines(const std::string& out) {
  std::map<int, std::map<std::string, std::string>> ranks;
  for (const auto& line : lines_of(out)) {
    auto pos = line.find("rank=");
    if (pos == std::string::npos) continue;
    auto fields = fields_of(line.substr(pos));
    ranks[std::stoi(fields["rank"])] = fields;
  }
  return ranks;
}

// The lines of `text`, sorted, with "pid=N" / "(pid N)" / "PID N" replaced: for comparing two
// launchers' output, which differ in process ids and line order only.
std::vector<std::string> normalized_lines(const std::string& text) {
  static const std::regex pid(R"(pid=\d+|\(pid \d+\)|PID \d+)");
  std::vector<std::string> out;
  for (const auto& line : lines_of(text)) out.push_back(std::regex_replace(line, pid, "PID"));
  std::sort(out.begin(), out.end());
  return out;
}

std::string fnv1a_hex(const std::string& data) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  for (unsigned char c : data) {
    hash ^= c;
    hash *= 0x100000001b3ULL;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  return hex;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Relative paths of the regular files under `dir`, sorted.
std::vector<std::string> files_under(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::recursive_directory_iterator();
       it.increment(ec))
    if (it->is_regular_file()) out.push_back(fs::relative(it->path(), dir).string());
  std::sort(out.begin(), out.end());
  return out;
}

int host_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return 1;
}

bool one_line(const std::string& text) {
  return !text.empty() && text.back() == '\n' && text.find('\n') == text.size() - 1;
}

class MpirunSf : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(SF_MPIRUN_SF)) GTEST_FAIL() << SF_MPIRUN_SF << " is not built";
    scratch_ = fs::temp_directory_path() / ("sft-mpirun-e2e-" + marker_);
    fs::create_directories(scratch_);
  }

  void TearDown() override {
    auto left = sf::test::wait_for_no_processes(
        [&] { return sf::test::processes_with_environment(kMarkerName, marker_); }, 15s);
    EXPECT_TRUE(left.empty()) << "processes left behind:\n" << sf::test::describe(left);
    // Session directories, and the shared-memory directories that hold Open MPI's segments
    // (ranks killed on abort, crash or timeout cannot remove their own).
    for (pid_t pid : launcher_pids_)
      for (const char* dir : {"/tmp", "/dev/shm"}) {
        std::string pattern = std::string(dir) + "/mpirun-sf." + std::to_string(pid) + ".*";
        glob_t g{};
        if (glob(pattern.c_str(), 0, nullptr, &g) == 0)
          ADD_FAILURE() << "directory left behind: " << g.gl_pathv[0];
        globfree(&g);
      }
    std::error_code ec;
    fs::remove_all(scratch_, ec);
  }

  CommandOptions options() const {
    CommandOptions o;
    o.timeout = kDeadline;
    o.environment = {std::string(kMarkerName) + "=" + marker_,
                     // Containers often forbid the cross-memory attach that vader would use;
                     // the reference runs of Debian's mpirun set the same.
                     "OMPI_MCA_btl_vader_single_copy_mechanism=none"};
    // So that a test that leaves MPIEXEC_TIMEOUT in our environment cannot change the others.
    o.unset_environment = {"MPIEXEC_TIMEOUT"};
    return o;
  }

  std::vector<std::string> sf(std::vector<std::string> arguments) const {
    std::vector<std::string> argv = {SF_MPIRUN_SF, "--allow-run-as-root"};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    return argv;
  }

  // Runs mpirun-sf with `arguments` (after --allow-run-as-root) and remembers its pid for the
  // session-directory check.
  CommandResult run_sf(std::vector<std::string> arguments, CommandOptions o) {
    return run_argv(sf(std::move(arguments)), std::move(o));
  }
  CommandResult run_sf(std::vector<std::string> arguments) { return run_sf(std::move(arguments), options()); }

  CommandResult run_argv(std::vector<std::string> argv, CommandOptions o) {
    RunningCommand command(std::move(argv), o);
    if (command.started()) launcher_pids_.push_back(command.pid());
    return command.wait(o.timeout);
  }

  // Debian's mpirun with the options of the reference tests (docs/examples.md).
  CommandResult run_mpirun(std::vector<std::string> arguments) {
    std::vector<std::string> argv = {"mpirun", "--oversubscribe", "--allow-run-as-root"};
    argv.insert(argv.end(), arguments.begin(), arguments.end());
    CommandOptions o = options();
    o.environment.push_back("OMPI_MCA_rmaps_base_oversubscribe=1");
    return sf::test::run_command(argv, o);
  }

  std::string marker_ = sf::test::unique_marker();
  fs::path scratch_;
  std::vector<pid_t> launcher_pids_;
};

// --- results ------------------------------------------------------------------------------

TEST_F(MpirunSf, HelloReportsEveryRankAndTheSize) {
  for (int np : {1, 2, 5}) {
    auto r = run_sf({"--oversubscribe", "-np", std::to_string(np), example("hello")});
    ASSERT_TRUE(r.exited_with(0)) << r.describe();
    EXPECT_EQ(r.stderr_text, "") << r.describe();
    const std::regex shape(R"(Hello from rank (\d+) of (\d+) on (\S+) \(pid (\d+)\))");
    std::set<int> ranks;
    for (const auto& line : lines_of(r.stdout_text)) {
      std::smatch m;
      ASSERT_TRUE(std::regex_match(line, m, shape)) << "unexpected line: " << line;
      EXPECT_EQ(m[2], std::to_string(np));
      ranks.insert(std::stoi(m[1]));
    }
    EXPECT_EQ(ranks.size(), static_cast<size_t>(np)) << r.describe();
    EXPECT_EQ(*ranks.rbegin(), np - 1);
  }
}

TEST_F(MpirunSf, HelloGivesTheSameLinesAsMpirun) {
  auto ours = run_sf({"--oversubscribe", "-np", "4", example("hello")});
  auto theirs = run_mpirun({"-np", "4", example("hello")});
  ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
  ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
  EXPECT_EQ(normalized_lines(ours.stdout_text), normalized_lines(theirs.stdout_text));
}

TEST_F(MpirunSf, PiByAllreduceIsTheSameAsUnderMpirun) {
  auto ours = run_sf({"--oversubscribe", "-np", "4", example("pi"), "1000000"});
  ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
  EXPECT_TRUE(std::regex_match(ours.stdout_text,
                               std::regex(R"(pi = 3\.14159265\d+ error = \S+ \(1000000 intervals, 4 ranks\)\n)")))
      << ours.describe();
  auto theirs = run_mpirun({"-np", "4", example("pi"), "1000000"});
  ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
  EXPECT_EQ(ours.stdout_text, theirs.stdout_text);  // bit-identical result, same text
}

TEST_F(MpirunSf, RingPassesTheTokenAroundEveryRank) {
  auto r = run_sf({"--oversubscribe", "-np", "4", example("ring"), "5"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(r.stdout_text, "ring: 4 ranks, 5 laps, token = 50 (expected 50) OK\n");
}

TEST_F(MpirunSf, MpmdContextsGetTheirAppNumbers) {
  auto r = run_sf({"--oversubscribe", "-np", "1", example("probe"), ":", "-np", "2", example("probe")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto ranks = probe_lines(r.stdout_text);
  ASSERT_EQ(ranks.size(), 3u) << r.describe();
  EXPECT_EQ(ranks[0]["appnum"], "0");
  EXPECT_EQ(ranks[1]["appnum"], "1");
  EXPECT_EQ(ranks[2]["appnum"], "1");
  for (auto& [rank, fields] : ranks) EXPECT_EQ(fields["size"], "3");
}

TEST_F(MpirunSf, ExportedVariablesAndMcaParametersReachEveryRank) {
  auto o = options();
  o.environment.push_back("SFT_FROM_LAUNCHER=inherited");
  o.environment.push_back("SFT_BY_NAME=named value");
  auto r = run_sf({"-np", "2", "-x", "SFT_GIVEN=a=b c", "-x", "SFT_BY_NAME", "--mca", "sft_param", "42",
                   example("probe"), "SFT_GIVEN", "SFT_BY_NAME", "SFT_FROM_LAUNCHER",
                   "OMPI_MCA_sft_param", "SFT_NOT_SET"},
                  o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto ranks = probe_lines(r.stdout_text);
  ASSERT_EQ(ranks.size(), 2u) << r.describe();
  for (auto& [rank, fields] : ranks) {
    EXPECT_EQ(fields["SFT_GIVEN"], "a=b%20c") << rank;  // values are percent-encoded
    EXPECT_EQ(fields["SFT_BY_NAME"], "named%20value") << rank;
    EXPECT_EQ(fields["SFT_FROM_LAUNCHER"], "inherited") << rank;
    EXPECT_EQ(fields["OMPI_MCA_sft_param"], "42") << rank;
    EXPECT_EQ(fields["SFT_NOT_SET"], "(unset)") << rank;
  }
}

TEST_F(MpirunSf, WorkingDirectoryOfTheRanks) {
  fs::path dir = scratch_ / "work dir";
  fs::create_directories(dir);
  for (const char* opt : {"--wdir", "-wdir", "-wd"}) {
    auto r = run_sf({"-np", "2", opt, dir.string(), example("probe")});
    ASSERT_TRUE(r.exited_with(0)) << r.describe();
    auto ranks = probe_lines(r.stdout_text);
    ASSERT_EQ(ranks.size(), 2u) << r.describe();
    for (auto& [rank, fields] : ranks) EXPECT_EQ(fields["cwd"], scratch_.string() + "/work%20dir") << opt;
  }
  // Without --wdir: the launcher's working directory.
  auto o = options();
  o.working_directory = dir.string();
  auto r = run_sf({"-np", "1", example("probe")}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(probe_lines(r.stdout_text)[0]["cwd"], scratch_.string() + "/work%20dir");
}

TEST_F(MpirunSf, StdinGoesToRankZeroWhole) {
  std::string data;
  data.reserve(3'000'000);
  for (int i = 0; i < 3'000'000; ++i) data.push_back(static_cast<char>((i * 131 + i / 7) & 0xff));
  auto o = options();
  o.stdin_data = data;
  auto r = run_sf({"-np", "2", example("probe"), "--stdin"}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto ranks = probe_lines(r.stdout_text);
  ASSERT_EQ(ranks.size(), 2u) << r.describe();
  EXPECT_EQ(ranks[0]["stdin_bytes"], std::to_string(data.size()));
  EXPECT_EQ(ranks[0]["stdin_fnv1a"], fnv1a_hex(data));
  EXPECT_EQ(ranks[1].count("stdin_bytes"), 0u);
}

TEST_F(MpirunSf, StdinNoneGivesRankZeroAnEmptyInput) {
  auto o = options();
  o.stdin_data = "not for the ranks";
  auto r = run_sf({"--stdin", "none", "-np", "1", example("probe"), "--stdin"}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(probe_lines(r.stdout_text)[0]["stdin_bytes"], "0") << r.describe();
}

TEST_F(MpirunSf, PromptWithoutNewlineAppears) {
  auto r = run_sf({"-np", "1", example("probe"), "--partial"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  ASSERT_GE(r.stdout_text.size(), 7u);
  EXPECT_EQ(r.stdout_text.substr(r.stdout_text.size() - 7), "probe> ") << r.describe();

  // Several ranks: the prompt appears, and every rank's line is whole.
  auto several = run_sf({"--oversubscribe", "-np", "3", example("probe"), "--partial"});
  ASSERT_TRUE(several.exited_with(0)) << several.describe();
  EXPECT_NE(several.stdout_text.find("probe> "), std::string::npos) << several.describe();
  auto ranks = probe_lines(several.stdout_text);
  ASSERT_EQ(ranks.size(), 3u) << several.describe();
  for (auto& [rank, fields] : ranks) EXPECT_EQ(fields["size"], "3") << several.describe();
}

TEST_F(MpirunSf, PromptAppearsBeforeStdinIsClosed) {
  auto o = options();
  o.keep_stdin_open = true;
  RunningCommand command(sf({"-np", "1", example("probe"), "--partial", "--stdin"}), o);
  ASSERT_TRUE(command.started()) << command.start_error();
  launcher_pids_.push_back(command.pid());
  ASSERT_TRUE(command.wait_for_output("probe> ", 60s)) << command.stdout_so_far();
  EXPECT_TRUE(command.write_stdin("xyz"));
  command.close_stdin();
  auto r = command.wait(kDeadline);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_NE(r.stdout_text.find("probe> \nrank=0 "), std::string::npos) << r.describe();
  EXPECT_NE(r.stdout_text.find(" stdin_bytes=3 "), std::string::npos) << r.describe();
}

TEST_F(MpirunSf, TagOutputHasOpenMpisShape) {
  auto ours = run_sf({"--tag-output", "-np", "2", example("probe"), "--stderr"});
  ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
  for (int rank = 0; rank < 2; ++rank) {
    std::string tag = "[1," + std::to_string(rank) + "]";
    EXPECT_NE(ours.stdout_text.find(tag + "<stdout>:rank=" + std::to_string(rank) + " "), std::string::npos)
        << ours.describe();
    EXPECT_NE(ours.stderr_text.find(tag + "<stderr>:probe: stderr from rank " + std::to_string(rank) + "\n"),
              std::string::npos)
        << ours.describe();
  }
  for (const auto& line : lines_of(ours.stdout_text))
    EXPECT_TRUE(std::regex_match(line, std::regex(R"(\[1,\d\]<stdout>:rank=\d .*)"))) << line;
  // The same lines as Debian's mpirun gives, save for process ids.
  auto theirs = run_mpirun({"--tag-output", "-np", "2", example("probe"), "--stderr"});
  ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
  EXPECT_EQ(normalized_lines(ours.stdout_text), normalized_lines(theirs.stdout_text));
  EXPECT_EQ(normalized_lines(ours.stderr_text), normalized_lines(theirs.stderr_text));
}

TEST_F(MpirunSf, TimestampOutputHasOpenMpisShape) {
  auto r = run_sf({"--timestamp-output", "-np", "2", example("hello")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto lines = lines_of(r.stdout_text);
  ASSERT_EQ(lines.size(), 2u) << r.describe();
  // ctime() without its newline, then the stream: "Sun Nov 22 05:30:00 2026<stdout>:Hello ..."
  const std::regex shape(R"([A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}<stdout>:Hello from rank \d of 2 .*)");
  for (const auto& line : lines) EXPECT_TRUE(std::regex_match(line, shape)) << line;
  auto both = run_sf({"--timestamp-output", "--tag-output", "-np", "1", example("hello")});
  ASSERT_TRUE(both.exited_with(0)) << both.describe();
  EXPECT_TRUE(std::regex_search(both.stdout_text, std::regex(R"(\d{4}\[1,0\]<stdout>:Hello from rank 0)")))
      << both.describe();
}

TEST_F(MpirunSf, MergeStderrToStdout) {
  auto r = run_sf({"--merge-stderr-to-stdout", "-np", "2", example("probe"), "--stderr"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(r.stderr_text, "") << r.describe();
  for (int rank = 0; rank < 2; ++rank)
    EXPECT_NE(r.stdout_text.find("probe: stderr from rank " + std::to_string(rank) + "\n"), std::string::npos)
        << r.describe();
  EXPECT_EQ(probe_lines(r.stdout_text).size(), 2u) << r.describe();
}

TEST_F(MpirunSf, OutputFilenameWritesOpenMpisLayout) {
  fs::path ours_dir = scratch_ / "ours", theirs_dir = scratch_ / "theirs";
  auto ours = run_sf({"--output-filename", ours_dir.string(), "-np", "2", example("probe"), "--stderr"});
  ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
  EXPECT_EQ(files_under(ours_dir),
            (std::vector<std::string>{"1/rank.0/stderr", "1/rank.0/stdout", "1/rank.1/stderr", "1/rank.1/stdout"}));
  for (int rank = 0; rank < 2; ++rank) {
    fs::path d = ours_dir / "1" / ("rank." + std::to_string(rank));
    EXPECT_EQ(read_file(d / "stderr"), "probe: stderr from rank " + std::to_string(rank) + "\n");
    auto fields = probe_lines(read_file(d / "stdout"));
    ASSERT_EQ(fields.size(), 1u);
    EXPECT_EQ(fields.begin()->first, rank);
  }
  // The output still reaches the terminal too.
  EXPECT_EQ(probe_lines(ours.stdout_text).size(), 2u) << ours.describe();
  // Debian's mpirun makes the same files.
  auto theirs = run_mpirun({"--output-filename", theirs_dir.string(), "-np", "2", example("probe"), "--stderr"});
  ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
  EXPECT_EQ(files_under(ours_dir), files_under(theirs_dir));
}

TEST_F(MpirunSf, DisplayMapListsEveryRank) {
  auto r = run_sf({"--display-map", "-np", "2", example("hello")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_NE(r.stdout_text.find("JOB MAP"), std::string::npos) << r.describe();
  EXPECT_NE(r.stdout_text.find("Process rank: 1"), std::string::npos) << r.describe();
}

TEST_F(MpirunSf, Mpi4pyAllreduce) {
  if (sf::test::run_command({"/usr/bin/python3", "-c", "import mpi4py"}).exit_code != 0)
    GTEST_FAIL() << "Debian's python3-mpi4py is not installed (scripts/setup installs it)";
  auto r = run_sf({"--oversubscribe", "-np", "3", "/usr/bin/python3",
                   sf::test::source_path("examples/mpi4py/allreduce.py")});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  for (int rank = 0; rank < 3; ++rank)
    EXPECT_NE(r.stdout_text.find("mpi4py: rank=" + std::to_string(rank) + " size=3 sum=6 expected=6 OK\n"),
              std::string::npos)
        << r.describe();
}

// The fence through our own host path (PMIx's local-only shortcut turned off) gives the same
// results; -v shows that the fences really went through the node agent.
TEST_F(MpirunSf, HostFencePathGivesTheSameResults) {
  auto shortcut = run_sf({"-v", "--oversubscribe", "-np", "4", example("pi"), "1000000"});
  ASSERT_TRUE(shortcut.exited_with(0)) << shortcut.describe();
  EXPECT_EQ(shortcut.stderr_text.find(": fence "), std::string::npos) << shortcut.describe();

  auto o = options();
  o.environment.push_back("PMIX_MCA_pmix_server_fence_localonly_opt=0");
  auto host = run_sf({"-v", "--oversubscribe", "-np", "4", example("pi"), "1000000"}, o);
  ASSERT_TRUE(host.exited_with(0)) << host.describe();
  EXPECT_NE(host.stderr_text.find(": fence "), std::string::npos) << host.describe();
  EXPECT_EQ(host.stdout_text, shortcut.stdout_text);

  auto ring = run_sf({"--oversubscribe", "-np", "3", example("ring"), "3"}, o);
  ASSERT_TRUE(ring.exited_with(0)) << ring.describe();
  EXPECT_EQ(ring.stdout_text, "ring: 3 ranks, 3 laps, token = 18 (expected 18) OK\n");
  auto mpmd = run_sf({"--oversubscribe", "-np", "1", example("probe"), ":", "-np", "2", example("probe")}, o);
  ASSERT_TRUE(mpmd.exited_with(0)) << mpmd.describe();
  EXPECT_EQ(probe_lines(mpmd.stdout_text).size(), 3u) << mpmd.describe();
}

// --- failures: the same exit codes as mpirun --------------------------------------------

TEST_F(MpirunSf, AbortExitsWithTheAbortCodeLikeMpirun) {
  struct Case { std::string np, rank, code; int expected; };
  for (const Case& c : {Case{"4", "1", "7", 7}, Case{"3", "0", "42", 42}}) {
    auto ours = run_sf({"--oversubscribe", "-np", c.np, example("abort"), c.rank, c.code});
    EXPECT_TRUE(ours.exited_with(c.expected)) << ours.describe();
    EXPECT_NE(ours.stdout_text.find("abort: rank " + c.rank + " calling MPI_Abort with code " + c.code),
              std::string::npos)
        << ours.describe();
    EXPECT_NE(ours.stderr_text.find("MPI_ABORT was invoked on rank " + c.rank +
                                    " in communicator MPI_COMM_WORLD\nwith errorcode " + c.code + "."),
              std::string::npos)
        << ours.describe();
    auto theirs = run_mpirun({"-np", c.np, example("abort"), c.rank, c.code});
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
  }
  // The default code is 7.
  auto dflt = run_sf({"-np", "2", example("abort")});
  EXPECT_TRUE(dflt.exited_with(7)) << dflt.describe();
}

TEST_F(MpirunSf, CrashingRankEndsTheJobWith139LikeMpirun) {
  auto ours = run_sf({"--oversubscribe", "-np", "4", example("crash"), "1"});
  EXPECT_TRUE(ours.exited_with(128 + SIGSEGV)) << ours.describe();
  EXPECT_NE(ours.stderr_text.find("noticed that process rank 1 with PID"), std::string::npos) << ours.describe();
  EXPECT_NE(ours.stderr_text.find("exited on signal 11 (Segmentation fault)."), std::string::npos)
      << ours.describe();
  auto theirs = run_mpirun({"-np", "4", example("crash"), "1"});
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
}

TEST_F(MpirunSf, NonZeroExitCodeOfTheFailingRankLikeMpirun) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"2", "5"}, std::vector<std::string>{}}) {
    std::vector<std::string> a = {"-np", "4", example("exitcode")};
    a.insert(a.end(), args.begin(), args.end());
    std::vector<std::string> ours_args = {"--oversubscribe"};
    ours_args.insert(ours_args.end(), a.begin(), a.end());
    auto ours = run_sf(ours_args);
    auto theirs = run_mpirun(a);
    int expected = args.empty() ? 3 : 5;
    EXPECT_TRUE(ours.exited_with(expected)) << ours.describe();
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
    EXPECT_NE(ours.stderr_text.find("detected that one or more processes exited with non-zero status"),
              std::string::npos)
        << ours.describe();
    std::string rank = args.empty() ? "1" : "2";
    EXPECT_TRUE(std::regex_search(
        ours.stderr_text, std::regex(R"(Process name: \[\[\d+,1\],)" + rank + R"(\]\n\s+Exit code:\s+)" +
                                     std::to_string(expected))))
        << ours.describe();
  }
  // A program's own usage error (exit 2) is the job's status too.
  auto bad = run_sf({"-np", "2", example("hello"), "--bogus"});
  EXPECT_TRUE(bad.exited_with(2)) << bad.describe();
}

TEST_F(MpirunSf, TimeoutKillsTheJobWith110) {
  auto r = run_sf({"--timeout", "1", "-np", "2", example("hello"), "--sleep", "120"});
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_TRUE(r.exited_with(110)) << r.describe();
  EXPECT_NE(r.stderr_text.find("The user-provided time limit for job execution has been reached:\n\n"
                               "  Timeout: 1 seconds"),
            std::string::npos)
      << r.describe();
  EXPECT_FALSE(r.output_held_open_after_exit) << r.describe();

  auto o = options();
  o.unset_environment.clear();
  o.environment.push_back("MPIEXEC_TIMEOUT=1");
  auto env = run_sf({"-np", "1", example("hello"), "--sleep", "120"}, o);
  EXPECT_TRUE(env.exited_with(110)) << env.describe();
}

// Starts `hello --sleep 120` on 2 ranks and waits until both have printed.
std::unique_ptr<RunningCommand> start_sleeping_job(const std::vector<std::string>& argv, CommandOptions o) {
  auto command = std::make_unique<RunningCommand>(argv, o);
  if (!command->started()) return command;
  EXPECT_TRUE(command->wait_for_output("Hello from rank 0 of 2", 60s)) << command->stdout_so_far();
  EXPECT_TRUE(command->wait_for_output("Hello from rank 1 of 2", 60s)) << command->stdout_so_far();
  return command;
}

TEST_F(MpirunSf, SigtermOrSigintToTheLauncherEndsTheJobWith1) {
  for (int sig : {SIGTERM, SIGINT}) {
    auto command = start_sleeping_job(sf({"-np", "2", example("hello"), "--sleep", "120"}), options());
    ASSERT_TRUE(command->started()) << command->start_error();
    launcher_pids_.push_back(command->pid());
    ASSERT_TRUE(command->send_signal(sig));
    auto r = command->wait(kDeadline);
    EXPECT_FALSE(r.timed_out) << r.describe();
    EXPECT_TRUE(r.exited_with(1)) << strsignal(sig) << ": " << r.describe();
    EXPECT_FALSE(r.output_held_open_after_exit) << r.describe();
    auto left = sf::test::wait_for_no_processes(
        [&] { return sf::test::processes_with_environment(kMarkerName, marker_); }, 15s);
    EXPECT_TRUE(left.empty()) << "after " << strsignal(sig) << ":\n" << sf::test::describe(left);
  }
}

// SIGUSR1 is forwarded to the ranks; hello does not catch it, so they die of it and the job
// ends as under mpirun: 128 + 10 and the "exited on signal 10" message.
TEST_F(MpirunSf, Sigusr1IsForwardedToTheRanksLikeMpirun) {
  auto ours = start_sleeping_job(sf({"-np", "2", example("hello"), "--sleep", "120"}), options());
  ASSERT_TRUE(ours->started()) << ours->start_error();
  launcher_pids_.push_back(ours->pid());
  ASSERT_TRUE(ours->send_signal(SIGUSR1));
  auto r = ours->wait(kDeadline);
  EXPECT_FALSE(r.timed_out) << r.describe();
  EXPECT_TRUE(r.exited_with(128 + SIGUSR1)) << r.describe();
  EXPECT_NE(r.stderr_text.find("exited on signal 10 (User defined signal 1)"), std::string::npos) << r.describe();

  CommandOptions o = options();
  o.environment.push_back("OMPI_MCA_rmaps_base_oversubscribe=1");
  auto theirs = start_sleeping_job({"mpirun", "--allow-run-as-root", "-np", "2", example("hello"), "--sleep", "120"}, o);
  ASSERT_TRUE(theirs->started()) << theirs->start_error();
  ASSERT_TRUE(theirs->send_signal(SIGUSR1));
  auto t = theirs->wait(kDeadline);
  EXPECT_EQ(r.exit_code, t.exit_code) << t.describe();
}

// --- what a rank is given, and what users see of its output: as under mpirun --------------

// The lines of a `semantics` run that start with "semantics:", sorted.
std::vector<std::string> semantics_lines(const std::string& out) {
  std::vector<std::string> lines;
  for (const auto& line : lines_of(out))
    if (line.rfind("semantics:", 0) == 0) lines.push_back(line);
  std::sort(lines.begin(), lines.end());
  return lines;
}

TEST_F(MpirunSf, StdoutIsATerminalAndStdinAndStderrArePipesLikeMpirun) {
  auto ours = run_sf({"--oversubscribe", "-np", "3", example("semantics"), "tty"});
  ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
  EXPECT_EQ(semantics_lines(ours.stdout_text),
            (std::vector<std::string>{"semantics: rank 0 isatty 0=0 1=1 2=0",
                                      "semantics: rank 1 isatty 0=0 1=1 2=0",
                                      "semantics: rank 2 isatty 0=0 1=1 2=0"}))
      << ours.describe();
  auto theirs = run_mpirun({"-np", "3", example("semantics"), "tty"});
  ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
  EXPECT_EQ(semantics_lines(ours.stdout_text), semantics_lines(theirs.stdout_text));
  // Merged, stderr shares stdout's terminal (as under mpirun).
  auto merged = run_sf({"-np", "1", "--merge-stderr-to-stdout", example("semantics"), "tty"});
  ASSERT_TRUE(merged.exited_with(0)) << merged.describe();
  EXPECT_EQ(merged.stdout_text, "semantics: rank 0 isatty 0=0 1=1 2=1\n") << merged.describe();
}

TEST_F(MpirunSf, RanksHoldOnlyTheDescriptorsMpirunsRanksHold) {
  // Rank 0 gets stdin (a pipe), the others /dev/null; nothing of the launcher's leaks, even
  // when the launcher itself inherited more (here: a descriptor of this test's).
  int extra[2];
  ASSERT_EQ(pipe(extra), 0);
  auto ours = run_sf({"--oversubscribe", "-np", "3", example("semantics"), "fds"});
  auto theirs = run_mpirun({"-np", "3", example("semantics"), "fds"});
  close(extra[0]);
  close(extra[1]);
  ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
  ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
  EXPECT_EQ(semantics_lines(ours.stdout_text),
            (std::vector<std::string>{"semantics: rank 0 fds 3: 0=pipe 1=tty 2=pipe",
                                      "semantics: rank 1 fds 3: 0=null 1=tty 2=pipe",
                                      "semantics: rank 2 fds 3: 0=null 1=tty 2=pipe"}))
      << ours.describe();
  EXPECT_EQ(semantics_lines(ours.stdout_text), semantics_lines(theirs.stdout_text));
}

// printf without fflush, then MPI_Abort or a crash: the line must not die in a stdio buffer.
TEST_F(MpirunSf, OutputPrintedBeforeAnAbortOrACrashIsNotLostLikeMpirun) {
  struct Case { std::vector<std::string> args; int expected; };
  for (const Case& c : {Case{{"print-abort", "6"}, 6}, Case{{"print-crash"}, 128 + SIGSEGV}}) {
    std::vector<std::string> a = {"-np", "3", example("semantics")};
    a.insert(a.end(), c.args.begin(), c.args.end());
    std::vector<std::string> ours_args = {"--oversubscribe"};
    ours_args.insert(ours_args.end(), a.begin(), a.end());
    auto ours = run_sf(ours_args);
    EXPECT_TRUE(ours.exited_with(c.expected)) << ours.describe();
    EXPECT_EQ(semantics_lines(ours.stdout_text),
              (std::vector<std::string>{"semantics: I am 0 of 3", "semantics: I am 1 of 3",
                                        "semantics: I am 2 of 3"}))
        << ours.describe();
    auto theirs = run_mpirun(a);
    EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
    EXPECT_EQ(semantics_lines(ours.stdout_text), semantics_lines(theirs.stdout_text))
        << theirs.describe();
  }
}

// A long-running rank's progress lines appear as they are printed, not when it ends.
TEST_F(MpirunSf, ProgressLinesAppearWhileTheRankRunsLikeMpirun) {
  CommandOptions mpirun_options = options();
  mpirun_options.environment.push_back("OMPI_MCA_rmaps_base_oversubscribe=1");
  std::vector<std::pair<std::vector<std::string>, CommandOptions>> launchers = {
      {sf({"-np", "2", example("semantics"), "progress", "120"}), options()},
      {{"mpirun", "--allow-run-as-root", "-np", "2", example("semantics"), "progress", "120"},
       mpirun_options}};
  for (auto& [argv, o] : launchers) {
    RunningCommand command(argv, o);
    ASSERT_TRUE(command.started()) << command.start_error();
    if (argv[0] == SF_MPIRUN_SF) launcher_pids_.push_back(command.pid());
    // The rank prints for two minutes: the first lines can only be here now if each line
    // left the rank when it was printed.
    EXPECT_TRUE(command.wait_for_output("semantics: progress 2\n", 90s))
        << argv[0] << ": " << command.stdout_so_far();
    EXPECT_EQ(command.stdout_so_far().find("semantics: done"), std::string::npos);
    ASSERT_TRUE(command.send_signal(SIGTERM));
    auto r = command.wait(kDeadline);
    EXPECT_FALSE(r.timed_out) << r.describe();
  }
}

// As mpirun: OMPI_MCA_mpi_oversubscribe=1 when the ranks outnumber the cores, so Open MPI
// yields while idle instead of spinning; 0 otherwise, whatever the user had set.
TEST_F(MpirunSf, RanksAreToldWhetherTheCoresAreOversubscribedLikeMpirun) {
  const int cores = host_cores();
  auto o = options();
  o.environment.push_back("OMPI_MCA_mpi_oversubscribe=1");  // replaced, as mpirun replaces it
  for (int np : {cores, 2 * cores + 1}) {
    auto ours = run_sf({"--oversubscribe", "-np", std::to_string(np), example("probe"),
                        "OMPI_MCA_mpi_oversubscribe"}, o);
    ASSERT_TRUE(ours.exited_with(0)) << ours.describe();
    auto ranks = probe_lines(ours.stdout_text);
    ASSERT_EQ(ranks.size(), static_cast<size_t>(np)) << ours.describe();
    for (auto& [rank, fields] : ranks)
      EXPECT_EQ(fields["OMPI_MCA_mpi_oversubscribe"], np > cores ? "1" : "0") << "np " << np;
    auto theirs = run_mpirun({"-np", std::to_string(np), example("probe"), "OMPI_MCA_mpi_oversubscribe"});
    ASSERT_TRUE(theirs.exited_with(0)) << theirs.describe();
    for (auto& [rank, fields] : probe_lines(theirs.stdout_text))
      EXPECT_EQ(fields["OMPI_MCA_mpi_oversubscribe"], np > cores ? "1" : "0") << "mpirun, np " << np;
  }
}

// MPI_Abort while the other ranks sit in MPI_Finalize's fence, many times, with every core
// busy: each run ends with the abort code, none hangs (bounded: 24 runs of about a second).
TEST_F(MpirunSf, AbortWhileOtherRanksFinalizeNeverHangsUnderLoad) {
  std::atomic<bool> stop{false};
  std::vector<std::thread> hogs;
  for (int i = 0; i < host_cores(); ++i)
    hogs.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
      }
    });
  struct Case { std::string np, mode; int expected; };
  std::map<std::string, int> outcomes;
  for (int round = 0; round < 8; ++round)
    for (const Case& c : {Case{"2", "finalize-abort", 5}, Case{"4", "delayed-abort", 2},
                          Case{"2", "delayed-abort", 2}}) {
      auto o = options();
      o.timeout = 60s;
      auto r = run_sf({"--oversubscribe", "-np", c.np, example("semantics"), c.mode}, o);
      ++outcomes[c.mode + " -np " + c.np + ": " +
                 (r.timed_out ? std::string("hung") : "exit " + std::to_string(r.exit_code))];
      EXPECT_TRUE(r.exited_with(c.expected)) << c.mode << " -np " << c.np << ": " << r.describe();
      EXPECT_NE(r.stdout_text.find("semantics: rank 0\n"), std::string::npos) << r.describe();
    }
  stop = true;
  for (auto& t : hogs) t.join();
  std::string summary;
  for (auto& [what, count] : outcomes) summary += what + " x" + std::to_string(count) + "\n";
  RecordProperty("outcomes", summary);
  std::cout << summary;
}

// --- failures before any rank runs: one line, Open MPI's exit codes ----------------------

TEST_F(MpirunSf, MissingProgramIs132InOneLine) {
  auto ours = run_sf({"-np", "2", example("no-such-program")});
  EXPECT_TRUE(ours.exited_with(132)) << ours.describe();
  EXPECT_TRUE(one_line(ours.stderr_text)) << ours.describe();
  EXPECT_NE(ours.stderr_text.find("no-such-program"), std::string::npos) << ours.describe();
  EXPECT_EQ(ours.stdout_text, "");
  auto theirs = run_mpirun({"-np", "2", example("no-such-program")});
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
  // Not executable is the same failure.
  fs::path plain = scratch_ / "not-executable";
  std::ofstream(plain) << "#!/bin/sh\n";
  auto noexec = run_sf({"-np", "1", plain.string()});
  EXPECT_TRUE(noexec.exited_with(132)) << noexec.describe();
  EXPECT_TRUE(one_line(noexec.stderr_text)) << noexec.describe();
}

TEST_F(MpirunSf, UnusableWorkingDirectoryIs135InOneLine) {
  const std::string missing = (scratch_ / "missing").string();
  auto ours = run_sf({"-np", "2", "--wdir", missing, example("hello")});
  EXPECT_TRUE(ours.exited_with(135)) << ours.describe();
  EXPECT_TRUE(one_line(ours.stderr_text)) << ours.describe();
  EXPECT_NE(ours.stderr_text.find(missing), std::string::npos) << ours.describe();
  auto theirs = run_mpirun({"-np", "2", "--wdir", missing, example("hello")});
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
  auto file = run_sf({"-np", "1", "--wdir", example("hello"), example("hello")});
  EXPECT_TRUE(file.exited_with(135)) << file.describe();
  EXPECT_TRUE(one_line(file.stderr_text)) << file.describe();
}

TEST_F(MpirunSf, TooManyRanksWithoutOversubscribeIs1InOneLine) {
  const std::string np = std::to_string(host_cores() + 1);
  // --driver none: stay on this machine instead of cloning it into a cluster.
  auto ours = run_sf({"--driver", "none", "-np", np, example("hello")});
  EXPECT_TRUE(ours.exited_with(1)) << ours.describe();
  EXPECT_TRUE(one_line(ours.stderr_text)) << ours.describe();
  EXPECT_NE(ours.stderr_text.find("not enough slots"), std::string::npos) << ours.describe();
  EXPECT_EQ(ours.stdout_text, "");
  // mpirun refuses too (without its --oversubscribe).
  CommandOptions o = options();
  auto theirs = sf::test::run_command({"mpirun", "--allow-run-as-root", "-np", np, example("hello")}, o);
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
  auto nooversubscribe = run_sf({"--driver", "none", "--nooversubscribe", "-np", np, example("hello")});
  EXPECT_TRUE(nooversubscribe.exited_with(1)) << nooversubscribe.describe();
}

TEST_F(MpirunSf, UnknownOptionIs1InOneLine) {
  auto ours = run_sf({"--no-such-option", "-np", "2", example("hello")});
  EXPECT_TRUE(ours.exited_with(1)) << ours.describe();
  EXPECT_TRUE(one_line(ours.stderr_text)) << ours.describe();
  EXPECT_NE(ours.stderr_text.find("unknown option \"--no-such-option\""), std::string::npos) << ours.describe();
  auto theirs = run_mpirun({"--no-such-option", "-np", "2", example("hello")});
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();
}

TEST_F(MpirunSf, BadNumberOfProcessesIs1InOneLine) {
  for (const char* bad : {"x", "-2", "1.5"}) {
    auto ours = run_sf({"-np", bad, example("hello")});
    EXPECT_TRUE(ours.exited_with(1)) << ours.describe();
    EXPECT_TRUE(one_line(ours.stderr_text)) << ours.describe();
    EXPECT_EQ(ours.stdout_text, "");
  }
  auto theirs = run_mpirun({"-np", "x", example("hello")});
  EXPECT_EQ(theirs.exit_code, 1) << theirs.describe();
}

TEST_F(MpirunSf, RootIsRefusedWithoutPermission) {
  if (geteuid() != 0) GTEST_SKIP() << "not running as root: the refusal cannot happen";
  CommandOptions o = options();
  o.unset_environment = {"OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "MPIEXEC_TIMEOUT"};
  auto ours = run_argv({SF_MPIRUN_SF, "-np", "1", example("hello")}, o);
  EXPECT_TRUE(ours.exited_with(1)) << ours.describe();
  EXPECT_TRUE(one_line(ours.stderr_text)) << ours.describe();
  EXPECT_NE(ours.stderr_text.find("--allow-run-as-root"), std::string::npos) << ours.describe();
  EXPECT_EQ(ours.stdout_text, "");
  auto theirs = sf::test::run_command({"mpirun", "-np", "1", example("hello")}, o);
  EXPECT_EQ(ours.exit_code, theirs.exit_code) << theirs.describe();

  // Both variables set to 1 allow it, as with mpirun.
  o.environment.push_back("OMPI_ALLOW_RUN_AS_ROOT=1");
  o.environment.push_back("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1");
  auto allowed = run_argv({SF_MPIRUN_SF, "-np", "1", example("hello")}, o);
  EXPECT_TRUE(allowed.exited_with(0)) << allowed.describe();
  EXPECT_NE(allowed.stdout_text.find("Hello from rank 0 of 1"), std::string::npos) << allowed.describe();
}

TEST_F(MpirunSf, VersionAndHelp) {
  auto version = run_sf({"--version"});
  EXPECT_TRUE(version.exited_with(0)) << version.describe();
  EXPECT_EQ(version.stdout_text.rfind("mpirun-sf", 0), 0u) << version.describe();
  auto help = run_sf({"--help"});
  EXPECT_TRUE(help.exited_with(0)) << help.describe();
  EXPECT_NE(help.stdout_text.find("Usage: mpirun-sf"), std::string::npos) << help.describe();
  EXPECT_NE(help.stdout_text.find("--oversubscribe"), std::string::npos) << help.describe();
  auto noprog = run_sf({"-np", "2"});
  EXPECT_TRUE(noprog.exited_with(1)) << noprog.describe();
  EXPECT_TRUE(one_line(noprog.stderr_text)) << noprog.describe();
}

}  // namespace
