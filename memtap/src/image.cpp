// memtap frozen image metadata: building, parsing (with size caps), saving; see
// docs/formats/memtap-image.md.
#include "memtap/image.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "byte_order.hpp"
#include "sf-common/random.hpp"

namespace sf::memtap {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kIo: return "io";
    case ErrorCode::kFormat: return "format";
    case ErrorCode::kCorrupt: return "corrupt";
    case ErrorCode::kBadToken: return "bad-token";
    case ErrorCode::kProtocol: return "protocol";
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kUnavailable: return "unavailable";
    case ErrorCode::kOutOfRange: return "out-of-range";
    case ErrorCode::kInvalidArgument: return "invalid-argument";
    case ErrorCode::kInjected: return "injected";
    case ErrorCode::kInternal: return "internal";
  }
  return "unknown";
}

namespace {

constexpr char kMagic[8] = {'S', 'F', 'M', 'E', 'M', 'T', 'A', 'P'};
constexpr std::size_t kTokenOffset = 40;
constexpr std::size_t kHeaderChecksumOffset = 120;

std::string errno_text() { return std::strerror(errno); }

std::uint64_t round_up8(std::uint64_t v) { return (v + 7) & ~std::uint64_t{7}; }

// Maps a whole file read-only; the caller munmaps.
struct FileMapping {
  const std::byte* data = nullptr;
  std::size_t length = 0;
};

// populate: pre-fault the whole mapping (a server touches every page sooner or later, and
// a minor fault in the serving path costs more than the page copy itself).
Result<FileMapping> map_file(const std::string& path, bool populate = false) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return make_error(ErrorCode::kIo, "cannot open image " + path + ": " + errno_text());
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_text();
    ::close(fd);
    return make_error(ErrorCode::kIo, "cannot stat image " + path + ": " + e);
  }
  FileMapping m;
  m.length = static_cast<std::size_t>(st.st_size);
  if (m.length > 0) {
    void* p = ::mmap(nullptr, m.length, PROT_READ, MAP_SHARED | (populate ? MAP_POPULATE : 0), fd, 0);
    if (p == MAP_FAILED) {
      std::string e = errno_text();
      ::close(fd);
      return make_error(ErrorCode::kIo, "cannot map image " + path + ": " + e);
    }
    m.data = static_cast<const std::byte*>(p);
  }
  ::close(fd);
  return m;
}

bool all_zero(const std::byte* p, std::size_t n) {
  // Word-at-a-time scan; memcmp against a zero page would need a page of zeros per size.
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    if (w != 0) return false;
  }
  for (; i < n; ++i) {
    if (p[i] != std::byte{0}) return false;
  }
  return true;
}

}  // namespace

Result<OwnerToken> random_token() {
  OwnerToken t{};
  if (!sf::random_bytes(t.data(), t.size())) return make_error(ErrorCode::kIo, "getrandom failed: " + errno_text());
  return t;
}

std::string token_hex(const OwnerToken& token) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (auto b : token) {
    s.push_back(kHex[b >> 4]);
    s.push_back(kHex[b & 15]);
  }
  return s;
}

std::string token_fingerprint(const OwnerToken& token) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(token.data(), token.size())));
  return std::string(buf, 8);
}

Result<OwnerToken> parse_token_hex(const std::string& text) {
  std::string t;
  for (char c : text) {
    if (c != '\n' && c != '\r' && c != ' ' && c != '\t') t.push_back(c);
  }
  if (t.size() != 64) {
    return make_error(ErrorCode::kFormat,
                      "a token is 64 hex digits; got " + std::to_string(t.size()) + " characters");
  }
  OwnerToken tok{};
  for (std::size_t i = 0; i < 32; ++i) {
    auto nib = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = nib(t[2 * i]), lo = nib(t[2 * i + 1]);
    if (hi < 0 || lo < 0) return make_error(ErrorCode::kFormat, "a token holds hex digits only");
    tok[i] = static_cast<std::uint8_t>(hi * 16 + lo);
  }
  return tok;
}

Result<OwnerToken> read_token_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(ErrorCode::kIo, "cannot read token file " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto t = parse_token_hex(ss.str().substr(0, 256));
  if (!t) return make_error(t.error().code, "token file " + path + ": " + t.error().message);
  return t;
}

Status write_token_file(const std::string& path, const OwnerToken& token) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::kIo, "cannot write token file " + path + ": " + errno_text());
  std::string s = token_hex(token) + "\n";
  bool ok = ::write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size());
  ::close(fd);
  if (!ok) return make_error(ErrorCode::kIo, "cannot write token file " + path);
  return ok_status();
}

