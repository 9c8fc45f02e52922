// sfd: a VM family (see family.hpp). A poll loop rather than Boost.Asio: members come and
// go (the master is replaced by its re-instantiation, clones end one by one), cloning blocks
// the loop on purpose (every VM is paused or not yet running meanwhile), and one poll over a
// handful of descriptors plus a signalfd is the whole event source. This file has the loop and
// the members' ends; family_impl.hpp lists the files with the rest.
#include "sfd/family.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "family_impl.hpp"

namespace sf::sfd {
using nlohmann::json;

std::uint64_t clone_memory_estimate_mib(std::uint64_t guest_mem_mib) { return 64 + guest_mem_mib / 4; }

unsigned grant_clone_count(unsigned requested, unsigned max_clones, std::string* why) {
  if (requested == 0) {
    *why = "a ticket for 0 clones";
    return 0;
  }
  if (requested > max_clones) {
    *why = "asked for " + std::to_string(requested) + " clones; this sfd grants at most " + std::to_string(max_clones) +
           " (SF_MAX_CLONES)";
    return 0;
  }
  return requested;
}

unsigned grant_clones(unsigned requested, unsigned max_clones, std::uint64_t guest_mem_mib,
                      std::uint64_t available_mib, std::string* why) {
  if (grant_clone_count(requested, max_clones, why) == 0) return 0;
  const std::uint64_t per = clone_memory_estimate_mib(guest_mem_mib);
  const std::uint64_t fits = available_mib / per;
  if (fits < requested) {
    *why = "asked for " + std::to_string(requested) + " clones of a " + std::to_string(guest_mem_mib) +
           " MiB VM; the host's available memory (" + std::to_string(available_mib) + " MiB, about " +
           std::to_string(per) + " MiB per clone) fits " + std::to_string(fits);
    return 0;
  }
  return requested;
}

json descriptor_metadata(const FamilyConfig& config, const std::string& stream_name, std::uint64_t stream_bytes,
                         const std::string& free_pages, std::uint64_t free_page_count,
                         const std::vector<NodeIdentity>& nodes) {
  const RamLayout layout = pc_ram_layout(config.mem_mib);
  json n = json::array();
  for (const auto& node : nodes)
    n.push_back({{"id", node.id}, {"address", node.address}, {"prefix", node.prefix}, {"mac", node.mac}, {"hostname", node.hostname}});
  return {{"format", "snowflock-vm-descriptor"},
          {"version", 1},
          {"qemu_stream", {{"file", stream_name}, {"bytes", stream_bytes}, {"capabilities", {"x-ignore-shared"}}}},
          {"machine", {{"type", "pc"}, {"accel", config.accel}, {"cpus", config.cpus}, {"mem_mib", config.mem_mib}}},
          {"ram", {{"bytes", layout.ram_bytes}, {"below_4g", layout.below_4g}, {"page_size", 4096}}},
          {"free_pages", {{"ranges", free_pages}, {"pages", free_page_count}}},
          {"network", {{"subnet", config.subnet}, {"nodes", n}}}};
}


namespace detail {
using socket_io::write_all;

void Family::stop_vm(Member& m, std::chrono::milliseconds grace) {
  if (m.remote) {
    m.remote->stop(grace);
    report_remote(m);
    m.remote.reset();
    return;
  }
  if (!m.vm || m.vm->try_reap()) return;
  (void)m.vm->qmp().quit(std::chrono::milliseconds(1000));
  if (!m.vm->wait_exit(grace)) m.vm->terminate(std::chrono::milliseconds(500));
}

void Family::end_clone(Member& m, CloneEnd end, int value) {
  if (m.ended) return;
  m.ended = true;
  m.end = end;
  m.value = value;
  if (static_cluster_ && end != CloneEnd::killed)  // a node's service should run until the master ends
    spdlog::warn("node {} stopped early ({} {}): the master's command cannot use it", m.id, sf::clone_end_name(end), value);
  else
    spdlog::info("{} {} ended: {} {}", static_cluster_ ? "node" : "clone", m.id, sf::clone_end_name(end), value);
  stop_vm(m, std::chrono::milliseconds(2000));
  m.close_fds();
  m.vm.reset();
  if (Member* p = member(0); p != nullptr && !static_cluster_) {
    gc::HostMessage event = gc::make_host_message();
    set_status(*event.mutable_ended(), m.id, end, value);
    reply(*p, event);
    if (pending_join_ && all_clones_ended()) {
      pending_join_ = false;
      reply(*p, join_reply());
    }
  }
  release_slurm_if_done();
}

void Family::kill_clones() {
  for (auto& m : members_) {
    if (m->id != 0 && !m->ended) end_clone(*m, CloneEnd::killed, SIGKILL);
  }
}

void Family::reap_all() {
  for (auto& m : members_) {
    const bool gone = m->vm ? m->vm->try_reap().has_value() : m->remote && m->remote->try_reap().has_value();
    if (!gone) continue;
    if (m->id == 0) continue;  // handled by the loop (the run ends)
    // A clone's QEMU went away: output already queued is still read, then it is lost.
    read_io(*m, true);
    if (!m->ended) end_clone(*m, CloneEnd::lost, 0);
  }
}

int Family::run(std::unique_ptr<QemuVm> master, std::vector<BootedNode> nodes) {
  // Each spec waits in its socket until the guest agent opens the port.
  const auto add = [this](unsigned id, std::unique_ptr<QemuVm> vm, const std::string& spec) {
    auto m = std::make_unique<Member>();
    m->id = id;
    m->vm = std::move(vm);
    adopt(*m, *m->vm);
    const auto frame = gio::encode(gio::FrameType::spec, spec);
    const bool sent = write_all(m->io, frame.data(), frame.size());
    members_.push_back(std::move(m));
    return sent;
  };
  if (!add(0, std::move(master), cfg_.spec)) return fail("run: cannot send the command to the VM");
  static_cluster_ = !nodes.empty();
  for (auto& n : nodes) {
    if (!add(n.id, std::move(n.vm), n.spec)) {
      kill_clones();
      return fail("run: cannot send node " + std::to_string(n.id) + " its command");
    }
  }
  for (;;) {
    if (!failure_.empty()) {
      kill_clones();
      return fail(failure_);
    }
    Member* m0 = member(0);
    if (m0 == nullptr) return fail("run: the VM is gone");
    // The master's command exited: end the clones, let QEMU quit (its last output is read
    // meanwhile), then return its status.
    if (exit_code_ && !master_deadline_) {
      kill_clones();
      (void)m0->vm->qmp().quit(std::chrono::milliseconds(3000));
      master_deadline_ = Clock::now() + std::chrono::seconds(10);
    }
    if (m0->vm->try_reap()) {
      read_io(*m0, true);
      kill_clones();
      if (exit_code_) return *exit_code_;
      std::string why = "the VM stopped before the command finished";
      if (auto st = m0->vm->exit_status(); st && WIFSIGNALED(*st)) why = "QEMU was killed by signal " + std::to_string(WTERMSIG(*st));
      else if (!guest_error_.empty()) why += " (" + guest_error_ + ")";
      else why += " (guest crash or power-off)";
      return fail("run: " + why + m0->vm->diagnostics());
    }
    if (master_deadline_ && Clock::now() > *master_deadline_) {
      spdlog::info("QEMU did not exit in time; killing it");
      m0->vm->terminate(std::chrono::milliseconds(500));
      return *exit_code_;
    }

    replaced_ = false;
    std::vector<pollfd> fds{{signal_fd_, POLLIN, 0}};
    // stdin is read when the last frame is written (and not once the command has exited).
    const bool read_input = stdin_fd_ >= 0 && to_guest_.empty() && !exit_code_ && m0->io >= 0;
    fds.push_back({read_input ? stdin_fd_ : -1, POLLIN, 0});
    std::vector<std::pair<unsigned, bool>> who{{0, false}};  // member id, is control port
    for (auto& m : members_) {
      if (m->io >= 0) {
        const bool out = m->id == 0 && !to_guest_.empty();
        fds.push_back({m->io, static_cast<short>(POLLIN | (out ? POLLOUT : 0)), 0});
        who.emplace_back(m->id, false);
      }
      if (m->ctl >= 0) {
        fds.push_back({m->ctl, POLLIN, 0});
        who.emplace_back(m->id, true);
      }
    }
    // --allocator slurm: the ticket's grant, while salloc waits (who: no member).
    const bool grant_pending = slurm_ && granted_ == 0 && slurm_->fd() >= 0;
    if (grant_pending) {
      fds.push_back({slurm_->fd(), POLLIN, 0});
      who.emplace_back(~0u, false);
    }
    const int r = ::poll(fds.data(), fds.size(), master_deadline_ ? 100 : 1000);
    if (r < 0 && errno != EINTR) return fail(std::string("run: poll: ") + std::strerror(errno));
    if (grant_pending) {
      if (r <= 0 || fds.back().revents != 0) progress_slurm_grant();  // also notes a long wait
      fds.pop_back();
      who.pop_back();
    }
    if (r <= 0) {
      reap_all();
      continue;
    }
    if (fds[0].revents & POLLIN) {
      signalfd_siginfo si{};
      while (::read(signal_fd_, &si, sizeof si) == static_cast<ssize_t>(sizeof si)) {
        const int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) continue;
        spdlog::info("got signal {}; stopping the VMs", sig);
        for (auto& m : members_) {
          if (m->vm) m->vm->terminate(std::chrono::milliseconds(1000));
          if (m->remote) stop_vm(*m, std::chrono::milliseconds(1000));
        }
        return 128 + sig;
      }
      reap_all();
    }
    if (fds[1].revents != 0) read_stdin();
    for (std::size_t i = 2; i < fds.size(); ++i) {
      if (fds[i].revents & POLLOUT) {
        if (Member* m = member(who[i - 1].first); m != nullptr && m->io == fds[i].fd) write_to_guest(*m);
      }
      if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      Member* m = member(who[i - 1].first);
      if (m == nullptr) continue;  // replaced by cloning in this round
      if (who[i - 1].second) {
        if (m->ctl == fds[i].fd) read_ctl(*m);
      } else if (m->io == fds[i].fd) {
        read_io(*m, false);
      }
      if (replaced_) break;  // the member set changed: poll again
    }
  }
}

}  // namespace detail

int run_family(std::unique_ptr<QemuVm> master, const FamilyConfig& config, int signal_fd) {
  return run_family(std::move(master), {}, config, signal_fd);
}

int run_family(std::unique_ptr<QemuVm> master, std::vector<BootedNode> nodes, const FamilyConfig& config, int signal_fd) {
  detail::Family family(config, signal_fd);
  return family.run(std::move(master), std::move(nodes));
}

}  // namespace sf::sfd
