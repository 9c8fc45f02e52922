// clone-core: the user namespace that lets an ordinary user build a cluster (the sandbox
// driver's outer layer; sfd uses it for its VM network too).
//
// Root (more precisely: a process with CAP_SYS_ADMIN and CAP_NET_ADMIN in the user namespace
// that owns its network namespace) builds the cluster's bridge in its own network namespace.
// Anyone else first moves into a user namespace of its own together with a fresh network
// namespace, as `unshare --user --net --map-user=$(id -u) --map-group=$(id -g)` would: the
// process keeps its uid and gid (so files written by ranks belong to the user outside), gains
// capabilities over the new namespaces only, and then builds the same cluster there. The
// bridge, veths and clone namespaces live and die with that process; nothing of them is
// visible to, or reachable by, other users.
#pragma once

#include <string>

#include "clone-core/result.hpp"

namespace sf::userns {

// True when this process may create links and namespaces in its current network namespace.
bool administers_network();

// Empty when this process could enter a user namespace of its own; otherwise why not, naming
// the setting that forbids it and what an administrator would run. Forks a short-lived child
// to try (the only reliable test: security modules and seccomp filters can forbid it too),
// once per process: later calls return the first answer.
std::string refusal();

// Moves the calling process (which must be single-threaded) into a new user namespace, maps
// its uid and gid to themselves and, with new_network, into a new network namespace too with
// lo up. For good: there is no way back to the original namespaces without privilege.
// Without new_network the process keeps the host's network (where it holds no privilege) and
// gains every capability over the namespaces it creates from now on.
Status enter(bool new_network = true);

}  // namespace sf::userns
