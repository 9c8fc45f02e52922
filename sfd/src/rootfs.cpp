// sfd: the guest's root on read-only EROFS disks (see rootfs.hpp).
#include "sfd/rootfs.hpp"

#include <fcntl.h>
#include <fts.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <spdlog/spdlog.h>
#include <sstream>

#include "sfd/paths.hpp"
#include "sfd/subprocess.hpp"

namespace sf::sfd {
namespace fs = std::filesystem;

namespace {

// Bump when the image layout or the mkfs options change in a way the inputs do not show.
constexpr std::string_view kRootfsFormat = "snowflock-rootfs v1";
constexpr const char* kSystemImageName = "system.erofs";

void hash_text(XXH3_state_t* state, std::string_view text) {
  const std::uint64_t n = text.size();
  XXH3_128bits_update(state, &n, sizeof n);
  XXH3_128bits_update(state, text.data(), text.size());
}

template <typename T>
void hash_value(XXH3_state_t* state, const T& v) {
  XXH3_128bits_update(state, &v, sizeof v);
}

std::string hex128(const XXH128_hash_t& h) {
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return hex;
}

int compare_names(const FTSENT** a, const FTSENT** b) { return std::strcmp((*a)->fts_name, (*b)->fts_name); }

// Walks `roots` (absolute) without following symlinks, in name order, skipping `skip`
// (absolute paths). `visit` gets each entry; returning false stops the walk. An entry that
// cannot be read is an error, unless `unreadable` is given: then it is skipped and its path
// recorded there (what an ordinary user cannot read of the host stays out of its image).
template <typename Visit>
Status walk(const std::vector<fs::path>& roots, const std::set<std::string>& skip, Visit visit,
            std::vector<std::string>* unreadable = nullptr) {
  std::vector<std::string> root_strings;
  for (const auto& r : roots) root_strings.push_back(r.string());
  std::vector<char*> argv;
  for (auto& r : root_strings) argv.push_back(r.data());
  argv.push_back(nullptr);
  FTS* fts = fts_open(argv.data(), FTS_PHYSICAL | FTS_NOCHDIR, compare_names);
  if (fts == nullptr) return make_error(std::string("rootfs: fts_open: ") + std::strerror(errno));
  Status st = ok_status();
  while (FTSENT* e = fts_read(fts)) {
    if (e->fts_info == FTS_DP) continue;  // directory, post-order
    if (e->fts_info == FTS_D && skip.count(e->fts_path) != 0) {
      fts_set(fts, e, FTS_SKIP);
      continue;
    }
    if (skip.count(e->fts_path) != 0) continue;
    // access() only where unreadable entries are skipped: root's walk needs no syscall more.
    if (unreadable != nullptr &&
        (e->fts_info == FTS_DNR || e->fts_info == FTS_ERR || e->fts_info == FTS_NS ||
         (e->fts_info == FTS_F && access(e->fts_accpath, R_OK) != 0) ||
         (e->fts_info == FTS_D && access(e->fts_accpath, R_OK | X_OK) != 0))) {
      unreadable->push_back(e->fts_path);
      if (e->fts_info == FTS_D) fts_set(fts, e, FTS_SKIP);
      continue;
    }
    if (e->fts_info == FTS_DNR || e->fts_info == FTS_ERR || e->fts_info == FTS_NS) {
      st = make_error("rootfs: cannot read " + std::string(e->fts_path) + ": " + std::strerror(e->fts_errno));
      break;
    }
    if (!visit(e)) break;
  }
  fts_close(fts);
  return st;
}

bool is_under(const fs::path& p, const fs::path& dir) {
  auto [d, pi] = std::mismatch(dir.begin(), dir.end(), p.begin(), p.end());
  return d == dir.end();
}

// mkfs.erofs of `source` with `excludes` into `out`. Uncompressed (packing is I/O-bound; lz4
// more than doubles the build time), no extended attributes (mkfs.erofs 1.5's xattr pass
// ignores --exclude-path and so would walk /proc and /sys).
Status make_erofs(const fs::path& source, const std::vector<std::string>& excludes, const fs::path& out) {
  std::vector<std::string> argv = {"mkfs.erofs", "--quiet", "-x-1"};
  for (const auto& e : excludes) argv.push_back("--exclude-path=" + e);
  // Never pack the image being written (an SF_RUNTIME_DIR or SF_CACHE_DIR inside a packed tree).
  if (is_under(out, source)) argv.push_back("--exclude-path=" + out.lexically_relative(source).string());
  argv.push_back(out.string());
  argv.push_back(source.string());
  auto rc = run_to_completion(argv);
  if (!rc) return make_error("rootfs: " + rc.error().message + " (apt-get install erofs-utils)");
  if (*rc != 0) return make_error("rootfs: mkfs.erofs " + out.string() + " exited with " + std::to_string(*rc));
  return ok_status();
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, sep);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::atomic<int> work_image_counter{0};

}  // namespace

std::string to_string(RootMode m) { return m == RootMode::disk ? "disk" : "9p"; }

Result<RootMode> parse_root_mode(const std::string& text) {
  if (text == "disk") return RootMode::disk;
  if (text == "9p") return RootMode::ninep;
  return make_error("--root: '" + text + "' is not a root mode; use disk (default, clonable) or 9p (shared writable cwd)");
}

Result<SystemImageSpec> host_system_image_spec() {
  SystemImageSpec spec;
  if (const char* r = std::getenv("SF_GUEST_ROOT"); r != nullptr && *r != '\0') spec.source_root = r;
  if (!spec.source_root.is_absolute() || !fs::is_directory(spec.source_root))
    return make_error("rootfs: SF_GUEST_ROOT=" + spec.source_root.string() + " is not an absolute directory");
  for (auto t : kSystemTrees) {
    std::error_code ec;
    if (fs::symlink_status(spec.source_root / t, ec).type() != fs::file_type::not_found && !ec) spec.trees.emplace_back(t);
  }
  if (spec.trees.empty()) return make_error("rootfs: " + spec.source_root.string() + " has none of usr, etc, opt, ...");
  for (auto e : kSystemImageExcludes) spec.excludes.emplace_back(e);
  if (const char* x = std::getenv("SF_GUEST_EXCLUDE"); x != nullptr) {
    for (auto& e : split(x, ':')) {
      while (!e.empty() && e.front() == '/') e.erase(e.begin());
      while (!e.empty() && e.back() == '/') e.pop_back();
      if (!e.empty()) spec.excludes.push_back(e);
    }
  }
  return spec;
}

Result<std::string> system_image_key(const SystemImageSpec& spec, std::vector<std::string>* unreadable) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  hash_text(state, kRootfsFormat);
  hash_text(state, spec.source_root.string());
  for (const auto& t : spec.trees) hash_text(state, "tree:" + t);
  for (const auto& e : spec.excludes) hash_text(state, "exclude:" + e);
  std::vector<fs::path> roots;
  for (const auto& t : spec.trees) roots.push_back(spec.source_root / t);
  std::set<std::string> skip;
  for (const auto& e : spec.excludes) skip.insert((spec.source_root / e).string());
  std::vector<char> link(4096);
  // An ordinary user's image holds what that user can read (root's: everything, or an error).
  std::vector<std::string> skipped;
  auto st = walk(roots, skip, [&](FTSENT* e) {
    const struct stat& s = *e->fts_statp;
    hash_text(state, std::string_view(e->fts_path, e->fts_pathlen));
    hash_value(state, s.st_mode);
    hash_value(state, s.st_size);
    hash_value(state, s.st_mtim.tv_sec);
    hash_value(state, s.st_mtim.tv_nsec);
    hash_value(state, s.st_uid);
    hash_value(state, s.st_gid);
    if (S_ISLNK(s.st_mode)) {
      const ssize_t n = readlink(e->fts_accpath, link.data(), link.size());
      hash_text(state, n > 0 ? std::string_view(link.data(), static_cast<std::size_t>(n)) : std::string_view());
    }
    return true;
  }, geteuid() == 0 ? nullptr : &skipped);
  for (const auto& p : skipped) hash_text(state, "unreadable:" + p);
  if (unreadable != nullptr)
    for (const auto& p : skipped) unreadable->push_back(fs::path(p).lexically_relative(spec.source_root).string());
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  if (!st) return st.error();
  return hex128(h);
}

