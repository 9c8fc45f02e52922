// Setting a node up before its ranks start; see job_setup.hpp.
#include "job_setup.hpp"

#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "environment.hpp"
#include "rank_stdio.hpp"
#include "mpirun-sf/exit_status.hpp"
#include "sf-common/random.hpp"

namespace fs = std::filesystem;

namespace sf::mpirun {
namespace {
constexpr const char* kHwlocSkippedPlugins = "hwloc_gl,hwloc_opencl,hwloc_xml_libxml";
}  // namespace

int host_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  long online = sysconf(_SC_NPROCESSORS_ONLN);
  return online > 0 ? static_cast<int>(online) : 1;
}

bool has_fabric_devices(const std::string& root) {
  std::error_code ec;
  for (const char* cls : {"sys/class/infiniband", "sys/class/cxi"})
    if (fs::directory_iterator it(fs::path(root) / cls, ec); !ec && it != fs::directory_iterator())
      return true;
  for (fs::directory_iterator it(fs::path(root) / "dev", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("hfi1_", 0) == 0 || name.rfind("ipath", 0) == 0) return true;
  }
  return false;
}

std::string this_hostname() {
  char buf[256] = {};
  gethostname(buf, sizeof buf - 1);
  return buf;
}

std::string resolve_program(const std::string& program, const std::string& wdir,
                            const char* path_env) {
  auto executable = [](const fs::path& p) {
    struct stat st;
    return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(p.c_str(), X_OK) == 0;
  };
  if (program.find('/') != std::string::npos) {
    fs::path p = fs::path(program).is_absolute() ? fs::path(program) : fs::path(wdir) / program;
    if (!executable(p)) {
      int err = access(p.c_str(), F_OK) == 0 ? EACCES : ENOENT;
      throw SetupError{"cannot execute '" + program + "': " + strerror(err), kExitCannotExecute};
    }
    return p.lexically_normal().string();
  }
  std::string path = path_env ? path_env : "/usr/local/bin:/usr/bin:/bin";
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t end = path.find(':', pos);
    if (end == std::string::npos) end = path.size();
    std::string dir = path.substr(pos, end - pos);
    fs::path p = fs::path(dir.empty() ? "." : dir) / program;
    if (!p.is_absolute()) p = fs::path(wdir) / p;
    if (executable(p)) return p.lexically_normal().string();
    pos = end + 1;
  }
  throw SetupError{"cannot execute '" + program + "': not found in PATH", kExitCannotExecute};
}

std::string check_wdir(const std::string& wdir, const std::string& cwd) {
  fs::path p = wdir.empty() ? fs::path(cwd) : fs::path(wdir);
  if (!p.is_absolute()) p = fs::path(cwd) / p;
  struct stat st;
  if (stat(p.c_str(), &st) != 0)
    throw SetupError{"cannot use working directory " + p.string() + ": " + strerror(errno),
                     kExitBadWdir};
  if (!S_ISDIR(st.st_mode))
    throw SetupError{"cannot use working directory " + p.string() + ": not a directory",
                     kExitBadWdir};
  if (access(p.c_str(), X_OK) != 0)
    throw SetupError{"cannot use working directory " + p.string() + ": " + strerror(errno),
                     kExitBadWdir};
  return p.lexically_normal().string();
}

std::vector<std::string> rank_environment(const JobSpec& spec) {
  std::vector<std::string> env = current_environment();
  for (const auto& x : spec.exports) {
    auto eq = x.find('=');
    if (eq != std::string::npos) {
      put_env(env, x);
    } else if (const char* v = getenv(x.c_str())) {
      put_env(env, x + "=" + v);
    } else {
      spdlog::warn("-x {}: the variable is not set here; not exported", x);
    }
  }
  for (const auto& [k, v] : spec.mca) put_env(env, "OMPI_MCA_" + k + "=" + v);
  // Open MPI 4.1 ranks launched by a PMIx server that is not ORTE's start as singletons
  // unless ORTE's schizo component is excluded, and so do ranks inside a Slurm allocation
  // but outside a job step (the launcher's own in a batch script) unless Slurm's is
  // (docs/architecture.md).
  put_env(env, "OMPI_MCA_schizo=^orte,slurm");
  put_env(env, "OMPI_MCA_orte_externally_bound=1");
  put_env(env, "OMPI_MCA_hwloc_base_binding_policy=none");
  // PMIx's shared-memory data store shows up as hangs here; the hash store does not.
  put_env(env, "PMIX_MCA_gds=hash");
  // hwloc loads every plugin it has when a process loads a topology, even one from XML: the
  // GL and OpenCL plugins (X11, the OpenCL loader) and libxml2 (with ICU's data) are a fifth of
  // a rank's and a node agent's start-up CPU here, and none of them adds anything Open MPI
  // uses. Unless the user chose hwloc's plugins, ranks (and we, below) skip those three.
  if (!getenv("HWLOC_PLUGINS_BLACKLIST") && !getenv("HWLOC_COMPONENTS"))
    put_env(env, std::string("HWLOC_PLUGINS_BLACKLIST=") + kHwlocSkippedPlugins);
  return env;
}

std::string random_token() {
  unsigned char raw[16];
  if (!sf::random_bytes(raw, sizeof raw))
    throw std::runtime_error(std::string("cannot make a job token: getrandom: ") + strerror(errno));
  return sf::to_hex(raw, sizeof raw);
}

std::string make_session_dir() {
  const char* tmp = getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/mpirun-sf." +
                        std::to_string(getpid()) + ".XXXXXX";
  if (!mkdtemp(pattern.data()))
    throw std::runtime_error("cannot create a session directory " + pattern + ": " +
                             strerror(errno));
  return pattern;
}

void check_apps(LaunchContext& ctx) {
  std::string cwd = fs::current_path().string();
  for (const auto& app : ctx.spec.apps) {
    ctx.app_wdirs.push_back(check_wdir(app.wdir, cwd));
    ctx.program_paths.push_back(resolve_program(app.program, ctx.app_wdirs.back(), getenv("PATH")));
  }
}

void finish_context(LaunchContext& ctx, const std::string& nspace,
                    const std::vector<std::string>& hostnames) {
  ctx.map = make_job_map(ctx.plan, nspace, hostnames);
  ctx.base_env = rank_environment(ctx.spec);
  // As mpirun: 1 when the ranks outnumber the cores they share, else 0, whatever the user's
  // environment says (Open MPI then yields while idle; mpi_yield_when_idle still overrides it).
  put_env(ctx.base_env,
          std::string("OMPI_MCA_mpi_oversubscribe=") + (ctx.plan.cores_oversubscribed ? "1" : "0"));
  ctx.terminal_size = launcher_terminal_size();
  if (const char* g = getenv("SF_KILL_GRACE_MS")) ctx.kill_grace_ms = std::max(0, atoi(g));
  setenv("PMIX_MCA_gds", "hash", 1);
  if (!getenv("HWLOC_COMPONENTS")) setenv("HWLOC_PLUGINS_BLACKLIST", kHwlocSkippedPlugins, 0);
}

std::string self_executable() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error("cannot find mpirun-sf's own executable: " + ec.message());
  return p.string();
}

}  // namespace sf::mpirun