bool tokens_equal(const OwnerToken& a, const OwnerToken& b) {
  unsigned diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned>(a[i] ^ b[i]);
  return diff == 0;
}

std::uint64_t page_checksum(std::span<const std::byte> data, std::uint32_t page_size) {
  if (data.size() >= page_size) return XXH3_64bits(data.data(), page_size);
  std::vector<std::byte> padded(page_size, std::byte{0});
  std::memcpy(padded.data(), data.data(), data.size());
  return XXH3_64bits(padded.data(), padded.size());
}

std::string metadata_path_for(const std::string& image_path) { return image_path + ".memtap"; }

// ---------------------------------------------------------------------------------------------

void ImageMetadata::set_no_fetch(std::uint64_t page, bool value) {
  auto mask = static_cast<std::uint8_t>(1u << (page % 8));
  if (value) {
    no_fetch_[page / 8] |= mask;
  } else {
    no_fetch_[page / 8] &= static_cast<std::uint8_t>(~mask);
  }
}

std::uint64_t ImageMetadata::no_fetch_count() const {
  std::uint64_t n = 0;
  for (auto b : no_fetch_) n += static_cast<std::uint64_t>(std::popcount(b));
  return n;
}

bool ImageMetadata::verify_page(std::uint64_t page, std::span<const std::byte> data) const {
  return data.size() >= page_size_ && XXH3_64bits(data.data(), page_size_) == checksums_[page];
}

std::uint32_t ImageMetadata::bytes_in_page(std::uint64_t page) const {
  std::uint64_t start = page * page_size_;
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(page_size_, image_length_ - start));
}

void ImageMetadata::recompute_image_id() {
  image_id_ = XXH3_64bits(checksums_.data(), checksums_.size() * sizeof(std::uint64_t));
}

Result<ImageMetadata> ImageMetadata::build(const std::string& image_path, std::uint32_t page_size,
                                           const OwnerToken& token, bool zero_map) {
  if (page_size < kMinPageSize || page_size > kMaxPageSize || !std::has_single_bit(page_size)) {
    return make_error(ErrorCode::kInvalidArgument,
                      "page size " + std::to_string(page_size) +
                          " is not a power of two between 4096 and 1048576");
  }
  auto m = map_file(image_path);
  if (!m) return m.error();
  auto unmap = [&] {
    if (m->data) ::munmap(const_cast<std::byte*>(m->data), m->length);
  };
  if (m->length == 0 || m->length > kMaxImageLength) {
    unmap();
    return make_error(ErrorCode::kFormat, "image " + image_path + " has length " +
                                              std::to_string(m->length) +
                                              "; it must be 1 byte ... 1 TiB");
  }
  ImageMetadata md;
  md.page_size_ = page_size;
  md.image_length_ = m->length;
  md.page_count_ = (m->length + page_size - 1) / page_size;
  if (md.page_count_ > kMaxPageCount) {
    unmap();
    return make_error(ErrorCode::kFormat, "image has more than 2^28 pages; use a larger --page-size");
  }
  md.has_token_ = true;
  md.token_ = token;
  md.no_fetch_.assign((md.page_count_ + 7) / 8, 0);
  md.checksums_.resize(md.page_count_);
  ::madvise(const_cast<std::byte*>(m->data), m->length, MADV_SEQUENTIAL);
  for (std::uint64_t p = 0; p < md.page_count_; ++p) {
    std::uint32_t n = md.bytes_in_page(p);
    const std::byte* d = m->data + p * page_size;
    md.checksums_[p] = page_checksum({d, n}, page_size);
    if (zero_map && all_zero(d, n)) md.set_no_fetch(p, true);
  }
  unmap();
  md.recompute_image_id();
  return md;
}

Status ImageMetadata::rebuild_zero_map(const std::string& image_path) {
  auto m = map_file(image_path);
  if (!m) return m.error();
  if (m->length != image_length_) {
    if (m->data) ::munmap(const_cast<std::byte*>(m->data), m->length);
    return make_error(ErrorCode::kFormat, "image " + image_path + " is " + std::to_string(m->length) +
                                              " bytes but its metadata says " +
                                              std::to_string(image_length_));
  }
  for (std::uint64_t p = 0; p < page_count_; ++p) {
    set_no_fetch(p, all_zero(m->data + p * page_size_, bytes_in_page(p)));
  }
  ::munmap(const_cast<std::byte*>(m->data), m->length);
  return ok_status();
}

std::uint64_t ImageMetadata::header_checksum() const {
  auto bytes = serialize(false);
  return XXH3_64bits(bytes.data(), kHeaderChecksumOffset);
}

