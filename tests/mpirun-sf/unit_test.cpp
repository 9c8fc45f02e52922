// Unit tests of mpirun-sf's pure parts (sf_mpirun_core): command-line parsing as Open MPI
// 4.1's mpirun does it, planning and the job map, the exit-code rules and closing messages,
// and output formatting (lines, tags, timestamps, prompts, --output-filename files).
// No process is started here; files go to a private temporary directory.
#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "mpirun-sf/exit_status.hpp"
#include "mpirun-sf/job_spec.hpp"
#include "mpirun-sf/output.hpp"
#include "mpirun-sf/plan.hpp"
#include "mpirun-sf/slurm_allocation.hpp"

namespace {

using namespace sf::mpirun;
namespace fs = std::filesystem;

// --- parse_command_line ---------------------------------------------------------------

// A fake environment for parse_command_line's getenv.
struct FakeEnvironment {
  std::map<std::string, std::string> vars;
  std::function<const char*(const char*)> getenv() const {
    return [this](const char* name) -> const char* {
      auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  }
};

JobSpec parse(const std::vector<std::string>& args, const FakeEnvironment& env = {}) {
  return parse_command_line(args, env.getenv());
}

// The message and exit status of the UsageError that parsing `args` throws.
struct Rejection {
  bool thrown = false;
  std::string message;
  int exit_code = 0;
};
Rejection rejection(const std::vector<std::string>& args, const FakeEnvironment& env = {}) {
  try {
    parse(args, env);
  } catch (const UsageError& e) {
    return {true, e.what(), e.exit_code()};
  }
  return {};
}

TEST(ParseCommandLine, NumberOfProcessesUnderEveryName) {
  for (const char* opt : {"-np", "--np", "-n", "--n", "-c", "--c"}) {
    JobSpec s = parse({opt, "3", "./a.out"});
    ASSERT_EQ(s.apps.size(), 1u) << opt;
    EXPECT_EQ(s.apps[0].np, 3) << opt;
    EXPECT_EQ(s.apps[0].program, "./a.out") << opt;
    EXPECT_EQ(s.action, Action::Run);
  }
  EXPECT_EQ(parse({"--np=5", "prog"}).apps[0].np, 5);
  EXPECT_EQ(parse({"-np=6", "prog"}).apps[0].np, 6);
}

TEST(ParseCommandLine, WithoutNpTheAppHasNoCount) {
  JobSpec s = parse({"prog"});
  ASSERT_EQ(s.apps.size(), 1u);
  EXPECT_EQ(s.apps[0].np, -1);
  EXPECT_EQ(parse({"-np", "0", "prog"}).apps[0].np, 0);  // as mpirun: one per slot
}

TEST(ParseCommandLine, SingleDashLongOptions) {
  JobSpec s = parse({"-np", "2", "-wdir", "/tmp", "-x", "A=1", "-mca", "btl", "self",
                     "-tag-output", "-timestamp-output", "-oversubscribe", "-allow-run-as-root",
                     "-output-filename", "/tmp/out", "-merge-stderr-to-stdout", "prog"});
  ASSERT_EQ(s.apps.size(), 1u);
  EXPECT_EQ(s.apps[0].np, 2);
  EXPECT_EQ(s.apps[0].wdir, "/tmp");
  EXPECT_EQ(s.exports, (std::vector<std::string>{"A=1"}));
  ASSERT_EQ(s.mca.size(), 1u);
  EXPECT_EQ(s.mca[0], (std::pair<std::string, std::string>{"btl", "self"}));
  EXPECT_TRUE(s.tag_output);
  EXPECT_TRUE(s.timestamp_output);
  EXPECT_TRUE(s.merge_stderr_to_stdout);
  EXPECT_EQ(s.output_filename, "/tmp/out");
  EXPECT_EQ(s.oversubscribe, std::optional<bool>(true));
  EXPECT_TRUE(s.allow_run_as_root);
  EXPECT_EQ(parse({"-wd", "/var", "prog"}).apps[0].wdir, "/var");
  EXPECT_EQ(parse({"--wdir", "/usr", "prog"}).apps[0].wdir, "/usr");
}

TEST(ParseCommandLine, ProgramArgumentsThatLookLikeOptionsBelongToTheProgram) {
  JobSpec s = parse({"-np", "2", "./a.out", "--flag", "-np", "9", "-x", "Y", "--timeout", "3"});
  ASSERT_EQ(s.apps.size(), 1u);
  EXPECT_EQ(s.apps[0].np, 2);
  EXPECT_EQ(s.apps[0].program, "./a.out");
  EXPECT_EQ(s.apps[0].args,
            (std::vector<std::string>{"--flag", "-np", "9", "-x", "Y", "--timeout", "3"}));
  EXPECT_TRUE(s.exports.empty());
  EXPECT_EQ(s.timeout_seconds, 0);
  // Even an option mpirun-sf does not know is the program's after the program name.
  EXPECT_EQ(parse({"prog", "--no-such-option"}).apps[0].args,
            (std::vector<std::string>{"--no-such-option"}));
  // A single "-" is a program argument (stdin by convention), not an option.
  EXPECT_EQ(parse({"prog", "-"}).apps[0].args, (std::vector<std::string>{"-"}));
}

TEST(ParseCommandLine, MpmdContextsSplitAtColons) {
  JobSpec s = parse({"-np", "1", "--wdir", "/tmp", "./a", "x", ":", "-np", "3", "./b", "--y", ":",
                     "-n", "2", "./c"});
  ASSERT_EQ(s.apps.size(), 3u);
  EXPECT_EQ(s.apps[0].np, 1);
  EXPECT_EQ(s.apps[0].program, "./a");
  EXPECT_EQ(s.apps[0].args, (std::vector<std::string>{"x"}));
  EXPECT_EQ(s.apps[0].wdir, "/tmp");
  EXPECT_EQ(s.apps[1].np, 3);
  EXPECT_EQ(s.apps[1].program, "./b");
  EXPECT_EQ(s.apps[1].args, (std::vector<std::string>{"--y"}));
  EXPECT_EQ(s.apps[1].wdir, "");  // --wdir belongs to its own context
  EXPECT_EQ(s.apps[2].np, 2);
  EXPECT_EQ(s.apps[2].program, "./c");
}

TEST(ParseCommandLine, MpmdJobOptionsInAnyContextApplyToTheJob) {
  JobSpec s = parse({"-np", "1", "-x", "A", "./a", ":", "-np", "1", "-x", "B=2", "--tag-output", "./b"});
  EXPECT_EQ(s.exports, (std::vector<std::string>{"A", "B=2"}));
  EXPECT_TRUE(s.tag_output);
}

TEST(ParseCommandLine, MpmdContextWithoutProgramIsRejected) {
  Rejection r = rejection({"-np", "1", "./a", ":", "-np", "2"});
  EXPECT_TRUE(r.thrown);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.message.find("application context 2 names no program"), std::string::npos) << r.message;
}

TEST(ParseCommandLine, ExportsVariablesByNameOrWithValues) {
  JobSpec s = parse({"-x", "HOME", "-x", "FOO=bar", "--x", "EMPTY=", "-x", "EQ=a=b c", "prog"});
  EXPECT_EQ(s.exports, (std::vector<std::string>{"HOME", "FOO=bar", "EMPTY=", "EQ=a=b c"}));
  EXPECT_TRUE(rejection({"-x", "=value", "prog"}).thrown);
  EXPECT_TRUE(rejection({"-x", "", "prog"}).thrown);
}

TEST(ParseCommandLine, McaTakesAKeyAndAValue) {
  JobSpec s = parse({"--mca", "btl", "self,vader", "--mca", "pml", "ob1", "--gmca", "a", "b c", "prog"});
  ASSERT_EQ(s.mca.size(), 3u);
  EXPECT_EQ(s.mca[0], (std::pair<std::string, std::string>{"btl", "self,vader"}));
  EXPECT_EQ(s.mca[1], (std::pair<std::string, std::string>{"pml", "ob1"}));
  EXPECT_EQ(s.mca[2], (std::pair<std::string, std::string>{"a", "b c"}));
  Rejection missing = rejection({"--mca", "btl"});
  EXPECT_TRUE(missing.thrown);
  EXPECT_NE(missing.message.find("needs a key and a value"), std::string::npos) << missing.message;
  EXPECT_TRUE(rejection({"--mca", "a=b", "c", "prog"}).thrown);
}

TEST(ParseCommandLine, StdinTargets) {
  EXPECT_EQ(parse({"prog"}).stdin_target.kind, StdinTarget::Kind::Rank);
  EXPECT_EQ(parse({"prog"}).stdin_target.rank, 0);
  EXPECT_EQ(parse({"--stdin", "none", "prog"}).stdin_target.kind, StdinTarget::Kind::None);
  EXPECT_EQ(parse({"--stdin", "all", "prog"}).stdin_target.kind, StdinTarget::Kind::All);
  JobSpec s = parse({"--stdin", "3", "prog"});
  EXPECT_EQ(s.stdin_target.kind, StdinTarget::Kind::Rank);
  EXPECT_EQ(s.stdin_target.rank, 3);
  EXPECT_TRUE(rejection({"--stdin", "-1", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--stdin", "rank0", "prog"}).thrown);
}

TEST(ParseCommandLine, TimeoutFromTheOptionOrMpiexecTimeout) {
  EXPECT_EQ(parse({"--timeout", "5", "prog"}).timeout_seconds, 5);
  EXPECT_EQ(parse({"prog"}).timeout_seconds, 0);
  FakeEnvironment env;
  env.vars["MPIEXEC_TIMEOUT"] = "12";
  EXPECT_EQ(parse({"prog"}, env).timeout_seconds, 12);
  EXPECT_EQ(parse({"--timeout", "4", "prog"}, env).timeout_seconds, 4);  // the option wins
  env.vars["MPIEXEC_TIMEOUT"] = "soon";
  EXPECT_TRUE(rejection({"prog"}, env).thrown);
  EXPECT_TRUE(rejection({"--timeout", "0", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--timeout", "x", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--timeout"}).thrown);
}

TEST(ParseCommandLine, RunAsRootNeedsTheFlagOrBothVariables) {
  EXPECT_FALSE(parse({"prog"}).allow_run_as_root);
  EXPECT_TRUE(parse({"--allow-run-as-root", "prog"}).allow_run_as_root);
  FakeEnvironment env;
  env.vars["OMPI_ALLOW_RUN_AS_ROOT"] = "1";
  EXPECT_FALSE(parse({"prog"}, env).allow_run_as_root);  // the confirmation is missing
  env.vars["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1";
  EXPECT_TRUE(parse({"prog"}, env).allow_run_as_root);
  env.vars["OMPI_ALLOW_RUN_AS_ROOT"] = "yes";
  EXPECT_FALSE(parse({"prog"}, env).allow_run_as_root);  // Open MPI wants exactly "1"
}

TEST(ParseCommandLine, BadNumberOfProcessesIsAOneLineError) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"-np", "x", "prog"}, {"-np", "2x", "prog"}, {"-np", "-3", "prog"},
        {"-np", "", "prog"}, {"-np"}}) {
    Rejection r = rejection(args);
    EXPECT_TRUE(r.thrown) << args[0] << " " << (args.size() > 1 ? args[1] : "");
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_EQ(r.message.find('\n'), std::string::npos) << r.message;
    EXPECT_FALSE(r.message.empty());
  }
  EXPECT_NE(rejection({"-np", "x", "prog"}).message.find("'x'"), std::string::npos);
}

TEST(ParseCommandLine, UnknownOptionIsNamed) {
  Rejection r = rejection({"--no-such-option", "-np", "2", "prog"});
  EXPECT_TRUE(r.thrown);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.message.find("unknown option \"--no-such-option\""), std::string::npos) << r.message;
  EXPECT_EQ(r.message.find('\n'), std::string::npos);
  EXPECT_TRUE(rejection({"-zz", "prog"}).thrown);
}

