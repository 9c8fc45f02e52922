// memtap counters: lock-free counters and a latency histogram that a running client or
// server updates and that can be read (as JSON) while it runs.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>

namespace sf::memtap {

// Log-linear histogram of durations in nanoseconds: 8 sub-buckets per power of two
// (about 9% resolution), 0 ... ~2^40 ns. Percentiles are bucket midpoints.
class LatencyHistogram {
 public:
  void record(std::uint64_t ns);
  std::uint64_t count() const;
  // p in [0, 1]; 0 when empty.
  std::uint64_t percentile_ns(double p) const;

 private:
  static constexpr int kSub = 8;
  static constexpr int kBuckets = 41 * kSub;
  static int bucket_of(std::uint64_t ns);
  static std::uint64_t bucket_mid(int b);
  std::array<std::atomic<std::uint64_t>, kBuckets> buckets_{};
};

struct ClientCounters {
  std::atomic<std::uint64_t> faults{0};            // uffd faults handled / FUSE reads served
  std::atomic<std::uint64_t> fetches{0};           // fetch() calls
  std::atomic<std::uint64_t> pages_fetched{0};
  std::atomic<std::uint64_t> bytes_fetched{0};
  std::atomic<std::uint64_t> pages_zero_served{0};  // no-fetch pages installed/returned as zero
  std::atomic<std::uint64_t> pages_unsolicited{0};
  std::atomic<std::uint64_t> fetch_errors{0};
  LatencyHistogram fault_latency;  // fault (or read) arrival -> page installed (or returned)

  std::string to_json() const;
};

}  // namespace sf::memtap
