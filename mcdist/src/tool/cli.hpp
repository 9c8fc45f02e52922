// mcdist tool: what every subcommand shares: its options (interface, group, port, cluster,
// key, statistics file), option parsing with boost::program_options, error exit, and the
// statistics written as JSON for tests and benchmarks.
#pragma once

#include <boost/program_options.hpp>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "mcdist/packet.hpp"
#include "mcdist/receiver.hpp"
#include "mcdist/sender.hpp"

namespace sf::mcdist::tool {

namespace po = boost::program_options;

// Prints message to stderr and returns code (the process's exit status).
int die(const std::string& message, int code = 1);

struct Common {
  std::string iface, group = "239.255.77.1", key_file, stats_file;
  std::uint16_t port = 7700;
  std::uint64_t cluster = 1;
};

void add_common(po::options_description& d, Common& c, bool need_key);

// Parses argv against d (and the positional names); on failure error holds the message and
// the options' help.
bool parse(int argc, char** argv, po::options_description& d, po::positional_options_description* pos,
           po::variables_map& vm, std::string& error);

// The key in file, or nullopt for an empty name; err is set when the file is unusable.
std::optional<ClusterKey> optional_key(const std::string& file, std::string& err);

// Wall-clock time (CLOCK_REALTIME, like `date +%s.%N`) as seconds with nanoseconds: receivers
// report when they held the whole image, so a benchmark's time excludes writing it out and the
// process's exit.
std::string unix_now();

// Writes j to path; nothing for an empty path.
void write_json(const std::string& path, const nlohmann::json& j);

nlohmann::json to_json(const SenderStats& s);
nlohmann::json to_json(const ReceiverStats& s);

}  // namespace sf::mcdist::tool
