// The node agent; see node_agent.hpp.
#include "node_agent.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <future>
#include <set>

#include "environment.hpp"
#include "job_setup.hpp"
#include "mpirun-sf/exit_status.hpp"
#include "rank_stdio.hpp"

namespace asio = boost::asio;

namespace sf::mpirun {
namespace {

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// Written by a child that could not start, read by the agent (the pipe closes on exec).
struct ExecFailure {
  int step;  // 1: working directory, 2: exec
  int error;
};

// What a rank's child needs between clone and exec.
struct ChildSetup {
  pid_t parent;
  const RankStdio* stdio;
  const char* path;
  char** argv;
  char** envp;
  const char* wdir;
  int status_fd;
};

// The child of a rank, from clone to exec. It shares the agent's memory (CLONE_VM) while the
// agent waits (CLONE_VFORK), as posix_spawn's child does: no page tables are copied and the
// agent's pages are not made copy-on-write, which after a fork cost every rank's start a
// round of TLB shootdowns across the agent's threads. Only async-signal-safe calls, no
// allocation, nothing written but its own stack; not instrumented by the sanitizers (it runs
// on a stack they do not know).
SF_NO_SANITIZE int rank_child(void* arg) {
  const auto* c = static_cast<const ChildSetup*>(arg);
  setpgid(0, 0);  // own process group: the agent signals the rank and its children together
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // the agent dies, the rank dies
  if (getppid() != c->parent) _exit(127);
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  signal(SIGPIPE, SIG_DFL);  // the launcher ignores SIGPIPE; the program must not
  c->stdio->become_child_stdio();  // 0, 1, 2; everything else closes at exec (the status pipe too)
  ExecFailure f{1, 0};
  if (chdir(c->wdir) == 0) {
    execve(c->path, c->argv, c->envp);
    f.step = 2;
  }
  f.error = errno;
  ssize_t ignored = ::write(c->status_fd, &f, sizeof f);
  (void)ignored;
  _exit(127);
}

}  // namespace

NodeAgent::NodeAgent(asio::io_context& io, const LaunchContext& ctx, int node, Link& uplink)
    : io_(io), ctx_(ctx), node_(node), up_(uplink), sigchld_(io, SIGCHLD), kill_timer_(io) {}

NodeAgent::~NodeAgent() {
  alive_.reset();  // a release that PMIx completes from now on finds no agent
  kill_now();
  // Reap what is left so no zombie outlives the agent.
  for (auto& [rank, r] : ranks_)
    if (!r.exited && r.pid > 0) waitpid(r.pid, nullptr, 0);
  server_.reset();
  if (!shm_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(shm_dir_, ec);
  }
}

void NodeAgent::start(const std::string& session_dir) {
  prepare(session_dir);
  launch_ranks();
}

void NodeAgent::prepare(const std::string& session_dir) {
  const auto& here = ctx_.map.nodes.at(static_cast<size_t>(node_));
  // Open MPI's shared-memory segments go into a directory of ours in tmpfs, removed when the
  // agent ends: ranks killed on an abort, crash or timeout cannot remove their own, and
  // mpirun's runtime removes them for it. (--cleanup removes those of a killed launcher.)
  std::string pattern = "/dev/shm/mpirun-sf." + std::to_string(getpid()) + ".XXXXXX";
  if (mkdtemp(pattern.data())) shm_dir_ = pattern;
  else spdlog::warn("node {}: cannot create {}: {}; shared-memory segments go to Open MPI's default",
                    node_, pattern, strerror(errno));
  // Where the nodes reach each other over IP only, Open MPI ends up in its ob1 PML anyway;
  // naming it spares every rank the probing of the cm PML with its PSM/PSM2 and libfabric
  // MTLs and of UCX: two thirds of a 2-rank job's time here (0.36 s against 0.13 s). That
  // holds for this machine and its clones (their network is IP), and for a Slurm node without
  // fabric devices; on a node with InfiniBand, Omni-Path or Slingshot, Open MPI chooses, as
  // under mpirun. A choice of the user's (--mca pml, -x, the environment) always wins.
  name_ob1_ = ctx_.plan.node_ranks.empty() || !has_fabric_devices();
  auto server = pmix::PmixServer::start(
      pmix::ServerOptions{session_dir, here.hostname, static_cast<uint32_t>(node_)}, *this);
  if (!server) throw std::runtime_error(server.error().message);
  server_ = std::move(*server);
  if (auto registered = server_->register_job(ctx_.map, node_); !registered)
    throw std::runtime_error(registered.error().message);
  sigchld_.async_wait([this](const boost::system::error_code& ec, int) {
    if (!ec) reap();
  });
}

void NodeAgent::launch_ranks() {
  if (launched_ || killing_ || finished_) return;  // a job killed before it began starts nothing
  launched_ = true;
  for (int rank : ctx_.map.nodes.at(static_cast<size_t>(node_)).ranks) launch(rank);
  check_finished();
}

void NodeAgent::launch(int rank) {
  const auto& place = ctx_.map.ranks.at(static_cast<size_t>(rank));
  const auto app = static_cast<size_t>(place.appnum);
  const auto& here = ctx_.map.nodes.at(static_cast<size_t>(node_));
  LocalRank& r = ranks_[rank];
  r.rank = rank;

  std::vector<std::string> env = ctx_.base_env;
  if (name_ob1_ && !has_env(env, "OMPI_MCA_pml")) env.push_back("OMPI_MCA_pml=ob1");
  auto pmix_env = server_->prepare_rank(static_cast<uint32_t>(rank), getuid(), getgid());
  if (!pmix_env) throw std::runtime_error(pmix_env.error().message);
  for (const auto& e : *pmix_env) put_env(env, e);
  put_env(env, "OMPI_COMM_WORLD_SIZE=" + std::to_string(ctx_.map.size()));
  put_env(env, "OMPI_COMM_WORLD_RANK=" + std::to_string(rank));
  put_env(env, "OMPI_COMM_WORLD_LOCAL_RANK=" + std::to_string(place.local_rank));
  put_env(env, "OMPI_COMM_WORLD_LOCAL_SIZE=" + std::to_string(here.ranks.size()));
  put_env(env, "OMPI_COMM_WORLD_NODE_RANK=" + std::to_string(place.node_rank));
  put_env(env, "OMPI_UNIVERSE_SIZE=" + std::to_string(ctx_.map.universe_size));
  put_env(env, "OMPI_APP_CTX_NUM_PROCS=" + std::to_string(ctx_.map.apps[app].size));
  if (!shm_dir_.empty() && !has_env(env, "OMPI_MCA_btl_vader_backing_directory"))
    put_env(env, "OMPI_MCA_btl_vader_backing_directory=" + shm_dir_);

  std::vector<std::string> argv{ctx_.spec.apps[app].program};
  for (const auto& a : ctx_.spec.apps[app].args) argv.push_back(a);
  std::vector<char*> c_argv = c_strings(argv);
  std::vector<char*> c_env = c_strings(env);
  const char* path = ctx_.program_paths[app].c_str();
  const char* wdir = ctx_.app_wdirs[app].c_str();

  const auto& target = ctx_.spec.stdin_target;
  bool wants_stdin = target.kind == StdinTarget::Kind::All ||
                     (target.kind == StdinTarget::Kind::Rank && target.rank == rank);
  RankStdio stdio(wants_stdin, ctx_.spec.merge_stderr_to_stdout, ctx_.terminal_size);
  int status_pipe[2];
  if (pipe2(status_pipe, O_CLOEXEC))
    throw std::runtime_error(std::string("cannot create a pipe for rank ") +
                             std::to_string(rank) + ": " + strerror(errno));
  ChildSetup setup{getpid(), &stdio, path, c_argv.data(), c_env.data(), wdir, status_pipe[1]};
  constexpr size_t kChildStack = 256 * 1024;
  void* stack = mmap(nullptr, kChildStack, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  pid_t pid = stack == MAP_FAILED ? -1
                                  : clone(rank_child, static_cast<char*>(stack) + kChildStack,
                                          CLONE_VM | CLONE_VFORK | SIGCHLD, &setup);
  int clone_errno = errno;
  if (stack != MAP_FAILED) munmap(stack, kChildStack);  // the child has exec'd or exited
  if (pid < 0) {
    ::close(status_pipe[0]);
    ::close(status_pipe[1]);
    throw std::runtime_error(std::string("cannot start a process: ") + strerror(clone_errno));
  }
  setpgid(pid, pid);  // also here, so kill(-pid) works even before the child ran
  r.pid = pid;
  stdio.close_child_ends();
  ::close(status_pipe[1]);
  ExecFailure f{0, 0};
  ssize_t n;
  do n = ::read(status_pipe[0], &f, sizeof f);
  while (n < 0 && errno == EINTR);
  ::close(status_pipe[0]);

  // A terminal's reader sees EIO, not EOF, once the rank and its children closed it; read_stream
  // ends the stream on either.
  r.out = std::make_unique<asio::posix::stream_descriptor>(io_, stdio.take_stdout());
  r.open_streams = 1;
  if (int err = stdio.take_stderr(); err >= 0) {
    r.err = std::make_unique<asio::posix::stream_descriptor>(io_, err);
    r.open_streams = 2;
  }
  if (int in = stdio.take_stdin(); in >= 0)
    r.in = std::make_unique<asio::posix::stream_descriptor>(io_, in);

  if (n == static_cast<ssize_t>(sizeof f)) {
    Envelope m;
    auto* lf = m.mutable_launch_failed();
    lf->set_rank(static_cast<uint32_t>(rank));
    if (f.step == 1) {
      lf->set_code(kExitBadWdir);
      lf->set_reason("cannot change to working directory " + std::string(wdir) + ": " +
                     strerror(f.error));
    } else {
      lf->set_code(kExitCannotExecute);
      lf->set_reason("cannot execute " + std::string(path) + ": " + strerror(f.error));
    }
    up_.send(std::move(m));
  }
  read_stream(r, 1);
  if (r.err) read_stream(r, 2);
}

void NodeAgent::read_stream(LocalRank& r, int stream) {
  auto& desc = stream == 1 ? *r.out : *r.err;
  auto buf = std::make_shared<std::array<char, 65536>>();
  const int rank = r.rank;
  desc.async_read_some(asio::buffer(*buf), [this, buf, rank, stream](
                                               const boost::system::error_code& ec, size_t n) {
    LocalRank& r = ranks_.at(rank);
    Envelope m;
    auto* o = m.mutable_output();
    o->set_rank(static_cast<uint32_t>(rank));
    o->set_stream(static_cast<uint32_t>(stream));
    if (n) o->set_data(buf->data(), n);
    if (ec) {
      o->set_eof(true);
      up_.send(std::move(m));
      (stream == 1 ? r.out : r.err)->close();
      --r.open_streams;
      check_finished();
      return;
    }
    up_.send(std::move(m));
    read_stream(r, stream);
  });
}

void NodeAgent::reap() {
  for (auto& [rank, r] : ranks_) {
    if (r.exited || r.pid <= 0) continue;
    int status = 0;
    pid_t got = waitpid(r.pid, &status, WNOHANG);
    if (got != r.pid) continue;
    r.exited = true;
    // Whatever the rank left in its process group goes with it: no orphans.
    kill(-r.pid, SIGKILL);
    if (r.in) {
      r.in->close();
      r.in.reset();
    }
    for (auto& c : r.stdin_queue)
      if (c.done) c.done();
    r.stdin_queue.clear();
    Envelope m;
    auto* e = m.mutable_rank_exited();
    e->set_rank(static_cast<uint32_t>(rank));
    e->set_pid(r.pid);
    if (WIFSIGNALED(status)) {
      e->set_signaled(true);
      e->set_signal(WTERMSIG(status));
    } else {
      e->set_code(WEXITSTATUS(status));
    }
    up_.send(std::move(m));
  }
  sigchld_.async_wait([this](const boost::system::error_code& ec, int) {
    if (!ec) reap();
  });
  check_finished();
}

void NodeAgent::check_finished() {
  if (finished_) return;
  for (auto& [rank, r] : ranks_)
    if (!r.exited || r.open_streams > 0) return;
  finished_ = true;
  kill_timer_.cancel();
  sigchld_.cancel();
  Envelope m;
  m.mutable_node_finished()->set_node(static_cast<uint32_t>(node_));
  up_.send(std::move(m));
}

std::vector<uint32_t> NodeAgent::live_ranks() const {
  std::vector<uint32_t> live;
  for (const auto& [rank, r] : ranks_)
    if (!r.exited && r.pid > 0) live.push_back(static_cast<uint32_t>(rank));
  return live;
}

void NodeAgent::kill_ranks(const std::string& reason) {
  if (killing_) return;
  killing_ = true;
  spdlog::debug("node {}: killing ranks: {}", node_, reason);
  const std::vector<uint32_t> live = live_ranks();
  if (!server_ || live.empty()) {
    terminate_ranks();
    check_finished();  // nothing (left) to wait for, as when the job ends before it began
    return;
  }
  // First PMIx lets go of them (see PmixServer::release_ranks), then they get their signals.
  server_->release_ranks(live, [this, alive = std::weak_ptr<bool>(alive_)] {
    asio::post(io_, [this, alive] {
      if (alive.lock()) terminate_ranks();
    });
  });
  kill_timer_.expires_after(std::chrono::seconds(1));  // PMIx should answer in microseconds
  kill_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec) return;
    spdlog::warn("node {}: the PMIx server did not release the ranks; killing them anyway", node_);
    terminate_ranks();
  });
}

