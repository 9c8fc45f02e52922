// mpirun-sf: the launcher's own node; see launcher_node.hpp.
#include "launcher_node.hpp"

#include <signal.h>

#include <spdlog/spdlog.h>

#include <cstdio>
#include <ctime>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "coordinator.hpp"
#include "job_setup.hpp"
#include "link.hpp"
#include "node_agent.hpp"
#include "sf-common/fd_io.hpp"
#include "stdin_pump.hpp"
#include "tcp_link.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace sf::mpirun {
namespace {

// One job's run on the launcher's node, from the first accepted link to the last message
// out. Members are declared in the order they must go away in reverse: the loop last.
class LauncherNode {
 public:
  LauncherNode(LaunchContext& ctx, int local_node, RemoteNodes* remote, Rendezvous* rv)
      : ctx_(ctx),
        local_node_(local_node),
        remote_(remote),
        rv_(rv),
        node_count_(static_cast<int>(ctx.map.nodes.size())),
        // Output that stdout does not take is dropped, as mpirun drops it.
        sink_(OutputOptions{ctx.spec.tag_output, ctx.spec.timestamp_output,
                            ctx.spec.merge_stderr_to_stdout, ctx.spec.output_filename},
              [](int fd, const std::string& bytes) { sf::write_all(fd, bytes.data(), bytes.size()); },
              [] { return std::time(nullptr); }),
        coordinator_(io_, ctx, sink_),
        to_coordinator_(io_),
        to_agent_(io_),
        connect_deadline_(io_),
        signals_(io_, SIGINT, SIGTERM, SIGHUP),
        forwarded_(io_, SIGUSR1, SIGUSR2) {
    if (local_node_ >= 0) {
      agent_.emplace(io_, ctx_, local_node_, to_coordinator_);
      to_coordinator_.set_handler([this](Envelope m) { coordinator_.handle(local_node_, std::move(m)); });
      to_agent_.set_handler([this](Envelope m) { agent_->deliver(std::move(m)); });
      coordinator_.connect_node(local_node_, &to_agent_);
    }
  }

  // Runs the job in `session_dir` until every node has finished; returns the exit status.
  int run(const std::string& session_dir);
  const std::string& closing() const { return closing_; }
  bool abandoned() const { return abandoned_; }

 private:
  bool all_joined() const;
  // The other nodes connect, say Hello with the job token, then talk to the coordinator.
  void listen_for_nodes();
  void accept_next();
  void on_link_message(const std::shared_ptr<int>& node, const std::weak_ptr<TcpLink>& weak, Envelope m);
  void watch_signals();
  void on_signal(const boost::system::error_code& ec, int sig);
  void on_forward(const boost::system::error_code& ec, int sig);
  // The ranks start once every node's agent has joined, as mpirun starts them once every
  // daemon has reported: a node that never comes leaves no rank started for nothing, and
  // no input is sent to a node before it is there.
  void begin_ranks();
  void deliver_stdin(std::string data, bool eof, std::function<void()> done);
  // Tells the other nodes to end and lets the messages leave.
  void shut_down_nodes();