std::vector<std::byte> ImageMetadata::serialize(bool include_token) const {
  const std::uint64_t bitmap_bytes = no_fetch_.size();
  const std::uint64_t checksums_offset = round_up8(kHeaderSize + bitmap_bytes);
  const std::uint64_t checksums_bytes = 8 * page_count_;
  std::vector<std::byte> out(checksums_offset + checksums_bytes, std::byte{0});
  std::byte* h = out.data();
  std::memcpy(h, kMagic, 8);
  put_le32(h + 8, kVersion);
  put_le32(h + 12, kHeaderSize);
  put_le32(h + 16, page_size_);
  bool with_token = include_token && has_token_;
  put_le32(h + 20, with_token ? kFlagTokenValid : 0);
  put_le64(h + 24, image_length_);
  put_le64(h + 32, page_count_);
  put_le64(h + 72, kHeaderSize);
  put_le64(h + 80, bitmap_bytes);
  put_le64(h + 88, checksums_offset);
  put_le64(h + 96, checksums_bytes);
  std::memcpy(h + kHeaderSize, no_fetch_.data(), bitmap_bytes);
  for (std::uint64_t i = 0; i < page_count_; ++i) put_le64(h + checksums_offset + 8 * i, checksums_[i]);
  put_le64(h + 104, XXH3_64bits(h + kHeaderSize, out.size() - kHeaderSize));
  put_le64(h + 112, image_id_);
  // The header checksum is taken with the token zero, so the wire copy (without token)
  // and the file (with token) carry the same value.
  put_le64(h + kHeaderChecksumOffset, XXH3_64bits(h, kHeaderChecksumOffset));
  if (with_token) std::memcpy(h + kTokenOffset, token_.data(), token_.size());
  return out;
}

Result<ImageMetadata> ImageMetadata::parse(std::span<const std::byte> bytes) {
  auto bad = [](const std::string& what) {
    return make_error(ErrorCode::kFormat, "memtap metadata: " + what);
  };
  if (bytes.size() < kHeaderSize) {
    return bad("truncated: " + std::to_string(bytes.size()) + " bytes, the header alone is 128");
  }
  const std::byte* h = bytes.data();
  if (std::memcmp(h, kMagic, 8) != 0) return bad("wrong magic (not a memtap metadata file)");
  if (get_le32(h + 8) != kVersion) {
    return bad("unsupported version " + std::to_string(get_le32(h + 8)) + " (this memtap reads 1)");
  }
  if (get_le32(h + 12) != kHeaderSize) return bad("header_size is not 128");
  std::byte header_copy[kHeaderChecksumOffset];
  std::memcpy(header_copy, h, kHeaderChecksumOffset);
  std::memset(header_copy + kTokenOffset, 0, 32);
  if (XXH3_64bits(header_copy, kHeaderChecksumOffset) != get_le64(h + kHeaderChecksumOffset)) {
    return bad("header checksum mismatch (the header is corrupt)");
  }
  ImageMetadata md;
  md.page_size_ = get_le32(h + 16);
  std::uint32_t flags = get_le32(h + 20);
  md.image_length_ = get_le64(h + 24);
  md.page_count_ = get_le64(h + 32);
  if (md.page_size_ < kMinPageSize || md.page_size_ > kMaxPageSize ||
      !std::has_single_bit(md.page_size_)) {
    return bad("page_size " + std::to_string(md.page_size_) + " out of range");
  }
  if (md.image_length_ == 0 || md.image_length_ > kMaxImageLength) return bad("image_length out of range");
  if (md.page_count_ != (md.image_length_ + md.page_size_ - 1) / md.page_size_ ||
      md.page_count_ > kMaxPageCount) {
    return bad("page_count disagrees with image_length / page_size");
  }
  const std::uint64_t bitmap_bytes = (md.page_count_ + 7) / 8;
  const std::uint64_t checksums_offset = round_up8(kHeaderSize + bitmap_bytes);
  if (get_le64(h + 72) != kHeaderSize || get_le64(h + 80) != bitmap_bytes ||
      get_le64(h + 88) != checksums_offset || get_le64(h + 96) != 8 * md.page_count_) {
    return bad("section offsets or sizes are inconsistent");
  }
  const std::uint64_t total = checksums_offset + 8 * md.page_count_;
  if (bytes.size() != total) {
    return bad("file is " + std::to_string(bytes.size()) + " bytes, expected " +
               std::to_string(total) + (bytes.size() < total ? " (truncated)" : " (trailing bytes)"));
  }
  if (XXH3_64bits(h + kHeaderSize, total - kHeaderSize) != get_le64(h + 104)) {
    return bad("body checksum mismatch (the no-fetch map or the page checksums are corrupt)");
  }
  md.no_fetch_.assign(reinterpret_cast<const std::uint8_t*>(h + kHeaderSize),
                      reinterpret_cast<const std::uint8_t*>(h + kHeaderSize + bitmap_bytes));
  if (md.page_count_ % 8 != 0 && (md.no_fetch_.back() >> (md.page_count_ % 8)) != 0) {
    return bad("no-fetch bits set past the last page");
  }
  md.checksums_.resize(md.page_count_);
  for (std::uint64_t i = 0; i < md.page_count_; ++i) {
    md.checksums_[i] = get_le64(h + checksums_offset + 8 * i);
  }
  md.recompute_image_id();
  if (md.image_id_ != get_le64(h + 112)) return bad("image_id does not match the page checksums");
  md.has_token_ = (flags & kFlagTokenValid) != 0;
  if (md.has_token_) std::memcpy(md.token_.data(), h + kTokenOffset, 32);
  return md;
}

