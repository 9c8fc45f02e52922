// sfd: clones on other hosts (docs/sfd.md "Remote clones").
//
// The origin host serves a frozen VM (sf::sfd::FrozenImage: RAM file + descriptor) to remote
// clones: memtap's page server (TCP: HELLO with the family's owner token, the metadata with the
// no-fetch map) plus memtap's MulticastPageServer over mcdist on an explicit interface, and a
// small control service that hands an authenticated remote sfd the VM's configuration, the
// mcdist key and the descriptor (docs/protocols/remote-clone.md). The remote host mounts the
// image with memtap's FUSE export, fed by mcdist, and starts QEMU with mem-path on that file
// (share=off, -incoming defer), loads the descriptor and resumes it.
//
// The no-fetch map of the image: all-zero pages (a guest booted with init_on_free=1 zeroes every
// page it frees, see vm.cpp) plus, optionally, the guest's free-page report
// (clone-core/free_pages.hpp) mapped from guest-physical frames to RAM-file pages.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "clone-core/free_pages.hpp"
#include "memtap/image.hpp"
#include "sfd/clone.hpp"
#include "sfd/result.hpp"
#include "sfd/vm.hpp"

namespace sf::sfd {

// Where guest-physical memory lives in the RAM file of QEMU's `pc` machine (i440fx) with one
// memory-backend "ram": QEMU 7.2 (hw/i386/pc_piix.c) puts all of RAM below 4 GiB when it is
// under 0xe0000000 (3.5 GiB); otherwise the first 3 GiB below 4 GiB and the rest from 4 GiB
// up. The file is linear in that order: offset = gpa below 4 GiB, below_4g + (gpa - 4 GiB)
// above. (Frames inside the low-memory holes, e.g. 0xa0000-0xfffff, are never free in the
// guest, so they are never reported.)
struct RamLayout {
  std::uint64_t ram_bytes = 0;
  std::uint64_t below_4g = 0;
};
RamLayout pc_ram_layout(std::uint64_t mem_mib);
// RAM-file offset of guest-physical address `gpa`, or nullopt if it is not RAM.
std::optional<std::uint64_t> ram_file_offset(const RamLayout& layout, std::uint64_t gpa);

// What to do with the guest's free-page report.
enum class FreeReportPolicy {
  // A reported page is no-fetch only if it is all-zero in the frozen image (it then is already
  // in the zero map): always correct; the report is a cross-check (and a count of the pages
  // the guest allocated between its report and the pause).
  verify_zero,
  // Every reported page is no-fetch (read as zeros by the clone). Correct only if nothing in
  // the guest allocates a reported page between the report and the pause and the report is
  // exact (kpageflags cannot say a buddy block's order: free_pages.hpp). Use only with a
  // quiescent guest.
  trust,
};

struct NoFetchStats {
  std::uint64_t pages = 0;             // pages of the image
  std::uint64_t zero_pages = 0;        // no-fetch from the zero scan
  std::uint64_t reported_pages = 0;    // guest frames in the report that are RAM
  std::uint64_t reported_zero = 0;     // of those, already all-zero in the image
  std::uint64_t reported_added = 0;    // made no-fetch by the report (trust only)
  std::uint64_t reported_outside = 0;  // reported frames that are not RAM (ignored)
  std::uint64_t no_fetch_pages = 0;    // the final map
};

// Adds the guest's report (guest page frames of 4 KiB) to `metadata`'s no-fetch map; the
// metadata's page size must be 4 KiB and its length the layout's RAM size.
Result<NoFetchStats> apply_free_page_report(sf::memtap::ImageMetadata& metadata, std::span<const sf::PageRange> guest_frames,
                                            const RamLayout& layout, FreeReportPolicy policy);

// ---- origin side ----

struct RemoteOriginOptions {
  std::string address;    // IPv4 literal of this host on the cluster link (control + page server)
  std::string interface;  // the cluster link, for mcdist (never guessed)
  std::string mcast_group = "239.255.77.1";
  std::uint16_t mcast_port = 7700;
  bool no_fetch_map = true;                 // false: every page is fetched (benchmark baseline)
  std::vector<sf::PageRange> free_pages;    // the guest's report, if any
  FreeReportPolicy policy = FreeReportPolicy::verify_zero;
};

// Serves one frozen VM to remote clones until destroyed. Destroy it before the FrozenImage.
class RemoteCloneOrigin {
 public:
  // `config` is the parent's configuration (the clones must use the same machine shape).
  static Result<std::unique_ptr<RemoteCloneOrigin>> start(const VmConfig& config, const FrozenImage& image,
                                                          const RemoteOriginOptions& options);
  ~RemoteCloneOrigin();  // stops every server, removes the metadata and key files
  RemoteCloneOrigin(const RemoteCloneOrigin&) = delete;
  RemoteCloneOrigin& operator=(const RemoteCloneOrigin&) = delete;

