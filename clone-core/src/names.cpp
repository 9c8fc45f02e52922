// clone-core: names of error codes and clone endings, shared by the C++ and C APIs.
#include "clone-core/driver.hpp"
#include "clone-core/result.hpp"

namespace sf {

const char* errc_name(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid argument";
    case Errc::not_single_threaded: return "process is not single-threaded";
    case Errc::missing_privilege: return "missing privilege";
    case Errc::insufficient_resources: return "insufficient resources";
    case Errc::no_cluster_slot: return "no free cluster slot";
    case Errc::driver_unavailable: return "driver unavailable";
    case Errc::network_setup: return "cluster network setup failed";
    case Errc::namespace_setup: return "namespace setup failed";
    case Errc::clone_failed: return "clone failed";
    case Errc::wrong_side: return "call not valid on this side (parent/clone)";
    case Errc::bad_state: return "call not valid in the ticket's state";
    case Errc::system: return "system call failed";
  }
  return "unknown error";
}

const char* clone_end_name(CloneEnd end) noexcept {
  switch (end) {
    case CloneEnd::synced: return "synced";
    case CloneEnd::exited: return "exited";
    case CloneEnd::signaled: return "signaled";
    case CloneEnd::killed: return "killed";
    case CloneEnd::lost: return "lost";
  }
  return "unknown";
}

}  // namespace sf
