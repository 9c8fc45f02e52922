// sfd: static clusters of booted VMs (see sfd/static_cluster.hpp).
#include "sfd/static_cluster.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <thread>

#include "sfd/subprocess.hpp"

namespace sf::sfd {

namespace fs = std::filesystem;

std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

Result<std::string> from_hex(const std::string& hex) {
  if (hex.size() % 2 != 0) return make_error("rsh key: odd number of hex digits");
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return make_error("rsh key: not a hex digit at position " + std::to_string(hi < 0 ? i : i + 1));
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

Result<std::string> make_rsh_key_hex(const std::string& dir) {
  const fs::path key = fs::path(dir) / ("sf-vm-" + std::to_string(getpid()) + "-rsh.key");
  std::error_code ec;
  fs::remove(key, ec);
  // (Its chatter is dropped unless it fails.)
  auto rc = run_to_completion(
      {"sh", "-c", "out=$(dropbearkey -t ed25519 -f \"$0\" 2>&1) || { echo \"$out\" >&2; exit 1; }", key.string()});
  if (!rc || *rc != 0) {
    fs::remove(key, ec);
    return make_error("run --nodes: dropbearkey could not make the cluster's key (" +
                      (rc ? "exit " + std::to_string(*rc) : rc.error().message) +
                      "); install Debian's dropbear-bin (scripts/setup)");
  }
  std::ifstream in(key, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  fs::remove(key, ec);
  if (bytes.empty()) return make_error("run --nodes: dropbearkey wrote an empty key");
  return to_hex(bytes);
}

std::vector<std::string> compute_node_argv(const std::string& agent, const std::string& address) {
  const std::string d = kGuestRshDir;
  const std::string script =
      "set -e; umask 077; mkdir -p /root/.ssh " + d + "; chmod 700 /root /root/.ssh; \"" + agent + "\" rsh --write-key " + d +
      "/key; dropbearkey -y -f " + d + "/key | grep '^ssh-' > /root/.ssh/authorized_keys; dropbear -F -E -s -r " + d +
      "/key -p " + address + ":22 2> " + d +
      "/dropbear.log || { echo \"node $(hostname): dropbear failed:\" >&2; cat " + d + "/dropbear.log >&2; exit 1; }";
  return {"/bin/sh", "-c", script};
}

std::vector<std::string> node0_environment(const std::string& agent, const std::string& key_hex,
                                           const std::vector<std::string>& addresses, int slots) {
  std::string hosts;
  for (const auto& a : addresses) hosts += (hosts.empty() ? "" : ",") + a + ":" + std::to_string(slots);
  return {std::string(kRshKeyEnv) + "=" + key_hex,
          "SFD_HOSTS=" + hosts,
          "OMPI_MCA_plm_rsh_agent=" + agent + " rsh",
          "OMPI_MCA_plm_rsh_no_tree_spawn=1",
          "OMPI_MCA_oob_tcp_if_include=sf0",
          "OMPI_MCA_btl_tcp_if_include=sf0"};
}

namespace {

Status write_key(const std::string& path) {
  const char* hex = std::getenv(kRshKeyEnv);
  if (hex == nullptr || *hex == '\0')
    return make_error(std::string("sfd rsh: ") + kRshKeyEnv + " is not set: run inside `sfd run --nodes N`");
  auto bytes = from_hex(hex);
  if (!bytes) return bytes.error();
  std::error_code ec;
  fs::create_directories(fs::path(path).parent_path(), ec);
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error("sfd rsh: cannot write " + tmp + ": " + std::strerror(errno));
  const bool ok = ::write(fd, bytes->data(), bytes->size()) == static_cast<ssize_t>(bytes->size());
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return make_error("sfd rsh: cannot write " + path + ": " + std::strerror(errno));
  }
  return Ok{};
}

// The run's key is also every node's host key: node 0 knows it, so dbclient checks each
// node's identity strictly (no "accept unknown host key" prompt or warning).
Status know_host(const std::string& key, const std::string& host) {
  FILE* p = ::popen(("dropbearkey -y -f '" + key + "' 2>/dev/null").c_str(), "r");
  if (p == nullptr) return make_error(std::string("sfd rsh: cannot run dropbearkey: ") + std::strerror(errno));
  std::string pub;
  char line[4096];
  while (std::fgets(line, sizeof line, p) != nullptr) {
    if (std::strncmp(line, "ssh-", 4) == 0) pub = line;
  }
  ::pclose(p);
  if (pub.empty()) return make_error("sfd rsh: dropbearkey could not read the cluster's key " + key);
  std::istringstream fields(pub);
  std::string type, b64;
  fields >> type >> b64;
  const std::string entry = host + " " + type + " " + b64;
  const char* home = std::getenv("HOME");
  const fs::path dir = fs::path(home != nullptr && *home != '\0' ? home : "/root") / ".ssh";
  std::error_code ec;
  fs::create_directories(dir, ec);
  const fs::path known = dir / "known_hosts";
  {
    std::ifstream in(known);
    std::string l;
    while (std::getline(in, l)) {
      if (l == entry) return Ok{};
    }
  }
  std::ofstream(known, std::ios::app) << entry << "\n";
  return Ok{};
}

bool accepts_ssh(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (getaddrinfo(host.c_str(), "22", &hints, &res) != 0) return false;
  bool ok = false;
  for (addrinfo* a = res; a != nullptr && !ok; a = a->ai_next) {
    const int s = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (s < 0) continue;
    ok = ::connect(s, a->ai_addr, a->ai_addrlen) == 0;
    ::close(s);
  }
  freeaddrinfo(res);
  return ok;
}

}  // namespace

int rsh_command(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--write-key") {
    auto st = write_key(argv[2]);
    if (!st) {
      std::fprintf(stderr, "%s\n", st.error().message.c_str());
      return 1;
    }
    return 0;
  }
  if (argc < 3) {
    std::fprintf(stderr, "usage: sfd rsh HOST COMMAND...   (Open MPI's rsh agent inside `sfd run --nodes N`)\n"
                         "       sfd rsh --write-key FILE\n");
    return 2;
  }
  const std::string key = std::string(kGuestRshDir) + "/key";
  if (::access(key.c_str(), R_OK) != 0) {
    if (auto st = write_key(key); !st) {
      std::fprintf(stderr, "%s\n", st.error().message.c_str());
      return 255;
    }
  }
  const std::string host = argv[1];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (!accepts_ssh(host)) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "sfd rsh: %s does not accept SSH connections after 120 s (did its VM boot? see sfd's output)\n",
                   host.c_str());
      return 255;  // ssh's own code for a connection failure
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (auto st = know_host(key, host); !st) {
    std::fprintf(stderr, "%s\n", st.error().message.c_str());
    return 255;
  }
  std::vector<std::string> args = {"dbclient", "-i", key, host};
  for (int i = 2; i < argc; ++i) args.emplace_back(argv[i]);
  std::vector<char*> cargv;
  for (auto& a : args) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  execvp(cargv[0], cargv.data());
  std::fprintf(stderr, "sfd rsh: cannot run dbclient: %s (install Debian's dropbear-bin)\n", std::strerror(errno));
  return 255;
}

}  // namespace sf::sfd
