// sfd: the guest image builder (see guest_image.hpp).
#include "sfd/guest_image.hpp"

#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <system_error>

#include "sfd/paths.hpp"
#include "sfd/subprocess.hpp"
#include "sfd_guest_init.hpp"

namespace sf::sfd {
namespace fs = std::filesystem;

namespace {

// Bump when the image layout changes in a way the inputs do not show.
constexpr std::string_view kImageFormat = "snowflock-guest-image v1";

std::string module_name_of(const std::string& rel_path) {
  std::string name = fs::path(rel_path).filename().string();
  if (auto pos = name.find(".ko"); pos != std::string::npos) name.resize(pos);
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

std::string normalise(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

Status hash_file(XXH3_state_t* state, const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("guest image: cannot read " + path.string() + " (are you root? Debian's kernel images are mode 0600)");
  std::vector<char> buf(1 << 16);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    XXH3_128bits_update(state, buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  return ok_status();
}

void hash_text(XXH3_state_t* state, std::string_view text) {
  // Length first, so concatenated fields cannot collide by shifting bytes between them.
  const std::uint64_t n = text.size();
  XXH3_128bits_update(state, &n, sizeof n);
  XXH3_128bits_update(state, text.data(), text.size());
}

bool has_modules(const fs::path& modules_dir, const std::vector<std::string>& wanted) {
  auto order = resolve_module_order(modules_dir, wanted);
  return order.ok();
}

}  // namespace

std::string_view guest_init_script() { return generated::kGuestInitScript; }

std::vector<std::string> default_guest_modules() {
  return {"virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_console", "virtio_net", "virtio_blk",
          "crc32c_generic", "erofs"};  // erofs needs libcrc32c, which needs a crc32c (softdep)
}

Result<std::vector<std::string>> resolve_module_order(const fs::path& modules_dir,
                                                      const std::vector<std::string>& wanted) {
  std::ifstream dep(modules_dir / "modules.dep");
  if (!dep) return make_error("guest image: no " + (modules_dir / "modules.dep").string() + "; run depmod");
  // modules.dep: "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko ..."
  std::map<std::string, std::string> path_of;                  // name -> relative path
  std::map<std::string, std::vector<std::string>> deps_of;     // relative path -> deps
  std::string line;
  while (std::getline(dep, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string mod = line.substr(0, colon);
    std::istringstream rest(line.substr(colon + 1));
    std::vector<std::string> deps;
    for (std::string d; rest >> d;) deps.push_back(d);
    path_of[module_name_of(mod)] = mod;
    deps_of[mod] = std::move(deps);
  }
  std::vector<std::string> order;
  std::set<std::string> done, visiting;
  std::function<Status(const std::string&)> visit = [&](const std::string& rel) -> Status {
    if (done.count(rel) != 0) return ok_status();
    if (!visiting.insert(rel).second) return make_error("guest image: module dependency cycle at " + rel);
    for (const auto& d : deps_of[rel]) {
      if (auto st = visit(d); !st) return st;
    }
    visiting.erase(rel);
    done.insert(rel);
    order.push_back(rel);
    return ok_status();
  };
  for (const auto& w : wanted) {
    auto it = path_of.find(normalise(w));
    if (it == path_of.end())
      return make_error("guest image: the kernel in " + modules_dir.string() + " has no module " + w);
    if (auto st = visit(it->second); !st) return st.error();
  }
  for (const auto& rel : order) {
    if (!rel.ends_with(".ko"))
      return make_error("guest image: compressed module " + rel + " is not supported yet (busybox insmod needs plain .ko)");
  }
  return order;
}

Result<GuestImageInputs> find_guest_inputs() {
  GuestImageInputs in;
  in.modules = default_guest_modules();
  const char* bb = std::getenv("SF_BUSYBOX");
  in.busybox = (bb != nullptr && *bb != '\0') ? fs::path(bb) : fs::path("/bin/busybox");
  if (!fs::exists(in.busybox))
    return make_error("guest image: no busybox at " + in.busybox.string() + "; apt-get install busybox-static");

  std::vector<fs::path> candidates;
  if (const char* k = std::getenv("SF_GUEST_KERNEL"); k != nullptr && *k != '\0') {
    candidates.emplace_back(k);
  } else {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator("/boot", ec)) {
      const auto name = e.path().filename().string();
      if (name.rfind("vmlinuz-", 0) == 0) candidates.push_back(e.path());
    }
    // Newest version first (Debian's version strings sort well enough for one ABI series).
    std::sort(candidates.begin(), candidates.end(), std::greater<>());
  }
  for (const auto& k : candidates) {
    const std::string version = k.filename().string().substr(std::string("vmlinuz-").size());
    const fs::path mods = fs::path("/lib/modules") / version;
    if (!has_modules(mods, in.modules)) continue;
    in.kernel = k;
    in.kernel_version = version;
    in.modules_dir = mods;
    return in;
  }
  return make_error(
      "guest image: no kernel in /boot whose modules include virtio-9p, overlay and virtio-console "
      "(Debian's cloud kernel has no 9p); apt-get install linux-image-amd64, or set SF_GUEST_KERNEL");
}

Result<std::string> guest_image_key(const GuestImageInputs& inputs,
                                    const std::vector<std::string>& module_files) {
  XXH3_state_t* state = XXH3_createState();
  XXH3_128bits_reset(state);
  hash_text(state, kImageFormat);
  hash_text(state, guest_init_script());
  Status st = hash_file(state, inputs.kernel);
  if (st) st = hash_file(state, inputs.busybox);
  for (const auto& rel : module_files) {
    if (!st) break;
    hash_text(state, rel);
    st = hash_file(state, inputs.modules_dir / rel);
  }
  const XXH128_hash_t h = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  if (!st) return st.error();
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx", static_cast<unsigned long long>(h.high64),
                static_cast<unsigned long long>(h.low64));
  return std::string(hex);
}

Result<GuestImage> ensure_guest_image(const GuestImageInputs& inputs, const fs::path& cache_root) {
  auto order = resolve_module_order(inputs.modules_dir, inputs.modules);
  if (!order) return order.error();
  auto key = guest_image_key(inputs, *order);
  if (!key) return key.error();

  GuestImage img;
  img.key = *key;
  img.dir = cache_root / "guest" / img.key;
  img.kernel = img.dir / "vmlinuz";
  img.initramfs = img.dir / "initramfs.img";
  img.kernel_version = inputs.kernel_version;
  if (fs::exists(img.dir / "manifest.json")) return img;  // the manifest is written last

  std::error_code ec;
  fs::create_directories(cache_root / "guest", ec);
  if (ec) return make_error("guest image: cannot create " + (cache_root / "guest").string() + ": " + ec.message() + "; set SF_CACHE_DIR to a writable directory");
  // Build in a private directory and rename it into place: concurrent builders never see a
  // half-written image, and the loser of a rename race simply uses the winner's.
  std::string tmpl = (cache_root / "guest" / (".build-" + std::to_string(getpid()) + "-XXXXXX")).string();
  if (mkdtemp(tmpl.data()) == nullptr) return make_error("guest image: mkdtemp in " + cache_root.string() + " failed");
  const fs::path tmp = tmpl;
  auto fail = [&](const std::string& msg) -> Result<GuestImage> {
    std::error_code rm;
    fs::remove_all(tmp, rm);
    return make_error("guest image: " + msg);
  };

  const fs::path root = tmp / "root";
  fs::create_directories(root / "bin", ec);
  fs::create_directories(root / "lib" / "modules", ec);
  if (ec) return fail("mkdir: " + ec.message());
  fs::copy_file(inputs.busybox, root / "bin" / "busybox", ec);
  if (ec) return fail("copy busybox: " + ec.message());
  {
    std::ofstream init(root / "init", std::ios::binary);
    init << guest_init_script();
    std::ofstream mo(root / "modules.order");
    for (const auto& rel : *order) {
      const auto base = fs::path(rel).filename();
      fs::copy_file(inputs.modules_dir / rel, root / "lib" / "modules" / base, ec);
      if (ec) return fail("copy module " + rel + ": " + ec.message());
      mo << base.string() << "\n";
    }
    if (!init || !mo) return fail("cannot write the initramfs tree");
  }
  fs::permissions(root / "init", fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                     fs::perms::others_read | fs::perms::others_exec, ec);
  fs::copy_file(inputs.kernel, tmp / "vmlinuz", ec);
  if (ec) return fail("copy kernel " + inputs.kernel.string() + ": " + ec.message());

  // cpio (newc) + gzip, the format the kernel unpacks; the tools are Debian's.
  const std::string script = "cd '" + root.string() + "' && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -6 > '" +
                             (tmp / "initramfs.img").string() + "'";
  auto rc = run_to_completion({"/bin/bash", "-c", "set -o pipefail; " + script});
  if (!rc) return fail(rc.error().message);
  if (*rc != 0) return fail("cpio | gzip exited with " + std::to_string(*rc) + "; apt-get install cpio gzip");
  fs::remove_all(root, ec);

  nlohmann::json manifest = {{"format", std::string(kImageFormat)},
                             {"key", img.key},
                             {"kernel", inputs.kernel.string()},
                             {"kernel_version", inputs.kernel_version},
                             {"busybox", inputs.busybox.string()},
                             {"modules", *order}};
  {
    std::ofstream m(tmp / "manifest.json");
    m << manifest.dump(2) << "\n";
    if (!m) return fail("cannot write manifest.json");
  }
  fs::rename(tmp, img.dir, ec);
  if (ec) {
    std::error_code rm;
    fs::remove_all(tmp, rm);
    if (!fs::exists(img.dir / "manifest.json"))
      return make_error("guest image: cannot move the image into " + img.dir.string() + ": " + ec.message());
    return img;  // another builder won the race; its image has the same key
  }
  img.built_now = true;
  return img;
}

Result<GuestImage> ensure_host_guest_image() {
  auto inputs = find_guest_inputs();
  if (!inputs) return inputs.error();
  return ensure_guest_image(*inputs, cache_dir());
}

}  // namespace sf::sfd
