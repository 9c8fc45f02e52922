// sf-common: how many threads this process has. fork() copies only the calling thread and
// unshare(CLONE_NEWUSER) refuses a multithreaded caller, so cloning steps check it first.
#pragma once

#include <dirent.h>

namespace sf {

// The entries of /proc/self/task (0 if it cannot be read).
inline int thread_count() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.') ++n;
    closedir(d);
  }
  return n;
}

}  // namespace sf