TEST(ParseCommandLine, OptionWithAnEmptyNameIsUnknown) {
  // "-=x" has the empty name, which Boost found ambiguous (it matches every option) and threw
  // boost::program_options::ambiguous_option, not a UsageError (found by mpirun_cli_fuzz).
  for (const std::string t : {"-=x", "--=x", "--="}) {
    SCOPED_TRACE(t);
    Rejection r = rejection({"--clones", "3", t, "prog"});
    EXPECT_TRUE(r.thrown);
    EXPECT_NE(r.message.find("unknown option \"" + t + "\""), std::string::npos) << r.message;
  }
}

TEST(ParseCommandLine, FlagsRejectValuesAndValuedOptionsNeedOne) {
  EXPECT_TRUE(rejection({"--tag-output=yes", "prog"}).thrown);
  Rejection r = rejection({"--wdir"});
  EXPECT_TRUE(r.thrown);
  EXPECT_NE(r.message.find("needs a value"), std::string::npos) << r.message;
}

TEST(ParseCommandLine, NoProgramIsAnErrorUnlessHelpOrVersion) {
  Rejection r = rejection({"-np", "2"});
  EXPECT_TRUE(r.thrown);
  EXPECT_NE(r.message.find("no executable"), std::string::npos) << r.message;
  EXPECT_TRUE(rejection({}).thrown);
  EXPECT_EQ(parse({"--help"}).action, Action::Help);
  EXPECT_EQ(parse({"-h"}).action, Action::Help);
  EXPECT_EQ(parse({"--version"}).action, Action::Version);
  EXPECT_EQ(parse({"-V"}).action, Action::Version);
  EXPECT_EQ(parse({"--version", "--help"}).action, Action::Help);
}

