// A link carries control messages (control.proto) between a node agent and the coordinator.
// Node 0's agent and the coordinator share a process and an event loop: LocalLink posts the
// message to the receiver's handler. Clones reach node 0 over TCP on the cluster network
// (TcpLink, framing in docs/protocols/control.md).
#pragma once

#include <utility>  // before Asio: Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <boost/asio.hpp>

#include <functional>

#include "control.pb.h"

namespace sf::mpirun {

using Envelope = sf::control::Envelope;
using EnvelopeHandler = std::function<void(Envelope)>;

class Link {
 public:
  virtual ~Link() = default;
  virtual void send(Envelope message) = 0;
  // True for the launcher's own node: its agent shares the coordinator's process and loop.
  virtual bool in_process() const { return false; }
};

// Delivers on the same event loop, never re-entrantly.
class LocalLink : public Link {
 public:
  explicit LocalLink(boost::asio::io_context& io) : io_(io) {}
  void set_handler(EnvelopeHandler handler) { handler_ = std::move(handler); }
  bool in_process() const override { return true; }
  void send(Envelope message) override {
    boost::asio::post(io_, [this, m = std::move(message)]() mutable {
      if (handler_) handler_(std::move(m));
    });
  }

 private:
  boost::asio::io_context& io_;
  EnvelopeHandler handler_;
};

}  // namespace sf::mpirun
