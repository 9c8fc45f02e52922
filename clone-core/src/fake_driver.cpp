// clone-core: the fake driver (see fake_driver.hpp). Forks nothing; plans like the sandbox.
#include "clone-core/fake_driver.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

namespace sf {
namespace {

class FakeCluster final : public ClusterInstance {
 public:
  FakeCluster(ClusterLayout layout, FakeScript script, std::shared_ptr<FakeCalls> calls)
      : layout_(std::move(layout)), script_(std::move(script)), calls_(std::move(calls)) {
    if (script_.outcomes.empty()) {
      for (unsigned i = 1; i <= layout_.clones(); ++i) script_.outcomes.push_back({i, CloneEnd::synced, 0});
    }
  }
  ~FakeCluster() override {
    if (event_fd_ >= 0) close(event_fd_);
  }
  const ClusterLayout& layout() const override { return layout_; }
  Result<unsigned> clone() override {
    ++calls_->clones;
    if (script_.fail_clone) return *script_.fail_clone;
    event_fd_ = eventfd(1, EFD_CLOEXEC | EFD_NONBLOCK);  // "a clone may have ended": at once
    return 0u;
  }
  Status sync(int) override {
    return make_error(Errc::wrong_side, "clone-core: sync() called in the parent (fake driver has no clones)");
  }
  Result<std::vector<CloneStatus>> join() override {
    ++calls_->joins;
    return script_.outcomes;
  }
  Status kill() override {
    ++calls_->kills;
    return ok_status();
  }
  int exit_fd() const override { return event_fd_; }
  std::vector<CloneStatus> poll_exited() override {
    if (reported_) return {};
    reported_ = true;
    return script_.outcomes;
  }

 private:
  ClusterLayout layout_;
  FakeScript script_;
  std::shared_ptr<FakeCalls> calls_;
  int event_fd_ = -1;
  bool reported_ = false;
};

}  // namespace

FakeDriver::FakeDriver(FakeScript script) : script_(std::move(script)), calls_(std::make_shared<FakeCalls>()) {}

Probe FakeDriver::probe() const {
  if (script_.available) return {true, "fake driver: forks nothing (tests and dry runs)"};
  return {false, "fake driver: scripted as unavailable"};
}

Result<std::unique_ptr<ClusterInstance>> FakeDriver::prepare(const ClusterSpec& spec) {
  ++calls_->prepares;
  calls_->last_spec = spec;
  if (script_.fail_prepare) return *script_.fail_prepare;
  auto pool = parse_ipv4_net(spec.subnet_pool);
  if (!pool) return pool.error();
  auto layout = plan_layout(*pool, script_.slot, spec.clones, spec.parent_hostname);
  if (!layout) return layout.error();
  if (spec.network == CloneNetwork::shared) share_parent_network(*layout);
  return std::unique_ptr<ClusterInstance>(std::make_unique<FakeCluster>(std::move(*layout), script_, calls_));
}

}  // namespace sf