void NodeAgent::terminate_ranks() {
  if (terminating_) return;
  terminating_ = true;
  for (auto& [rank, r] : ranks_)
    if (!r.exited && r.pid > 0) {
      kill(-r.pid, SIGCONT);  // a stopped rank must wake up to die of SIGTERM
      kill(-r.pid, SIGTERM);
    }
  kill_timer_.expires_after(std::chrono::milliseconds(ctx_.kill_grace_ms));
  kill_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) kill_now();
  });
}

void NodeAgent::kill_now() {
  const std::vector<uint32_t> live = live_ranks();
  if (live.empty()) return;
  if (!terminating_ && server_) {
    // No grace, but PMIx must still let go of the ranks first (see kill_ranks); its answer
    // comes from its own thread, so waiting here cannot deadlock. Bounded all the same.
    auto released = std::make_shared<std::promise<void>>();
    server_->release_ranks(live, [released] { released->set_value(); });
    if (released->get_future().wait_for(std::chrono::seconds(1)) != std::future_status::ready)
      spdlog::warn("node {}: the PMIx server did not release the ranks; killing them anyway", node_);
    terminating_ = true;
  }
  for (auto& [rank, r] : ranks_)
    if (!r.exited && r.pid > 0) kill(-r.pid, SIGKILL);
}