std::vector<std::string> erofs_excludes_for(const fs::path& source_root, const std::vector<std::string>& included,
                                            const std::vector<std::string>& excludes) {
  std::set<std::string> keep;       // included paths and their ancestors, relative
  std::set<std::string> ancestors;  // directories whose other entries go ("" = the root)
  for (const auto& inc : included) {
    fs::path acc;
    const fs::path rel = fs::path(inc).lexically_normal().relative_path();
    ancestors.insert("");
    for (const auto& part : rel) {
      acc /= part;
      keep.insert(acc.string());
    }
    for (fs::path a = rel.parent_path(); !a.empty(); a = a.parent_path()) ancestors.insert(a.string());
  }
  for (const auto& inc : included) ancestors.erase(fs::path(inc).lexically_normal().relative_path().string());
  std::vector<std::string> out;
  for (const auto& a : ancestors) {
    std::error_code ec;
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(source_root / a, ec)) names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    for (const auto& n : names) {
      const std::string rel = a.empty() ? n : a + "/" + n;
      if (keep.count(rel) == 0) out.push_back(rel);
    }
  }
  out.insert(out.end(), excludes.begin(), excludes.end());
  return out;
}

namespace {

// The image directory `dir` held in use (a shared flock on it, released when the last copy
// goes); null if the directory is not there (a build that removed it won).
std::shared_ptr<const int> hold_in_use(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return nullptr;
  while (::flock(fd, LOCK_SH) != 0) {
    if (errno != EINTR) {
      ::close(fd);
      return nullptr;
    }
  }
  return std::shared_ptr<const int>(new int(fd), [](const int* f) {
    ::close(*f);  // releases the lock
    delete f;
  });
}

// Removes an image directory that no run holds in use (an exclusive flock it can take now);
// false if one does.
bool remove_if_unused(const fs::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0 && ::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return false;
  }
  std::error_code rm;
  fs::remove_all(dir, rm);
  if (fd >= 0) ::close(fd);
  return true;
}

}  // namespace

