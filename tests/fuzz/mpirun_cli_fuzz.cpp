// Fuzz target: mpirun-sf's command line (parse_command_line, docs/mpirun-sf.1). The input is
// argv without argv[0], arguments separated by NUL bytes; the environment is empty but for
// MPIEXEC_TIMEOUT, taken from the last argument. A command line is a JobSpec or a UsageError,
// never another exception or a crash; a Run spec has at least one application context (its
// program may be "", which the launcher then cannot find, as mpirun cannot).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "mpirun-sf/job_spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args;
  std::string cur;
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == 0) {
      args.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += static_cast<char>(data[i]);
    }
  }
  args.push_back(cur);
  const std::string timeout = args.back();
  auto getenv = [&](const char* name) -> const char* {
    return std::strcmp(name, "MPIEXEC_TIMEOUT") == 0 && !timeout.empty() ? timeout.c_str() : nullptr;
  };
  try {
    auto spec = sf::mpirun::parse_command_line(args, getenv);
    if (spec.action == sf::mpirun::Action::Run) {
      if (spec.apps.empty()) std::abort();
    }
    if (spec.timeout_seconds < 0) std::abort();
  } catch (const sf::mpirun::UsageError& e) {
    if (std::strlen(e.what()) == 0) std::abort();
  }
  return 0;
}
