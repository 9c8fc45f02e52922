// mcdist: the command-line tool for tests and benchmarks.
//   mcdist send IMAGE --iface X --group G --port P --cluster ID --key-file F [...]
//   mcdist recv OUTFILE --iface X --group G --port P --cluster ID --key-file F [...]
//   mcdist dump --iface X --group G --port P [--cluster ID --key-file F] [--count N]
//   mcdist decode PACKETFILE [--cluster ID --key-file F]
//   mcdist inject --kind foreign|corrupt|badkey|malformed|replay --iface X --group G ...
//   mcdist tcp-send IMAGE --listen ADDR:PORT --count N     (unicast baseline for benchmarks)
//   mcdist tcp-recv OUTFILE --connect ADDR:PORT
// Each subcommand lives in its own file (commands.hpp).
#include <string>

#include "cli.hpp"
#include "commands.hpp"

using namespace sf::mcdist::tool;

int main(int argc, char** argv) {
  std::string usage =
      "usage: mcdist send|recv|dump|decode|inject|tcp-send|tcp-recv [options]\n"
      "       mcdist COMMAND --help for the options of one command\n";
  if (argc < 2) return die(usage, 2);
  std::string cmd = argv[1];
  if (cmd == "send") return cmd_send(argc - 1, argv + 1);
  if (cmd == "recv") return cmd_recv(argc - 1, argv + 1);
  if (cmd == "dump") return cmd_dump(argc - 1, argv + 1);
  if (cmd == "decode") return cmd_decode(argc - 1, argv + 1);
  if (cmd == "inject") return cmd_inject(argc - 1, argv + 1);
  if (cmd == "tcp-send") return cmd_tcp_send(argc - 1, argv + 1);
  if (cmd == "tcp-recv") return cmd_tcp_recv(argc - 1, argv + 1);
  return die(usage, 2);
}
