// mcdist: wire format encoding, validation and the replay window (docs/protocols/mcdist.md).
#include "mcdist/packet.hpp"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack: no allocation per packet
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

namespace sf::mcdist {
namespace {

template <typename T>
void put(std::uint8_t* p, T v) {
  for (std::size_t i = 0; i < sizeof(T); ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
template <typename T>
T get(const std::uint8_t* p) {
  T v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(p[i]) << (8 * i);
  return v;
}

std::uint64_t checksum_of(std::span<const std::uint8_t> header72,
                          std::span<const std::uint8_t> payload) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, header72.data(), header72.size());
  if (!payload.empty()) XXH3_64bits_update(&state, payload.data(), payload.size());
  return XXH3_64bits_digest(&state);
}

bool power_of_two(std::uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

const char* to_string(Verdict v) {
  switch (v) {
    case Verdict::kAccepted: return "accepted";
    case Verdict::kMalformed: return "malformed";
    case Verdict::kForeign: return "foreign";
    case Verdict::kCorrupt: return "corrupt";
    case Verdict::kUnauthenticated: return "unauthenticated";
  }
  return "?";
}

const char* to_string(PacketType t) {
  switch (t) {
    case PacketType::kData: return "DATA";
    case PacketType::kHeartbeat: return "HEARTBEAT";
    case PacketType::kRequest: return "REQUEST";
    case PacketType::kStatus: return "STATUS";
  }
  return "?";
}

Result<ClusterKey> ClusterKey::from_hex(std::string_view hex) {
  while (!hex.empty() && (hex.back() == '\n' || hex.back() == ' ' || hex.back() == '\r'))
    hex.remove_suffix(1);
  if (hex.size() != 2 * kKeySize)
    return make_error("mcdist: cluster key must be " + std::to_string(2 * kKeySize) +
                      " hex digits, got " + std::to_string(hex.size()) +
                      " characters; generate one with `head -c32 /dev/urandom | xxd -p -c64`");
  ClusterKey key;
  for (std::size_t i = 0; i < kKeySize; ++i) {
    unsigned v = 0;
    for (int j = 0; j < 2; ++j) {
      char c = hex[2 * i + j];
      unsigned d = (c >= '0' && c <= '9')   ? c - '0'
                   : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                   : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                            : 16;
      if (d == 16) return make_error("mcdist: cluster key has a non-hex character");
      v = v * 16 + d;
    }
    key.bytes[i] = static_cast<std::uint8_t>(v);
  }
  return key;
}

Result<ClusterKey> ClusterKey::from_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error("mcdist: cannot read key file " + path + ": check the path");
  std::stringstream ss;
  ss << in.rdbuf();
  auto text = ss.str();
  auto key = from_hex(text);
  if (!key) return make_error(key.error().message + " (in " + path + ")");
  return key;
}

// Per-stream AES-256-GMAC (docs/protocols/mcdist.md section 3). A stream is one sending
// instance: (cluster, session, origin). Its key is HMAC-SHA256(cluster key, label || cluster ||
// session || origin), derived once and cached; the 96-bit nonce is the packet's sequence number
// (unique within the stream) followed by four zero bytes.
namespace {
constexpr std::size_t kMaxStreams = 4096;  // cached stream keys (the server has <= 4096 peers)
constexpr char kStreamLabel[] = "mcdist v2 stream key";

[[noreturn]] void crypto_failure(const char* what) {
  // OpenSSL without AES-GCM / HMAC-SHA256, or a failing EVP call, is not a state we can run in
  // (a silently wrong MAC would either drop everything or accept forgeries): fail loudly.
  std::fprintf(stderr, "mcdist: OpenSSL %s failed; check the OpenSSL 3 installation\n", what);
  std::abort();
}

struct StreamId {
  std::uint64_t cluster = 0, session = 0, origin = 0;
  bool operator==(const StreamId&) const = default;
};
struct StreamIdHash {
  std::size_t operator()(const StreamId& s) const {
    return std::hash<std::uint64_t>()(s.session * 0x9E3779B97F4A7C15ULL ^ s.origin ^ (s.cluster << 1));
  }
};
}  // namespace

struct PacketAuthenticator::Impl {
  EVP_MAC* hmac = nullptr;
  EVP_MAC_CTX* kdf = nullptr;  // HMAC-SHA256 keyed with the cluster key
  EVP_CIPHER* gcm = nullptr;   // AES-256-GCM, used with AAD only (= GMAC)
  std::unordered_map<StreamId, EVP_CIPHER_CTX*, StreamIdHash> streams;
  StreamId last_id;
  EVP_CIPHER_CTX* last = nullptr;

