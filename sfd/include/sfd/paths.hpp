// sfd: where sfd keeps things on the host: the guest image cache, per-VM runtime directories
// and RAM files, and the sweep that removes what a killed sfd left behind.
#pragma once

#include <filesystem>
#include <string>

namespace sf::sfd {

// $SF_CACHE_DIR, else $XDG_CACHE_HOME/snowflock, else /var/cache/snowflock for root, else
// ~/.cache/snowflock.
std::filesystem::path cache_dir();

// $SF_RUNTIME_DIR, else /run/snowflock for root, else $XDG_RUNTIME_DIR/snowflock, else
// /tmp/snowflock-<uid>. Holds one directory per VM: sf-vm-<sfd pid>-<n>/.
std::filesystem::path runtime_dir();
// Creates runtime_dir() (and its parents) when missing, the directory itself private (0700):
// it holds the VMs' QMP sockets, logs and descriptors.
std::error_code create_runtime_dir();

// Where guest RAM files live: $SF_RAM_DIR, else /dev/shm. Files are sf-vm-<sfd pid>-<n>.ram.
std::filesystem::path ram_dir();

// Prefix of everything sfd names after the owning sfd process, so leftovers can be found.
inline constexpr const char* kVmPrefix = "sf-vm-";

// Removes RAM files and runtime directories whose owning sfd process is gone (a killed sfd
// cannot clean up after itself). Returns how many were removed.
int sweep_stale_vm_files();

// The pid in "sf-vm-<pid>-..." or 0.
int owner_pid_of(const std::string& name);

}  // namespace sf::sfd