  // {"control": "ADDR:PORT", "token": "<64 hex>"}: what a remote sfd needs (the token is the
  // key to the parent's memory: pass it privately).
  std::string ticket_json() const;
  Status write_ticket(const std::filesystem::path& path) const;  // mode 0600
  const NoFetchStats& no_fetch() const;
  std::chrono::microseconds metadata_time() const;  // checksum + zero scan of the image
  std::string page_server_stats() const;  // memtap's TCP server counters (JSON)
  std::string multicast_stats() const;    // memtap's multicast server counters (JSON)
  std::uint64_t descriptors_sent() const;
  const sf::memtap::OwnerToken& token() const;  // the family's owner token (also in the ticket)
  std::uint64_t image_pages() const;

  struct State;

 private:
  explicit RemoteCloneOrigin(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

// ---- remote side ----

struct RemoteCloneOptions {
  std::string control;    // ADDR:PORT of the origin's control service
  std::string token_hex;  // the family's owner token
  std::string interface;  // this host's cluster link, for mcdist
  std::uint32_t clone_id = 1;  // reported to the page server as the mcdist receiver id
  std::chrono::milliseconds fetch_timeout{10000};
  // The clone's NIC (a member of an `sfd run` family, remote_member.hpp); none: no NIC.
  std::optional<VmConfig::UdpNic> nic;
};
// The origin's control reply (docs/protocols/remote-clone.md): the JSON that precedes the
// descriptor, as a remote clone reads it. `vm` holds the VM fields (mem_mib, cpus, mode, accel,
// agent, disks); the image is the remote host's own. An Error for a refusal ("error"), a reply
// that is not JSON, a missing field or one of the wrong type or range.
struct OriginReply {
  std::uint64_t descriptor_bytes = 0;
  std::string descriptor_xxh3;
  std::string mcast_group, mcast_key;
  std::uint16_t mcast_port = 0;
  std::string memtap;  // ADDR:PORT of the page server
  std::string image_key;
  VmConfig vm;
};
Result<OriginReply> parse_origin_reply(const std::string& text);

// Reads a ticket written by RemoteCloneOrigin::write_ticket into control and token_hex.
Status read_ticket(const std::filesystem::path& path, RemoteCloneOptions& options);

struct RemoteCloneTimings {
  std::chrono::microseconds descriptor{0};  // control connection: config + descriptor copied
  std::chrono::microseconds mount{0};       // memtap FUSE export mounted (TCP HELLO, mcdist join)
  std::chrono::microseconds start{0};       // QEMU spawned until QMP answers
  std::chrono::microseconds load{0};        // migrate-incoming until completed
  std::chrono::microseconds resume{0};      // cont until running
};

// One clone running here with its RAM from the origin. The FUSE export runs in a child
// process (forked before any thread of it starts: call start() from a process whose other
// threads hold no locks, as `sfd remote-clone` does). The destructor kills QEMU, stops the
// export (it unmounts), and removes the mount point, descriptor and key files.
class RemoteClone {
 public:
  static Result<std::unique_ptr<RemoteClone>> start(const RemoteCloneOptions& options,
                                                    RemoteCloneTimings* timings = nullptr);
  ~RemoteClone();
  RemoteClone(const RemoteClone&) = delete;
  RemoteClone& operator=(const RemoteClone&) = delete;

  QemuVm& vm() { return *vm_; }
  pid_t fuse_pid() const { return fuse_pid_; }
  const std::filesystem::path& mountpoint() const { return mountpoint_; }
  // The FUSE export's counters (MOUNTPOINT/stats: faults, pages_fetched, pages_zero_served...).
  std::string client_stats() const;
  // Non-blocking: a message if the FUSE export process has ended.
  std::optional<std::string> fuse_exited();

 private:
  RemoteClone() = default;
  void stop_fuse();

  std::filesystem::path dir_;
  std::filesystem::path mountpoint_;
  pid_t fuse_pid_ = -1;
  std::unique_ptr<QemuVm> vm_;
};

// `sfd remote-clone --ticket FILE --iface IF [--id N] [-v]`: starts a remote clone, prints one
// JSON line {"event":"running",...} when it runs, serves until SIGINT/SIGTERM/SIGHUP or the VM
// ends, then prints {"event":"stopped",...} with the client's counters and cleans up.
int remote_clone_command(int argc, char** argv);

}  // namespace sf::sfd
