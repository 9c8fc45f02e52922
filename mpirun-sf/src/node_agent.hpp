// The node agent: one per node of a job. It runs the node's PMIx server, forks the node's
// ranks, forwards their output, exits, aborts, fences and modex requests to the coordinator,
// and kills the ranks when told to. All its state lives on one event loop; PMIx upcalls are
// posted onto it.
#pragma once

#include <sys/types.h>

#include <utility>  // before Asio: Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <boost/asio.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "launch_context.hpp"
#include "link.hpp"
#include "pmix-plugin/server.hpp"

namespace sf::mpirun {

class NodeAgent : public pmix::PmixHost {
 public:
  NodeAgent(boost::asio::io_context& io, const LaunchContext& ctx, int node, Link& uplink);
  ~NodeAgent() override;

  // Starts the PMIx server and the local ranks: prepare, then launch_ranks. Throws
  // std::runtime_error.
  void start(const std::string& session_dir);
  // Starts the PMIx server and registers the job. Throws std::runtime_error.
  void prepare(const std::string& session_dir);
  // Starts the local ranks (once; not after a kill).
  void launch_ranks();
  // A message from the coordinator.
  void deliver(Envelope message);
  // Stdin for a local rank (node 0 only); `done` is called when written or dropped.
  void write_stdin(int rank, std::string data, bool eof, std::function<void()> done);
  // Kills every local rank now (SIGKILL), without waiting: for the launcher's last resort.
  void kill_now();
  bool finished() const { return finished_; }

  // pmix::PmixHost (called on PMIx's thread: post and return).
  void client_connected(uint32_t rank) override;
  void client_finalized(uint32_t rank) override;
  void abort(uint32_t rank, int status, std::string message, pmix::OpDone done) override;
  void fence(pmix::FenceRequest request, pmix::DataDone done) override;
  void direct_modex(uint32_t rank, pmix::DataDone done) override;
  void publish(pmix::ProcId publisher, std::vector<pmix::PackedValue> values,
               pmix::OpDone done) override;
  void lookup(pmix::ProcId requester, std::vector<std::string> keys, bool wait,
              pmix::LookupDone done) override;
  void unpublish(pmix::ProcId publisher, std::vector<std::string> keys,
                 pmix::OpDone done) override;

 private:
  struct StdinChunk {
    std::string data;
    bool eof;
    std::function<void()> done;
  };
  struct LocalRank {
    int rank = 0;
    pid_t pid = -1;
    bool exited = false;
    int open_streams = 0;
    std::unique_ptr<boost::asio::posix::stream_descriptor> out, err, in;
    std::deque<StdinChunk> stdin_queue;
    bool stdin_writing = false;
  };

  void launch(int rank);
  void read_stream(LocalRank& r, int stream);
  void reap();
  void write_next_stdin(LocalRank& r);
  // SIGTERM to every live rank once PMIx has released them, SIGKILL after the grace period.
  void kill_ranks(const std::string& reason);
  void terminate_ranks();
  // Local ranks started and not yet reaped.
  std::vector<uint32_t> live_ranks() const;
  void check_finished();
  uint64_t next_id() { return ++last_id_; }
  // From a PMIx upcall: on the loop, park `done` under a new request id in `waits` (the reply
  // with that id completes it, see deliver()) and send the request `fill` writes.
  template <class Done, class Fill>
  void ask_coordinator(std::map<uint64_t, Done>& waits, Done done, Fill fill) {
    boost::asio::post(io_, [this, &waits, done = std::move(done), fill = std::move(fill)]() mutable {
      uint64_t id = next_id();
      waits[id] = std::move(done);
      Envelope m;
      fill(m, id);
      up_.send(std::move(m));
    });
  }

  boost::asio::io_context& io_;
  const LaunchContext& ctx_;
  const int node_;
  Link& up_;
  std::unique_ptr<pmix::PmixServer> server_;
  std::string shm_dir_;  // Open MPI's shared-memory backing directory for this node's ranks
  bool name_ob1_ = true;  // the ranks get OMPI_MCA_pml=ob1 unless the user chose a PML
  std::map<int, LocalRank> ranks_;
  boost::asio::signal_set sigchld_;
  boost::asio::steady_timer kill_timer_;
  bool killing_ = false;
  bool terminating_ = false;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // expires with the agent
  bool finished_ = false;
  bool launched_ = false;
  uint64_t last_id_ = 0;
  std::map<std::string, uint64_t> fence_seq_;
  std::map<std::pair<std::string, uint64_t>, pmix::DataDone> fences_;
  std::map<uint64_t, pmix::DataDone> modex_waits_;
  std::map<uint64_t, pmix::OpDone> op_waits_;
  std::map<uint64_t, pmix::LookupDone> lookup_waits_;
};

}  // namespace sf::mpirun
