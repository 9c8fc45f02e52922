// sfd: Slurm as the ticket allocator (see slurm_grant.hpp). Slurm's own tools do the work:
// salloc grants, squeue and `scontrol show hostnames` name the nodes, scancel releases.
#include "sfd/slurm_grant.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <sstream>

#include "sf-common/random.hpp"

extern char** environ;

namespace sf::sfd {
namespace {

// Spawns argv with stdin from `in` (or /dev/null) and stdout+stderr into `out` (or /dev/null);
// `setsid`: in a session of its own (no terminal signal reaches it).
Result<pid_t> spawn(const std::vector<std::string>& argv, int in, int out, bool setsid) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (in >= 0) posix_spawn_file_actions_adddup2(&fa, in, 0);
  else posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (out >= 0) {
    posix_spawn_file_actions_adddup2(&fa, out, 1);
    posix_spawn_file_actions_adddup2(&fa, out, 2);
  } else {
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, dfl;
  sigemptyset(&none);
  sigfillset(&dfl);
  posix_spawnattr_setsigmask(&attr, &none);  // sfd blocks the signals it reads by signalfd
  posix_spawnattr_setsigdefault(&attr, &dfl);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (setsid) flags |= POSIX_SPAWN_SETSID;
  posix_spawnattr_setflags(&attr, flags);
  pid_t pid = -1;
  const int rc = posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return make_error(argv[0] + ": " + std::strerror(rc) + "; are Slurm's client tools installed (slurm-client)?");
  return pid;
}

int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

// Runs a Slurm tool to completion and returns its output; an error carries it when it fails.
Result<std::string> capture(const std::vector<std::string>& argv) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return make_error(std::string("pipe: ") + std::strerror(errno));
  auto pid = spawn(argv, -1, p[1], false);
  ::close(p[1]);
  if (!pid) {
    ::close(p[0]);
    return pid.error();
  }
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  const int st = wait_for(*pid);
  if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    while (!text.empty() && text.back() == '\n') text.pop_back();
    return make_error(argv[0] + " failed" + (text.empty() ? std::string() : ": " + text));
  }
  return text;
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

}  // namespace

SlurmOptions slurm_options_with_environment(SlurmOptions given) {
  for (auto [field, name] : {std::pair{&given.partition, "SF_SLURM_PARTITION"}, std::pair{&given.account, "SF_SLURM_ACCOUNT"},
                             std::pair{&given.time_limit, "SF_SLURM_TIME_LIMIT"}}) {
    if (!field->empty()) continue;
    if (const char* v = std::getenv(name); v != nullptr) *field = v;
  }
  return given;
}

std::vector<std::string> salloc_grant_argv(unsigned nodes, const SlurmOptions& options, const std::string& job_name) {
  std::vector<std::string> argv{"salloc", "--no-shell", "--job-name=" + job_name, "--nodes=" + std::to_string(nodes),
                                "--ntasks-per-node=1"};
  if (!options.partition.empty()) argv.push_back("--partition=" + options.partition);
  if (!options.account.empty()) argv.push_back("--account=" + options.account);
  if (!options.time_limit.empty()) argv.push_back("--time=" + options.time_limit);
  return argv;
}

std::optional<std::string> granted_job_id(const std::string& salloc_output) {
  static const std::regex granted(R"(Granted job allocation ([0-9]+))");
  std::smatch m;
  if (!std::regex_search(salloc_output, m, granted)) return std::nullopt;
  return m[1].str();
}

std::vector<std::string> srun_agent(const std::string& job_id, const std::string& node) {
  // One task on that node, in the allocation's resources (--overlap: beside any other step),
  // stdin to that task; --quiet keeps srun's own notes off the job's stderr.
  return {"srun", "--jobid=" + job_id, "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=" + node, "--quiet"};
}

