// Reading the Slurm allocation; see slurm_allocation.hpp.
#include "mpirun-sf/slurm_allocation.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "sf-common/slurm.hpp"

namespace sf::mpirun {
namespace {

int parse_count(const std::string& text, const std::string& whole) {
  int v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || v < 0)
    throw std::invalid_argument("cannot read the per-node counts '" + whole + "'");
  return v;
}

}  // namespace

// Slurm writes these counts in this one form (src/common/slurm_protocol_defs.c) and offers
// no tool that expands them; the grammar is two rules, so it is read here.
std::vector<int> expand_node_counts(const std::string& text) {
  std::vector<int> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find(',', pos);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(pos, end - pos);
    int repeat = 1;
    if (auto open = item.find("(x"); open != std::string::npos) {
      if (item.back() != ')') throw std::invalid_argument("cannot read the per-node counts '" + text + "'");
      repeat = parse_count(item.substr(open + 2, item.size() - open - 3), text);
      item.resize(open);
    }
    int count = parse_count(item, text);
    out.insert(out.end(), static_cast<size_t>(repeat), count);
    pos = end + 1;
  }
  if (out.empty()) throw std::invalid_argument("cannot read the per-node counts '" + text + "'");
  return out;
}

std::vector<std::string> scontrol_show_hostnames(const std::string& hostlist) {
  auto names = sf::common::slurm::expand_hostlist(hostlist);
  if (!names)
    throw std::runtime_error("cannot expand the allocation's host list '" + hostlist + "': " +
                             names.error().message);
  return std::move(*names);
}

std::optional<SlurmAllocation> read_slurm_allocation(
    const std::function<const char*(const char*)>& getenv, const HostlistExpander& expand) {
  auto var = [&](std::initializer_list<const char*> names) -> std::string {
    for (const char* n : names)
      if (const char* v = getenv(n); v && *v) return v;
    return {};
  };
  SlurmAllocation a;
  a.job_id = var({"SLURM_JOB_ID", "SLURM_JOBID"});
  if (a.job_id.empty()) return std::nullopt;
  std::string list = var({"SLURM_JOB_NODELIST", "SLURM_NODELIST"});
  if (list.empty())
    throw std::runtime_error("inside Slurm job " + a.job_id +
                             " but SLURM_JOB_NODELIST is not set; run mpirun-sf in the job's "
                             "batch script, salloc or srun shell, or add --allocator local");
  a.nodes = expand(list);
  if (a.nodes.empty()) throw std::runtime_error("Slurm job " + a.job_id + " has no nodes ('" + list + "')");
  std::string tasks = var({"SLURM_TASKS_PER_NODE"});
  std::string source = "SLURM_TASKS_PER_NODE";
  if (tasks.empty()) {
    tasks = var({"SLURM_JOB_CPUS_PER_NODE"});
    source = "SLURM_JOB_CPUS_PER_NODE";
  }
  if (tasks.empty()) {
    a.slots.assign(a.nodes.size(), 1);
  } else {
    try {
      a.slots = expand_node_counts(tasks);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(source + ": " + e.what());
    }
  }
  if (a.slots.size() != a.nodes.size())
    throw std::runtime_error("Slurm job " + a.job_id + ": " + source + "='" + tasks + "' names " +
                             std::to_string(a.slots.size()) + " nodes but SLURM_JOB_NODELIST='" +
                             list + "' has " + std::to_string(a.nodes.size()));
  return a;
}

std::string slurm_node_name(const std::function<const char*(const char*)>& getenv) {
  if (const char* n = getenv("SLURMD_NODENAME"); n && *n) return n;
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  std::string h = buf;
  return h.substr(0, h.find('.'));
}

bool task_plugin_binds(const std::optional<std::string>& conf_text) {
  if (!conf_text) return true;
  std::string plugins;  // the last TaskPlugin line wins, as in Slurm's parser
  size_t pos = 0;
  const std::string& text = *conf_text;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    line.erase(0, line.find_first_not_of(" \t"));
    if (auto hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::string lower;
    for (char c : line) lower += static_cast<char>(tolower(static_cast<unsigned char>(c)));
    if (lower.rfind("taskplugin=", 0) == 0) plugins = lower.substr(11);
  }
  // task/affinity and task/cgroup bind; task/none (the default) does not.
  return plugins.find("affinity") != std::string::npos || plugins.find("cgroup") != std::string::npos;
}

std::optional<std::string> read_slurm_conf(const std::function<const char*(const char*)>& getenv) {
  std::vector<std::string> candidates;
  if (const char* c = getenv("SLURM_CONF"); c && *c) candidates.emplace_back(c);
  candidates.emplace_back("/etc/slurm/slurm.conf");
  candidates.emplace_back("/run/slurm/conf/slurm.conf");
  for (const auto& path : candidates) {
    std::ifstream in(path);
    if (!in) continue;
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }
  return std::nullopt;
}

std::vector<std::string> salloc_options(const JobSpec& spec, const std::string& job_name) {
  int np = 0;
  bool np_known = !spec.apps.empty();
  for (const auto& app : spec.apps) {
    if (app.np > 0) np += app.np;
    else np_known = false;
  }
  std::vector<std::string> o{"--job-name=" + job_name};
  if (spec.clones > 0) o.push_back("--nodes=" + std::to_string(spec.clones));
  if (spec.procs_per_clone > 0) o.push_back("--ntasks-per-node=" + std::to_string(spec.procs_per_clone));
  if (np_known && !(spec.clones > 0 && spec.procs_per_clone > 0)) {
    o.push_back("--ntasks=" + std::to_string(np));
  } else if (!np_known && spec.clones == 0) {
    throw UsageError("--allocator slurm: give -np for every program, or --clones N (nodes), so that "
                     "mpirun-sf knows what to ask Slurm for");
  }
  for (auto& f : sf::common::slurm::request_flags(
           {spec.slurm_partition, spec.slurm_account, spec.slurm_time_limit}))
    o.push_back(std::move(f));
  return o;
}

}  // namespace sf::mpirun
