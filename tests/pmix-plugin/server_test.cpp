// pmix-plugin on its own: the job map's strings (unit), and a real OpenPMIx 4.2 server with
// real PMIx clients (component): this test program runs itself again as the clients (with the
// environment prepare_rank gives them), and a recording PmixHost checks that their calls
// arrive as upcalls with the right arguments and that the host's answers reach them.
#include <gtest/gtest.h>
#include <pmix.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "pmix-plugin/job_map.hpp"
#include "pmix-plugin/server.hpp"
#include "temp_dir.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sf::pmix::JobMap;

constexpr const char* kClientMode = "SFT_PMIX_CLIENT";  // what the client part of this program does

// ---- the client side (runs in a child: this program again) ---------------------------------

int run_client(const std::string& what) {
  pmix_proc_t me;
  if (PMIx_Init(&me, nullptr, 0) != PMIX_SUCCESS) return 10;
  int rc = 0;
  if (what == "fence") {
    // A fence over the whole job, collecting data: the server hands it to its host.
    pmix_info_t info;
    bool collect = true;
    PMIX_INFO_LOAD(&info, PMIX_COLLECT_DATA, &collect, PMIX_BOOL);
    pmix_proc_t all;
    PMIX_PROC_LOAD(&all, me.nspace, PMIX_RANK_WILDCARD);
    if (PMIx_Fence(&all, 1, &info, 1) != PMIX_SUCCESS) rc = 11;
  } else if (what == "abort") {
    PMIx_Abort(7, "the test's abort", nullptr, 0);  // released by the host's answer
  } else if (what == "publish") {
    pmix_info_t info;
    PMIX_INFO_LOAD(&info, "sft-key", "sft-value", PMIX_STRING);
    if (PMIx_Publish(&info, 1) != PMIX_SUCCESS) rc = 12;
  }
  if (PMIx_Finalize(nullptr, 0) != PMIX_SUCCESS && rc == 0) rc = 13;
  return rc;
}

// ---- the server side ------------------------------------------------------------------------

// Records every upcall; answers fences with a fixed blob, aborts and publishes with success.
class RecordingHost : public sf::pmix::PmixHost {
 public:
  void client_connected(uint32_t rank) override { add("connected " + std::to_string(rank)); }
  void client_finalized(uint32_t rank) override { add("finalized " + std::to_string(rank)); }
  void abort(uint32_t rank, int status, std::string message, sf::pmix::OpDone done) override {
    add("abort " + std::to_string(rank) + " " + std::to_string(status) + " " + message);
    done(sf::pmix::kSuccess);
  }
  void fence(sf::pmix::FenceRequest request, sf::pmix::DataDone done) override {
    std::string who;
    for (const auto& p : request.participants)
      who += p.rank == sf::pmix::kRankWildcard ? std::string("*") : std::to_string(p.rank);
    add("fence " + who + (request.collect_data ? " collect" : " nocollect") +
        (request.data.empty() ? " empty" : " data"));
    done(sf::pmix::kSuccess, request.data);  // one node: the result is its own contribution
  }
  void direct_modex(uint32_t rank, sf::pmix::DataDone done) override {
    add("dmodex " + std::to_string(rank));
    done(PMIX_ERR_NOT_FOUND, {});
  }
  void publish(sf::pmix::ProcId publisher, std::vector<sf::pmix::PackedValue> values,
               sf::pmix::OpDone done) override {
    std::string keys;
    for (const auto& v : values) keys += v.key + (v.packed.empty() ? "(empty)" : "") + " ";
    add("publish " + std::to_string(publisher.rank) + " " + keys);
    done(sf::pmix::kSuccess);
  }
  void lookup(sf::pmix::ProcId, std::vector<std::string>, bool, sf::pmix::LookupDone done) override {
    add("lookup");
    done(PMIX_ERR_NOT_FOUND, {});
  }
  void unpublish(sf::pmix::ProcId, std::vector<std::string>, sf::pmix::OpDone done) override {
    add("unpublish");
    done(sf::pmix::kSuccess);
  }

  // Waits until `count` events that start with `prefix` were seen (or the deadline).
  bool wait_for(const std::string& prefix, size_t count, std::chrono::milliseconds deadline) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, deadline, [&] { return count_locked(prefix) >= count; });
  }
  std::vector<std::string> events() {
    std::lock_guard lock(mutex_);
    return events_;
  }

 private:
  void add(std::string e) {
    {
      std::lock_guard lock(mutex_);
      events_.push_back(std::move(e));
    }
    changed_.notify_all();
  }
  size_t count_locked(const std::string& prefix) const {
    size_t n = 0;
    for (const auto& e : events_) n += e.rfind(prefix, 0) == 0;
    return n;
  }
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> events_;
};

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& e : v) s += e + "\n";
  return s;
}

