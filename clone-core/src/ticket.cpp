// clone-core: the C++ clone API (see clone.hpp): tickets on top of the allocator and a driver.
#include <unistd.h>

#include <climits>
#include <stdexcept>

#include "clone-core/clone.hpp"
#include "clone-core/fake_driver.hpp"
#include "qemu_driver.hpp"
#include "sandbox_driver.hpp"
#include "xen_driver.hpp"

namespace sf {
namespace {

// The instance that cloned this process (clone side only), for the ticket-less sync().
ClusterInstance* g_cloned_by = nullptr;
unsigned g_clone_id = 0;

std::string own_hostname() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

}  // namespace

Result<std::unique_ptr<Driver>> make_driver(const std::string& name) {
  if (name == "fake") return std::unique_ptr<Driver>(std::make_unique<FakeDriver>());
  // Inside a SnowFlock VM (qemu) or a Xen guest that sfd-xen serves (xen) the machine to clone
  // is that VM: auto picks its driver there.
  for (auto* make : {&make_qemu_driver, &make_xen_driver}) {
    auto driver = (*make)();
    if (name != "auto" && name != driver->name()) continue;
    Probe probe = driver->probe();
    if (probe.available) return driver;
    if (name != "auto") return make_error(Errc::driver_unavailable, "clone-core: driver '" + name + "': " + probe.reason);
  }
  if (name == "sandbox" || name == "auto") {
    auto driver = make_sandbox_driver();
    Probe probe = driver->probe();
    if (!probe.available)
      return make_error(name == "auto" ? Errc::driver_unavailable : Errc::missing_privilege,
                        "clone-core: driver '" + name + "': no usable driver: sandbox: " + probe.reason);
    return driver;
  }
  return make_error(Errc::invalid_argument,
                    "clone-core: unknown driver '" + name + "'; use sandbox, qemu, xen, auto or fake");
}

Result<Ticket> Ticket::request(const TicketRequest& request) {
  auto driver = make_driver(request.driver);
  if (!driver) return driver.error();
  return Ticket::request(request, std::move(*driver), probe_host_resources());
}

Result<Ticket> Ticket::request(const TicketRequest& request, std::unique_ptr<Driver> driver,
                               const HostResources& host) {
  if (!driver) return make_error(Errc::invalid_argument, "clone-core: no driver given");
  if (current_clone_id() != 0)
    return make_error(Errc::bad_state, "clone-core: nested tickets (a ticket requested inside a clone) are not supported");
  AllocationRequest ask;
  ask.clones = request.clones;
  ask.procs_per_clone = request.procs_per_clone;
  ask.min_clones = request.min_clones;
  ask.oversubscribe = request.oversubscribe;
  ask.memory_per_clone = request.memory_per_clone;
  ask.max_clones = driver->max_clones();
  if (!driver->clones_share_this_machine()) {
    // This guest's cores and memory do not bound VMs elsewhere; the host grants them.
    ask.oversubscribe = true;
    ask.memory_per_clone = 0;
  }
  if (request.network == CloneNetwork::shared && driver->name() != "sandbox" && driver->name() != "fake")
    return make_error(Errc::invalid_argument,
                      "clone-core: clones sharing the parent's network are a sandbox driver mode; the " +
                          std::string(driver->name()) + " driver gives every clone a network of its own");
  auto grant = LocalAllocator(host).grant(ask);
  if (!grant) return grant.error();

  ClusterSpec spec;
  spec.clones = grant->clones;
  spec.procs_per_clone = grant->procs_per_clone;
  spec.subnet_pool = request.subnet_pool;
  spec.parent_hostname = request.parent_hostname.empty() ? own_hostname() : request.parent_hostname;
  spec.tmp_mode = request.tmp_mode;
  spec.network = request.network;
  auto instance = driver->prepare(spec);
  if (!instance) return instance.error();

  Ticket ticket;
  ticket.driver_ = std::move(driver);
  ticket.instance_ = std::move(*instance);
  ticket.requested_ = request.clones;
  ticket.procs_per_clone_ = grant->procs_per_clone;
  return ticket;
}

Ticket::Ticket(Ticket&&) noexcept = default;
Ticket& Ticket::operator=(Ticket&& other) noexcept {
  if (this != &other) {
    if (instance_ && id_ == 0 && cloned_ && !finished_) (void)instance_->kill();
    instance_.reset();
    driver_ = std::move(other.driver_);
    instance_ = std::move(other.instance_);
    requested_ = other.requested_;
    procs_per_clone_ = other.procs_per_clone_;
    id_ = other.id_;
    cloned_ = other.cloned_;
    finished_ = other.finished_;
  }
  return *this;
}

Ticket::~Ticket() {
  // The parent tears down what is still up. A clone's copy (or any other forked child's:
  // the driver checks the owning pid) only releases memory.
  if (instance_ && id_ == 0 && cloned_ && !finished_) (void)instance_->kill();
  instance_.reset();
}

unsigned Ticket::granted() const { return instance_ ? instance_->layout().clones() : 0; }
unsigned Ticket::requested() const { return requested_; }
unsigned Ticket::procs_per_clone() const { return procs_per_clone_; }
std::string_view Ticket::driver_name() const { return driver_ ? driver_->name() : std::string_view(); }
const ClusterLayout& Ticket::layout() const { return instance_->layout(); }
const NodeInfo& Ticket::node(unsigned id) const { return instance_->layout().nodes.at(id); }
std::string Ticket::subnet_cidr() const { return instance_->layout().subnet_cidr(); }
const std::string& Ticket::interface_name() const { return node(id_).interface; }

Result<unsigned> Ticket::clone() {
  if (!instance_) return make_error(Errc::bad_state, "clone-core: clone() on an empty (moved-from) ticket");
  if (cloned_) return make_error(Errc::bad_state, "clone-core: clone() called twice on one ticket; request a new ticket");
  auto id = instance_->clone();
  if (!id) return id.error();
  cloned_ = true;
  id_ = *id;
  if (id_ != 0) {
    g_cloned_by = instance_.get();
    g_clone_id = id_;
  }
  return id;
}

Status Ticket::sync(int status) {
  if (id_ == 0) return make_error(Errc::wrong_side, "clone-core: sync() called in the parent; the parent calls join()");
  return instance_->sync(status);
}

Result<std::vector<CloneStatus>> Ticket::join() {
  if (id_ != 0) return make_error(Errc::wrong_side, "clone-core: join() called in clone " + std::to_string(id_) + "; clones call sync()");
  if (!cloned_) return make_error(Errc::bad_state, "clone-core: join() before clone()");
  if (finished_) return make_error(Errc::bad_state, "clone-core: join() after the cluster was already joined or killed");
  finished_ = true;
  return instance_->join();
}

Status Ticket::kill() {
  if (id_ != 0) return make_error(Errc::wrong_side, "clone-core: kill() called in clone " + std::to_string(id_));
  if (!instance_) return ok_status();
  finished_ = true;
  return instance_->kill();
}

int Ticket::exit_fd() const { return instance_ && id_ == 0 ? instance_->exit_fd() : -1; }
std::vector<CloneStatus> Ticket::poll_exited() {
  if (!instance_ || id_ != 0 || !cloned_) return {};
  return instance_->poll_exited();
}

Status sync(int status) {
  if (g_cloned_by == nullptr) return make_error(Errc::wrong_side, "clone-core: sync() called outside a clone");
  return g_cloned_by->sync(status);
}

unsigned current_clone_id() { return g_clone_id; }

}  // namespace sf
