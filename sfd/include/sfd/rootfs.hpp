// sfd: the guest's root on read-only block devices (`sfd run --root disk`, the default).
// QEMU 7.2 cannot migrate a VM whose guest has a virtio-9p export mounted, so a guest that is
// to be cloned gets its files from two EROFS images on read-only virtio-blk disks instead:
//   - the system image: the host's /usr, /etc, /opt (and the merged-/usr links /bin, /lib,
//     ...) minus kSystemImageExcludes, cached in cache_dir()/rootfs/<key>/system.erofs, key =
//     XXH3-128 over a stat walk of those trees (so it is rebuilt when anything in them changes);
//   - the work image: the caller's working directory (and the command's and sfd's own
//     directories when they are elsewhere), built per run in runtime_dir(), at most
//     kWorkImageLimit bytes of file data.
// The guest init stacks both under a tmpfs overlay: every path is where it is on the host,
// read-only below, writable in the VM's RAM (docs/sfd.md, "The root file system").
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "sfd/result.hpp"

namespace sf::sfd {

// How a `sfd run` guest sees the host's files.
enum class RootMode {
  disk,  // EROFS images on read-only virtio-blk disks (clonable; cwd writes stay in the VM)
  ninep  // the host's / over virtio-9p, cwd shared read-write (not clonable)
};
std::string to_string(RootMode m);  // "disk" | "9p"
Result<RootMode> parse_root_mode(const std::string& text);

// Top-level names of the system trees (those that exist on the host are included).
inline constexpr std::array<std::string_view, 9> kSystemTrees = {"usr",   "etc",   "opt",   "bin",  "sbin",
                                                                 "lib",   "lib32", "lib64", "libx32"};
// Parts of the system trees guests never need (documentation, kernel modules and firmware for
// the host's kernel, debug symbols, headers and sources). $SF_GUEST_EXCLUDE adds more:
// colon-separated paths relative to / (e.g. "usr/local/cuda:usr/lib/jvm").
inline constexpr std::array<std::string_view, 9> kSystemImageExcludes = {
    "usr/share/doc",  "usr/share/man",     "usr/share/info", "usr/share/locale", "usr/lib/debug",
    "usr/lib/modules", "usr/lib/firmware", "usr/include",    "usr/src"};
// The work image's file data is refused above this (4 GiB): cd into a smaller directory.
inline constexpr std::uint64_t kWorkImageLimit = 4ull << 30;

// What goes into the system image.
struct SystemImageSpec {
  std::filesystem::path source_root = "/";  // $SF_GUEST_ROOT (tests) or /
  std::vector<std::string> trees;           // kSystemTrees present under source_root
  std::vector<std::string> excludes;        // relative to source_root
};

// The host's spec: source root $SF_GUEST_ROOT (a test override: a directory standing in for
// the host's /) or /, the kSystemTrees that exist there, kSystemImageExcludes + $SF_GUEST_EXCLUDE.
Result<SystemImageSpec> host_system_image_spec();

// XXH3-128 (hex) over the format version, the tree and exclude lists and a stat walk (path,
// type, mode, size, mtime, symlink target) of the included trees. Cheap: no file is read.
// Run by an ordinary user, entries that user cannot read are left out of the walk (and the
// image) rather than failing it; their paths, relative to the source root, are appended to
// `unreadable` when given.
Result<std::string> system_image_key(const SystemImageSpec& spec, std::vector<std::string>* unreadable = nullptr);

struct SystemImage {
  std::string key;
  std::filesystem::path file;  // cache_root/rootfs/<key>/system.erofs
  std::uint64_t bytes = 0;
  bool built_now = false;
  // A shared flock on the image's directory, held while this value (or a copy) lives: the
  // image is in use (QEMU opens it again for every clone, also long after the start).
  std::shared_ptr<const int> in_use;
};

// Returns the cached image for `spec`, building it first if it is missing (into a private
// directory, renamed into place: concurrent builders are safe), and holds it in use. A fresh
// build removes the images of other keys that no run holds (an `sfd run` that started before
// the host's files changed keeps its image until it ends; the next build removes it). Progress
// goes to spdlog's info level (sfd -v).
Result<SystemImage> ensure_system_image(const SystemImageSpec& spec, const std::filesystem::path& cache_root);

// ensure_system_image(host_system_image_spec(), cache_dir()).
Result<SystemImage> ensure_host_system_image();

// The host paths the work image must hold for a command run from `cwd`: cwd itself, the
// command's directory (argv0 resolved like execvp with `path_env`) and `agent`'s directory,
// each only when it is neither under cwd nor in `system`'s image. Absolute, normalised,
// none nested in another.
std::vector<std::filesystem::path> work_image_paths(const std::filesystem::path& cwd, const std::string& argv0,
                                                    const std::string& path_env,
                                                    const std::filesystem::path& agent,
                                                    const SystemImageSpec& system);

// Builds an EROFS image of `paths` (absolute host paths, at the same paths in the image) into
// `out`. Refuses when their file data exceeds `limit` bytes.
Status build_work_image(const std::vector<std::filesystem::path>& paths, const std::filesystem::path& out,
                        std::uint64_t limit = kWorkImageLimit);

// A per-run work image file, removed when this object is destroyed. Lives in runtime_dir()
// as sf-vm-<sfd pid>-work-<n>.erofs (so the stale-file sweep removes it after a killed sfd),
// outside any one VM's directory: clones of a VM keep using it after the parent is gone.
class WorkImage {
 public:
  static Result<std::unique_ptr<WorkImage>> build(const std::vector<std::filesystem::path>& paths,
                                                  std::uint64_t limit = kWorkImageLimit);
  ~WorkImage();
  WorkImage(const WorkImage&) = delete;
  WorkImage& operator=(const WorkImage&) = delete;
  const std::filesystem::path& file() const { return file_; }

 private:
  explicit WorkImage(std::filesystem::path f) : file_(std::move(f)) {}
  std::filesystem::path file_;
};

// The exclude list that makes mkfs.erofs, given `source_root`, pack exactly `included`
// (paths relative to source_root) and their ancestors: every sibling of an ancestor that is
// not itself on the way to an included path, plus `excludes`.
std::vector<std::string> erofs_excludes_for(const std::filesystem::path& source_root,
                                            const std::vector<std::string>& included,
                                            const std::vector<std::string>& excludes);

}  // namespace sf::sfd