Result<ImageMetadata> ImageMetadata::load(const std::string& metadata_path) {
  int fd = ::open(metadata_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return make_error(ErrorCode::kIo, "cannot open metadata " + metadata_path + ": " + errno_text() +
                                          " (create it with: memtap create IMAGE)");
  }
  struct stat st {};
  ::fstat(fd, &st);
  // Size cap before reading: the largest valid file (2^28 pages).
  const std::uint64_t cap = kHeaderSize + kMaxPageCount / 8 + 8 + 8 * kMaxPageCount;
  if (static_cast<std::uint64_t>(st.st_size) > cap) {
    ::close(fd);
    return make_error(ErrorCode::kFormat, "metadata " + metadata_path + " is larger than any valid one");
  }
  std::vector<std::byte> buf(static_cast<std::size_t>(st.st_size));
  std::size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd, buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  buf.resize(got);
  auto md = parse(buf);
  if (!md) return make_error(md.error().code, metadata_path + ": " + md.error().message);
  return md;
}

Status ImageMetadata::save(const std::string& metadata_path) const {
  auto bytes = serialize(true);
  std::string tmp = metadata_path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(ErrorCode::kIo, "cannot write " + tmp + ": " + errno_text());
  std::size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string e = errno_text();
      ::close(fd);
      ::unlink(tmp.c_str());
      return make_error(ErrorCode::kIo, "cannot write " + tmp + ": " + e);
    }
    done += static_cast<std::size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), metadata_path.c_str()) != 0) {
    return make_error(ErrorCode::kIo, "cannot rename " + tmp + ": " + errno_text());
  }
  return ok_status();
}

// ---------------------------------------------------------------------------------------------

Result<FrozenImage> FrozenImage::open(const std::string& image_path, const std::string& metadata_path) {
  auto md = ImageMetadata::load(metadata_path.empty() ? metadata_path_for(image_path) : metadata_path);
  if (!md) return md.error();
  auto m = map_file(image_path, true);
  if (!m) return m.error();
  FrozenImage img;
  img.map_ = m->data;
  img.map_length_ = m->length;
  img.path_ = image_path;
  if (m->length != md->image_length()) {
    return make_error(ErrorCode::kFormat, "image " + image_path + " is " + std::to_string(m->length) +
                                              " bytes but its metadata says " +
                                              std::to_string(md->image_length()) +
                                              " (truncated or not the frozen image)");
  }
  img.metadata_ = std::move(md).value();
  const auto& meta = img.metadata_;
  std::uint64_t last = meta.page_count() - 1;
  if (meta.bytes_in_page(last) != meta.page_size()) {
    img.padded_last_page_.assign(meta.page_size(), std::byte{0});
    std::memcpy(img.padded_last_page_.data(), img.map_ + last * meta.page_size(), meta.bytes_in_page(last));
  }
  return img;
}

FrozenImage::FrozenImage(FrozenImage&& o) noexcept { *this = std::move(o); }

FrozenImage& FrozenImage::operator=(FrozenImage&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(const_cast<std::byte*>(map_), map_length_);
    metadata_ = std::move(o.metadata_);
    path_ = std::move(o.path_);
    map_ = std::exchange(o.map_, nullptr);
    map_length_ = std::exchange(o.map_length_, 0);
    padded_last_page_ = std::move(o.padded_last_page_);
  }
  return *this;
}

FrozenImage::~FrozenImage() {
  if (map_) ::munmap(const_cast<std::byte*>(map_), map_length_);
}

std::span<const std::byte> FrozenImage::page(std::uint64_t index) const {
  if (index + 1 == metadata_.page_count() && !padded_last_page_.empty()) return padded_last_page_;
  return {map_ + index * metadata_.page_size(), metadata_.page_size()};
}

}  // namespace sf::memtap
