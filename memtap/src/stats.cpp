// memtap counters and latency histogram.
#include "memtap/stats.hpp"

#include <bit>
#include <nlohmann/json.hpp>

namespace sf::memtap {

int LatencyHistogram::bucket_of(std::uint64_t ns) {
  if (ns < kSub) return static_cast<int>(ns);
  int msb = 63 - std::countl_zero(ns);  // >= 3
  int sub = static_cast<int>((ns >> (msb - 3)) & (kSub - 1));
  int b = (msb - 2) * kSub + sub;
  return b < kBuckets ? b : kBuckets - 1;
}

std::uint64_t LatencyHistogram::bucket_mid(int b) {
  if (b < kSub) return static_cast<std::uint64_t>(b);
  int msb = b / kSub + 2;
  std::uint64_t sub = static_cast<std::uint64_t>(b % kSub);
  std::uint64_t lo = (std::uint64_t{1} << msb) | (sub << (msb - 3));
  std::uint64_t width = std::uint64_t{1} << (msb - 3);
  return lo + width / 2;
}

void LatencyHistogram::record(std::uint64_t ns) {
  buckets_[static_cast<std::size_t>(bucket_of(ns))].fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t LatencyHistogram::count() const {
  std::uint64_t n = 0;
  for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
  return n;
}

std::uint64_t LatencyHistogram::percentile_ns(double p) const {
  std::uint64_t total = count();
  if (total == 0) return 0;
  auto rank = static_cast<std::uint64_t>(p * static_cast<double>(total - 1)) + 1;
  std::uint64_t seen = 0;
  for (int b = 0; b < kBuckets; ++b) {
    seen += buckets_[static_cast<std::size_t>(b)].load(std::memory_order_relaxed);
    if (seen >= rank) return bucket_mid(b);
  }
  return bucket_mid(kBuckets - 1);
}

std::string ClientCounters::to_json() const {
  nlohmann::json j;
  j["faults"] = faults.load();
  j["fetches"] = fetches.load();
  j["pages_fetched"] = pages_fetched.load();
  j["bytes_fetched"] = bytes_fetched.load();
  j["pages_zero_served"] = pages_zero_served.load();
  j["pages_unsolicited"] = pages_unsolicited.load();
  j["fetch_errors"] = fetch_errors.load();
  j["fault_latency_count"] = fault_latency.count();
  j["fault_latency_p50_us"] = static_cast<double>(fault_latency.percentile_ns(0.5)) / 1000.0;
  j["fault_latency_p99_us"] = static_cast<double>(fault_latency.percentile_ns(0.99)) / 1000.0;
  return j.dump() + "\n";
}

}  // namespace sf::memtap
