// A node agent away from the launcher; see remote_node.hpp.
#include "remote_node.hpp"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "job_setup.hpp"
#include "node_agent.hpp"
#include "tcp_link.hpp"

namespace asio = boost::asio;
namespace fs = std::filesystem;

namespace sf::mpirun {
namespace {

// SIGTERM and SIGHUP end the node, and however often they come they do nothing more: under
// Slurm both srun and slurmstepd pass scancel's SIGTERM on, and a second one must not kill an
// agent half-way through its cleanup (a task killed by a signal also makes srun kill the
// other agents at once). The handler only writes a byte to a pipe the loop reads, and stays
// installed until the process ends.
int g_end_pipe[2] = {-1, -1};
extern "C" void on_end_signal(int) {
  int saved = errno;
  char byte = 0;
  ssize_t ignored = ::write(g_end_pipe[1], &byte, 1);
  (void)ignored;
  errno = saved;
}

// The read end of that pipe; the handler is installed on the first call.
int end_signal_fd() {
  if (g_end_pipe[0] < 0) {
    if (pipe2(g_end_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
      throw std::runtime_error(std::string("pipe: ") + strerror(errno));
    struct sigaction sa {};
    sa.sa_handler = on_end_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGHUP, &sa, nullptr);
  }
  return g_end_pipe[0];
}

}  // namespace

int run_remote_node(const LaunchContext& ctx, int node, const CoordinatorAddress& rv,
                    const std::string& label) {
  int devnull = open("/dev/null", O_RDONLY);
  if (devnull >= 0) {
    dup2(devnull, 0);  // node 0 owns the user's stdin
    ::close(devnull);
  }
  signal(SIGINT, SIG_IGN);  // ^C reaches the launcher, which tears the whole job down
  signal(SIGPIPE, SIG_IGN);
  std::string session_dir;
  int status = 0;
  try {
    const int end_fd = end_signal_fd();  // from here on SIGTERM ends the node in order
    session_dir = make_session_dir();
    asio::io_context io;
    asio::ip::tcp::socket socket(io);
    asio::ip::tcp::endpoint coordinator(asio::ip::make_address(rv.address), rv.port);
    boost::system::error_code ec;
    for (int attempt = 0; attempt < 100; ++attempt) {  // the bridge may still be settling
      socket.connect(coordinator, ec);
      if (!ec) break;
      socket.close();
      usleep(50000);
    }
    if (ec) throw std::runtime_error("cannot reach the coordinator at " + rv.address + ":" +
                                     std::to_string(rv.port) + ": " + ec.message());
    auto link = std::make_shared<TcpLink>(std::move(socket));
    NodeAgent agent(io, ctx, node, *link);
    bool stop = false;
    link->start(
        [&](Envelope m) {
          if (m.has_shutdown())
            stop = true;
          else
            agent.deliver(std::move(m));
        },
        [&](const std::string& why) {
          if (!stop) {  // not after Shutdown or SIGTERM: then the job was ending anyway
            spdlog::error("{}: lost the coordinator: {}", label, why);
            status = 1;
          }
          agent.kill_now();
          stop = true;
        });
    Envelope hello;
    auto* h = hello.mutable_hello();
    h->set_node(static_cast<uint32_t>(node));
    h->set_hostname(ctx.map.nodes.at(static_cast<size_t>(node)).hostname);
    h->set_version(TcpLink::kProtocolVersion);
    h->set_job_token(rv.token);
    link->send(std::move(hello));
    asio::posix::stream_descriptor end_signal(io, ::dup(end_fd));
    char end_byte = 0;
    // On SIGTERM the node kills its ranks and ends once they are reaped and NodeFinished has
    // gone out (at most 1 s), so the coordinator sees a finished node, not a lost one.
    bool ending = false;
    auto end_by = std::chrono::steady_clock::now();
    end_signal.async_read_some(asio::buffer(&end_byte, 1), [&](const boost::system::error_code& e, size_t) {
      if (e) return;
      ending = true;
      end_by = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      agent.kill_now();
    });
    agent.start(session_dir);
    while (!stop) {
      if (ending) {
        if (agent.finished() || std::chrono::steady_clock::now() > end_by) break;
        io.run_one_for(std::chrono::milliseconds(10));
      } else if (!io.run_one()) {
        break;
      }
    }
    end_signal.cancel();
    agent.kill_now();
    // Let the last messages (node finished) leave before the node ends, for at most 1 s.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
    while (!link->idle() && std::chrono::steady_clock::now() < deadline)
      io.run_one_for(std::chrono::milliseconds(10));
    link->close();
  } catch (const std::exception& e) {
    fprintf(stderr, "mpirun-sf: %s: %s\n", label.c_str(), e.what());
    status = 1;
  }
  std::error_code fec;
  if (!session_dir.empty()) fs::remove_all(session_dir, fec);
  return status;
}

}  // namespace sf::mpirun
