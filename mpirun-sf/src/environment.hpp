// Environment lists ("KEY=VALUE" entries) as the launcher builds them for ranks.
#pragma once

#include <string>
#include <vector>

extern char** environ;

namespace sf::mpirun {

// This process's environment as "KEY=VALUE" entries.
inline std::vector<std::string> current_environment() {
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
  return env;
}

// Replaces the entry of KEY in `env`, or appends it. `entry` is "KEY=VALUE".
inline void put_env(std::vector<std::string>& env, const std::string& entry) {
  const std::string prefix = entry.substr(0, entry.find('=') + 1);
  for (auto& e : env)
    if (e.compare(0, prefix.size(), prefix) == 0) {
      e = entry;
      return;
    }
  env.push_back(entry);
}

inline bool has_env(const std::vector<std::string>& env, const std::string& key) {
  for (const auto& e : env)
    if (e.compare(0, key.size() + 1, key + "=") == 0) return true;
  return false;
}

}  // namespace sf::mpirun
