// The coordinator; see coordinator.hpp.
#include "coordinator.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <charconv>

#include "pmix-plugin/server.hpp"  // the PMIx statuses of lookups and fences

namespace asio = boost::asio;

namespace sf::mpirun {

Coordinator::Coordinator(asio::io_context& io, const LaunchContext& ctx, OutputSink& sink)
    : io_(io), ctx_(ctx), sink_(sink), nodes_(ctx.map.nodes.size(), nullptr), timeout_(io),
      teardown_deadline_(io) {}

std::string Coordinator::jobid() const {
  // Open MPI names processes [[jobfamily,job],rank]; ours is [[pid,1],rank].
  return "[" + std::to_string(getpid() & 0xffff) + ",1]";
}

std::string Coordinator::host_of_rank(int rank) const {
  return ctx_.map.nodes.at(static_cast<size_t>(ctx_.map.ranks.at(static_cast<size_t>(rank)).node))
      .hostname;
}

void Coordinator::send(int node, Envelope m) {
  Link* l = nodes_.at(static_cast<size_t>(node));
  if (l && !finished_nodes_.count(node)) l->send(std::move(m));
}

void Coordinator::connect_node(int node, Link* link) {
  nodes_.at(static_cast<size_t>(node)) = link;
  if (killing_) {  // the job ended before this node joined: it must not start anything
    Envelope m;
    m.mutable_kill()->set_reason("job already ending");
    send(node, std::move(m));
  }
}

void Coordinator::shutdown_nodes(int local_node) {
  for (size_t n = 0; n < nodes_.size(); ++n) {
    if (!nodes_[n] || static_cast<int>(n) == local_node) continue;
    Envelope m;
    m.mutable_shutdown()->set_exit_code(outcome_.exit_code());
    nodes_[n]->send(std::move(m));
  }
}

void Coordinator::kill_job(const std::string& reason) {
  if (killing_) return;
  killing_ = true;
  outcome_.teardown_started();
  for (size_t n = 0; n < nodes_.size(); ++n) {
    Envelope m;
    m.mutable_kill()->set_reason(reason);
    send(static_cast<int>(n), std::move(m));
  }
  // Parked lookups and open fences will never complete now.
  parked_.clear();
  timeout_.cancel();
  // A node that never hears of the kill (its link is down, its agent stopped) would keep the
  // job waiting forever, past --timeout: give every node the kill grace and some seconds to
  // finish, then count the rest as lost.
  const auto bound = std::chrono::milliseconds(ctx_.kill_grace_ms + ctx_.teardown_margin_ms);
  teardown_deadline_.expires_after(bound);
  teardown_deadline_.async_wait([this, bound](const boost::system::error_code& ec) {
    if (ec) return;
    const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(bound).count();
    for (size_t n = 0; n < nodes_.size(); ++n) {
      // The launcher's own node (an in-process agent) ends its ranks itself.
      if (finished_nodes_.count(static_cast<int>(n)) || nodes_[n]->in_process()) continue;
      abandoned_ = true;
      node_lost(static_cast<int>(n), "it did not finish within " + std::to_string(seconds) +
                                         " s after the job was killed");
    }
  });
}

void Coordinator::start_timeout() {
  if (ctx_.spec.timeout_seconds <= 0) return;
  timeout_.expires_after(std::chrono::seconds(ctx_.spec.timeout_seconds));
  timeout_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || killing_) return;
    outcome_.timed_out(ctx_.spec.timeout_seconds);
    kill_job("timeout");
  });
}

void Coordinator::interrupt(int signal) {
  outcome_.interrupted(signal);
  kill_job("mpirun-sf received signal " + std::to_string(signal));
}

void Coordinator::forward_signal(int signal) {
  for (size_t n = 0; n < nodes_.size(); ++n) {
    Envelope m;
    m.mutable_forward_signal()->set_signal(signal);
    send(static_cast<int>(n), std::move(m));
  }
}

void Coordinator::node_lost(int node, const std::string& why) {
  if (finished_nodes_.count(node)) return;
  spdlog::error("node {} ({}) was lost: {}", node,
                ctx_.map.nodes.at(static_cast<size_t>(node)).hostname, why);
  for (int rank : ctx_.map.nodes.at(static_cast<size_t>(node)).ranks) {
    JobOutcome::RankEnd e;
    e.signaled = true;
    e.signal = SIGKILL;
    e.host = host_of_rank(rank);
    outcome_.rank_ended(rank, e);
  }
  finished_nodes_.insert(node);
  kill_job("node " + std::to_string(node) + " lost");
}