Result<SystemImage> ensure_system_image(const SystemImageSpec& spec, const fs::path& cache_root) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::string> unreadable;
  auto key = system_image_key(spec, &unreadable);
  if (!key) return key.error();
  if (!unreadable.empty())
    spdlog::info("system image: leaving out {} entries this user cannot read (the first: {})", unreadable.size(),
                 unreadable.front());
  spdlog::info("system image key {} ({} ms stat walk of {})", *key,
               std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count(),
               spec.source_root.string());
  const fs::path base = cache_root / "rootfs";
  SystemImage img;
  img.key = *key;
  img.file = base / img.key / kSystemImageName;
  std::error_code ec;
  // In use first, then there: a build removing it meanwhile leaves it missing, and it is built.
  img.in_use = hold_in_use(base / img.key);
  if (img.in_use && fs::exists(img.file, ec)) {  // renamed into place complete
    img.bytes = fs::file_size(img.file, ec);
    return img;
  }
  img.in_use.reset();
  fs::create_directories(base, ec);
  if (ec) return make_error("rootfs: cannot create " + base.string() + ": " + ec.message() + "; set SF_CACHE_DIR to a writable directory");
  std::string tmpl = (base / (".build-" + std::to_string(getpid()) + "-XXXXXX")).string();
  if (mkdtemp(tmpl.data()) == nullptr) return make_error("rootfs: mkdtemp in " + base.string() + ": " + std::strerror(errno));
  const fs::path tmp = tmpl;
  auto fail = [&](const std::string& msg) -> Result<SystemImage> {
    std::error_code rm;
    fs::remove_all(tmp, rm);
    return make_error(msg);
  };
  spdlog::info("building the system image of {} in {} (about a minute the first time)", spec.source_root.string(), base.string());
  const auto t1 = std::chrono::steady_clock::now();
  std::vector<std::string> excludes = spec.excludes;
  excludes.insert(excludes.end(), unreadable.begin(), unreadable.end());
  if (auto st = make_erofs(spec.source_root, erofs_excludes_for(spec.source_root, spec.trees, excludes), tmp / kSystemImageName); !st)
    return fail(st.error().message);
  fs::rename(tmp, base / img.key, ec);
  if (ec) {
    std::error_code rm;
    fs::remove_all(tmp, rm);
    img.in_use = hold_in_use(base / img.key);
    if (!img.in_use || !fs::exists(img.file))
      return make_error("rootfs: cannot move the image into " + (base / img.key).string() + ": " + ec.message());
    img.bytes = fs::file_size(img.file, ec);
    return img;  // another builder won the race
  }
  img.built_now = true;
  img.in_use = hold_in_use(base / img.key);
  img.bytes = fs::file_size(img.file, ec);
  spdlog::info("system image built: {} MiB in {:.1f} s", img.bytes >> 20,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
  // Older keys' images (the trees changed since). Builds in progress are left alone.
  for (const auto& e : fs::directory_iterator(base, ec)) {
    const auto name = e.path().filename().string();
    if (name == img.key || name.rfind(".build-", 0) == 0) continue;
    if (remove_if_unused(e.path()))
      spdlog::info("removed the old system image {}", name);
    else
      spdlog::info("kept the old system image {}: a running sfd uses it (the next build removes it)", name);
  }
  return img;
}

