// Test support: a private temporary directory, removed with everything in it when the owner
// goes out of scope (so a failed ASSERT leaves no file behind). Every test of the suite makes
// its directories with this, named sft-<what>-XXXXXX, which is how a leftover is recognised.
//
//   sf::test::TempDir dir("memtap");              /tmp/sft-memtap-XXXXXX
//   sf::test::TempDir work("apps", "/var/tmp");   a base of the caller's choice (for example
//                                                 outside /tmp, which every clone overlays)
//   ASSERT_TRUE(dir.ok()) << dir.error();         mkdtemp can fail (full or read-only base)
//   dir.path()  (std::string), dir.fs_path(), dir / "file"  (std::string)
//   dir.release()                                 keeps the directory: the caller removes it
//   sf::test::make_temp_dir("sfd", "/dev/shm")    a directory the caller owns and removes
#pragma once

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

namespace sf::test {

class TempDir {
 public:
  explicit TempDir(std::string_view what, const std::filesystem::path& base = "/tmp") {
    std::string tmpl = (base / ("sft-" + std::string(what) + "-XXXXXX")).string();
    if (::mkdtemp(tmpl.data()) != nullptr)
      path_ = std::move(tmpl);
    else
      error_ = "cannot make a temporary directory " + tmpl + ": " + std::strerror(errno);
  }
  ~TempDir() {
    if (path_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})), error_(std::move(other.error_)) {}
  TempDir& operator=(TempDir&& other) noexcept {
    if (this != &other) {
      this->~TempDir();
      path_ = std::exchange(other.path_, {});
      error_ = std::move(other.error_);
    }
    return *this;
  }

  bool ok() const { return !path_.empty(); }
  const std::string& error() const { return error_; }
  const std::string& path() const { return path_; }
  std::filesystem::path fs_path() const { return path_; }
  std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

  // Gives up ownership: the directory stays and its path is returned.
  std::string release() { return std::exchange(path_, {}); }

 private:
  std::string path_;
  std::string error_;
};

// A new directory base/sft-<what>-XXXXXX that the caller removes (prefer TempDir, which removes
// it on every path); an empty path if it cannot be made.
inline std::filesystem::path make_temp_dir(std::string_view what, const std::filesystem::path& base = "/tmp") {
  return TempDir(what, base).release();
}

}  // namespace sf::test