  LaunchContext& ctx_;
  const int local_node_;
  RemoteNodes* const remote_;
  Rendezvous* const rv_;
  const int node_count_;
  asio::io_context io_;
  OutputSink sink_;
  Coordinator coordinator_;
  LocalLink to_coordinator_, to_agent_;
  std::optional<NodeAgent> agent_;
  std::unique_ptr<StdinPump> stdin_pump_;
  bool begun_ = false;
  std::map<int, std::shared_ptr<TcpLink>> node_links_;
  std::optional<asio::ip::tcp::acceptor> acceptor_;
  asio::steady_timer connect_deadline_;
  asio::signal_set signals_;
  asio::signal_set forwarded_;
  int interrupts_ = 0;
  std::string closing_;
  bool abandoned_ = false;
};

bool LauncherNode::all_joined() const {
  for (int n = 0; n < node_count_; ++n)
    if (n != local_node_ && !coordinator_.connected(n)) return false;
  return true;
}

void LauncherNode::listen_for_nodes() {
  acceptor_.emplace(io_);
  acceptor_->assign(asio::ip::tcp::v4(), rv_->listen_fd);
  rv_->listen_fd = -1;
  accept_next();
  remote_->watch(io_, [this](int n, const std::string& why) { coordinator_.node_lost(n, why); });
  const int seconds = remote_->connect_seconds();
  connect_deadline_.expires_after(std::chrono::seconds(seconds));
  connect_deadline_.async_wait([this, seconds](const boost::system::error_code& ec) {
    if (ec) return;
    for (int n = 0; n < node_count_; ++n)
      if (n != local_node_ && !coordinator_.connected(n))
        coordinator_.node_lost(n, "its agent did not connect within " + std::to_string(seconds) + " s");
  });
}

void LauncherNode::accept_next() {
  acceptor_->async_accept([this](const boost::system::error_code& ec, asio::ip::tcp::socket s) {
    if (ec) return;
    auto link = std::make_shared<TcpLink>(std::move(s));
    auto node = std::make_shared<int>(-1);  // -1 until its Hello
    std::weak_ptr<TcpLink> weak = link;
    link->start([this, node, weak](Envelope m) { on_link_message(node, weak, std::move(m)); },
                [this, node](const std::string& why) {
                  if (*node >= 0) coordinator_.node_lost(*node, "control link: " + why);
                });
    accept_next();
  });
}

void LauncherNode::on_link_message(const std::shared_ptr<int>& node, const std::weak_ptr<TcpLink>& weak,
                                   Envelope m) {
  if (*node >= 0) {
    coordinator_.handle(*node, std::move(m));
    return;
  }
  const auto& h = m.hello();
  const int n = static_cast<int>(h.node());
  if (!m.has_hello() || h.job_token() != rv_->coordinator.token || h.version() != TcpLink::kProtocolVersion ||
      n < 0 || n >= node_count_ || n == local_node_ || coordinator_.connected(n)) {
    spdlog::warn("refused a control connection that is not one of this job's nodes");
    if (auto l = weak.lock()) l->close();
    return;
  }
  *node = n;
  spdlog::debug("node {} connected", n);
  if (auto l = weak.lock()) {
    node_links_[n] = l;
    coordinator_.connect_node(n, l.get());
  }
  if (all_joined()) begin_ranks();
}

void LauncherNode::watch_signals() {
  signal(SIGPIPE, SIG_IGN);
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) { on_signal(ec, sig); });
  forwarded_.async_wait([this](const boost::system::error_code& ec, int sig) { on_forward(ec, sig); });
}

void LauncherNode::on_signal(const boost::system::error_code& ec, int sig) {
  if (ec) return;
  if (++interrupts_ == 1) {
    coordinator_.interrupt(sig);
  } else {
    if (agent_) agent_->kill_now();  // a second interrupt: no more grace
    if (remote_) remote_->kill();
  }
  signals_.async_wait([this](const boost::system::error_code& e, int s) { on_signal(e, s); });
}

void LauncherNode::on_forward(const boost::system::error_code& ec, int sig) {
  if (ec) return;
  coordinator_.forward_signal(sig);
  forwarded_.async_wait([this](const boost::system::error_code& e, int s) { on_forward(e, s); });
}

void LauncherNode::begin_ranks() {
  if (begun_) return;
  begun_ = true;
  if (agent_) agent_->launch_ranks();
  const auto& target = ctx_.spec.stdin_target;
  if (target.kind != StdinTarget::Kind::None &&
      (target.kind == StdinTarget::Kind::All || target.rank < ctx_.plan.np)) {
    stdin_pump_ = std::make_unique<StdinPump>(io_, [this](std::string data, bool eof, std::function<void()> done) {
      deliver_stdin(std::move(data), eof, std::move(done));
    });
  }
}

