// mcdist tool: image files (image_files.hpp).
#include "image_files.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace sf::mcdist::tool {

MappedFile::~MappedFile() {
  if (data) munmap(const_cast<std::uint8_t*>(data), size);
}

Result<std::unique_ptr<MappedFile>> map_file(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("mcdist: cannot open " + path + ": " + std::strerror(errno));
  struct stat st{};
  fstat(fd, &st);
  auto m = std::make_unique<MappedFile>();
  m->size = static_cast<std::size_t>(st.st_size);
  if (m->size == 0) {
    close(fd);
    return make_error("mcdist: " + path + " is empty");
  }
  void* p = mmap(nullptr, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
  close(fd);
  if (p == MAP_FAILED) return make_error("mcdist: mmap " + path + ": " + std::strerror(errno));
  m->data = static_cast<const std::uint8_t*>(p);
  return m;
}

ImageStore::~ImageStore() {
  if (fd_ >= 0) ::close(fd_);
}

bool ImageStore::open(std::uint64_t bytes) {
  fd_ = memfd_create("mcdist-image", MFD_CLOEXEC);
  if (fd_ < 0 || ftruncate(fd_, static_cast<off_t>(bytes)) != 0) {
    error_ = "cannot make a memory file of " + std::to_string(bytes) + " bytes for the image: " + std::strerror(errno);
    return false;
  }
  size_ = bytes;
  run_.reserve(kRun);
  return true;
}

bool ImageStore::store(std::uint64_t off, std::span<const std::uint8_t> data) {
  while (!data.empty()) {
    ssize_t n = pwrite(fd_, data.data(), data.size(), static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      if (error_.empty()) error_ = std::string("cannot store a page: ") + std::strerror(errno);
      return false;
    }
    data = data.subspan(static_cast<std::size_t>(n));
    off += static_cast<std::uint64_t>(n);
  }
  return true;
}

void ImageStore::collect(std::uint64_t off, std::span<const std::uint8_t> data) {
  if (!run_.empty() && (off != run_off_ + run_.size() || run_.size() + data.size() > kRun)) flush();
  if (run_.empty()) run_off_ = off;
  run_.insert(run_.end(), data.begin(), data.end());
}

bool ImageStore::flush() {
  bool ok = run_.empty() || store(run_off_, run_);
  run_.clear();
  return ok;
}

bool ImageStore::save(const std::string& path, std::uint64_t bytes) {
  if (fd_ < 0) return error_.empty() ? (error_ = "no image was stored", false) : false;
  flush();
  if (!error_.empty()) return false;
  int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  std::vector<std::uint8_t> buf(1 << 20);
  std::uint64_t off = 0;
  while (out >= 0 && off < bytes) {
    ssize_t r = pread(fd_, buf.data(), std::min<std::uint64_t>(bytes - off, buf.size()), static_cast<off_t>(off));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    ssize_t w = 0;
    while (w < r) {
      ssize_t n = write(out, buf.data() + w, static_cast<std::size_t>(r - w));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      w += n;
    }
    if (w < r) break;
    off += static_cast<std::uint64_t>(r);
  }
  if (out < 0 || off < bytes || close(out) != 0) {
    error_ = "cannot write " + path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

}  // namespace sf::mcdist::tool