  ~Impl() {
    for (auto& [id, ctx] : streams) EVP_CIPHER_CTX_free(ctx);
    EVP_CIPHER_free(gcm);
    EVP_MAC_CTX_free(kdf);
    EVP_MAC_free(hmac);
  }

  EVP_CIPHER_CTX* stream(const StreamId& id) {
    if (last && id == last_id) return last;
    auto it = streams.find(id);
    if (it == streams.end()) {
      if (streams.size() >= kMaxStreams) {  // forged packets with made-up streams: evict one
        EVP_CIPHER_CTX_free(streams.begin()->second);
        streams.erase(streams.begin());
      }
      std::array<std::uint8_t, sizeof kStreamLabel - 1 + 24> info{};
      std::memcpy(info.data(), kStreamLabel, sizeof kStreamLabel - 1);
      put<std::uint64_t>(info.data() + sizeof kStreamLabel - 1, id.cluster);
      put<std::uint64_t>(info.data() + sizeof kStreamLabel - 1 + 8, id.session);
      put<std::uint64_t>(info.data() + sizeof kStreamLabel - 1 + 16, id.origin);
      std::array<std::uint8_t, 32> key{};
      std::size_t len = 0;
      if (EVP_MAC_init(kdf, nullptr, 0, nullptr) != 1 ||
          EVP_MAC_update(kdf, info.data(), info.size()) != 1 ||
          EVP_MAC_final(kdf, key.data(), &len, key.size()) != 1 || len != key.size())
        crypto_failure("HMAC-SHA256 (stream key derivation)");
      EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
      if (!ctx || EVP_EncryptInit_ex2(ctx, gcm, key.data(), nullptr, nullptr) != 1)
        crypto_failure("AES-256-GCM key setup");
      OPENSSL_cleanse(key.data(), key.size());
      it = streams.emplace(id, ctx).first;
    }
    last_id = id;
    last = it->second;
    return last;
  }
};

PacketAuthenticator::PacketAuthenticator(const ClusterKey& key) : impl_(new Impl) {
  impl_->hmac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  impl_->kdf = impl_->hmac ? EVP_MAC_CTX_new(impl_->hmac) : nullptr;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_end()};
  // The key is set once; later EVP_MAC_init calls with a null key reuse it (cheap re-init).
  if (!impl_->kdf || EVP_MAC_init(impl_->kdf, key.bytes.data(), key.bytes.size(), params) != 1)
    crypto_failure("HMAC-SHA256");
  impl_->gcm = EVP_CIPHER_fetch(nullptr, "AES-256-GCM", nullptr);
  if (!impl_->gcm) crypto_failure("AES-256-GCM");
}

PacketAuthenticator::~PacketAuthenticator() = default;

std::array<std::uint8_t, kMacSize> PacketAuthenticator::mac(std::span<const std::uint8_t> h,
                                                            std::span<const std::uint8_t> p) {
  // h is the header's first 80 bytes: cluster, session, origin and sequence are in it.
  StreamId id{get<std::uint64_t>(h.data() + 16), get<std::uint64_t>(h.data() + 24),
              get<std::uint64_t>(h.data() + 32)};
  EVP_CIPHER_CTX* ctx = impl_->stream(id);
  std::array<std::uint8_t, 12> nonce{};
  std::memcpy(nonce.data(), h.data() + 40, 8);  // the sequence, already little-endian
  std::array<std::uint8_t, kMacSize> out{};
  int len = 0;
  if (EVP_EncryptInit_ex2(ctx, nullptr, nullptr, nonce.data(), nullptr) != 1 ||
      EVP_EncryptUpdate(ctx, nullptr, &len, h.data(), static_cast<int>(h.size())) != 1 ||
      (!p.empty() &&
       EVP_EncryptUpdate(ctx, nullptr, &len, p.data(), static_cast<int>(p.size())) != 1) ||
      EVP_EncryptFinal_ex(ctx, out.data(), &len) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kMacSize, out.data()) != 1)
    crypto_failure("AES-256-GMAC");
  return out;
}