void Coordinator::stdin_data(int rank, std::string data, bool eof) {
  int node = ctx_.map.ranks.at(static_cast<size_t>(rank)).node;
  Envelope m;
  auto* s = m.mutable_stdin_data();
  s->set_rank(static_cast<uint32_t>(rank));
  s->set_data(std::move(data));
  s->set_eof(eof);
  send(node, std::move(m));
}

bool Coordinator::known_rank(uint32_t rank) const { return rank < ctx_.map.ranks.size(); }

// A node's agent names only ranks and nodes of the job map; anything else is a broken or
// foreign agent. Its message is dropped with a warning: the launcher must not die of it.
bool Coordinator::valid(int from, const Envelope& m) const {
  auto bad = [&](const char* what, uint64_t value) {
    spdlog::warn("coordinator: node {} sent control message {} naming {} {}, which is not in the job; ignored",
                 from, static_cast<int>(m.body_case()), what, value);
    return false;
  };
  switch (m.body_case()) {
    case Envelope::kOutput:
      return known_rank(m.output().rank()) || bad("rank", m.output().rank());
    case Envelope::kRankExited:
      return known_rank(m.rank_exited().rank()) || bad("rank", m.rank_exited().rank());
    case Envelope::kLaunchFailed:
      return known_rank(m.launch_failed().rank()) || bad("rank", m.launch_failed().rank());
    case Envelope::kAbort:
      return known_rank(m.abort().rank()) || bad("rank", m.abort().rank());
    case Envelope::kModexRequest:
      return known_rank(m.modex_request().rank()) || bad("rank", m.modex_request().rank());
    case Envelope::kModexReply:
      return m.modex_reply().to_node() < nodes_.size() || bad("node", m.modex_reply().to_node());
    default:
      return true;
  }
}

void Coordinator::handle(int from, Envelope m) {
  if (!valid(from, m)) return;
  switch (m.body_case()) {
    case Envelope::kOutput:
      output(m.output());
      break;
    case Envelope::kFence:
      fence(from, m.fence());
      break;
    case Envelope::kRankExited: {
      const auto& e = m.rank_exited();
      JobOutcome::RankEnd end;
      end.signaled = e.signaled();
      end.code = e.code();
      end.signal = e.signal();
      end.pid = static_cast<long>(e.pid());
      end.host = host_of_rank(static_cast<int>(e.rank()));
      outcome_.rank_ended(static_cast<int>(e.rank()), end);
      if (outcome_.failed()) kill_job("rank " + std::to_string(e.rank()) + " failed");
      break;
    }
    case Envelope::kLaunchFailed: {
      const auto& f = m.launch_failed();
      int rank = static_cast<int>(f.rank());
      if (!outcome_.failed())
        fprintf(stderr, "mpirun-sf: %s (rank %d on node %s)\n", f.reason().c_str(), rank,
                host_of_rank(rank).c_str());
      outcome_.launch_failed(rank, f.code(), f.reason(), host_of_rank(rank));
      kill_job("launch failed");
      break;
    }
    case Envelope::kAbort: {
      const auto& a = m.abort();
      outcome_.aborted(static_cast<int>(a.rank()), a.status());
      kill_job("rank " + std::to_string(a.rank()) + " called MPI_Abort");
      break;
    }
    case Envelope::kModexRequest: {
      int owner = ctx_.map.ranks.at(m.modex_request().rank()).node;
      send(owner, std::move(m));
      break;
    }
    case Envelope::kModexReply: {
      int to = static_cast<int>(m.modex_reply().to_node());
      send(to, std::move(m));
      break;
    }
    case Envelope::kPublish: {
      const auto& p = m.publish();
      int status = pmix::kSuccess;
      for (const auto& v : p.values())
        if (store_.count(v.key())) status = pmix::kErrDuplicateKey;
      if (status == pmix::kSuccess)
        for (const auto& v : p.values())
          store_[v.key()] = Published{v.packed(), p.nspace(), p.rank()};
      Envelope reply;
      reply.mutable_op_reply()->set_id(p.id());
      reply.mutable_op_reply()->set_status(status);
      send(from, std::move(reply));
      // A publish may satisfy lookups that wait for it.
      auto parked = std::move(parked_);
      parked_.clear();
      for (auto& pl : parked) answer_lookup(pl.node, pl.request);
      break;
    }
    case Envelope::kLookup:
      answer_lookup(from, m.lookup());
      break;
    case Envelope::kUnpublish: {
      const auto& u = m.unpublish();
      int status = pmix::kSuccess;
      if (u.keys().empty()) {
        std::erase_if(store_, [&](const auto& kv) { return kv.second.rank == u.rank(); });
      } else {
        for (const auto& k : u.keys()) {
          auto it = store_.find(k);
          if (it == store_.end() || it->second.rank != u.rank())
            status = pmix::kErrNotFound;
          else
            store_.erase(it);
        }
      }
      Envelope reply;
      reply.mutable_op_reply()->set_id(u.id());
      reply.mutable_op_reply()->set_status(status);
      send(from, std::move(reply));
      break;
    }
    case Envelope::kNodeFinished:
      finished_nodes_.insert(from);
      break;
    default:
      spdlog::warn("coordinator: unexpected control message {} from node {}",
                   static_cast<int>(m.body_case()), from);
  }
}

