// mcdist tool: the subcommands' shared options, parsing, errors and statistics (cli.hpp).
#include "cli.hpp"

#include <time.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace sf::mcdist::tool {

int die(const std::string& message, int code) {
  std::fprintf(stderr, "%s\n", message.c_str());
  return code;
}

void add_common(po::options_description& d, Common& c, bool need_key) {
  d.add_options()("iface", po::value(&c.iface)->required(), "interface (required, explicit)")(
      "group", po::value(&c.group)->default_value(c.group), "multicast group")(
      "port", po::value(&c.port)->default_value(c.port), "group port")(
      "cluster", po::value(&c.cluster)->default_value(c.cluster), "cluster id")(
      "stats", po::value(&c.stats_file), "write statistics as JSON to this file");
  if (need_key)
    d.add_options()("key-file", po::value(&c.key_file)->required(), "file with the 64-hex-digit cluster key");
  else
    d.add_options()("key-file", po::value(&c.key_file), "file with the 64-hex-digit cluster key");
}

bool parse(int argc, char** argv, po::options_description& d, po::positional_options_description* pos,
           po::variables_map& vm, std::string& error) {
  try {
    po::command_line_parser p(argc, argv);
    p.options(d);
    if (pos) p.positional(*pos);
    po::store(p.run(), vm);
    po::notify(vm);
    return true;
  } catch (const std::exception& e) {
    std::ostringstream o;
    o << "mcdist: " << e.what() << "\n" << d;
    error = o.str();
    return false;
  }
}

std::string unix_now() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld.%09ld", static_cast<long long>(ts.tv_sec), ts.tv_nsec);
  return buf;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  if (path.empty()) return;
  std::ofstream(path) << j.dump(2) << "\n";
}

std::optional<ClusterKey> optional_key(const std::string& file, std::string& err) {
  if (file.empty()) return std::nullopt;
  auto k = ClusterKey::from_file(file);
  if (!k) {
    err = k.error().message;
    return std::nullopt;
  }
  return k.value();
}

nlohmann::json to_json(const SenderStats& s) {
  return {{"packets_sent", s.packets_sent},
          {"bytes_sent", s.bytes_sent},
          {"pages_pushed", s.pages_pushed},
          {"pages_answered", s.pages_answered},
          {"heartbeats", s.heartbeats},
          {"requests", s.requests},
          {"pages_requested", s.pages_requested},
          {"demand_pages", s.demand_pages},
          {"requests_deduplicated", s.requests_deduplicated},
          {"requests_suppressed", s.requests_suppressed},
          {"malformed", s.malformed},
          {"foreign", s.foreign},
          {"corrupt", s.corrupt},
          {"unauthenticated", s.unauthenticated},
          {"replayed", s.replayed},
          {"backoffs", s.backoffs},
          {"send_errors", s.send_errors},
          {"current_rate_bps", s.current_rate_bps},
          {"receivers_seen", s.receivers_seen},
          {"receivers_complete", s.receivers_complete},
          {"push_done", s.push_done},
          {"push_seconds", s.push_seconds}};
}

nlohmann::json to_json(const ReceiverStats& s) {
  return {{"packets", s.packets},
          {"pages_received", s.pages_received},
          {"duplicate_pages", s.duplicate_pages},
          {"heartbeats", s.heartbeats},
          {"malformed", s.malformed},
          {"foreign", s.foreign},
          {"corrupt", s.corrupt},
          {"unauthenticated", s.unauthenticated},
          {"replayed", s.replayed},
          {"sequence_gaps", s.sequence_gaps},
          {"reordered", s.reordered},
          {"requests_sent", s.requests_sent},
          {"pages_requested", s.pages_requested},
          {"status_sent", s.status_sent},
          {"page_count", s.page_count},
          {"complete", s.complete},
          {"failed", s.failed}};
}

}  // namespace sf::mcdist::tool