void encode_header(Header& h, std::span<const std::uint8_t> payload, PacketAuthenticator& auth,
                   std::span<std::uint8_t, kHeaderSize> out) {
  std::uint8_t* b = out.data();
  std::memset(b, 0, kHeaderSize);
  h.payload_len = static_cast<std::uint32_t>(payload.size());
  put<std::uint32_t>(b + 0, kMagic);
  b[4] = kVersion;
  b[5] = static_cast<std::uint8_t>(h.type);
  put<std::uint16_t>(b + 6, h.flags);
  put<std::uint16_t>(b + 8, kHeaderSize);
  put<std::uint32_t>(b + 12, h.payload_len);
  put<std::uint64_t>(b + 16, h.cluster_id);
  put<std::uint64_t>(b + 24, h.session_id);
  put<std::uint64_t>(b + 32, h.origin);
  put<std::uint64_t>(b + 40, h.sequence);
  put<std::uint64_t>(b + 48, h.page_index);
  put<std::uint64_t>(b + 56, h.page_count);
  put<std::uint32_t>(b + 64, h.page_size);
  put<std::uint32_t>(b + 68, h.aux);
  h.checksum = checksum_of({b, 72}, payload);
  put<std::uint64_t>(b + 72, h.checksum);
  auto mac = auth.mac({b, 80}, payload);
  std::memcpy(b + 80, mac.data(), kMacSize);
}

Result<Header> parse_header(std::span<const std::uint8_t> d) {
  if (d.size() < kHeaderSize)
    return make_error("datagram of " + std::to_string(d.size()) + " bytes is shorter than a header");
  const std::uint8_t* b = d.data();
  if (get<std::uint32_t>(b) != kMagic) return make_error("bad magic");
  if (b[4] != kVersion) return make_error("unsupported version " + std::to_string(b[4]));
  if (get<std::uint16_t>(b + 8) != kHeaderSize) return make_error("bad header_len");
  Header h;
  std::uint8_t t = b[5];
  if (t < 1 || t > 4) return make_error("unknown type " + std::to_string(t));
  h.type = static_cast<PacketType>(t);
  h.flags = get<std::uint16_t>(b + 6);
  h.payload_len = get<std::uint32_t>(b + 12);
  if (h.payload_len > kMaxPayload || h.payload_len != d.size() - kHeaderSize)
    return make_error("payload_len " + std::to_string(h.payload_len) + " does not match datagram");
  h.cluster_id = get<std::uint64_t>(b + 16);
  h.session_id = get<std::uint64_t>(b + 24);
  h.origin = get<std::uint64_t>(b + 32);
  h.sequence = get<std::uint64_t>(b + 40);
  h.page_index = get<std::uint64_t>(b + 48);
  h.page_count = get<std::uint64_t>(b + 56);
  h.page_size = get<std::uint32_t>(b + 64);
  h.aux = get<std::uint32_t>(b + 68);
  h.checksum = get<std::uint64_t>(b + 72);
  switch (h.type) {
    case PacketType::kData:
    case PacketType::kHeartbeat:
      if (!power_of_two(h.page_size) || h.page_size < kMinPageSize || h.page_size > kMaxPageSize)
        return make_error("bad page_size " + std::to_string(h.page_size));
      // The image's geometry: 1..kMaxImageBytes/page_size pages, the last one holding
      // 1..page_size bytes (aux); a receiver sizes its tables and the image from these.
      if (h.page_count == 0 || h.page_count > kMaxImageBytes / h.page_size)
        return make_error("bad page_count " + std::to_string(h.page_count));
      if (h.aux == 0 || h.aux > h.page_size)
        return make_error("bad tail length " + std::to_string(h.aux) + " for page_size " + std::to_string(h.page_size));
      if (h.type == PacketType::kData &&
          (h.payload_len != h.page_size || h.page_index >= h.page_count))
        return make_error("DATA payload/page_index out of bounds");
      if (h.type == PacketType::kHeartbeat && h.payload_len != 0)
        return make_error("HEARTBEAT with payload");
      break;
    case PacketType::kRequest:
      if (h.payload_len == 0 || h.payload_len % kRangeSize != 0 ||
          h.payload_len / kRangeSize > kMaxRanges)
        return make_error("REQUEST payload is not 1..64 ranges");
      break;
    case PacketType::kStatus:
      if (h.payload_len != kStatusPayload) return make_error("STATUS payload size");
      break;
  }
  return h;
}

Verdict validate(std::span<const std::uint8_t> d, std::uint64_t cluster_id,
                 PacketAuthenticator& auth, Header* out) {
  auto parsed = parse_header(d);
  if (!parsed) return Verdict::kMalformed;
  Header& h = parsed.value();
  if (h.cluster_id != cluster_id) return Verdict::kForeign;
  auto payload = d.subspan(kHeaderSize);
  auto mac = auth.mac(d.first(80), payload);
  // Constant-time compare: a timing side channel on the MAC must not leak how many bytes match.
  if (CRYPTO_memcmp(mac.data(), d.data() + 80, kMacSize) != 0) {
    // Only a packet that fails the MAC pays for the checksum, which tells damage in transit
    // (corrupt) apart from a wrong key or a forgery (unauthenticated) in the counters.
    return checksum_of(d.first(72), payload) != h.checksum ? Verdict::kCorrupt
                                                          : Verdict::kUnauthenticated;
  }
  *out = h;
  return Verdict::kAccepted;
}

