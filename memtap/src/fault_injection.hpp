// memtap fault injection: MEMTAP_FAULT=<kind>[@N] makes fetches fail or stall from the N-th
// one on (docs/protocols/memtap.md lists the kinds). Read once per process.
#pragma once

#include <cstdint>
#include <string_view>

namespace sf::memtap {

enum class FaultKind { kNone, kFetchFail, kFetchStall, kServeStall, kServeCorrupt, kServeExit };

// True when the fault `kind` is configured and this is (at least) its N-th occurrence.
// Counts occurrences per kind; thread-safe.
bool fault_fires(FaultKind kind);

}  // namespace sf::memtap
