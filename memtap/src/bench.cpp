// memtap-bench: the measurements behind scripts/bench.d/memtap (docs/benchmarks/memtap.md).
//   memtap-bench latency  IMAGE (--local | --server ADDR:PORT --token-file F) [--samples N]
//       fault-service latency as the faulting thread sees it (first touch of a random page,
//       prefetch window 1): median and p99 over N faults.
//   memtap-bench seq      IMAGE --server ADDR:PORT --token-file F --prefetch W
//       sequential first touch of every page: seconds and MB/s.
//   memtap-bench copyfirst IMAGE --server ADDR:PORT --token-file F
//       fetch the whole image (256-page batches) into memory, then touch every page.
// Prints one JSON object.
#include <spdlog/spdlog.h>
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "memtap/local_page_source.hpp"
#include "memtap/tcp_page_source.hpp"
#include "memtap/uffd_region.hpp"

using namespace sf::memtap;
using Clock = std::chrono::steady_clock;

namespace {

int usage() {
  std::fprintf(stderr, "usage: memtap-bench latency|seq|copyfirst IMAGE (--local | --server ADDR:PORT --token-file F) "
                       "[--prefetch W] [--samples N] [--spin-us N]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return usage();
  std::string mode = argv[1], image = argv[2], server, token_file;
  bool local = false;
  std::uint32_t prefetch = 1;
  std::uint64_t samples = 20000;
  unsigned spin_us = 0;
  for (int i = 3; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--local") local = true;
    else if (a == "--server") server = next();
    else if (a == "--token-file") token_file = next();
    else if (a == "--prefetch") prefetch = static_cast<std::uint32_t>(std::stoul(next()));
    else if (a == "--samples") samples = std::stoull(next());
    else if (a == "--spin-us") spin_us = static_cast<unsigned>(std::stoul(next()));
    else return usage();
  }
  spdlog::set_level(spdlog::level::warn);
  std::shared_ptr<PageSource> source;
  std::shared_ptr<TcpPageSource> tcp;
  if (local) {
    auto img = FrozenImage::open(image);
    if (!img) return std::fprintf(stderr, "%s\n", img.error().message.c_str()), 1;
    source = std::make_shared<LocalPageSource>(std::make_shared<const FrozenImage>(std::move(img).value()));
  } else {
    auto ep = parse_endpoint(server);
    auto tok = read_token_file(token_file);
    if (!ep || !tok) return usage();
    TcpSourceOptions topt;
    topt.spin = std::chrono::microseconds(spin_us);
    auto s = TcpPageSource::connect(*ep, *tok, topt);
    if (!s) return std::fprintf(stderr, "%s\n", s.error().message.c_str()), 1;
    tcp = *s;
    source = tcp;
  }
  const auto& md = source->metadata();
  const std::size_t ps = md.page_size();
  nlohmann::json out;
  out["mode"] = mode;
  out["source"] = source->describe();
  volatile std::uint64_t sink = 0;

  if (mode == "latency") {
    UffdRegionOptions o;
    o.prefetch_pages = 1;
    o.handler_threads = 1;
    o.use_no_fetch_map = false;
    o.spin_us = spin_us;
    auto region = UffdRegion::create(source, o);
    if (!region) return std::fprintf(stderr, "%s\n", region.error().message.c_str()), 1;
    std::vector<std::uint64_t> pages(md.page_count());
    for (std::uint64_t i = 0; i < pages.size(); ++i) pages[i] = i;
    std::shuffle(pages.begin(), pages.end(), std::mt19937_64(7));
    samples = std::min<std::uint64_t>(samples, pages.size());
    std::vector<double> us;
    us.reserve(samples);
    std::byte* base = (*region)->data();
    for (std::uint64_t i = 0; i < samples; ++i) {
      auto t0 = Clock::now();
      sink = sink + static_cast<std::uint8_t>(base[pages[i] * ps]);
      us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
    }
    std::sort(us.begin(), us.end());
    out["samples"] = samples;
    out["median_us"] = us[us.size() / 2];
    out["p99_us"] = us[std::min(us.size() - 1, us.size() * 99 / 100)];
    out["min_us"] = us.front();
    out["max_us"] = us.back();
    out["handler_p50_us"] = static_cast<double>((*region)->counters().fault_latency.percentile_ns(0.5)) / 1000.0;
  } else if (mode == "seq") {
    UffdRegionOptions o;
    o.prefetch_pages = prefetch;
    o.handler_threads = 2;
    o.use_no_fetch_map = false;
    o.spin_us = spin_us;
    auto region = UffdRegion::create(source, o);
    if (!region) return std::fprintf(stderr, "%s\n", region.error().message.c_str()), 1;
    std::byte* base = (*region)->data();
    auto t0 = Clock::now();
    for (std::uint64_t p = 0; p < md.page_count(); ++p) sink = sink + static_cast<std::uint8_t>(base[p * ps]);
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    out["prefetch"] = prefetch;
    out["seconds"] = secs;
    out["mb_per_s"] = static_cast<double>(md.page_count() * ps) / secs / 1e6;
    out["fetches"] = (*region)->counters().fetches.load();
  } else if (mode == "copyfirst") {
    const std::size_t len = md.page_count() * ps;
    auto t0 = Clock::now();
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return 1;
    auto* base = static_cast<std::byte*>(p);
    const std::uint32_t batch = std::min<std::uint32_t>(256, source->max_batch_pages());
    for (std::uint64_t q = 0; q < md.page_count(); q += batch) {
      PageRange r{q, static_cast<std::uint32_t>(std::min<std::uint64_t>(batch, md.page_count() - q))};
      if (auto st = source->fetch({&r, 1}, {base + q * ps, r.count * ps}); !st) {
        return std::fprintf(stderr, "%s\n", st.error().message.c_str()), 1;
      }
    }
    double fetched = std::chrono::duration<double>(Clock::now() - t0).count();
    for (std::uint64_t q = 0; q < md.page_count(); ++q) sink = sink + static_cast<std::uint8_t>(base[q * ps]);
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    ::munmap(p, len);
    out["fetch_seconds"] = fetched;
    out["seconds"] = secs;
    out["mb_per_s"] = static_cast<double>(len) / secs / 1e6;
  } else {
    return usage();
  }
  std::cout << out.dump() << "\n";
  return 0;
}