TEST(ParseCommandLine, MapByPprSetsProcessesPerMachine) {
  EXPECT_EQ(parse({"--map-by", "ppr:3:node", "prog"}).procs_per_clone, 3);
  EXPECT_EQ(parse({"--npernode", "2", "prog"}).procs_per_clone, 2);
  EXPECT_EQ(parse({"--procs-per-clone", "4", "prog"}).procs_per_clone, 4);
  EXPECT_EQ(parse({"--map-by", "slot", "prog"}).procs_per_clone, 0);
  EXPECT_EQ(parse({"--map-by", "core", "prog"}).procs_per_clone, 0);
  EXPECT_TRUE(rejection({"--map-by", "ppr:2:socket", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--map-by", "ppr:0:node", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--map-by", "ppr:x:node", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--map-by", "numa", "prog"}).thrown);
}

TEST(ParseCommandLine, HostListsAreRefusedWithTheReason) {
  for (const char* opt : {"--host", "-H", "--hostfile", "--machinefile"}) {
    Rejection r = rejection({opt, "a,b", "prog"});
    EXPECT_TRUE(r.thrown) << opt;
    EXPECT_NE(r.message.find("--clones"), std::string::npos) << r.message;
  }
}

TEST(ParseCommandLine, OtherJobOptions) {
  JobSpec s = parse({"--display-map", "-q", "-v", "--nooversubscribe", "--bind-to", "none",
                     "--clones", "3", "--driver", "none", "prog"});
  EXPECT_TRUE(s.display_map);
  EXPECT_TRUE(s.quiet);
  EXPECT_EQ(s.verbose, 1);
  EXPECT_EQ(s.oversubscribe, std::optional<bool>(false));
  EXPECT_EQ(s.clones, 3);
  EXPECT_EQ(s.driver, "none");
  EXPECT_FALSE(parse({"prog"}).oversubscribe.has_value());
  EXPECT_TRUE(rejection({"--bind-to", "everything", "prog"}).thrown);
  EXPECT_TRUE(rejection({"--driver", "vmware", "prog"}).thrown);
  EXPECT_EQ(parse({"--driver", "xen", "prog"}).driver, "xen");
  EXPECT_TRUE(rejection({"--clones", "0", "prog"}).thrown);
}

TEST(ParseCommandLine, HelpTextNamesTheMainOptions) {
  std::string help = help_text();
  for (const char* opt : {"-np", "--oversubscribe", "-x VAR", "--mca", "--wdir", "--stdin",
                          "--tag-output", "--timestamp-output", "--merge-stderr-to-stdout",
                          "--output-filename", "--timeout", "--allow-run-as-root", "--version"})
    EXPECT_NE(help.find(opt), std::string::npos) << opt;
}

// --- make_plan / make_job_map -----------------------------------------------------------

JobSpec job(const std::vector<int>& nps) {
  JobSpec s;
  for (size_t i = 0; i < nps.size(); ++i)
    s.apps.push_back(AppSpec{nps[i], "app" + std::to_string(i), {}, ""});
  return s;
}

HostFacts two_cores(bool can_clone = false) {
  HostFacts h;
  h.cores = 2;
  h.can_clone = can_clone;
  h.clone_denied = can_clone ? "" : "no clone driver in this test";
  return h;
}

TEST(MakePlan, FitsOnOneMachine) {
  Plan p = make_plan(job({2}), two_cores());
  EXPECT_EQ(p.machines, 1);
  EXPECT_EQ(p.np, 2);
  EXPECT_EQ(p.procs_per_machine, 2);
  EXPECT_EQ(p.app_np, (std::vector<int>{2}));
  EXPECT_EQ(p.universe_size, 2);
  EXPECT_FALSE(p.oversubscribed);
}

TEST(MakePlan, WithoutNpOneRankPerSlot) {
  for (int np : {-1, 0}) {
    Plan p = make_plan(job({np}), two_cores());
    EXPECT_EQ(p.np, 2) << np;
    EXPECT_EQ(p.machines, 1);
  }
}

TEST(MakePlan, TooManyRanksWithoutOversubscribeIsRefused) {
  JobSpec s = job({4});
  try {
    make_plan(s, two_cores());
    FAIL() << "no error for 4 ranks on 2 slots";
  } catch (const UsageError& e) {
    std::string m = e.what();
    EXPECT_EQ(e.exit_code(), 1);
    EXPECT_NE(m.find("not enough slots"), std::string::npos) << m;
    EXPECT_NE(m.find("--oversubscribe"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
  s.oversubscribe = false;
  EXPECT_THROW(make_plan(s, two_cores()), UsageError);
}

TEST(MakePlan, OversubscribeKeepsEveryRankOnThisMachine) {
  JobSpec s = job({16});
  s.oversubscribe = true;
  Plan p = make_plan(s, two_cores());
  EXPECT_EQ(p.machines, 1);
  EXPECT_EQ(p.np, 16);
  EXPECT_EQ(p.procs_per_machine, 16);
  EXPECT_TRUE(p.oversubscribed);
  EXPECT_EQ(p.universe_size, 2);  // Debian's mpirun: MPI_UNIVERSE_SIZE stays the slot count
  // Even when cloning is possible, oversubscribing means staying here.
  EXPECT_EQ(make_plan(s, two_cores(true)).machines, 1);
}

TEST(MakePlan, MpmdCountsEveryContext) {
  JobSpec s = job({1, 2});
  Plan p = make_plan(s, two_cores(true));
  EXPECT_EQ(p.np, 3);
  EXPECT_EQ(p.app_np, (std::vector<int>{1, 2}));
  EXPECT_EQ(p.machines, 2);  // 3 ranks, 2 cores a machine
}

TEST(MakePlan, ClonesWhenTheJobDoesNotFit) {
  Plan p = make_plan(job({8}), two_cores(true));
  EXPECT_EQ(p.machines, 4);
  EXPECT_EQ(p.procs_per_machine, 2);
  EXPECT_EQ(p.universe_size, 8);
  EXPECT_FALSE(p.oversubscribed);
}

TEST(MakePlan, ExplicitClonesSpreadTheRanks) {
  JobSpec s = job({8});
  s.clones = 4;
  Plan p = make_plan(s, two_cores(true));
  EXPECT_EQ(p.machines, 4);
  EXPECT_EQ(p.procs_per_machine, 2);
  s.clones = 2;
  s.procs_per_clone = 4;
  p = make_plan(s, two_cores(true));
  EXPECT_EQ(p.machines, 2);
  EXPECT_EQ(p.procs_per_machine, 4);
  EXPECT_EQ(p.universe_size, 8);
}

TEST(MakePlan, ExplicitClonesWithoutPerMachineCountTakeTheRanksTheyAreGiven) {
  // The figure: -np 32 --clones 8 runs 4 ranks on each of 8 machines of 2 cores.
  JobSpec s = job({32});
  s.clones = 8;
  Plan p = make_plan(s, two_cores(true));
  EXPECT_EQ(p.machines, 8);
  EXPECT_EQ(p.procs_per_machine, 4);
  EXPECT_FALSE(p.oversubscribed);
  EXPECT_EQ(make_job_map(p, "ns", std::vector<std::string>(8, "h")).nodes[7].ranks,
            (std::vector<int>{28, 29, 30, 31}));
}

TEST(MakePlan, ClonesWithoutADriverAreRefused) {
  JobSpec s = job({4});
  s.clones = 2;
  try {
    make_plan(s, two_cores(false));
    FAIL() << "no error for --clones without a driver";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("no clone driver in this test"), std::string::npos) << e.what();
  }
  s.driver = "none";
  EXPECT_THROW(make_plan(s, two_cores(true)), UsageError);
}

TEST(MakePlan, ProcsPerCloneReplacesTheCoreCount) {
  JobSpec s = job({6});
  s.procs_per_clone = 3;
  Plan p = make_plan(s, two_cores(true));
  EXPECT_EQ(p.machines, 2);
  EXPECT_EQ(p.procs_per_machine, 3);
  // On one machine 3 per machine still means 3 slots.
  EXPECT_THROW(make_plan(s, two_cores(false)), UsageError);
}

TEST(MakeJobMap, OneMachineMpmd) {
  JobSpec s = job({1, 2});
  s.oversubscribe = true;
  Plan p = make_plan(s, two_cores());
  sf::pmix::JobMap m = make_job_map(p, "ns", {"hostA"});
  EXPECT_EQ(m.nspace, "ns");
  EXPECT_EQ(m.size(), 3);
  ASSERT_EQ(m.nodes.size(), 1u);
  EXPECT_EQ(m.nodes[0].hostname, "hostA");
  EXPECT_EQ(m.nodes[0].ranks, (std::vector<int>{0, 1, 2}));
  ASSERT_EQ(m.apps.size(), 2u);
  EXPECT_EQ(m.apps[0].first_rank, 0);
  EXPECT_EQ(m.apps[0].size, 1);
  EXPECT_EQ(m.apps[1].first_rank, 1);
  EXPECT_EQ(m.apps[1].size, 2);
  EXPECT_EQ(m.ranks[0].appnum, 0);
  EXPECT_EQ(m.ranks[1].appnum, 1);
  EXPECT_EQ(m.ranks[2].appnum, 1);
  EXPECT_EQ(m.ranks[1].app_rank, 0);
  EXPECT_EQ(m.ranks[2].app_rank, 1);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(m.ranks[static_cast<size_t>(r)].node, 0);
    EXPECT_EQ(m.ranks[static_cast<size_t>(r)].local_rank, r);
    EXPECT_EQ(m.ranks[static_cast<size_t>(r)].node_rank, r);
  }
  EXPECT_EQ(m.node_list(), "hostA");
  EXPECT_EQ(m.proc_list(), "0,1,2");
}

TEST(MakeJobMap, SeveralMachinesFillByBlock) {
  Plan p = make_plan(job({5}), two_cores(true));
  ASSERT_EQ(p.machines, 3);
  sf::pmix::JobMap m = make_job_map(p, "ns", {"n0", "n1", "n2"});
  ASSERT_EQ(m.nodes.size(), 3u);
  EXPECT_EQ(m.nodes[0].ranks, (std::vector<int>{0, 1}));
  EXPECT_EQ(m.nodes[1].ranks, (std::vector<int>{2, 3}));
  EXPECT_EQ(m.nodes[2].ranks, (std::vector<int>{4}));
  EXPECT_EQ(m.ranks[3].node, 1);
  EXPECT_EQ(m.ranks[3].local_rank, 1);
  EXPECT_EQ(m.ranks[4].node, 2);
  EXPECT_EQ(m.ranks[4].local_rank, 0);
  EXPECT_EQ(node_of_rank(p, 4), 2);
  EXPECT_EQ(m.node_list(), "n0,n1,n2");
  EXPECT_EQ(m.proc_list(), "0,1;2,3;4");
  EXPECT_EQ(m.universe_size, 6);
  EXPECT_THROW(make_job_map(p, "ns", {"n0"}), std::out_of_range);  // a hostname per machine
}

// --- JobOutcome -----------------------------------------------------------------------

JobOutcome::RankEnd exited(int code) {
  JobOutcome::RankEnd e;
  e.code = code;
  e.pid = 4242;
  e.host = "nodeA";
  return e;
}

JobOutcome::RankEnd killed_by(int signal) {
  JobOutcome::RankEnd e;
  e.signaled = true;
  e.signal = signal;
  e.pid = 4243;
  e.host = "nodeB";
  return e;
}

TEST(JobOutcome, AllZeroIsSuccessWithoutAMessage) {
  JobOutcome o;
  for (int r = 0; r < 4; ++r) o.rank_ended(r, exited(0));
  EXPECT_FALSE(o.failed());
  EXPECT_EQ(o.exit_code(), 0);
  EXPECT_EQ(o.closing_message("[1,1]"), "");
}

TEST(JobOutcome, TheLowestFailingRankDecides) {
  JobOutcome o;
  o.rank_ended(3, exited(9));
  o.rank_ended(2, exited(5));
  o.rank_ended(0, exited(0));
  EXPECT_TRUE(o.failed());
  EXPECT_EQ(o.exit_code(), 5);
  std::string m = o.closing_message("[77,1]");
  EXPECT_NE(m.find("Primary job  terminated normally, but 1 process returned"), std::string::npos) << m;
  EXPECT_NE(m.find("detected that one or more processes exited with non-zero status"), std::string::npos) << m;
  EXPECT_NE(m.find("Process name: [[77,1],2]\n  Exit code:    5\n"), std::string::npos) << m;
}

TEST(JobOutcome, ASignalIs128PlusItsNumber) {
  JobOutcome o;
  o.rank_ended(1, killed_by(SIGSEGV));
  EXPECT_EQ(o.exit_code(), 139);
  std::string m = o.closing_message("[1,1]");
  EXPECT_NE(m.find("noticed that process rank 1 with PID 4243 on node nodeB exited on signal 11 "
                   "(Segmentation fault)."),
            std::string::npos)
      << m;
  JobOutcome k;
  k.rank_ended(0, killed_by(SIGKILL));
  EXPECT_EQ(k.exit_code(), 137);
}

TEST(JobOutcome, FailuresDuringTeardownAreConsequences) {
  JobOutcome o;
  o.rank_ended(2, exited(4));
  o.teardown_started();
  EXPECT_TRUE(o.tearing_down());
  o.rank_ended(0, killed_by(SIGTERM));  // killed by us: not the cause
  EXPECT_EQ(o.exit_code(), 4);

  JobOutcome p;
  auto late = killed_by(SIGTERM);
  late.during_teardown = true;
  p.rank_ended(0, late);
  EXPECT_FALSE(p.failed());
  EXPECT_EQ(p.exit_code(), 0);
}

TEST(JobOutcome, AbortCodeWinsOverTheKilledRanks) {
  JobOutcome o;
  o.aborted(1, 7);
  o.teardown_started();
  o.rank_ended(0, killed_by(SIGTERM));
  o.rank_ended(1, exited(7));
  EXPECT_TRUE(o.failed());
  EXPECT_EQ(o.exit_code(), 7);
  EXPECT_EQ(o.closing_message("[1,1]"), "");  // the rank prints Open MPI's MPI_ABORT box
  o.aborted(2, 42);                           // only the first abort counts
  EXPECT_EQ(o.exit_code(), 7);
  JobOutcome zero;
  zero.aborted(0, 0);
  EXPECT_TRUE(zero.failed());
  EXPECT_EQ(zero.exit_code(), 0);  // MPI_Abort(comm, 0): mpirun exits 0 too
}

TEST(JobOutcome, TimeoutIs110WithOpenMpisMessage) {
  JobOutcome o;
  o.timed_out(3);
  o.teardown_started();
  o.rank_ended(0, killed_by(SIGTERM));
  EXPECT_EQ(o.exit_code(), kExitTimeout);
  EXPECT_EQ(kExitTimeout, 110);
  std::string m = o.closing_message("[1,1]");
  EXPECT_NE(m.find("The user-provided time limit for job execution has been reached:"), std::string::npos) << m;
  EXPECT_NE(m.find("Timeout: 3 seconds"), std::string::npos) << m;
  EXPECT_NE(m.find("MPIEXEC_TIMEOUT"), std::string::npos) << m;
}

TEST(JobOutcome, InterruptIsOneUnlessARankFailedFirst) {
  JobOutcome o;
  o.interrupted(SIGTERM);
  o.teardown_started();
  o.rank_ended(0, killed_by(SIGTERM));
  EXPECT_TRUE(o.failed());
  EXPECT_EQ(o.exit_code(), 1);
  EXPECT_EQ(o.closing_message("[1,1]"), "");

  JobOutcome f;
  f.rank_ended(1, exited(3));
  f.interrupted(SIGINT);
  EXPECT_EQ(f.exit_code(), 3);
}

TEST(JobOutcome, LaunchFailureCodesAreOpenMpis) {
  JobOutcome o;
  o.launch_failed(0, kExitCannotExecute, "cannot execute /x: No such file", "h");
  o.launch_failed(1, kExitBadWdir, "later", "h");  // the first one counts
  EXPECT_EQ(o.exit_code(), 132);
  EXPECT_EQ(o.closing_message("[1,1]"), "");  // said in one line when it happened
  EXPECT_EQ(kExitBadWdir, 135);
}

TEST(JobOutcome, ClosingMessagesAreBoxedInDashes) {
  JobOutcome o;
  o.rank_ended(0, exited(2));
  std::string m = o.closing_message("[1,1]");
  const std::string rule(74, '-');
  EXPECT_EQ(m.rfind(rule + "\n", 0), 0u) << m;
  EXPECT_EQ(m.substr(m.size() - rule.size() - 1), rule + "\n") << m;
}

// --- output ---------------------------------------------------------------------------

TEST(LineAssembler, SplitsLinesAndKeepsTheTail) {
  LineAssembler a;
  EXPECT_TRUE(a.feed("").empty());
  EXPECT_EQ(a.feed("one\ntw"), (std::vector<std::string>{"one\n"}));
  EXPECT_TRUE(a.has_partial());
  EXPECT_EQ(a.feed("o\nthree\n\nfo"), (std::vector<std::string>{"two\n", "three\n", "\n"}));
  EXPECT_EQ(a.take_partial(), "fo");
  EXPECT_FALSE(a.has_partial());
  EXPECT_EQ(a.take_partial(), "");
  EXPECT_EQ(a.feed("ur\n"), (std::vector<std::string>{"ur\n"}));
}

TEST(LineAssembler, KeepsBinaryBytes) {
  LineAssembler a;
  std::string data("a\0b\n\xff", 5);
  auto lines = a.feed(data);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], std::string("a\0b\n", 4));
  EXPECT_EQ(a.take_partial(), "\xff");
}

// A fixed local time for timestamps: 2009-04-01 12:34:56 in the test's time zone (UTC).
class OutputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* tz = getenv("TZ");
    saved_tz_ = tz ? std::optional<std::string>(tz) : std::nullopt;
    setenv("TZ", "UTC", 1);
    tzset();
    dir_ = fs::temp_directory_path() / ("sft-mpirun-unit-" + std::to_string(getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
  }
  void TearDown() override {
    if (saved_tz_)
      setenv("TZ", saved_tz_->c_str(), 1);
    else
      unsetenv("TZ");
    tzset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  OutputSink sink(OutputOptions o) {
    return OutputSink(std::move(o),
                      [this](int fd, const std::string& bytes) { written_.emplace_back(fd, bytes); },
                      [] { return std::time_t{1238589296}; });  // Wed Apr  1 12:34:56 2009 UTC
  }
  std::string all(int fd) const {
    std::string out;
    for (auto& [f, b] : written_)
      if (f == fd) out += b;
    return out;
  }
  static std::string read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }

  std::vector<std::pair<int, std::string>> written_;
  fs::path dir_;
  std::optional<std::string> saved_tz_;
};

TEST_F(OutputTest, PrefixShapes) {
  const std::time_t t = 1238589296;
  EXPECT_EQ(line_prefix({}, 3, Stream::Stdout, t), "");
  EXPECT_EQ(line_prefix({true, false, false, ""}, 3, Stream::Stdout, t), "[1,3]<stdout>:");
  EXPECT_EQ(line_prefix({true, false, false, ""}, 12, Stream::Stderr, t), "[1,12]<stderr>:");
  EXPECT_EQ(line_prefix({false, true, false, ""}, 0, Stream::Stdout, t), "Wed Apr  1 12:34:56 2009<stdout>:");
  EXPECT_EQ(line_prefix({true, true, false, ""}, 1, Stream::Stderr, t),
            "Wed Apr  1 12:34:56 2009[1,1]<stderr>:");
}

TEST_F(OutputTest, PlainLinesPassThroughWholeAndInOneWrite) {
  OutputSink s = sink({});
  EXPECT_TRUE(s.write(0, Stream::Stdout, "hello\nwor"));  // "wor" is pending
  EXPECT_TRUE(s.write(0, Stream::Stdout, "ld"));          // still no newline
  EXPECT_FALSE(s.write(0, Stream::Stdout, "!\n"));
  s.write(1, Stream::Stderr, "oops\n");
  ASSERT_EQ(written_.size(), 3u);
  EXPECT_EQ(written_[0], (std::pair<int, std::string>{1, "hello\n"}));
  EXPECT_EQ(written_[1], (std::pair<int, std::string>{1, "world!\n"}));
  EXPECT_EQ(written_[2], (std::pair<int, std::string>{2, "oops\n"}));
}

TEST_F(OutputTest, LinesOfTwoRanksNeverMix) {
  OutputSink s = sink({true, false, false, ""});
  s.write(0, Stream::Stdout, "aaa");
  s.write(1, Stream::Stdout, "bbb\n");
  s.write(0, Stream::Stdout, "AAA\n");
  EXPECT_EQ(all(1), "[1,1]<stdout>:bbb\n[1,0]<stdout>:aaaAAA\n");
}

TEST_F(OutputTest, TaggedStderrAndMergedStderr) {
  OutputSink tagged = sink({true, false, false, ""});
  tagged.write(2, Stream::Stderr, "e\n");
  EXPECT_EQ(all(2), "[1,2]<stderr>:e\n");
  written_.clear();
  OutputSink merged = sink({true, false, true, ""});
  merged.write(2, Stream::Stderr, "e\n");
  merged.write(2, Stream::Stdout, "o\n");
  EXPECT_EQ(all(2), "");
  EXPECT_EQ(all(1), "[1,2]<stdout>:e\n[1,2]<stdout>:o\n");
}

TEST_F(OutputTest, TimestampedLines) {
  OutputSink s = sink({false, true, false, ""});
  s.write(0, Stream::Stdout, "x\n");
  EXPECT_EQ(all(1), "Wed Apr  1 12:34:56 2009<stdout>:x\n");
}

TEST_F(OutputTest, APromptIsFlushedAndItsLineIsNotTaggedTwice) {
  OutputSink s = sink({true, false, false, ""});
  EXPECT_TRUE(s.write(0, Stream::Stdout, "name? "));
  EXPECT_EQ(all(1), "");  // nothing until the caller's quiet timer fires
  s.flush_partial(0, Stream::Stdout);
  EXPECT_EQ(all(1), "[1,0]<stdout>:name? ");
  s.flush_partial(0, Stream::Stdout);  // nothing pending: nothing more
  EXPECT_FALSE(s.write(0, Stream::Stdout, "joe\nnext\n"));
  EXPECT_EQ(all(1), "[1,0]<stdout>:name? joe\n[1,0]<stdout>:next\n");
}

TEST_F(OutputTest, CloseWritesTheUnfinishedTail) {
  OutputSink s = sink({});
  s.write(0, Stream::Stdout, "probe> ");
  s.close(0, Stream::Stdout);
  EXPECT_EQ(all(1), "probe> ");
  s.close(1, Stream::Stderr);  // a stream that never wrote
  EXPECT_EQ(written_.size(), 1u);
}

TEST_F(OutputTest, OutputFilenameLayoutAndRawCopies) {
  OutputSink s = sink({true, false, false, dir_.string()});
  ASSERT_EQ(s.prepare_files(3), "");
  for (int r = 0; r < 3; ++r)
    for (const char* f : {"stdout", "stderr"})
      EXPECT_TRUE(fs::is_regular_file(dir_ / "1" / ("rank." + std::to_string(r)) / f)) << r << f;
  s.write(1, Stream::Stdout, "one\ntwo");
  s.write(1, Stream::Stderr, "err\n");
  s.close(1, Stream::Stdout);
  s.close(1, Stream::Stderr);
  // The files get the rank's bytes without tags; the terminal gets them tagged.
  EXPECT_EQ(read(dir_ / "1" / "rank.1" / "stdout"), "one\ntwo");
  EXPECT_EQ(read(dir_ / "1" / "rank.1" / "stderr"), "err\n");
  EXPECT_EQ(read(dir_ / "1" / "rank.0" / "stdout"), "");
  EXPECT_EQ(all(1), "[1,1]<stdout>:one\n[1,1]<stdout>:two");
  EXPECT_EQ(all(2), "[1,1]<stderr>:err\n");
}

TEST_F(OutputTest, OutputFilenameReportsAnUnusableDirectory) {
  fs::create_directories(dir_);
  std::ofstream(dir_ / "file") << "x";
  OutputSink s = sink({false, false, false, (dir_ / "file").string()});
  std::string err = s.prepare_files(1);
  EXPECT_NE(err.find("cannot create output directory"), std::string::npos) << err;
  OutputSink none = sink({});
  EXPECT_EQ(none.prepare_files(4), "");  // no --output-filename: nothing to do
}

}  // namespace

// --- Slurm allocations ---------------------------------------------------------------------

TEST(SlurmAllocation, ExpandsCompressedPerNodeCounts) {
  EXPECT_EQ(expand_node_counts("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(expand_node_counts("4"), (std::vector<int>{4}));
  EXPECT_EQ(expand_node_counts("1,3(x2)"), (std::vector<int>{1, 3, 3}));
  for (const char* bad : {"", "x", "2(x", "2(x3", "2(3)", "-1", "2,,1", "2(xa)"})
    EXPECT_THROW(expand_node_counts(bad), std::invalid_argument) << bad;
}

TEST(SlurmAllocation, ReadFromTheEnvironmentWithSlurmsExpander) {
  std::map<std::string, std::string> env = {{"SLURM_JOB_ID", "42"},
                                            {"SLURM_JOB_NODELIST", "node[1-3]"},
                                            {"SLURM_TASKS_PER_NODE", "2(x2),1"}};
  auto getenv = [&](const char* k) -> const char* {
    auto it = env.find(k);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  std::string asked;
  auto expand = [&](const std::string& list) {
    asked = list;
    return std::vector<std::string>{"node1", "node2", "node3"};
  };
  auto a = read_slurm_allocation(getenv, expand);
  ASSERT_TRUE(a);
  EXPECT_EQ(asked, "node[1-3]");
  EXPECT_EQ(a->job_id, "42");
  EXPECT_EQ(a->nodes, (std::vector<std::string>{"node1", "node2", "node3"}));
  EXPECT_EQ(a->slots, (std::vector<int>{2, 2, 1}));

  env["SLURM_TASKS_PER_NODE"] = "2(x2)";  // two counts for three nodes
  try {
    read_slurm_allocation(getenv, expand);
    FAIL() << "a count per node that does not match the nodes was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("SLURM_TASKS_PER_NODE"), std::string::npos) << e.what();
  }
  env.erase("SLURM_TASKS_PER_NODE");
  env["SLURM_JOB_CPUS_PER_NODE"] = "4(x3)";  // no tasks given: the CPUs are the slots
  EXPECT_EQ(read_slurm_allocation(getenv, expand)->slots, (std::vector<int>{4, 4, 4}));
  env.erase("SLURM_JOB_NODELIST");
  EXPECT_THROW(read_slurm_allocation(getenv, expand), std::runtime_error);
  env.clear();
  EXPECT_FALSE(read_slurm_allocation(getenv, expand));
}

TEST(SlurmAllocation, TaskPluginDecidesCpuBinding) {
  EXPECT_TRUE(task_plugin_binds(std::nullopt));  // no slurm.conf here: assume it binds
  EXPECT_FALSE(task_plugin_binds(std::string("ClusterName=x\nTaskPlugin=task/none\n")));
  EXPECT_FALSE(task_plugin_binds(std::string("ClusterName=x\n")));  // Slurm's default: none
  EXPECT_TRUE(task_plugin_binds(std::string("TaskPlugin=task/affinity,task/cgroup\n")));
  EXPECT_TRUE(task_plugin_binds(std::string("  taskplugin=task/cgroup # comment\n")));
  EXPECT_FALSE(task_plugin_binds(std::string("#TaskPlugin=task/affinity\n")));
}

TEST(AllocationPlan, FillsEachNodesSlotsInOrder) {
  Plan p = make_allocation_plan(job({8}), {2, 2, 2, 2});
  EXPECT_EQ(p.np, 8);
  EXPECT_EQ(p.machines, 4);
  EXPECT_EQ(p.node_ranks, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(p.universe_size, 8);
  EXPECT_FALSE(p.oversubscribed);
  auto map = make_job_map(p, "ns", {"node1", "node2", "node3", "node4"});
  for (int r = 0; r < 8; ++r) EXPECT_EQ(map.ranks[static_cast<size_t>(r)].node, r / 2) << r;

  // Fewer ranks than slots: the first nodes only, by slot.
  p = make_allocation_plan(job({3}), {2, 2, 2, 2});
  EXPECT_EQ(p.machines, 2);
  EXPECT_EQ(p.node_ranks, (std::vector<int>{2, 1}));
  // Unequal slots, and no -np: one rank per slot.
  p = make_allocation_plan(job({-1}), {3, 1, 2});
  EXPECT_EQ(p.np, 6);
  EXPECT_EQ(p.node_ranks, (std::vector<int>{3, 1, 2}));
  map = make_job_map(p, "ns", {"a", "b", "c"});
  EXPECT_EQ(map.nodes[1].ranks, (std::vector<int>{3}));
  EXPECT_EQ(map.nodes[2].ranks, (std::vector<int>{4, 5}));
  // --npernode P: P slots on every node.
  JobSpec s = job({-1});
  s.procs_per_clone = 1;
  p = make_allocation_plan(s, {2, 2, 2});
  EXPECT_EQ(p.node_ranks, (std::vector<int>{1, 1, 1}));
}

TEST(AllocationPlan, ClonesForkEveryNodeUsedIntoMachinesByBlock) {
  JobSpec s = job({8});
  s.clones = 2;
  Plan p = make_allocation_plan(s, {4, 4, 4});  // 8 ranks fill node 0 and node 1
  EXPECT_EQ(p.machines, 4);
  EXPECT_EQ(p.node_ranks, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(p.node_slots, (std::vector<int>{2, 2, 2, 2}));
  EXPECT_EQ(p.machine_node, (std::vector<int>{0, 0, 1, 1}));
  EXPECT_EQ(p.machine_clone, (std::vector<int>{0, 1, 0, 1}));
  EXPECT_EQ(p.universe_size, 12);
  EXPECT_EQ(allocation_nodes_used(p), 2);
  EXPECT_EQ(ranks_on_allocation_node(p, 1), 4);
  EXPECT_EQ(machine_hostnames(p, {"node1", "node2", "node3"}),
            (std::vector<std::string>{"node1", "node1-sf1", "node2", "node2-sf1"}));
  auto map = make_job_map(p, "ns", machine_hostnames(p, {"node1", "node2", "node3"}));
  EXPECT_EQ(map.nodes[1].hostname, "node1-sf1");
  EXPECT_EQ(map.nodes[1].ranks, (std::vector<int>{2, 3}));
  EXPECT_EQ(map.ranks[3].local_rank, 1);

  // A node with fewer ranks than C gets fewer machines; ceil(ranks / C) per machine, by block.
  s = job({7});
  s.clones = 3;
  p = make_allocation_plan(s, {5, 2});
  EXPECT_EQ(p.node_ranks, (std::vector<int>{2, 2, 1, 1, 1}));
  EXPECT_EQ(p.machine_node, (std::vector<int>{0, 0, 0, 1, 1}));
  EXPECT_EQ(p.machine_clone, (std::vector<int>{0, 1, 2, 0, 1}));

  // --procs-per-clone P: P per machine, C x P slots per node.
  s = job({-1});
  s.clones = 2;
  s.procs_per_clone = 3;
  p = make_allocation_plan(s, {1, 1});
  EXPECT_EQ(p.np, 12);
  EXPECT_EQ(p.node_ranks, (std::vector<int>{3, 3, 3, 3}));
  EXPECT_EQ(p.machine_node, (std::vector<int>{0, 0, 1, 1}));

  // --clones 1 is the nodes themselves.
  s = job({4});
  s.clones = 1;
  p = make_allocation_plan(s, {2, 2});
  EXPECT_TRUE(p.machine_node.empty());
  EXPECT_EQ(p.node_ranks, (std::vector<int>{2, 2}));
  EXPECT_EQ(machine_hostnames(p, {"a", "b"}), (std::vector<std::string>{"a", "b"}));
}

TEST(AllocationPlan, MoreRanksThanSlotsNeedOversubscribeAndSpreadEvenly) {
  try {
    make_allocation_plan(job({9}), {2, 2, 2, 2});
    FAIL() << "9 ranks on 8 slots were planned without --oversubscribe";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("not enough slots"), std::string::npos) << e.what();
  }
  JobSpec s = job({11});
  s.oversubscribe = true;
  Plan p = make_allocation_plan(s, {2, 2, 2, 2});
  EXPECT_TRUE(p.oversubscribed);
  EXPECT_EQ(p.node_ranks, (std::vector<int>{3, 3, 3, 2}));  // 3 extra: the first nodes take one
  EXPECT_EQ(p.universe_size, 8);
}

TEST(SlurmRequest, SallocOptionsFollowTheJobsShape) {
  using V = std::vector<std::string>;
  JobSpec s = job({8});
  EXPECT_EQ(salloc_options(s, "n"), (V{"--job-name=n", "--ntasks=8"}));
  s.clones = 4;
  EXPECT_EQ(salloc_options(s, "n"), (V{"--job-name=n", "--nodes=4", "--ntasks=8"}));
  s.procs_per_clone = 2;  // nodes and tasks per node say it all
  EXPECT_EQ(salloc_options(s, "n"), (V{"--job-name=n", "--nodes=4", "--ntasks-per-node=2"}));
  s = job({-1});
  s.clones = 3;  // one rank per task of 3 nodes
  EXPECT_EQ(salloc_options(s, "n"), (V{"--job-name=n", "--nodes=3"}));
  s.clones = 0;
  EXPECT_THROW(salloc_options(s, "n"), UsageError);  // nothing says how much to ask for
  s = job({2, 3});
  s.slurm_partition = "debug";
  s.slurm_account = "proj";
  s.slurm_time_limit = "10";
  EXPECT_EQ(salloc_options(s, "n"),
            (V{"--job-name=n", "--ntasks=5", "--partition=debug", "--account=proj", "--time=10"}));
}

TEST(SlurmRequest, PartitionAccountAndTimeLimitFromOptionsOrEnvironment) {
  std::map<std::string, std::string> env = {{"SF_SLURM_PARTITION", "env-part"},
                                            {"SF_SLURM_ACCOUNT", "env-acct"}};
  auto getenv = [&](const char* k) -> const char* {
    auto it = env.find(k);
    return it == env.end() ? nullptr : it->second.c_str();
  };
  JobSpec s = parse_command_line({"--allocator", "slurm", "--partition", "p1", "--time-limit", "5", "./a"}, getenv);
  EXPECT_EQ(s.allocator, "slurm");
  EXPECT_EQ(s.slurm_partition, "p1");  // the option wins
  EXPECT_EQ(s.slurm_account, "env-acct");
  EXPECT_EQ(s.slurm_time_limit, "5");
  EXPECT_THROW(parse_command_line({"--allocator", "ego", "./a"}, getenv), UsageError);
}
