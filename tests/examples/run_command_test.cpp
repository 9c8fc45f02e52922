// Tests of the shared test support (tests/common/run_command.hpp) with real processes.
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>

#include "run_command.hpp"

namespace {

using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::run_command;

constexpr const char* kMarkerName = "SFT_RUN_COMMAND_MARKER";

class RunCommand : public ::testing::Test {
 protected:
  CommandOptions options() const {
    CommandOptions o;
    o.timeout = 30s;
    o.environment = {std::string(kMarkerName) + "=" + marker_};
    return o;
  }
  std::vector<sf::test::ProcessEntry> leftovers() const {
    return sf::test::processes_with_environment(kMarkerName, marker_);
  }
  void TearDown() override {
    auto left = sf::test::wait_for_no_processes([&] { return leftovers(); }, 5s);
    for (const auto& p : left) ::kill(p.pid, SIGKILL);  // clean up even when failing
    EXPECT_TRUE(left.empty()) << sf::test::describe(left);
  }
  std::string marker_ = sf::test::unique_marker();
};

TEST_F(RunCommand, CapturesStdoutStderrAndExitCode) {
  auto r = run_command({"sh", "-c", "echo out; echo err >&2; exit 3"}, options());
  EXPECT_TRUE(r.exited_with(3)) << r.describe();
  EXPECT_EQ(r.stdout_text, "out\n");
  EXPECT_EQ(r.stderr_text, "err\n");
  EXPECT_EQ(r.term_signal, 0);
  EXPECT_FALSE(r.output_held_open_after_exit);
}

TEST_F(RunCommand, ReportsTheSignalThatKilledTheCommand) {
  auto r = run_command({"sh", "-c", "kill -TERM $$"}, options());
  EXPECT_EQ(r.term_signal, SIGTERM) << r.describe();
  EXPECT_EQ(r.exit_code, -1);
}

TEST_F(RunCommand, FeedsStdinDataLargerThanAPipe) {
  std::string data(1 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('A' + i % 23);
  auto o = options();
  o.stdin_data = data;
  auto r = run_command({"cat"}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.stderr_text;
  EXPECT_TRUE(r.stdout_text == data) << "got " << r.stdout_text.size() << " bytes";
}

TEST_F(RunCommand, StdinIsDevNullByDefault) {
  auto r = run_command({"cat"}, options());
  EXPECT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(r.stdout_text, "");
}

TEST_F(RunCommand, TimeoutKillsTheWholeProcessGroup) {
  auto o = options();
  o.timeout = 300ms;
  auto r = run_command({"sh", "-c", "sleep 60 & sleep 60"}, o);
  EXPECT_TRUE(r.timed_out) << r.describe();
  EXPECT_EQ(r.term_signal, SIGKILL);
  EXPECT_FALSE(r.exited_with(0));
  // TearDown checks that the backgrounded sleep died with its group.
}

TEST_F(RunCommand, AMissingProgramIsAStartError) {
  auto r = run_command({"sft-no-such-program"}, options());
  EXPECT_NE(r.start_error.find("sft-no-such-program: not found in PATH"), std::string::npos) << r.describe();
  auto bad_path = run_command({"/nonexistent/sft-program"}, options());
  EXPECT_NE(bad_path.start_error.find("No such file or directory"), std::string::npos) << bad_path.describe();
  EXPECT_FALSE(bad_path.exited_with(127));
}

TEST_F(RunCommand, AnUnusableWorkingDirectoryIsAStartError) {
  auto o = options();
  o.working_directory = "/nonexistent-sft-dir";
  auto r = run_command({"pwd"}, o);
  EXPECT_NE(r.start_error.find("/nonexistent-sft-dir"), std::string::npos) << r.describe();
}

TEST_F(RunCommand, SetsWorkingDirectoryAndEnvironment) {
  auto o = options();
  o.working_directory = "/tmp";
  o.environment.push_back("SFT_VALUE=x y");
  o.unset_environment.push_back("HOME");
  auto r = run_command({"sh", "-c", "echo \"$(pwd)|$SFT_VALUE|${HOME-unset}\""}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(r.stdout_text, "/tmp|x y|unset\n");
}

TEST_F(RunCommand, InteractiveStdinAndWaitingForOutput) {
  auto o = options();
  o.keep_stdin_open = true;
  sf::test::RunningCommand command({"sh", "-c", "printf 'ready> '; read x; echo got $x"}, o);
  ASSERT_TRUE(command.started()) << command.start_error();
  ASSERT_TRUE(command.wait_for_output("ready> ", 10s)) << command.stdout_so_far();
  EXPECT_TRUE(command.write_stdin("hello\n"));
  command.close_stdin();
  auto r = command.wait(10s);
  EXPECT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(r.stdout_text, "ready> got hello\n");
}

TEST_F(RunCommand, WritingToAStdinNobodyReadsIsNotFatal) {
  auto o = options();
  o.keep_stdin_open = true;
  sf::test::RunningCommand command({"true"}, o);
  ASSERT_TRUE(command.started());
  auto r = command.wait(10s);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  // The stdin pipe is closed by wait(); before that, a write after exit gets EPIPE.
  sf::test::RunningCommand second({"true"}, o);
  ASSERT_TRUE(second.started());
  ASSERT_FALSE(second.wait_for_output("never", 300ms));
  EXPECT_FALSE(second.write_stdin(std::string(1 << 20, 'x')));
  EXPECT_TRUE(second.wait(10s).exited_with(0));
}

TEST_F(RunCommand, NoticesOutputHeldOpenByAnOrphan) {
  auto o = options();
  o.drain_after_exit = 200ms;
  o.own_process_group = false;  // so that TearDown, not the group kill, has to find it
  auto r = run_command({"sh", "-c", "sleep 30 & echo started"}, o);
  EXPECT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_TRUE(r.output_held_open_after_exit) << r.describe();
  auto left = leftovers();
  ASSERT_EQ(left.size(), 1u) << sf::test::describe(left);
  EXPECT_EQ(left[0].name, "sleep");
  EXPECT_EQ(left[0].command_line, "sleep 30");
  ::kill(left[0].pid, SIGKILL);
}

TEST_F(RunCommand, SignalsAndFindsARunningCommandByName) {
  sf::test::RunningCommand command({"sleep", "30"}, options());
  ASSERT_TRUE(command.started());
  auto named = sf::test::processes_named("sleep");
  EXPECT_TRUE(std::any_of(named.begin(), named.end(), [&](const auto& p) { return p.pid == command.pid(); }))
      << sf::test::describe(named);
  ASSERT_TRUE(command.send_signal(SIGTERM));
  auto r = command.wait(10s);
  EXPECT_EQ(r.term_signal, SIGTERM) << r.describe();
  EXPECT_FALSE(command.send_signal(SIGTERM));
}

TEST_F(RunCommand, DestructorKillsACommandStillRunning) {
  { sf::test::RunningCommand command({"sh", "-c", "sleep 30 & sleep 30"}, options()); }
  // TearDown checks that both sleeps are gone.
}

TEST(UniqueMarker, DiffersBetweenCalls) { EXPECT_NE(sf::test::unique_marker(), sf::test::unique_marker()); }

}  // namespace