Result<SystemImage> ensure_host_system_image() {
  auto spec = host_system_image_spec();
  if (!spec) return spec.error();
  return ensure_system_image(*spec, cache_dir());
}

std::vector<fs::path> work_image_paths(const fs::path& cwd, const std::string& argv0, const std::string& path_env,
                                       const fs::path& agent, const SystemImageSpec& system) {
  const auto in_system = [&](const fs::path& p) {
    if (system.source_root != "/") return false;
    const fs::path rel = p.relative_path();
    if (rel.empty()) return false;
    if (std::find(system.trees.begin(), system.trees.end(), rel.begin()->string()) == system.trees.end()) return false;
    for (const auto& e : system.excludes) {
      if (is_under(rel, fs::path(e))) return false;
    }
    return true;
  };
  std::vector<fs::path> candidates = {cwd.lexically_normal()};
  // The command as execvp finds it: a name with a slash is a path; otherwise search PATH.
  if (!argv0.empty()) {
    fs::path cmd;
    if (argv0.find('/') != std::string::npos) {
      cmd = (cwd / argv0).lexically_normal();
    } else {
      for (const auto& dir : split(path_env, ':')) {
        const fs::path c = (cwd / dir / argv0).lexically_normal();
        if (access(c.c_str(), X_OK) == 0 && !fs::is_directory(c)) {
          cmd = c;
          break;
        }
      }
    }
    if (!cmd.empty()) candidates.push_back(cmd.parent_path());
  }
  if (!agent.empty()) candidates.push_back(agent.parent_path().lexically_normal());
  // A directory reached through a symlink: its real location too, so the link resolves.
  for (std::size_t i = 0, n = candidates.size(); i < n; ++i) {
    std::error_code ec;
    const fs::path real = fs::canonical(candidates[i], ec);
    if (!ec && real != candidates[i]) candidates.push_back(real);
  }
  std::vector<fs::path> out;
  for (const auto& c : candidates) {
    if (c.empty() || !c.is_absolute()) continue;
    if (c != candidates.front() && in_system(c)) continue;
    if (std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  }
  // Drop paths inside another one.
  std::vector<fs::path> result;
  for (const auto& p : out) {
    bool nested = false;
    for (const auto& q : out) nested = nested || (q != p && is_under(p, q));
    if (!nested) result.push_back(p);
  }
  std::sort(result.begin(), result.end());
  return result;
}

Status build_work_image(const std::vector<fs::path>& paths, const fs::path& out, std::uint64_t limit) {
  if (paths.empty()) return make_error("work image: nothing to pack");
  std::vector<std::string> rel;
  for (const auto& p : paths) {
    std::error_code ec;
    if (!p.is_absolute() || p.relative_path().empty()) return make_error("work image: " + p.string() + " is not an absolute path below /");
    if (fs::symlink_status(p, ec).type() == fs::file_type::not_found)
      return make_error("work image: " + p.string() + " does not exist");
    rel.push_back(p.relative_path().string());
  }
  std::uint64_t bytes = 0;
  bool over = false;
  auto st = walk(paths, {}, [&](FTSENT* e) {
    if (S_ISREG(e->fts_statp->st_mode)) bytes += static_cast<std::uint64_t>(e->fts_statp->st_size);
    over = bytes > limit;
    return !over;
  });
  if (!st) return make_error("work image: " + st.error().message);
  if (over) {
    std::string list;
    for (const auto& p : paths) list += (list.empty() ? "" : ", ") + p.string();
    return make_error("run: the working directory holds over " + std::to_string(limit >> 20) +
                      " MiB of files (" + list + "), too much to copy into the VM's work disk; cd into a smaller "
                      "directory holding what the command needs, or use --root 9p (not clonable)");
  }
  return make_erofs("/", erofs_excludes_for("/", rel, {}), out);
}

Result<std::unique_ptr<WorkImage>> WorkImage::build(const std::vector<fs::path>& paths, std::uint64_t limit) {
  std::error_code ec;
  ec = create_runtime_dir();
  const fs::path file = runtime_dir() / (std::string(kVmPrefix) + std::to_string(getpid()) + "-work-" +
                                         std::to_string(work_image_counter++) + ".erofs");
  std::unique_ptr<WorkImage> img(new WorkImage(file));  // removes a half-written file on failure
  if (auto st = build_work_image(paths, file, limit); !st) return st.error();
  return img;
}

WorkImage::~WorkImage() {
  std::error_code ec;
  fs::remove(file_, ec);
}

}  // namespace sf::sfd
