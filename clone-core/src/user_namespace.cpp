// clone-core: entering a user namespace of one's own (see clone-core/user_namespace.hpp).
#include "clone-core/user_namespace.hpp"
#include "sf-common/fd_io.hpp"
#include "sf-common/threads.hpp"

#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>

#include "clone-core/netlink_links.hpp"

namespace sf::userns {
namespace {

bool has_capability(int bit) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("CapEff:", 0) == 0) return (std::stoull(line.substr(7), nullptr, 16) >> bit) & 1ull;
  return false;
}

std::optional<long> read_sysctl(const char* path) {
  std::ifstream in(path);
  long value = 0;
  if (!(in >> value)) return std::nullopt;
  return value;
}

bool write_file(const char* path, const std::string& text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = write_all(fd, text.data(), text.size());
  close(fd);
  return ok;
}

// Maps the caller's uid and gid to themselves in the user namespace it just entered.
// setgroups must be denied first: an unprivileged process may only write a gid map then.
std::string map_own_ids(uid_t uid, gid_t gid) {
  if (!write_file("/proc/self/setgroups", "deny"))
    return std::string("writing /proc/self/setgroups: ") + std::strerror(errno);
  if (!write_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n"))
    return std::string("writing /proc/self/uid_map: ") + std::strerror(errno);
  if (!write_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n"))
    return std::string("writing /proc/self/gid_map: ") + std::strerror(errno);
  return {};
}

// The setting that disables unprivileged user namespaces, if one does.
std::string disabling_setting() {
  if (auto v = read_sysctl("/proc/sys/user/max_user_namespaces"); v && *v == 0)
    return "user.max_user_namespaces is 0; an administrator can allow them with "
           "`sysctl -w user.max_user_namespaces=15000`";
  if (auto v = read_sysctl("/proc/sys/kernel/unprivileged_userns_clone"); v && *v == 0)
    return "kernel.unprivileged_userns_clone is 0; an administrator can allow them with "
           "`sysctl -w kernel.unprivileged_userns_clone=1`";
  if (auto v = read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"); v && *v == 1)
    return "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns is 1); an administrator can "
           "allow them with `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` or an AppArmor profile "
           "granting `userns` to this program";
  return {};
}

std::string unavailable(const std::string& why) {
  return "this user has no CAP_SYS_ADMIN and CAP_NET_ADMIN here and cannot make a user namespace of its own: " +
         why;
}

// The trial behind refusal().
std::string trial_refusal() {
  if (std::string setting = disabling_setting(); !setting.empty())
    return unavailable("unprivileged user namespaces are disabled: " + setting);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return unavailable(std::string("pipe2: ") + std::strerror(errno));
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  pid_t child = fork();
  if (child == 0) {
    close(fds[0]);
    std::string err;
    // Only the user namespace: inside it the creator may make every other kind, and a trial
    // network namespace would cost milliseconds to make and more to destroy.
    if (unshare(CLONE_NEWUSER) != 0)
      err = std::string("unshare(CLONE_NEWUSER): ") + std::strerror(errno);
    else
      err = map_own_ids(uid, gid);
    if (!err.empty()) (void)!write(fds[1], err.data(), err.size());
    _exit(err.empty() ? 0 : 1);
  }
  close(fds[1]);
  if (child < 0) {
    close(fds[0]);
    return unavailable(std::string("fork: ") + std::strerror(errno));
  }
  std::string err;
  char buf[256];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR))
    if (n > 0) err.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (err.empty() && WIFEXITED(status) && WEXITSTATUS(status) == 0) return {};
  if (err.empty()) err = "the trial process ended with status " + std::to_string(status);
  return unavailable(err + " (a security module or seccomp filter may forbid unprivileged user namespaces; an "
                           "administrator can check `sysctl user.max_user_namespaces` and the system's AppArmor or "
                           "SELinux policy)");
}

}  // namespace

bool administers_network() {
  if (!has_capability(21) || !has_capability(12)) return false;  // CAP_SYS_ADMIN, CAP_NET_ADMIN
  // Capabilities count only in the user namespace that owns the network namespace.
  int net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (net < 0) return false;
  int owner = ioctl(net, NS_GET_USERNS);
  close(net);
  if (owner < 0) return false;  // EPERM: the owner is outside our own user namespace
  struct stat a {}, b {};
  bool same = fstat(owner, &a) == 0 && stat("/proc/self/ns/user", &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
  close(owner);
  return same;
}

std::string refusal() {
  // The answer does not change while the process runs; one start of mpirun-sf asks up to three
  // times (choosing the driver, probing it, requesting the ticket), and each trial is a fork.
  static const std::string answer = trial_refusal();
  return answer;
}

Status enter(bool new_network) {
  int threads = thread_count();
  if (threads > 1)
    return make_error(Errc::not_single_threaded,
                      "clone-core: without root a user namespace of the process's own is needed, and making one "
                      "needs a single-threaded process, but this one has " +
                          std::to_string(threads) + " threads; request the ticket before starting any thread");
  const uid_t uid = geteuid();
  const gid_t gid = getegid();
  if (unshare(CLONE_NEWUSER | (new_network ? CLONE_NEWNET : 0)) != 0) {
    int err = errno;
    std::string setting = disabling_setting();
    return make_error(err == EPERM || err == ENOSPC || err == EUSERS ? Errc::missing_privilege : Errc::namespace_setup,
                      "clone-core: " +
                          unavailable(std::string(new_network ? "unshare(CLONE_NEWUSER | CLONE_NEWNET): "
                                                              : "unshare(CLONE_NEWUSER): ") +
                                      std::strerror(err) + (setting.empty() ? std::string() : "; " + setting)));
  }
  if (std::string err = map_own_ids(uid, gid); !err.empty())
    return make_error(Errc::namespace_setup, "clone-core: in the new user namespace: " + err);
  if (!new_network) return ok_status();
  auto sock = netlink::Socket::open();
  if (!sock) return sock.error();
  return netlink::set_up(*sock, 1, "lo");  // lo is always ifindex 1 in a new network namespace
}

}  // namespace sf::userns
