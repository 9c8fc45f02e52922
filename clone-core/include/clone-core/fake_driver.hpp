// clone-core: a fake driver for unit tests and planning dry runs. It plans the layout like
// the sandbox (same address scheme) but forks nothing: clone() returns 0 as the parent, and
// join() returns the statuses the test scripted. It records the calls it received.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "clone-core/driver.hpp"

namespace sf {

struct FakeScript {
  bool available = true;              // what probe() says
  unsigned slot = 0;                  // the subnet slot it pretends to lock
  std::vector<CloneStatus> outcomes;  // what join()/poll_exited() report; default: all synced 0
  std::optional<Error> fail_prepare;  // if set, prepare() fails with it
  std::optional<Error> fail_clone;    // if set, clone() fails with it
};

struct FakeCalls {
  unsigned prepares = 0, clones = 0, joins = 0, kills = 0;
  ClusterSpec last_spec;
};

class FakeDriver final : public Driver {
 public:
  explicit FakeDriver(FakeScript script = {});
  std::string_view name() const override { return "fake"; }
  Probe probe() const override;
  Result<std::unique_ptr<ClusterInstance>> prepare(const ClusterSpec& spec) override;
  unsigned max_clones() const override { return kMaxClonesPerCluster; }

  // Shared with the instances it made, so a test can look after the ticket is gone.
  std::shared_ptr<FakeCalls> calls() const { return calls_; }

 private:
  FakeScript script_;
  std::shared_ptr<FakeCalls> calls_;
};

}  // namespace sf