void LauncherNode::deliver_stdin(std::string data, bool eof, std::function<void()> done) {
  const auto& target = ctx_.spec.stdin_target;
  if (target.kind == StdinTarget::Kind::All) {
    for (int r = 0; r < ctx_.plan.np; ++r) coordinator_.stdin_data(r, data, eof);
    done();
  } else if (agent_ && ctx_.map.ranks[static_cast<size_t>(target.rank)].node == local_node_) {
    agent_->write_stdin(target.rank, std::move(data), eof, std::move(done));
  } else {
    coordinator_.stdin_data(target.rank, std::move(data), eof);
    done();
  }
}

void LauncherNode::shut_down_nodes() {
  coordinator_.shutdown_nodes(local_node_);
  // Until every link has sent what it holds, for at most 2 s. One handler at a time: the
  // links are usually idle a fraction of a millisecond after the shutdown is queued.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < deadline) {
    bool idle = true;
    for (auto& [n, l] : node_links_) idle = idle && l->idle();
    if (idle) break;
    io_.run_one_for(std::chrono::milliseconds(10));
  }
  if (acceptor_) acceptor_->close();
  remote_->stop_watching();
}

int LauncherNode::run(const std::string& session_dir) {
  int exit_code = 0;
  if (remote_) listen_for_nodes();
  if (std::string err = sink_.prepare_files(ctx_.plan.np); !err.empty()) {
    fprintf(stderr, "mpirun-sf: %s\n", err.c_str());
    coordinator_.interrupt(SIGTERM);
    exit_code = 1;
  }
  watch_signals();
  try {
    if (exit_code == 0) {
      if (agent_) agent_->prepare(session_dir);
      coordinator_.start_timeout();
      if (all_joined()) begin_ranks();
    }
    while (!coordinator_.done()) io_.run_one();
  } catch (const std::exception& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    if (agent_) agent_->kill_now();
    exit_code = 1;
  }
  stdin_pump_.reset();
  signals_.cancel();
  forwarded_.cancel();
  connect_deadline_.cancel();
  if (remote_) shut_down_nodes();
  if (exit_code == 0) {
    exit_code = coordinator_.outcome().exit_code();
    if (!ctx_.spec.quiet || exit_code != 0) closing_ = coordinator_.outcome().closing_message(coordinator_.jobid());
  }
  for (auto& [n, l] : node_links_) l->close();
  abandoned_ = coordinator_.abandoned_nodes();
  return exit_code;
}

}  // namespace

int run_launcher_node(LaunchContext& ctx, int local_node, RemoteNodes* remote, Rendezvous* rv) {
  // A launcher that runs no ranks (every node has an agent of its own) needs no session
  // directory: none to leave behind when Slurm kills it at the end of a cancelled batch job.
  std::string session_dir;
  try {
    if (local_node >= 0) session_dir = make_session_dir();
  } catch (const std::exception& e) {
    fprintf(stderr, "mpirun-sf: %s\n", e.what());
    if (remote) {
      remote->kill();
      remote->release();
    }
    return 1;
  }
  int exit_code = 0;
  std::string closing;
  bool abandoned = false;
  {
    LauncherNode node(ctx, local_node, remote, rv);
    exit_code = node.run(session_dir);
    closing = node.closing();
    abandoned = node.abandoned();
  }
  // The ranks here are gone: remove their directory before waiting for the other nodes, which
  // can take seconds in which a cancelled batch job's launcher may be killed.
  std::error_code ec;
  if (!session_dir.empty()) fs::remove_all(session_dir, ec);
  if (remote) {
    // A node given up during teardown never got the shutdown: end it instead of waiting.
    if (abandoned) remote->kill();
    else remote->release();
  }
  if (!closing.empty()) fputs(closing.c_str(), stderr);
  return exit_code;
}

}  // namespace sf::mpirun
