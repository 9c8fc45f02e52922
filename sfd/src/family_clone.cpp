// sfd: the family's clone request: pause the master, save its descriptor beside the frozen
// RAM image, then start every member from it (here, or on the --remote hosts behind a page
// server and the member service) and tell each which clone it is.
#include <sys/wait.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "clone-core/free_pages.hpp"
#include "family_impl.hpp"
#include "sfd/paths.hpp"

namespace sf::sfd::detail {
namespace fs = std::filesystem;
using nlohmann::json;

void Family::do_clone(Member& parent_member, const gc::CloneRequest& request) {
  const auto t0 = Clock::now();
  QemuVm& parent = *parent_member.vm;
  if (parent_member.id == 0 && !settle_stdin(parent_member, std::chrono::milliseconds(2000)))
    return refuse(parent_member, "standard input sent to the VM is not taken by the guest; clone again once the "
                                 "command reads its input (or run sfd with --stdin none)");
  if (auto st = parent.qmp().stop(); !st) return refuse(parent_member, "cannot pause the VM: " + st.error().message);
  // Output the guest wrote before the pause is forwarded before the parent's QEMU goes.
  read_io(parent_member, true);
  const fs::path desc = runtime_dir() / (parent.paths().run_dir.filename().string() + "-clone.desc");
  auto stats = save_descriptor(parent, desc);
  if (!stats) {
    std::error_code ec;
    fs::remove(desc, ec);
    (void)parent.qmp().cont();
    return refuse(parent_member, "cannot save the VM's descriptor: " + stats.error().message);
  }
  // Our metadata beside QEMU's stream: what a remote host needs besides the device state.
  const fs::path meta = desc.string() + ".json";
  const std::string& free_pages = request.free_pages();
  const std::uint64_t free_count = request.free_page_count();
  {
    std::ofstream out(meta);
    out << descriptor_metadata(cfg_, desc.filename().string(), stats->bytes, free_pages, free_count, nodes_).dump(1) << "\n";
  }
  std::error_code meta_ec;
  const std::uint64_t meta_bytes = fs::file_size(meta, meta_ec);
  const auto t1 = Clock::now();
  // Freeze the RAM file; from here the old parent is gone for good.
  image_ = std::make_unique<FrozenImage>(parent.release_ram_file(), desc, meta);
  const gio::FrameDecoder decoder = parent_member.decoder;  // a partial frame continues in every copy
  members_.clear();
  replaced_ = true;
  cloned_ = true;
  // Placement: the master (clone 0) here; the others here too, or all on the --remote hosts.
  std::vector<VmConfig> configs;
  std::vector<unsigned> local_ids;
  std::vector<unsigned> remote_ids;
  std::vector<std::shared_ptr<const TapDevice>> remote_taps;
  for (unsigned i = 0; i <= granted_; ++i) {
    auto c = cfg_.config_for(i);
    if (!c) {
      failure_ = "clone: " + c.error().message;
      return;
    }
    if (i > 0 && placement_.enabled()) {
      remote_ids.push_back(i);
      remote_taps.push_back(c->nic);  // relayed to the remote clone's NIC
    } else {
      local_ids.push_back(i);
      configs.push_back(std::move(*c));
    }
  }
  std::vector<std::unique_ptr<Member>> added;
  if (!remote_ids.empty()) {
    // Before the local clones start, so the remote hosts work meanwhile.
    if (auto st = start_remote_members(remote_ids, configs.front(), request, remote_taps, added); !st) {
      failure_ = "clone: " + st.error().message;
      return;
    }
  }
  CloneTimings timings;
  auto vms = start_clones(std::move(configs), *image_, &timings);
  if (!vms) {
    failure_ = "clone: " + vms.error().message;
    return;
  }
  for (unsigned k = 0; k < vms->size(); ++k) {
    auto m = std::make_unique<Member>();
    m->id = local_ids[k];
    m->vm = std::move((*vms)[k]);
    adopt(*m, *m->vm);
    added.push_back(std::move(m));
  }
  if (!remote_ids.empty()) {
    auto conns = member_service_->accept_members(remote_ids, Clock::now() + std::chrono::seconds(60), [&]() -> std::optional<std::string> {
      for (auto& m : added) {
        if (!m->remote) continue;
        if (const auto reaped = m->remote->try_reap()) {
          const int st = *reaped;
          const std::string how = WIFEXITED(st) ? "exited with status " + std::to_string(WEXITSTATUS(st))
                                                : "was killed by signal " + std::to_string(WTERMSIG(st));
          return "clone " + std::to_string(m->id) + " on '" + m->remote->host() + "': the agent " + how +
                 " before the member connected (its messages, if any, are above); " +
                 (placement_.slurm ? std::string("check that srun starts sfd on the Slurm node and that the node reaches this host on --remote-iface")
                                   : std::string("check that --remote runs a command on the other host and that it reaches this host on --remote-iface"));
        }
      }
      return std::nullopt;
    });
    if (!conns) {
      failure_ = "clone: " + conns.error().message;
      return;
    }
    for (auto& m : added) {
      if (!m->remote) continue;
      m->io = (*conns)[m->id].first;
      m->ctl = (*conns)[m->id].second;
    }
  }
  std::sort(added.begin(), added.end(), [](const auto& a, const auto& b) { return a->id < b->id; });
  for (auto& m : added) {
    m->decoder = decoder;
    gc::HostMessage cloned = gc::make_host_message();
    cloned.mutable_clone()->set_id(m->id);
    reply(*m, cloned);
    members_.push_back(std::move(m));
  }
  using ms = std::chrono::duration<double, std::milli>;
  spdlog::info("descriptor {} ({} bytes of QEMU device state + {} bytes of metadata; the guest reported {} free pages)",
               desc.string(), stats->bytes, meta_bytes, free_count);
  spdlog::info("cloned into {} clone(s) in {:.0f} ms: pause+descriptor {:.0f} ms ({} bytes), start {:.0f} ms, load {:.0f} ms, resume {:.0f} ms",
               granted_, ms(Clock::now() - t0).count(), ms(t1 - t0).count(), stats->bytes + meta_bytes,
               ms(timings.start).count(), ms(timings.load).count(), ms(timings.resume).count());
}

Status Family::start_remote_members(const std::vector<unsigned>& ids, const VmConfig& config, const gc::CloneRequest& request,
                                    std::vector<std::shared_ptr<const TapDevice>>& taps,
                                    std::vector<std::unique_ptr<Member>>& added) {
  const RemotePlacement& rp = placement_;
  RemoteOriginOptions oo;
  oo.address = rp.address;
  oo.interface = rp.interface;
  oo.no_fetch_map = rp.no_fetch_map;
  // The no-fetch map: the image's zero pages, cross-checked with the guest's free-page report
  // (init_on_free=1 zeroes every freed page, so the report adds nothing unsafe to trust).
  if (auto ranges = sf::decode_page_ranges(request.free_pages()); ranges) oo.free_pages = std::move(*ranges);
  auto origin = RemoteCloneOrigin::start(config, *image_, oo);
  if (!origin) return origin.error();
  origin_ = std::move(*origin);
  auto service = MemberService::start(rp.address, origin_->token());
  if (!service) return service.error();
  member_service_ = std::move(*service);
  const json base = json::parse(origin_->ticket_json());
  for (std::size_t k = 0; k < ids.size(); ++k) {
    json ticket = base;
    ticket["members"] = member_service_->endpoint();
    auto link = RemoteMemberLink::start(rp, static_cast<unsigned>(k % rp.agents.size()), ids[k], ticket, taps[k], rp.address);
    if (!link) return link.error();
    auto m = std::make_unique<Member>();
    m->id = ids[k];
    m->remote = std::move(*link);
    added.push_back(std::move(m));
  }
  const NoFetchStats& nf = origin_->no_fetch();
  spdlog::info("serving the frozen VM to {} remote clone(s) on {} ({}): {} of {} pages no-fetch, metadata in {} ms", ids.size(),
               rp.interface, rp.address, nf.no_fetch_pages, nf.pages,
               std::chrono::duration_cast<std::chrono::milliseconds>(origin_->metadata_time()).count());
  return ok_status();
}

void Family::report_remote(Member& m) {
  const auto& r = m.remote->stopped_report();
  if (!r) {
    spdlog::info("clone {} on '{}' stopped without its counters", m.id, m.remote->host());
    return;
  }
  const json client = r->value("client", json());
  const std::uint64_t pages = origin_ ? origin_->image_pages() : 0;
  const std::uint64_t fetched = client.is_object() ? client.value("pages_fetched", std::uint64_t{0}) : 0;
  spdlog::info("clone {} on '{}' stopped ({}): fetched {} of {} pages ({:.1f}% of RAM), {} frames relayed", m.id, m.remote->host(),
               r->value("why", std::string()), fetched, pages, pages ? 100.0 * static_cast<double>(fetched) / static_cast<double>(pages) : 0.0,
               m.remote->frames_relayed());
  if (cfg_.remote.stats_file.empty()) return;
  std::ofstream out(cfg_.remote.stats_file, std::ios::app);
  out << json{{"id", m.id}, {"host", m.remote->host()}, {"ram_pages", pages}, {"why", r->value("why", std::string())},
              {"frames_relayed", m.remote->frames_relayed()}, {"client", client}}
             .dump()
      << "\n";
}

}  // namespace sf::sfd::detail
