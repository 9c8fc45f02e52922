// The launcher's view of the nodes it does not run itself: the clones of a ticket, or the
// node agents srun started on the nodes of a Slurm allocation. Their agents connect to the
// coordinator over TCP (remote_node.hpp); this says how they end and how they are released.
#pragma once

#include <utility>  // before Asio: Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <boost/asio.hpp>

#include <functional>
#include <string>

namespace sf::mpirun {

class RemoteNodes {
 public:
  virtual ~RemoteNodes() = default;
  // Calls `lost(node, why)` on the loop when a node's agent ends before it was released.
  virtual void watch(boost::asio::io_context& io,
                     std::function<void(int node, const std::string& why)> lost) = 0;
  // Stops watching (before the loop goes away).
  virtual void stop_watching() = 0;
  // Ends every remote node at once: the user interrupted twice.
  virtual void kill() = 0;
  // After the nodes were told to shut down: waits for them and releases what held them.
  virtual void release() = 0;
  // One line for --display-map about node n, or empty.
  virtual std::string describe(int node) const = 0;
  // How long a node's agent may take to connect after the launch.
  virtual int connect_seconds() const { return 30; }
};

}  // namespace sf::mpirun
