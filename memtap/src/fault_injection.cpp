// memtap fault injection (see fault_injection.hpp).
#include "fault_injection.hpp"

#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace sf::memtap {
namespace {

struct FaultPlan {
  FaultKind kind = FaultKind::kNone;
  std::uint64_t from = 1;
  std::atomic<std::uint64_t> seen{0};
};

FaultPlan& plan() {
  static FaultPlan* p = [] {
    auto* fp = new FaultPlan;  // leaked on purpose: read from any thread until exit
    const char* env = std::getenv("MEMTAP_FAULT");
    if (!env || !*env) return fp;
    std::string v(env);
    std::string name = v.substr(0, v.find('@'));
    if (auto at = v.find('@'); at != std::string::npos) fp->from = std::strtoull(v.c_str() + at + 1, nullptr, 10);
    if (name == "fetch-fail") fp->kind = FaultKind::kFetchFail;
    else if (name == "fetch-stall") fp->kind = FaultKind::kFetchStall;
    else if (name == "serve-stall") fp->kind = FaultKind::kServeStall;
    else if (name == "serve-corrupt") fp->kind = FaultKind::kServeCorrupt;
    else if (name == "serve-exit") fp->kind = FaultKind::kServeExit;
    else spdlog::warn("memtap: MEMTAP_FAULT={} is not a known fault; ignored", v);
    if (fp->kind != FaultKind::kNone) spdlog::warn("memtap: fault injection active: MEMTAP_FAULT={}", v);
    return fp;
  }();
  return *p;
}

}  // namespace

bool fault_fires(FaultKind kind) {
  FaultPlan& p = plan();
  if (p.kind != kind || kind == FaultKind::kNone) return false;
  return p.seen.fetch_add(1) + 1 >= p.from;
}

}  // namespace sf::memtap
