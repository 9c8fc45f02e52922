// mpirun-sf: the launcher's stdin, handed to the ranks' side one chunk at a time.
#pragma once

#include <unistd.h>

#include <utility>  // before Asio: Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <boost/asio.hpp>

#include <cerrno>
#include <functional>
#include <memory>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>

namespace sf::mpirun {

// Reads our stdin on a thread (it may be a terminal, a pipe or a file; only a thread can
// block on all three) and hands each chunk to the loop, one at a time, so a rank that does not
// read cannot make us buffer the whole input.
class StdinPump {
 public:
  using Deliver = std::function<void(std::string data, bool eof, std::function<void()> done)>;
  StdinPump(boost::asio::io_context& io, Deliver deliver)
      : shared_(std::make_shared<Shared>()) {
    shared_->io = &io;
    shared_->deliver = std::move(deliver);
    std::thread([s = shared_] { run(s); }).detach();
  }
  ~StdinPump() {
    std::lock_guard lock(shared_->mutex);
    shared_->alive = false;  // the thread may stay blocked in read(); it exits with us
    shared_->credit.release();
  }

 private:
  struct Shared {
    std::mutex mutex;
    bool alive = true;
    boost::asio::io_context* io = nullptr;
    Deliver deliver;
    std::binary_semaphore credit{0};
  };
  static void run(std::shared_ptr<Shared> s) {
    std::string buf(65536, '\0');
    for (;;) {
      ssize_t n = ::read(0, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      bool eof = n <= 0;
      {
        std::lock_guard lock(s->mutex);
        if (!s->alive) return;
        boost::asio::post(*s->io, [s, data = std::string(buf.data(), eof ? 0 : static_cast<size_t>(n)),
                            eof]() mutable {
          s->deliver(std::move(data), eof, [s] { s->credit.release(); });
        });
      }
      if (eof) return;
      s->credit.acquire();
    }
  }
  std::shared_ptr<Shared> shared_;
};

}  // namespace sf::mpirun