// One PMIx server for the whole program (the server library is process-wide), one job of
// two ranks on this node per test, each in its own namespace.
class PmixServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    session_dir_ = new sf::test::TempDir("pmix");
    ASSERT_TRUE(session_dir_->ok()) << session_dir_->error();
    setenv("PMIX_MCA_gds", "hash", 1);
    // Fences among ranks of one node reach the host only without this optimisation.
    setenv("PMIX_MCA_pmix_server_fence_localonly_opt", "0", 1);
    host_ = new RecordingHost;
    auto server = sf::pmix::PmixServer::start({session_dir_->path(), "sft-node", 0}, *host_);
    ASSERT_TRUE(server) << server.error().message;
    server_ = server->release();
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete host_;
    host_ = nullptr;
    delete session_dir_;
    session_dir_ = nullptr;
  }

  // Registers a 2-rank job and runs both ranks as clients doing `what`; returns their statuses.
  std::vector<int> run_job(const std::string& what) {
    JobMap map;
    map.nspace = "sft-job-" + std::to_string(++jobs_);
    map.universe_size = 2;
    map.nodes.push_back({"sft-node", {0, 1}});
    map.apps.push_back({0, 2});
    for (int r = 0; r < 2; ++r) map.ranks.push_back({0, 0, r, r, r});
    auto registered = server_->register_job(map, 0);
    EXPECT_TRUE(registered) << registered.error().message;
    std::vector<pid_t> pids;
    for (uint32_t r = 0; r < 2; ++r) {
      std::vector<std::string> env;
      for (char** e = environ; *e; ++e) env.emplace_back(*e);
      auto pmix_env = server_->prepare_rank(r, getuid(), getgid());
      EXPECT_TRUE(pmix_env) << pmix_env.error().message;
      if (pmix_env) env.insert(env.end(), pmix_env->begin(), pmix_env->end());
      env.push_back(std::string(kClientMode) + "=" + what);
      std::vector<char*> envp;
      for (auto& e : env) envp.push_back(e.data());
      envp.push_back(nullptr);
      char self[] = "/proc/self/exe";
      char* argv[] = {self, nullptr};
      pid_t pid = fork();
      if (pid == 0) {
        execve("/proc/self/exe", argv, envp.data());
        _exit(127);
      }
      pids.push_back(pid);
    }
    std::vector<int> statuses;
    for (pid_t p : pids) {
      int st = 0;
      waitpid(p, &st, 0);
      statuses.push_back(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
    }
    return statuses;
  }

  static inline sf::test::TempDir* session_dir_ = nullptr;
  static inline RecordingHost* host_ = nullptr;
  static inline sf::pmix::PmixServer* server_ = nullptr;
  static inline int jobs_ = 0;
};

TEST(JobMapStrings, NodeAndProcListsInNodeOrder) {
  JobMap map;
  map.nodes = {{"a", {0, 1}}, {"b", {2}}, {"c", {3, 4, 5}}};
  EXPECT_EQ(map.node_list(), "a,b,c");
  EXPECT_EQ(map.proc_list(), "0,1;2;3,4,5");
  JobMap empty;
  EXPECT_EQ(empty.node_list(), "");
  EXPECT_EQ(empty.proc_list(), "");
}

TEST_F(PmixServerTest, ClientsConnectFenceThroughTheHostAndFinalize) {
  EXPECT_EQ(run_job("fence"), (std::vector<int>{0, 0})) << joined(host_->events());
  ASSERT_TRUE(host_->wait_for("finalized", 2, 10s)) << joined(host_->events());
  auto events = host_->events();
  std::multiset<std::string> seen(events.begin(), events.end());
  EXPECT_EQ(seen.count("connected 0"), 1u) << joined(events);
  EXPECT_EQ(seen.count("connected 1"), 1u) << joined(events);
  // One fence for the node, over the whole namespace, with the ranks' data.
  EXPECT_EQ(seen.count("fence * collect data"), 1u) << joined(events);
}

TEST_F(PmixServerTest, AnAbortReachesTheHostWithItsStatusAndMessage) {
  auto statuses = run_job("abort");
  ASSERT_TRUE(host_->wait_for("abort", 2, 10s)) << joined(host_->events());
  std::multiset<std::string> seen;
  for (const auto& e : host_->events()) seen.insert(e);
  EXPECT_EQ(seen.count("abort 0 7 the test's abort"), 1u) << joined(host_->events());
  EXPECT_EQ(seen.count("abort 1 7 the test's abort"), 1u) << joined(host_->events());
  EXPECT_EQ(statuses, (std::vector<int>{0, 0}));  // the host released them: they finalized
}

TEST_F(PmixServerTest, APublishReachesTheHostWithItsKeys) {
  EXPECT_EQ(run_job("publish"), (std::vector<int>{0, 0})) << joined(host_->events());
  ASSERT_TRUE(host_->wait_for("publish", 2, 10s)) << joined(host_->events());
  std::multiset<std::string> seen;
  for (const auto& e : host_->events()) seen.insert(e);
  EXPECT_EQ(seen.count("publish 0 sft-key "), 1u) << joined(host_->events());
  EXPECT_EQ(seen.count("publish 1 sft-key "), 1u) << joined(host_->events());
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* what = getenv(kClientMode)) return run_client(what);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