void NodeAgent::write_stdin(int rank, std::string data, bool eof, std::function<void()> done) {
  auto it = ranks_.find(rank);
  if (it == ranks_.end() || !it->second.in) {
    if (done) done();
    return;
  }
  it->second.stdin_queue.push_back(StdinChunk{std::move(data), eof, std::move(done)});
  write_next_stdin(it->second);
}

void NodeAgent::write_next_stdin(LocalRank& r) {
  if (r.stdin_writing || r.stdin_queue.empty() || !r.in) return;
  StdinChunk& c = r.stdin_queue.front();
  if (c.data.empty()) {
    if (c.eof) {
      r.in->close();
      r.in.reset();
    }
    if (c.done) c.done();
    r.stdin_queue.pop_front();
    write_next_stdin(r);
    return;
  }
  r.stdin_writing = true;
  const int rank = r.rank;
  asio::async_write(*r.in, asio::buffer(c.data),
                    [this, rank](const boost::system::error_code& ec, size_t) {
                      LocalRank& r = ranks_.at(rank);
                      r.stdin_writing = false;
                      if (r.stdin_queue.empty()) return;
                      StdinChunk c = std::move(r.stdin_queue.front());
                      r.stdin_queue.pop_front();
                      if ((ec || c.eof) && r.in) {
                        r.in->close();  // the rank closed its stdin, or input ended
                        r.in.reset();
                      }
                      if (c.done) c.done();
                      if (ec) {
                        for (auto& rest : r.stdin_queue)
                          if (rest.done) rest.done();
                        r.stdin_queue.clear();
                        return;
                      }
                      write_next_stdin(r);
                    });
}

