// mcdist tool: the subcommands, each `int cmd_X(argc, argv)` with argv[0] the subcommand's
// name; they return the process's exit status (2 for a usage error).
#pragma once

namespace sf::mcdist::tool {

// transfer.cpp: the multicast transfer itself.
int cmd_send(int argc, char** argv);
int cmd_recv(int argc, char** argv);
// inspect.cpp: the packet printer.
int cmd_decode(int argc, char** argv);
int cmd_dump(int argc, char** argv);
// inject.cpp: packets receivers must drop (tests).
int cmd_inject(int argc, char** argv);
// tcp_baseline.cpp: the unicast baseline of the benchmarks.
int cmd_tcp_send(int argc, char** argv);
int cmd_tcp_recv(int argc, char** argv);

}  // namespace sf::mcdist::tool
