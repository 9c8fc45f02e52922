// memtap over mcdist (docs/mcdist.md "How memtap plugs it in"): the client page source
// McdistPageSource receives pages by multicast, stores every page it receives (asked for or
// not: implicit prefetch) and hands the unrequested ones to the UnsolicitedPageSink; the
// server side MulticastPageServer multicasts pages of a frozen image. mcdist's types stay out
// of this header (memtap links sf_mcdist privately), so it compiles with memtap's includes only.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "memtap/image.hpp"
#include "memtap/page_source.hpp"

namespace sf::memtap {

struct MulticastOptions {
  std::string interface;  // required: the cluster link (never guessed)
  std::string group = "239.255.77.1";
  std::uint16_t port = 7700;
  std::optional<std::uint64_t> cluster_id;  // default: the image id (both sides know it)
  std::string key_file;                     // 64 hex digits (mcdist's cluster key)
  // Server only.
  bool push = false;                       // stream the whole image in the background
  std::uint64_t max_rate_bps = 900'000'000;
  // Client only.
  std::uint32_t receiver_id = 0;
  std::chrono::milliseconds timeout{5000};          // per fetch(), as for TCP
  std::chrono::milliseconds server_timeout{2000};   // server silent this long = dead
};

class McdistPageSource final : public PageSource {
 public:
  // Joins the group; `metadata` comes from the descriptor or the TCP HELLO (mcdist carries
  // no no-fetch map or checksums).
  static Result<std::shared_ptr<McdistPageSource>> start(ImageMetadata metadata, const MulticastOptions& options);
  ~McdistPageSource() override;

  const ImageMetadata& metadata() const override;
  Status fetch(std::span<const PageRange> ranges, std::span<std::byte> out) override;
  std::uint32_t max_batch_pages() const override { return 1024; }
  void set_unsolicited_sink(UnsolicitedPageSink sink) override;
  std::string describe() const override;

  // The receiver's counters plus this source's (pages stored, unsolicited, corrupt) as JSON.
  std::string stats_json() const;

  struct State;

 private:
  explicit McdistPageSource(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class MulticastPageServer {
 public:
  static Result<std::unique_ptr<MulticastPageServer>> start(std::shared_ptr<const FrozenImage> image,
                                                            const MulticastOptions& options);
  ~MulticastPageServer();  // stop()s
  void stop();             // sends mcdist's CLOSING heartbeats; idempotent
  std::string stats_json() const;
  std::uint16_t request_port() const;

  struct State;

 private:
  explicit MulticastPageServer(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace sf::memtap
