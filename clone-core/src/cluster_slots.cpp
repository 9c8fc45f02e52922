// clone-core (sandbox driver): slot locks, state files and stale-cluster cleanup
// (see cluster_slots.hpp and docs/clone-core.md "Cleanup").
#include "cluster_slots.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "clone-core/cluster_layout.hpp"
#include "clone-core/user_namespace.hpp"

namespace sf::slots {
namespace {

constexpr std::size_t kMaxStateBytes = 1 << 20;  // size cap on read
constexpr const char* kStateFormat = "snowflock-cluster-state";
constexpr int kStateVersion = 1;

std::string checksum_hex(const nlohmann::json& body) {
  std::string text = body.dump();
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(XXH64(text.data(), text.size(), 0)));
  return buf;
}

}  // namespace

bool parse_slot_suffix(const std::string& name, const std::string& prefix, unsigned& slot) {
  if (name.rfind(prefix, 0) != 0) return false;
  std::size_t i = prefix.size(), start = i;
  unsigned value = 0;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9' && i - start < 4) value = value * 10 + (name[i++] - '0');
  if (i == start) return false;
  slot = value;
  return value < kMaxSlots;
}

std::string lock_path(unsigned slot) { return run_dir() + "/cluster-" + std::to_string(slot) + ".lock"; }
std::string state_path(unsigned slot) { return run_dir() + "/cluster-" + std::to_string(slot) + ".json"; }
std::string scratch_dir() { return run_dir() + "/scratch"; }

Status ensure_run_dir() {
  const uid_t uid = geteuid();
  for (const std::string& dir : {run_dir(), scratch_dir()}) {
    if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
      return make_error(errno == EACCES || errno == EPERM ? Errc::missing_privilege : Errc::system,
                        "clone-core: cannot create " + dir + ": " + std::strerror(errno) +
                            "; the sandbox driver keeps its locks there");
    // Ours and private, or someone could read our state, hold our locks or plant files.
    struct stat st {};
    if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != uid)
      return make_error(Errc::system, "clone-core: " + dir + " is not a directory of uid " + std::to_string(uid) +
                                          "; remove it (or set XDG_RUNTIME_DIR to a directory of your own)");
    if ((st.st_mode & 077) != 0 && chmod(dir.c_str(), 0700) != 0)
      return make_error(Errc::system, "clone-core: chmod 0700 " + dir + ": " + std::strerror(errno));
  }
  return ok_status();
}

SlotLock& SlotLock::operator=(SlotLock&& o) noexcept {
  if (this != &o) {
    unlock();
    slot_ = o.slot_;
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}
SlotLock::~SlotLock() { unlock(); }
void SlotLock::unlock() {
  if (fd_ >= 0) close(fd_);  // closing the last fd of the open file description drops the flock
  fd_ = -1;
}
void SlotLock::forget_in_child() { unlock(); }

std::optional<SlotLock> try_lock(unsigned slot) {
  int fd = open(lock_path(slot).c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return std::nullopt;
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    close(fd);
    return std::nullopt;
  }
  return SlotLock(slot, fd);
}

Result<SlotLock> acquire(unsigned count, netlink::Socket& host) {
  for (unsigned slot = 0; slot < count; ++slot) {
    auto lock = try_lock(slot);
    if (!lock) continue;
    // A free lock with leftovers means a crashed run; clean before reuse.
    CleanupReport ignored;
    clean_slot(slot, &host, ignored);  // prepare() administers this network namespace
    return std::move(*lock);
  }
  return make_error(Errc::no_cluster_slot, "clone-core: all " + std::to_string(count) +
                                               " cluster slots of the subnet pool are in use by live clusters;"
                                               " wait for one to end or use a larger subnet pool");
}

unsigned long long process_start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close_paren = text.rfind(')');
  if (close_paren == std::string::npos) return 0;
  std::istringstream rest(text.substr(close_paren + 2));
  std::string field;
  // Fields after the command: 3 state ... 22 starttime, i.e. the 20th token here.
  for (int i = 3; i <= 22 && rest >> field; ++i) {
    if (i == 22) return std::stoull(field);
  }
  return 0;
}

std::string format_state(const ClusterState& s) {
  nlohmann::json body;
  body["format"] = kStateFormat;
  body["version"] = kStateVersion;
  body["slot"] = s.slot;
  body["subnet"] = s.subnet;
  body["bridge"] = s.bridge;
  body["parent_pid"] = s.parent_pid;
  body["inits"] = nlohmann::json::array();
  for (const auto& p : s.inits) body["inits"].push_back({{"id", p.id}, {"pid", p.pid}, {"start_time", p.start_time}});
  body["checksum"] = "";
  nlohmann::json without = body;
  without.erase("checksum");
  body["checksum"] = checksum_hex(without);
  return body.dump(2) + "\n";
}

Status write_state(const ClusterState& s) {
  std::string path = state_path(s.slot), tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << format_state(s);
    if (!out) return make_error(Errc::system, "clone-core: cannot write " + tmp);
  }
  chmod(tmp.c_str(), 0600);
  if (rename(tmp.c_str(), path.c_str()) != 0)
    return make_error(Errc::system, "clone-core: cannot rename " + tmp + ": " + std::strerror(errno));
  return ok_status();
}