std::vector<std::uint8_t> encode_ranges(std::span<const PageRange> ranges) {
  std::vector<std::uint8_t> out(ranges.size() * kRangeSize, 0);
  for (std::size_t i = 0; i < ranges.size(); ++i) {
    put<std::uint64_t>(out.data() + i * kRangeSize, ranges[i].first);
    put<std::uint32_t>(out.data() + i * kRangeSize + 8, ranges[i].count);
  }
  return out;
}

Result<std::vector<PageRange>> decode_ranges(std::span<const std::uint8_t> p) {
  if (p.empty() || p.size() % kRangeSize != 0 || p.size() / kRangeSize > kMaxRanges)
    return make_error("request payload is not 1..64 ranges");
  std::vector<PageRange> out;
  for (std::size_t off = 0; off < p.size(); off += kRangeSize)
    out.push_back({get<std::uint64_t>(p.data() + off), get<std::uint32_t>(p.data() + off + 8)});
  return out;
}

std::vector<PageRange> to_ranges(std::vector<std::uint64_t> pages) {
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  std::vector<PageRange> out;
  for (auto p : pages) {
    if (!out.empty() && out.back().first + out.back().count == p && out.back().count < UINT32_MAX)
      ++out.back().count;
    else
      out.push_back({p, 1});
  }
  return out;
}

std::vector<std::uint8_t> encode_status(const StatusReport& r) {
  std::vector<std::uint8_t> out(kStatusPayload);
  put<std::uint64_t>(out.data(), r.lost);
  put<std::uint64_t>(out.data() + 8, r.received);
  return out;
}

StatusReport decode_status(std::span<const std::uint8_t> p) {
  if (p.size() < kStatusPayload) return {};
  return {get<std::uint64_t>(p.data()), get<std::uint64_t>(p.data() + 8)};
}

std::string describe(const Header& h, std::span<const std::uint8_t> payload) {
  std::ostringstream o;
  o << to_string(h.type) << " cluster=" << h.cluster_id << " session=" << std::hex
    << h.session_id << std::dec << " origin=" << std::hex << h.origin << std::dec
    << " seq=" << h.sequence << " flags=";
  const std::pair<std::uint16_t, const char*> names[] = {
      {flags::kPushActive, "PUSH_ACTIVE"}, {flags::kPushDone, "PUSH_DONE"},
      {flags::kAnswer, "ANSWER"},          {flags::kClosing, "CLOSING"},
      {flags::kDemand, "DEMAND"},          {flags::kComplete, "COMPLETE"}};
  bool any = false;
  for (auto& [bit, name] : names)
    if (h.flags & bit) o << (any ? "|" : "") << name, any = true;
  if (!any) o << "0";
  switch (h.type) {
    case PacketType::kData:
      o << " page=" << h.page_index << "/" << h.page_count << " page_size=" << h.page_size
        << " payload_xxh3=" << std::hex << XXH3_64bits(payload.data(), payload.size())
        << std::dec;
      break;
    case PacketType::kHeartbeat:
      o << " pages=" << h.page_count << " page_size=" << h.page_size << " tail=" << h.aux;
      break;
    case PacketType::kRequest: {
      o << " receiver=" << h.aux << " ranges=";
      auto r = decode_ranges(payload);
      if (r)
        for (auto& x : r.value()) o << "[" << x.first << "+" << x.count << "]";
      break;
    }
    case PacketType::kStatus: {
      auto s = decode_status(payload);
      o << " receiver=" << h.aux << " highest_seq=" << h.page_index << " held=" << h.page_count
        << " lost=" << s.lost << " received=" << s.received;
      break;
    }
  }
  return o.str();
}

bool ReplayWindow::accept(std::uint64_t seq) {
  if (seq == 0) return false;
  if (seq > highest_) {
    std::uint64_t shift = seq - highest_;
    if (shift >= kWidth) {
      bits_.fill(0);
    } else {
      for (std::uint64_t s = highest_ + 1; s <= seq; ++s) bits_[(s % kWidth) / 64] &= ~(1ULL << (s % 64));
    }
    highest_ = seq;
    bits_[(seq % kWidth) / 64] |= 1ULL << (seq % 64);
    return true;
  }
  if (highest_ - seq >= kWidth) return false;
  auto& word = bits_[(seq % kWidth) / 64];
  std::uint64_t bit = 1ULL << (seq % 64);
  if (word & bit) return false;
  word |= bit;
  return true;
}

}  // namespace sf::mcdist
