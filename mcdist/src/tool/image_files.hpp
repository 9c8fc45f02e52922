// mcdist tool: images on the sending side (a file mapped read-only) and on the receiving side
// (assembled in a memory file, then saved).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "mcdist/result.hpp"

namespace sf::mcdist::tool {

// A whole file mapped read-only; unmapped on destruction.
struct MappedFile {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
};

// Maps path (which must not be empty).
Result<std::unique_ptr<MappedFile>> map_file(const std::string& path);

// A received image, held in a memory file (memfd, tmpfs) written with pwrite: a whole-page
// write into tmpfs allocates the page without zeroing it first, whereas first touches of
// anonymous memory have the kernel zero every page before it is overwritten (a third of the
// machine's CPU with 16 receivers of 256 MiB on 2 cores). `recv` and `tcp-recv` both use it, so
// the benchmark compares like with like.
class ImageStore {
 public:
  ImageStore() = default;
  ImageStore(const ImageStore&) = delete;
  ImageStore& operator=(const ImageStore&) = delete;
  ~ImageStore();
  // Makes the memory file of `bytes` bytes.
  bool open(std::uint64_t bytes);
  bool is_open() const { return fd_ >= 0; }
  // Stores `data` at byte offset `off` (within the image).
  bool store(std::uint64_t off, std::span<const std::uint8_t> data);
  // Like store(), but collects consecutive pieces (pages arrive mostly in order) into runs of
  // up to 1 MiB so that one pwrite stores many pages; flush() stores what is collected.
  void collect(std::uint64_t off, std::span<const std::uint8_t> data);
  bool flush();
  const std::string& error() const { return error_; }
  // Writes the first `bytes` bytes to path (a file, or /dev/null).
  bool save(const std::string& path, std::uint64_t bytes);

 private:
  static constexpr std::size_t kRun = 1 << 20;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::vector<std::uint8_t> run_;
  std::uint64_t run_off_ = 0;
  std::string error_;
};

}  // namespace sf::mcdist::tool
