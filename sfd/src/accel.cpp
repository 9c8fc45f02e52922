// sfd: accelerator choice (see accel.hpp).
#include "sfd/accel.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "sfd/paths.hpp"

namespace sf::sfd {
namespace fs = std::filesystem;

namespace {

std::string which(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const auto end = dirs.find(':', start);
    const std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
    const fs::path cand = fs::path(dir.empty() ? "." : dir) / name;
    if (access(cand.c_str(), X_OK) == 0) return cand.string();
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return name;
}

// What the probe's answer depends on: the image, the QEMU binary, the host kernel.
std::string probe_cache_key(const GuestImage& image) {
  std::string text = image.key;
  struct stat st {};
  const std::string qemu = which(qemu_binary());
  if (stat(qemu.c_str(), &st) == 0)
    text += "|" + qemu + "|" + std::to_string(st.st_size) + "|" + std::to_string(st.st_mtime);
  struct utsname u {};
  if (uname(&u) == 0) text += std::string("|") + u.release + "|" + u.version;
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(XXH3_64bits(text.data(), text.size())));
  return hex;
}

}  // namespace

Result<bool> probe_boot(const GuestImage& image, Accel accel, std::chrono::milliseconds timeout) {
  VmConfig cfg;
  cfg.image = image;
  cfg.accel = accel;
  cfg.mem_mib = 128;
  cfg.cpus = 1;
  cfg.mode = "probe";
  cfg.console_to_socket = true;
  auto vm = QemuVm::launch(cfg);
  if (!vm) return vm.error();
  const int fd = (*vm)->take_console_fd();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::string seen;
  bool found = false;
  while (!found) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(left.count()));
    if (r <= 0) continue;
    char buf[4096];
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n <= 0) break;  // QEMU exited
    seen.append(buf, static_cast<std::size_t>(n));
    found = seen.find(kGuestProbeMarker) != std::string::npos;
    if (seen.size() > (1u << 20)) seen.erase(0, seen.size() - 4096);
  }
  close(fd);
  // The QemuVm destructor stops QEMU (a hung KVM guest never powers off by itself).
  return found;
}

Result<AccelChoice> choose_accel(const GuestImage& image, const AccelProbeOptions& options) {
  if (const char* forced = std::getenv("SF_ACCEL"); forced != nullptr && *forced != '\0') {
    const std::string f = forced;
    if (f == "kvm") return AccelChoice{Accel::kvm, "forced by SF_ACCEL=kvm", false};
    if (f == "tcg") return AccelChoice{Accel::tcg, "forced by SF_ACCEL=tcg", false};
    return make_error("accel: SF_ACCEL must be kvm or tcg, not '" + f + "'");
  }
  const int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0)
    return AccelChoice{Accel::tcg, std::string("TCG: /dev/kvm is not usable (") + std::strerror(errno) + ")", false};
  close(kvm);

  const fs::path cache = cache_dir() / "accel" / (probe_cache_key(image) + ".json");
  if (!options.reprobe) {
    std::ifstream in(cache);
    if (in) {
      auto j = nlohmann::json::parse(in, nullptr, false);
      if (!j.is_discarded() && j.contains("accel") && j.contains("reason")) {
        const Accel a = j["accel"] == "kvm" ? Accel::kvm : Accel::tcg;
        return AccelChoice{a, j["reason"].get<std::string>() + " (cached in " + cache.string() + ")", true};
      }
    }
  }
  auto timeout = options.timeout;
  if (const char* t = std::getenv("SF_KVM_PROBE_TIMEOUT"); t != nullptr && *t != '\0')
    timeout = std::chrono::milliseconds(static_cast<long>(std::atof(t) * 1000));
  auto ok = probe_boot(image, Accel::kvm, timeout);
  AccelChoice choice;
  if (!ok) {
    // One line for -v: the first complaint QEMU made, not the whole log.
    std::string why = ok.error().message;
    if (auto pos = why.find("--- QEMU said ---\n"); pos != std::string::npos) {
      why = why.substr(pos + 18);
      why = why.substr(0, why.find('\n'));
    }
    choice = {Accel::tcg, "TCG: a probe boot under KVM failed (" + why + ")", false};
  } else if (*ok) {
    choice = {Accel::kvm, "KVM: a probe boot of the guest under KVM reached its init", false};
  } else {
    choice = {Accel::tcg,
              "TCG: /dev/kvm exists but a probe boot under KVM did not reach the guest init within " +
                  std::to_string(timeout.count() / 1000) + " s (e.g. a nested hypervisor that hangs Linux guests)",
              false};
  }
  std::error_code ec;
  fs::create_directories(cache.parent_path(), ec);
  std::ofstream out(cache);
  out << nlohmann::json{{"accel", to_string(choice.accel)}, {"reason", choice.reason}}.dump() << "\n";
  return choice;
}

}  // namespace sf::sfd
