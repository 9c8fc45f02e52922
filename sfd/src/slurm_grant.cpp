// sfd: Slurm as the ticket allocator (see slurm_grant.hpp). Slurm's own tools do the work:
// salloc grants, squeue and `scontrol show hostnames` name the nodes, scancel releases.
#include "sfd/slurm_grant.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <sstream>

#include "sf-common/random.hpp"

namespace sf::sfd {
namespace {

namespace slurm = sf::common::slurm;

// Runs a Slurm tool to completion: its output, or an error with what it printed.
Result<std::string> capture(const std::vector<std::string>& argv) {
  auto out = slurm::run_tool(argv);
  if (!out) return make_error(out.error().message);
  return std::move(*out);
}

Result<std::vector<std::string>> capture_hosts(const std::string& hostlist) {
  auto hosts = slurm::expand_hostlist(hostlist);
  if (!hosts) return make_error(hosts.error().message);
  return std::move(*hosts);
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);)
    if (!l.empty()) out.push_back(l);
  return out;
}

}  // namespace

std::vector<std::string> salloc_grant_argv(unsigned nodes, const SlurmOptions& options, const std::string& job_name) {
  std::vector<std::string> argv{"salloc", "--no-shell", "--job-name=" + job_name, "--nodes=" + std::to_string(nodes),
                                "--ntasks-per-node=1"};
  for (auto& f : slurm::request_flags(options)) argv.push_back(std::move(f));
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
  auto dog = slurm::Watchdog::start(g->job_name_);
  if (!dog) return make_error(dog.error().message);
  g->watchdog_.emplace(std::move(*dog));

  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return make_error(std::string("slurm: pipe: ") + std::strerror(errno));
  auto salloc = slurm::spawn_tool(salloc_grant_argv(nodes, options, g->job_name_), out[1]);
  ::close(out[1]);
  if (!salloc) {
    ::close(out[0]);
    return make_error(salloc.error().message);  // the destructor ends the watchdog, which finds nothing to cancel
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
  decide(slurm::wait_for(salloc_));
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
  auto hosts = compressed.empty() ? Result<std::vector<std::string>>(make_error("squeue printed no node list"))
                                  : capture_hosts(compressed.front());
  if (!hosts) {
    failure_ = "Slurm granted allocation " + job_id_ + " but its node list cannot be expanded: " + hosts.error().message;
    return;
  }
  nodes_ = std::move(*hosts);
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
    (void)slurm::wait_for(salloc_);
    salloc_ = -1;
  }
  if (out_ >= 0) {
    ::close(out_);
    out_ = -1;
  }
  if (!job_id_.empty()) (void)capture({"scancel", "--quiet", job_id_});
  // The watchdog's lifeline ends: it cancels by name what salloc may have been granted
  // meanwhile, and is waited for, so that nothing of this grant is left when release() returns.
  if (watchdog_) watchdog_->finish();
}

SlurmGrant::~SlurmGrant() { release(); }

}  // namespace sf::sfd