void NodeAgent::deliver(Envelope m) {
  switch (m.body_case()) {
    case Envelope::kKill:
      kill_ranks(m.kill().reason());
      break;
    case Envelope::kForwardSignal:
      for (auto& [rank, r] : ranks_)
        if (!r.exited && r.pid > 0) kill(r.pid, m.forward_signal().signal());
      break;
    case Envelope::kFenceResult: {
      const auto& f = m.fence_result();
      auto it = fences_.find({f.signature(), f.seq()});
      if (it == fences_.end()) break;
      auto done = std::move(it->second);
      fences_.erase(it);
      done(f.status(), f.data());
      break;
    }
    case Envelope::kStdinData: {
      const auto& s = m.stdin_data();
      write_stdin(static_cast<int>(s.rank()), s.data(), s.eof(), nullptr);
      break;
    }
    case Envelope::kModexRequest: {
      // Another node wants a local rank's modex data.
      const auto req = m.modex_request();
      server_->local_modex(req.rank(), [this, req](int status, std::string data) {
        asio::post(io_, [this, req, status, data = std::move(data)]() mutable {
          Envelope reply;
          auto* r = reply.mutable_modex_reply();
          r->set_id(req.id());
          r->set_status(status);
          r->set_data(std::move(data));
          r->set_to_node(req.from_node());
          up_.send(std::move(reply));
        });
      });
      break;
    }
    case Envelope::kModexReply: {
      auto it = modex_waits_.find(m.modex_reply().id());
      if (it == modex_waits_.end()) break;
      auto done = std::move(it->second);
      modex_waits_.erase(it);
      done(m.modex_reply().status(), m.modex_reply().data());
      break;
    }
    case Envelope::kOpReply: {
      const auto& r = m.op_reply();
      if (auto it = op_waits_.find(r.id()); it != op_waits_.end()) {
        auto done = std::move(it->second);
        op_waits_.erase(it);
        done(r.status());
      } else if (auto lt = lookup_waits_.find(r.id()); lt != lookup_waits_.end()) {
        auto done = std::move(lt->second);
        lookup_waits_.erase(lt);
        std::vector<pmix::LookupHit> hits;
        for (const auto& h : r.hits())
          hits.push_back(pmix::LookupHit{h.key(), h.packed(), pmix::ProcId{h.nspace(), h.rank()}});
        done(r.status(), std::move(hits));
      }
      break;
    }
    default:
      spdlog::warn("node {}: unexpected control message {}", node_,
                   static_cast<int>(m.body_case()));
  }
}

