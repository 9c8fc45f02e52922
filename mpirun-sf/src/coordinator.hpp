// The coordinator of a job, on node 0. It completes fences across nodes (gather every node's
// contribution, concatenate, send the result back), routes direct-modex requests to the node
// that owns the rank, keeps the job's publish/lookup store, prints rank output, and decides
// when and how the job ends (JobOutcome): it tells every node to kill its ranks on the first
// failure, abort, timeout or interrupt.
#pragma once

#include <utility>  // before Asio: Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <boost/asio.hpp>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "launch_context.hpp"
#include "link.hpp"
#include "mpirun-sf/exit_status.hpp"
#include "mpirun-sf/output.hpp"

namespace sf::mpirun {

class Coordinator {
 public:
  Coordinator(boost::asio::io_context& io, const LaunchContext& ctx, OutputSink& sink);

  // The link to node i (the launcher's own node's is a LocalLink). Set before messages flow.
  void connect_node(int node, Link* link);
  bool connected(int node) const { return nodes_.at(static_cast<size_t>(node)) != nullptr; }
  // At the end: tells every node's agent but `local_node`'s (the launcher's own) to exit.
  void shutdown_nodes(int local_node);
  void handle(int from_node, Envelope message);

  void start_timeout();
  void interrupt(int signal);
  void forward_signal(int signal);
  // A node was lost (its clone died or its link broke).
  void node_lost(int node, const std::string& why);
  // Stdin for the target rank(s).
  void stdin_data(int rank, std::string data, bool eof);

  bool done() const { return finished_nodes_.size() == nodes_.size(); }
  // Whether some node was given up because it did not finish after the job was killed (its
  // link may be down): its clone must then be killed rather than waited for.
  bool abandoned_nodes() const { return abandoned_; }
  const JobOutcome& outcome() const { return outcome_; }
  std::string jobid() const;

 private:
  struct Fence {
    std::set<int> expected, arrived;
    std::map<int, std::string> data;  // by node, concatenated in node order
    int status = 0;
  };
  struct Published {
    std::string packed, nspace;
    uint32_t rank;
  };
  struct ParkedLookup {
    int node;
    sf::control::Lookup request;
  };

  bool known_rank(uint32_t rank) const;
  bool valid(int from, const Envelope& m) const;
  // The nodes a fence signature names; false if it is malformed or names no rank of the job.
  bool fence_nodes(const std::string& signature, std::set<int>& nodes) const;
  void fence(int node, const sf::control::FenceContribution& f);
  void output(const sf::control::Output& o);
  void kill_job(const std::string& reason);
  void send(int node, Envelope m);
  void answer_lookup(int node, const sf::control::Lookup& l);
  std::string host_of_rank(int rank) const;

  boost::asio::io_context& io_;
  const LaunchContext& ctx_;
  OutputSink& sink_;
  std::vector<Link*> nodes_;
  JobOutcome outcome_;
  bool killing_ = false;
  std::set<int> finished_nodes_;
  std::map<std::pair<std::string, uint64_t>, Fence> fences_;
  std::map<std::string, Published> store_;
  std::vector<ParkedLookup> parked_;
  std::map<std::pair<int, int>, std::unique_ptr<boost::asio::steady_timer>> partial_timers_;
  boost::asio::steady_timer timeout_;
  // Bounds the teardown: nodes that have not finished this long after KillJob are lost.
  boost::asio::steady_timer teardown_deadline_;
  bool abandoned_ = false;
};

}  // namespace sf::mpirun
