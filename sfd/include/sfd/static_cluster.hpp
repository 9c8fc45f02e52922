// sfd: a static cluster of freshly booted VMs (`sfd run --nodes N`), the conventional virtual
// cluster that SnowFlock's cloning replaces (and the peer of the end-to-end benchmark).
// Node 0 runs the command; nodes 1..N-1 run Debian's dropbear SSH server bound to their
// cluster address, so Debian's mpirun can start its daemons there through `sfd rsh` (set as
// Open MPI's plm_rsh_agent in node 0's environment). One ed25519 key per run, made on the
// host and handed to the guests in their command specs (docs/sfd.md, "Static clusters").
#pragma once

#include <string>
#include <vector>

#include "sfd/result.hpp"

namespace sf::sfd {

// Environment variable carrying the run's key (hex of dropbear's key file) into the guests.
inline constexpr const char* kRshKeyEnv = "SFD_RSH_KEY";
// Where `sfd rsh` and the nodes keep it inside a guest.
inline constexpr const char* kGuestRshDir = "/tmp/.sfd-rsh";

// Makes the run's key with dropbearkey (in `dir`, removed at once) and returns it as hex.
Result<std::string> make_rsh_key_hex(const std::string& dir);

std::string to_hex(const std::string& bytes);
Result<std::string> from_hex(const std::string& hex);

// The command of node i (1..N-1): authorize the run's key for root and run
// dropbear in the foreground on `address`:22 with the same key as host key (its log goes to
// stderr only if it fails).
std::vector<std::string> compute_node_argv(const std::string& agent, const std::string& address);

// What node 0's command gets besides the caller's environment: the key, the nodes
// (SFD_HOSTS="a:s,b:s,...", s = slots = vCPUs, Open MPI's --host syntax) and Open MPI's
// rsh launcher settings (the agent, no tree spawn, TCP on the cluster NIC sf0).
std::vector<std::string> node0_environment(const std::string& agent, const std::string& key_hex,
                                           const std::vector<std::string>& addresses, int slots);

// `sfd rsh HOST COMMAND...` (inside node 0, as Open MPI's rsh agent): waits until HOST
// accepts SSH connections (the nodes boot alongside node 0; 120 s at most), then runs
// `dbclient -i KEY HOST COMMAND...` (the run's key is every node's host key too, put in
// known_hosts: strict host checking). `sfd rsh --write-key FILE` writes $SFD_RSH_KEY.
int rsh_command(int argc, char** argv);

}  // namespace sf::sfd
