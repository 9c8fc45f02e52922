// sfd: the family's control requests (sf.ctl, clone-core/guest_control.hpp and
// docs/protocols/vm-clone.md): framing and version, then ticket, clone, sync, join and kill,
// each refused with a reason when it comes from the wrong member or at the wrong time.
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <fstream>

#include "family_impl.hpp"

namespace sf::sfd::detail {
namespace {

std::uint64_t mem_available_mib() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib / 1024;
  }
  return 0;
}

}  // namespace

void Family::read_ctl(Member& m) {
  std::array<char, 4096> buf{};
  const ssize_t n = ::read(m.ctl, buf.data(), buf.size());
  if (n < 0 && errno == EINTR) return;
  if (n <= 0) {
    if (sf::Status st = m.ctl_reader.finish(); !st) spdlog::info("VM {}: {}", m.id, st.error().message);
    ::close(m.ctl);
    m.ctl = -1;
    return;
  }
  m.ctl_reader.feed(buf.data(), static_cast<std::size_t>(n));
  for (;;) {
    auto body = m.ctl_reader.next();
    if (!body) {
      // The frame boundaries are lost: nothing more on this port can be read.
      spdlog::error("VM {}: {}; closing its control port", m.id, body.error().message);
      ::close(m.ctl);
      m.ctl = -1;
      return;
    }
    if (!*body) break;
    auto req = gc::decode_request(**body);
    if (!req) {
      refuse(m, "sfd: " + req.error().message);
      continue;
    }
    if (req->version() != gc::kVersion) {
      spdlog::error("VM {}: {}", m.id, gc::version_mismatch(gc::kVersion, req->version()));
      refuse(m, gc::version_mismatch(gc::kVersion, req->version()));
      continue;
    }
    handle_request(m, *req);
    if (replaced_) return;  // cloning replaced every member, m included
    if (m.ctl < 0) return;
  }
}

void Family::grant_ticket(Member& m, unsigned g, const std::string& host) {
  granted_ = g;
  nodes_.clear();
  gc::HostMessage message = gc::make_host_message();
  gc::TicketReply& ticket = *message.mutable_ticket();
  ticket.set_granted(g);
  ticket.set_subnet(cfg_.subnet);
  for (unsigned i = 0; i <= g; ++i) {
    nodes_.push_back(cfg_.identity(i, host));
    const NodeIdentity& n = nodes_.back();
    gc::Node& node = *ticket.add_nodes();
    node.set_id(i);
    node.set_address(n.address);
    node.set_prefix(n.prefix);
    node.set_mac(n.mac);
    node.set_hostname(n.hostname);
  }
  spdlog::info("ticket: {} clone(s) granted", g);
  reply(m, message);
}

void Family::progress_slurm_grant() {
  if (!slurm_ || granted_ != 0) return;
  Member* m0 = member(0);
  if (!slurm_->step()) {
    if (Clock::now() >= slurm_next_note_) {
      const auto s = std::chrono::duration_cast<std::chrono::seconds>(slurm_->waited()).count();
      std::fprintf(stderr, "sfd: waiting for Slurm to grant %u node(s) (%lld s so far)\n", slurm_->asked(), static_cast<long long>(s));
      slurm_next_note_ = Clock::now() + std::chrono::seconds(std::max<long long>(10, s));
    }
    return;
  }
  if (!slurm_->granted()) {
    const std::string why = slurm_->failure();
    slurm_.reset();
    spdlog::error("{}", why);
    if (m0 != nullptr) refuse(*m0, why);
    return;
  }
  placement_.agents.clear();
  for (const auto& node : slurm_->nodes()) placement_.agents.push_back(srun_agent(slurm_->job_id(), node));
  spdlog::info("ticket: Slurm granted allocation {} after {} ms: {}", slurm_->job_id(),
               std::chrono::duration_cast<std::chrono::milliseconds>(slurm_->waited()).count(), fmt::join(slurm_->nodes(), ","));
  if (m0 != nullptr) grant_ticket(*m0, slurm_->asked(), slurm_hostname_);
}

void Family::release_slurm_if_done() {
  if (!slurm_ || !cloned_ || !all_clones_ended()) return;
  spdlog::info("every clone ended: releasing Slurm allocation {}", slurm_->job_id());
  slurm_->release();
}

void Family::handle_request(Member& m, const gc::Request& req) {
  switch (req.op_case()) {
    case gc::Request::kTicket: {
      if (m.id != 0) return refuse(m, "nested clusters are not supported: a clone cannot request a ticket");
      if (static_cluster_)
        return refuse(m, "this VM is node 0 of a static cluster (sfd run --nodes): it cannot be cloned; run without --nodes to clone");
      if (granted_ != 0 || slurm_) return refuse(m, "one ticket per sfd run: this VM has already been given one");
      const std::string host = req.ticket().hostname().empty() ? std::string("sf-vm") : req.ticket().hostname();
      std::string why;
      if (placement_.slurm) {
        // One Slurm node per clone: Slurm's grant limits them, not this host's memory.
        const unsigned g = grant_clone_count(req.ticket().clones(), cfg_.max_clones, &why);
        if (g == 0) return refuse(m, "cannot clone this VM: " + why);
        auto grant = SlurmGrant::request(g, *placement_.slurm);
        if (!grant) return refuse(m, "cannot ask Slurm for nodes: " + grant.error().message);
        slurm_ = std::move(*grant);
        slurm_hostname_ = host;
        slurm_next_note_ = Clock::now() + std::chrono::seconds(10);
        spdlog::info("ticket: asked Slurm for {} node(s) (job name {})", g, slurm_->job_name());
        return;  // answered by progress_slurm_grant()
      }
      const unsigned g = grant_clones(req.ticket().clones(), cfg_.max_clones, cfg_.mem_mib, mem_available_mib(), &why);
      if (g == 0) return refuse(m, "cannot clone this VM: " + why);
      return grant_ticket(m, g, host);
    }
    case gc::Request::kClone:
      if (m.id != 0) return refuse(m, "nested clusters are not supported: a clone cannot clone");
      if (granted_ == 0) return refuse(m, "clone without a ticket: request a ticket first");
      if (cloned_) return refuse(m, "this ticket was already used to clone");
      return do_clone(m, req.clone());
    case gc::Request::kSync:
      if (m.id == 0) return refuse(m, "sync() is for clones; the parent calls join()");
      m.synced = true;
      m.sync_value = req.sync().status();
      return reply(m, done_reply());
    case gc::Request::kJoin:
      if (m.id != 0) return refuse(m, "join() is for the parent; clones call sync()");
      if (!cloned_) return refuse(m, "join() before clone()");
      if (all_clones_ended()) return reply(m, join_reply());
      pending_join_ = true;
      return;
    case gc::Request::kKill:
      if (m.id != 0) return refuse(m, "kill() is for the parent");
      kill_clones();
      if (pending_join_) {
        pending_join_ = false;  // answered by end_clone already
      }
      return reply(m, done_reply());
    case gc::Request::kExit:
      // Only the xen driver's clone-side monitor sends it; here the guest agent reports ends.
      return refuse(m, "exit reports are for sfd-xen (Xen guests); under sfd the guest agent reports a clone's end");
    case gc::Request::OP_NOT_SET: break;
  }
  refuse(m, "a request without an operation this sfd knows (sf.ctl version " + std::to_string(gc::kVersion) + ")");
}

}  // namespace sf::sfd::detail