Result<ClusterState> read_state(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error(Errc::system, "clone-core: cannot open " + path);
  std::string text(kMaxStateBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > kMaxStateBytes) return make_error(Errc::system, "clone-core: " + path + " is larger than 1 MiB");
  auto body = nlohmann::json::parse(text, nullptr, false);
  if (body.is_discarded() || !body.is_object()) return make_error(Errc::system, "clone-core: " + path + " is not JSON");
  try {
    if (body.at("format") != kStateFormat || body.at("version") != kStateVersion)
      return make_error(Errc::system, "clone-core: " + path + " has an unknown format or version");
    std::string checksum = body.at("checksum");
    nlohmann::json without = body;
    without.erase("checksum");
    if (checksum != checksum_hex(without)) return make_error(Errc::system, "clone-core: " + path + ": checksum mismatch");
    ClusterState s;
    s.slot = body.at("slot");
    s.subnet = body.at("subnet");
    s.bridge = body.at("bridge");
    s.parent_pid = body.at("parent_pid");
    for (const auto& p : body.at("inits")) s.inits.push_back({p.at("id"), p.at("pid"), p.at("start_time")});
    return s;
  } catch (const nlohmann::json::exception& e) {
    return make_error(Errc::system, "clone-core: " + path + ": " + e.what());
  }
}

void clean_slot(unsigned slot, netlink::Socket* host, CleanupReport& report) {
  bool touched = false;
  std::string path = state_path(slot);
  if (access(path.c_str(), F_OK) == 0) {
    touched = true;
    auto state = read_state(path);
    if (state) {
      // Normally PR_SET_PDEATHSIG has killed them already; this covers the rest.
      for (const auto& p : state->inits) {
        if (p.pid > 0 && p.start_time != 0 && process_start_time(p.pid) == p.start_time && ::kill(p.pid, SIGKILL) == 0) {
          ++report.processes;
          report.notes.push_back("killed clone init " + std::to_string(p.pid) + " of slot " + std::to_string(slot));
        }
      }
    } else {
      report.notes.push_back(state.error().message);
    }
    unlink(path.c_str());
  }
  if (host == nullptr) {  // see cleanup_stale_clusters()
    if (touched) ++report.clusters;
    return;
  }
  auto links = netlink::list_links(*host);
  if (links) {
    std::uint32_t group = kLinkGroupBase + slot;
    std::string veth_prefix = kVethPrefix + std::to_string(slot) + "_";
    for (const auto& l : *links) {
      if (l.group == group || l.name == bridge_name(slot) || l.name.rfind(veth_prefix, 0) == 0) {
        ++report.links;
        report.notes.push_back("removed link " + l.name);
        touched = true;
      }
    }
  }
  if (touched) {
    if (Status st = netlink::delete_group(*host, kLinkGroupBase + slot); !st) report.notes.push_back(st.error().message);
    // Links named like ours but not in the group (e.g. made by hand) go by name.
    if (links) {
      std::string veth_prefix = kVethPrefix + std::to_string(slot) + "_";
      for (const auto& l : *links)
        if (l.group != kLinkGroupBase + slot && (l.name == bridge_name(slot) || l.name.rfind(veth_prefix, 0) == 0))
          if (Status st = netlink::delete_link(*host, l.name); !st) report.notes.push_back(st.error().message);
    }
    ++report.clusters;
  }
}

}  // namespace sf::slots

namespace sf {

std::string run_dir() {
  const uid_t uid = geteuid();
  if (uid == 0) return "/run/snowflock";
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && xdg[0] == '/') {
    struct stat st {};
    if (stat(xdg, &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == uid) return std::string(xdg) + "/snowflock";
  }
  return "/tmp/snowflock-" + std::to_string(uid);
}

Result<CleanupReport> cleanup_stale_clusters() {
  if (Status st = slots::ensure_run_dir(); !st) return st.error();
  auto host = netlink::Socket::open();
  if (!host) return host.error();
  // Slots worth a look: those with a state file, and those with one of our links.
  std::set<unsigned> candidates;
  if (DIR* dir = opendir(run_dir().c_str())) {
    while (dirent* e = readdir(dir)) {
      unsigned slot = 0;
      std::string name = e->d_name;
      if (name.size() > 5 && name.compare(name.size() - 5, 5, ".json") == 0 && slots::parse_slot_suffix(name, "cluster-", slot))
        candidates.insert(slot);
    }
    closedir(dir);
  }
  // Host links are the host administrator's business: an ordinary user's cluster links live in
  // its own network namespace and die with it, and another user's (or root's) are not ours.
  const bool host_links = userns::administers_network();
  auto links = host_links ? netlink::list_links(*host) : Result<std::vector<netlink::LinkEntry>>{std::vector<netlink::LinkEntry>{}};
  if (!links) return links.error();
  for (const auto& l : *links) {
    unsigned slot = 0;
    if (l.group >= kLinkGroupBase && l.group < kLinkGroupBase + kMaxSlots) candidates.insert(l.group - kLinkGroupBase);
    else if (slots::parse_slot_suffix(l.name, kBridgePrefix, slot) || slots::parse_slot_suffix(l.name, kVethPrefix, slot))
      candidates.insert(slot);
  }
  CleanupReport report;
  for (unsigned slot : candidates) {
    auto lock = slots::try_lock(slot);
    if (!lock) continue;  // a live cluster owns it
    slots::clean_slot(slot, host_links ? &*host : nullptr, report);
  }
  return report;
}

}  // namespace sf