void Coordinator::answer_lookup(int node, const sf::control::Lookup& l) {
  Envelope reply;
  auto* r = reply.mutable_op_reply();
  r->set_id(l.id());
  bool all = true;
  for (const auto& k : l.keys()) {
    auto it = store_.find(k);
    if (it == store_.end()) {
      all = false;
      continue;
    }
    auto* h = r->add_hits();
    h->set_key(k);
    h->set_packed(it->second.packed);
    h->set_nspace(it->second.nspace);
    h->set_rank(it->second.rank);
  }
  if (!all && l.wait() && !killing_) {
    parked_.push_back(ParkedLookup{node, l});
    return;
  }
  r->set_status(r->hits_size() > 0 ? pmix::kSuccess : pmix::kErrNotFound);
  send(node, std::move(reply));
}

void Coordinator::fence(int node, const sf::control::FenceContribution& f) {
  auto key = std::make_pair(f.signature(), f.seq());
  Fence& fence = fences_[key];
  if (fence.expected.empty()) {
    // Which nodes host a participant: "ns:R;" items, "ns:*;" meaning every node with ranks.
    if (!fence_nodes(f.signature(), fence.expected)) {
      spdlog::warn("coordinator: node {} sent a fence with the malformed signature '{}'; ignored", node,
                   f.signature().substr(0, 200));
      fences_.erase(key);
      return;
    }
  }
  fence.arrived.insert(node);
  fence.data[node] = f.data();
  if (f.status() != pmix::kSuccess && fence.status == pmix::kSuccess) fence.status = f.status();
  if (fence.arrived != fence.expected) return;
  std::string all;
  for (auto& [n, d] : fence.data) all += d;
  for (int n : fence.expected) {
    Envelope m;
    auto* r = m.mutable_fence_result();
    r->set_signature(f.signature());
    r->set_seq(f.seq());
    r->set_status(fence.status);
    r->set_data(all);
    send(n, std::move(m));
  }
  fences_.erase(key);
}

bool Coordinator::fence_nodes(const std::string& sig, std::set<int>& nodes) const {
  size_t pos = 0;
  while (pos < sig.size()) {
    size_t end = sig.find(';', pos);
    if (end == std::string::npos) end = sig.size();  // the last item needs no ';'
    const std::string item = sig.substr(pos, end - pos);
    pos = end + 1;
    const std::string rank = item.substr(item.rfind(':') + 1);  // no ':': the item is the rank
    if (rank == "*") {
      for (size_t n = 0; n < ctx_.map.nodes.size(); ++n)
        if (!ctx_.map.nodes[n].ranks.empty()) nodes.insert(static_cast<int>(n));
      continue;
    }
    uint32_t r = 0;
    const auto [ptr, ec] = std::from_chars(rank.data(), rank.data() + rank.size(), r);
    if (rank.empty() || ec != std::errc() || ptr != rank.data() + rank.size() || !known_rank(r)) return false;
    nodes.insert(ctx_.map.ranks[r].node);
  }
  return !nodes.empty();
}

void Coordinator::output(const sf::control::Output& o) {
  const int rank = static_cast<int>(o.rank());
  const Stream stream = o.stream() == 2 ? Stream::Stderr : Stream::Stdout;
  auto key = std::make_pair(rank, static_cast<int>(stream));
  bool pending = !o.data().empty() && sink_.write(rank, stream, o.data());
  if (o.eof()) {
    sink_.close(rank, stream);
    partial_timers_.erase(key);
    return;
  }
  if (!pending) return;
  // An unfinished line (a prompt): show it if nothing completes it soon.
  auto& timer = partial_timers_[key];
  if (!timer) timer = std::make_unique<asio::steady_timer>(io_);
  timer->expires_after(std::chrono::milliseconds(100));
  timer->async_wait([this, rank, stream](const boost::system::error_code& ec) {
    if (!ec) sink_.flush_partial(rank, stream);
  });
}

}  // namespace sf::mpirun