// --- PMIx upcalls: post onto the loop -------------------------------------------------

void NodeAgent::client_connected(uint32_t rank) {
  spdlog::debug("node {}: rank {} connected", node_, rank);
}

void NodeAgent::client_finalized(uint32_t rank) {
  spdlog::debug("node {}: rank {} finalized", node_, rank);
}

void NodeAgent::abort(uint32_t rank, int status, std::string message, pmix::OpDone done) {
  asio::post(io_, [this, rank, status, message = std::move(message)] {
    Envelope m;
    auto* a = m.mutable_abort();
    a->set_rank(rank);
    a->set_status(status);
    a->set_message(message);
    up_.send(std::move(m));
  });
  // Release the client at once: the aborting rank exits with the status itself.
  done(pmix::kSuccess);
}

void NodeAgent::fence(pmix::FenceRequest request, pmix::DataDone done) {
  asio::post(io_, [this, request = std::move(request), done = std::move(done)]() mutable {
    std::vector<std::string> names;
    for (const auto& p : request.participants)
      names.push_back(p.nspace + ":" + (p.rank == pmix::kRankWildcard ? std::string("*")
                                                                       : std::to_string(p.rank)));
    std::sort(names.begin(), names.end());
    std::string signature;
    for (const auto& n : names) signature += n + ";";
    uint64_t seq = ++fence_seq_[signature];
    spdlog::debug("node {}: fence {} #{} ({} bytes, collect {})", node_, signature, seq,
                  request.data.size(), request.collect_data);
    fences_[{signature, seq}] = std::move(done);
    Envelope m;
    auto* f = m.mutable_fence();
    f->set_signature(signature);
    f->set_seq(seq);
    f->set_status(request.local_status);
    f->set_data(std::move(request.data));
    f->set_node(static_cast<uint32_t>(node_));
    up_.send(std::move(m));
  });
}

void NodeAgent::direct_modex(uint32_t rank, pmix::DataDone done) {
  ask_coordinator(modex_waits_, std::move(done), [this, rank](Envelope& m, uint64_t id) {
    auto* r = m.mutable_modex_request();
    r->set_id(id);
    r->set_rank(rank);
    r->set_from_node(static_cast<uint32_t>(node_));
  });
}

void NodeAgent::publish(pmix::ProcId publisher, std::vector<pmix::PackedValue> values,
                        pmix::OpDone done) {
  ask_coordinator(op_waits_, std::move(done),
                  [publisher, values = std::move(values)](Envelope& m, uint64_t id) {
                    auto* p = m.mutable_publish();
                    p->set_id(id);
                    p->set_rank(publisher.rank);
                    p->set_nspace(publisher.nspace);
                    for (const auto& v : values) {
                      auto* pv = p->add_values();
                      pv->set_key(v.key);
                      pv->set_packed(v.packed);
                    }
                  });
}

void NodeAgent::lookup(pmix::ProcId requester, std::vector<std::string> keys, bool wait,
                       pmix::LookupDone done) {
  ask_coordinator(lookup_waits_, std::move(done),
                  [requester, keys = std::move(keys), wait](Envelope& m, uint64_t id) {
                    auto* l = m.mutable_lookup();
                    l->set_id(id);
                    l->set_rank(requester.rank);
                    l->set_wait(wait);
                    for (const auto& k : keys) l->add_keys(k);
                  });
}

void NodeAgent::unpublish(pmix::ProcId publisher, std::vector<std::string> keys,
                          pmix::OpDone done) {
  ask_coordinator(op_waits_, std::move(done),
                  [publisher, keys = std::move(keys)](Envelope& m, uint64_t id) {
                    auto* u = m.mutable_unpublish();
                    u->set_id(id);
                    u->set_rank(publisher.rank);
                    for (const auto& k : keys) u->add_keys(k);
                  });
}

}  // namespace sf::mpirun
