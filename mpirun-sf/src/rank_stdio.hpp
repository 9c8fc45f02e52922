// A rank's standard streams, connected as Open MPI's mpirun connects them: stdout on a
// pseudo-terminal (so C stdio is line-buffered, isatty(1) is true, and a line printed before a
// crash or MPI_Abort is not lost in a 4 KiB buffer that dies with the process), stderr on a
// pipe (or on the same terminal with --merge-stderr-to-stdout), stdin on a pipe for the ranks
// that get input and /dev/null for the others. mpirun has no switch for pipes instead of the
// terminal; where no terminal can be had (no /dev/ptmx) stdout falls back to a pipe, as
// mpirun's does.
#pragma once

#include <sys/ioctl.h>

// For code that runs in a child sharing the parent's memory between clone and exec, on a
// stack the sanitizers do not know. One name per argument: GCC also takes "address,undefined",
// clang does not (-Wunknown-sanitizers).
#define SF_NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))

namespace sf::mpirun {

struct TerminalSize {
  unsigned short rows = 0, columns = 0;  // 0: unknown (the launcher's stdout is no terminal)
};

// The size of the launcher's terminal, if its stdout is one: the ranks' terminals get it.
TerminalSize launcher_terminal_size();

class RankStdio {
 public:
  // Opens the descriptors (all close-on-exec). Throws std::runtime_error naming the step.
  RankStdio(bool wants_stdin, bool merge_stderr, TerminalSize size);
  ~RankStdio();
  RankStdio(const RankStdio&) = delete;
  RankStdio& operator=(const RankStdio&) = delete;

  // In the child, between fork and exec (async-signal-safe): puts the child's ends on 0, 1, 2
  // and marks every other descriptor close-on-exec, so the rank starts with 0, 1 and 2 only.
  SF_NO_SANITIZE void become_child_stdio() const;
  // In the parent after fork: closes the child's ends (so the rank's exit is seen as EOF).
  void close_child_ends();
  // The launcher's ends, handed over to the caller (-1 where there is none).
  int take_stdout();
  int take_stderr();
  int take_stdin();

 private:
  void close_all();

  int child_in_ = -1, child_out_ = -1, child_err_ = -1;
  int out_ = -1, err_ = -1, in_ = -1;
};

}  // namespace sf::mpirun
