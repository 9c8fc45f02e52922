// clone-core: the guest side shared by the VM drivers (qemu, xen). Inside a VM the clone API
// asks the host over a channel with the sf.ctl messages (docs/protocols/vm-clone.md): a
// virtio-serial port under sfd, xenstore keys under sfd-xen (docs/protocols/xen-clone.md).
// The host pauses the VM, clones it and answers in every copy with that copy's ID; the guest
// side then gives the copy its network identity.
#pragma once

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "clone-core/driver.hpp"
#include "clone-core/guest_control.hpp"

namespace sf {

// The guest's line to its host: one request at a time, events (clone ends) queued on the side.
class HostChannel {
 public:
  explicit HostChannel(std::string driver) : driver_(std::move(driver)) {}
  virtual ~HostChannel() = default;

  // Sends `request` and waits for its reply (events that arrive first are queued). A refusal
  // is an Error carrying the host's message; so is a reply of another sf.ctl version.
  Result<guest_control::HostMessage> call(const guest_control::Request& request);
  // Events queued or readable now (non-blocking).
  std::vector<guest_control::CloneStatus> take_events();
  // Readable (poll) when a message may be there.
  virtual int fd() const = 0;
  // After fork(): the child's own connection to the host (the xen driver's clone-side
  // monitor forks; the virtio port needs nothing).
  virtual Status reopen_after_fork() { return ok_status(); }

  const std::string& driver() const { return driver_; }
  Error protocol_error(const std::string& what) const;

 protected:
  virtual Status send(const guest_control::Request& request) = 0;
  // One message: waits up to timeout_ms (-1: forever); nullopt if none yet.
  virtual Result<std::optional<guest_control::HostMessage>> next_message(int timeout_ms) = 0;
  // Who answers ("sfd", "sfd-xen"), for messages.
  virtual std::string host_name() const = 0;

 private:
  std::string driver_;
  std::deque<guest_control::CloneStatus> events_;
};

struct VmClusterOptions {
  // Send the free-page report with `clone` (qemu: the no-fetch map of remote clones).
  bool free_page_report = false;
  // In each clone, fork a monitor that reports the program's end (exit code or signal) when
  // it ends without sync (xen: nothing else in the guest watches the program).
  bool report_exit = false;
  // Apply node 0's network identity to the parent at prepare (xen: the guest's NIC is not set
  // up by the host; under sfd the guest agent did it at boot).
  bool apply_parent_identity = false;
};

// Asks the host for a ticket over `channel` and builds the cluster from its reply.
Result<std::unique_ptr<ClusterInstance>> prepare_vm_cluster(std::unique_ptr<HostChannel> channel, const ClusterSpec& spec,
                                                            const VmClusterOptions& options);

// The VM's NIC: the first Ethernet link that is not loopback ("" if none).
std::string guest_interface();

}  // namespace sf
