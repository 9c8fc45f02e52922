// A new Slurm allocation for a job; see slurm_request.hpp and docs/user-guide.md, "On a Slurm
// cluster".
#include "slurm_request.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "environment.hpp"
#include "job_setup.hpp"
#include "mpirun-sf/slurm_allocation.hpp"
#include "sf-common/slurm.hpp"
#include "subprocess.hpp"

namespace sf::mpirun {
namespace {

// From the launcher to the job inside the allocation (removed there before anything starts).
constexpr const char* kReadyFd = "SF_SLURM_READY_FD";                  // write our pid here
constexpr const char* kRequestedClones = "SF_SLURM_REQUESTED_CLONES";  // the --clones asked for

int g_requested_clones = 0;

// Signals the launcher passes on: to the job once it runs, else to salloc (which then
// withdraws its request). A terminal's ^C reaches salloc and the job directly (they share the
// launcher's process group), so only a SIGINT sent with kill() is passed on.
volatile sig_atomic_t g_pending[NSIG];
extern "C" void on_signal(int sig, siginfo_t* info, void*) {
  if (sig == SIGINT && info && info->si_code != SI_USER && info->si_code != SI_QUEUE) return;
  g_pending[sig] = 1;
}
constexpr int kPassedOn[] = {SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2};

}  // namespace

int run_in_new_allocation(const JobSpec& spec) {
  const std::string job_name = "mpirun-sf." + std::to_string(getpid()) + "." + random_token().substr(0, 8);
  std::vector<std::string> argv{"salloc"};
  for (auto& o : salloc_options(spec, job_name)) argv.push_back(std::move(o));
  argv.push_back(self_executable());
  argv.insert(argv.end(), spec.command_line.begin(), spec.command_line.end());

  // The watchdog first: from here on, however the launcher ends (even by SIGKILL), the
  // request or the allocation is cancelled by the job's unique name and the job told to end.
  auto watchdog = sf::common::slurm::Watchdog::start(job_name);
  if (!watchdog) throw std::runtime_error(watchdog.error().message);
  int ready[2];
  if (pipe(ready) != 0)  // the write end goes to the job through salloc
    throw std::runtime_error(std::string("pipe: ") + strerror(errno));  // the watchdog cancels nothing
  fcntl(ready[0], F_SETFD, FD_CLOEXEC);

  std::vector<std::string> env = current_environment();
  put_env(env, std::string(kReadyFd) + "=" + std::to_string(ready[1]));
  if (spec.clones > 0) put_env(env, std::string(kRequestedClones) + "=" + std::to_string(spec.clones));
  struct sigaction sa {};
  sa.sa_sigaction = on_signal;
  sa.sa_flags = SA_SIGINFO;  // no SA_RESTART: poll() below wakes up
  sigemptyset(&sa.sa_mask);
  for (int sig : kPassedOn) sigaction(sig, &sa, nullptr);

  pid_t salloc = -1;
  try {
    salloc = spawn_in_our_group(argv, env);
  } catch (...) {
    ::close(ready[0]);
    ::close(ready[1]);
    throw;  // the watchdog finds no job and cancels nothing that exists
  }
  ::close(ready[1]);

  // Until salloc ends: note the job's start, pass signals on, say how long the wait has been.
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto next_note = std::chrono::seconds(10);
  pid_t job = -1;
  std::string ready_text;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(salloc, &status, WNOHANG);
    if (r == salloc) break;
    pollfd p{ready[0], POLLIN, 0};
    int n = poll(&p, ready[0] >= 0 ? 1 : 0, 200);
    if (n > 0) {
      char buf[32];
      ssize_t got = ::read(ready[0], buf, sizeof buf);
      if (got > 0) ready_text.append(buf, static_cast<size_t>(got));
      if (got <= 0 || ready_text.find('\n') != std::string::npos) {
        if (!ready_text.empty()) {
          job = static_cast<pid_t>(atol(ready_text.c_str()));
          watchdog->name_job_process(job);
        }
        ::close(ready[0]);
        ready[0] = -1;
      }
    }
    for (int sig : kPassedOn)
      if (g_pending[sig]) {
        g_pending[sig] = 0;
        kill(job > 0 ? job : salloc, sig);
      }
    auto waited = std::chrono::duration_cast<std::chrono::seconds>(clock::now() - start);
    if (job < 0 && waited >= next_note) {
      fprintf(stderr, "mpirun-sf: waiting for Slurm to grant the allocation (%lld s so far)\n",
              static_cast<long long>(waited.count()));
      next_note *= 2;
    }
  }
  if (ready[0] >= 0) ::close(ready[0]);
  // salloc released the allocation itself unless something killed it.
  if (WIFEXITED(status)) watchdog->disarm();
  watchdog->finish();
  return exit_status(status);
}

void report_started_in_requested_allocation() {
  if (const char* c = getenv(kRequestedClones)) g_requested_clones = atoi(c);
  unsetenv(kRequestedClones);
  if (const char* fd = getenv(kReadyFd)) {
    int f = atoi(fd);
    std::string msg = std::to_string(getpid()) + "\n";
    if (f > 2) {
      ssize_t ignored = ::write(f, msg.data(), msg.size());
      (void)ignored;
      ::close(f);
    }
  }
  unsetenv(kReadyFd);
}

bool clones_were_requested(int clones) { return clones > 0 && clones == g_requested_clones; }

}  // namespace sf::mpirun