Result<std::unique_ptr<SlurmGrant>> SlurmGrant::request(unsigned nodes, const SlurmOptions& options) {
  std::unique_ptr<SlurmGrant> g(new SlurmGrant);
  g->asked_ = nodes;
  unsigned char token[4];
  if (!sf::random_bytes(token, sizeof token)) return make_error("slurm: no random bytes for the job name");
  g->job_name_ = "sfd." + std::to_string(getpid()) + "." + sf::to_hex(token, sizeof token);
  g->started_ = std::chrono::steady_clock::now();

  // The watchdog first: from here on, however sfd ends, nothing it asked for outlives it.
  // A shell of its own session waits for the end of its stdin (our end is close-on-exec and
  // only ever closed by our exit or release()), then cancels by the job's unique name.
  int life[2];
  if (pipe2(life, O_CLOEXEC) != 0) return make_error(std::string("slurm: pipe: ") + std::strerror(errno));
  auto dog = spawn({"/bin/sh", "-c", "cat >/dev/null; exec scancel --quiet --name=\"$0\" --user=\"$1\"", g->job_name_,
                    std::to_string(getuid())},
                   life[0], -1, true);
  ::close(life[0]);
  if (!dog) {
    ::close(life[1]);
    return dog.error();
  }
  g->watchdog_ = *dog;
  g->lifeline_ = life[1];

  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return make_error(std::string("slurm: pipe: ") + std::strerror(errno));
  auto salloc = spawn(salloc_grant_argv(nodes, options, g->job_name_), -1, out[1], false);
  ::close(out[1]);
  if (!salloc) {
    ::close(out[0]);
    return salloc.error();  // the destructor ends the watchdog, which finds nothing to cancel
  }
  g->salloc_ = *salloc;
  g->out_ = out[0];
  fcntl(g->out_, F_SETFL, fcntl(g->out_, F_GETFL) | O_NONBLOCK);
  return g;
}

bool SlurmGrant::step() {
  if (decided_) return true;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(out_, buf, sizeof buf);
    if (n > 0) {
      output_.append(buf, static_cast<std::size_t>(n));
      // The queue's news as salloc gives it ("Pending job allocation 42", "job 42 queued and
      // waiting for resources"), at once; errors go into failure(), which the caller reports.
      for (auto nl = output_.find('\n', shown_); nl != std::string::npos; nl = output_.find('\n', shown_)) {
        const std::string line = output_.substr(shown_, nl + 1 - shown_);
        shown_ = nl + 1;
        if (line.find("error:") == std::string::npos && line.find("Granted job allocation") == std::string::npos &&
            line.find("are ready for job") == std::string::npos)
          (void)!::write(2, line.data(), line.size());
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) return false;  // salloc still waits
    break;                                       // EOF: salloc ended
  }
  decide(wait_for(salloc_));
  return true;
}

void SlurmGrant::decide(int st) {
  salloc_ = -1;
  ::close(out_);
  out_ = -1;
  decided_ = true;
  while (!output_.empty() && output_.back() == '\n') output_.pop_back();
  const auto id = granted_job_id(output_);
  if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0 || !id) {
    failure_ = "Slurm did not grant " + std::to_string(asked_) + " node(s)" + (output_.empty() ? std::string() : ": " + output_);
    return;
  }
  job_id_ = *id;
  auto list = capture({"squeue", "--noheader", "--jobs=" + job_id_, "--format=%N"});
  if (!list) {
    failure_ = "Slurm granted allocation " + job_id_ + " but squeue cannot name its nodes: " + list.error().message;
    return;
  }
  const auto compressed = lines(*list);
  auto hosts = compressed.empty() ? Result<std::string>(make_error("squeue printed no node list"))
                                  : capture({"scontrol", "show", "hostnames", compressed.front()});
  if (!hosts) {
    failure_ = "Slurm granted allocation " + job_id_ + " but its node list cannot be expanded: " + hosts.error().message;
    return;
  }
  nodes_ = lines(*hosts);
  if (nodes_.size() != asked_) {
    failure_ = "Slurm granted allocation " + job_id_ + " with " + std::to_string(nodes_.size()) + " node(s), not the " +
               std::to_string(asked_) + " asked for";
    nodes_.clear();
  }
}

void SlurmGrant::release() {
  if (released_) return;
  released_ = true;
  if (salloc_ > 0) {  // still waiting in the queue: salloc withdraws its request on SIGTERM
    kill(salloc_, SIGTERM);
    (void)wait_for(salloc_);
    salloc_ = -1;
  }
  if (out_ >= 0) {
    ::close(out_);
    out_ = -1;
  }
  if (!job_id_.empty()) (void)capture({"scancel", "--quiet", job_id_});
  // The watchdog's stdin ends: it cancels by name what salloc may have been granted meanwhile,
  // and is waited for, so that nothing of this grant is left when release() returns.
  if (lifeline_ >= 0) {
    ::close(lifeline_);
    lifeline_ = -1;
  }
  if (watchdog_ > 0) {
    (void)wait_for(watchdog_);
    watchdog_ = -1;
  }
}

SlurmGrant::~SlurmGrant() { release(); }

}  // namespace sf::sfd
