// Flattening the job map into the strings PMIx's regex generators take.
#include "pmix-plugin/job_map.hpp"

namespace sf::pmix {

std::string JobMap::node_list() const {
  std::string out;
  for (const auto& n : nodes) {
    if (!out.empty()) out += ',';
    out += n.hostname;
  }
  return out;
}

std::string JobMap::proc_list() const {
  std::string out;
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (i) out += ';';
    bool first = true;
    for (int r : nodes[i].ranks) {
      if (!first) out += ',';
      out += std::to_string(r);
      first = false;
    }
  }
  return out;
}

}  // namespace sf::pmix
