// Rank output as mpirun prints it: whole lines, each written at once so that lines of two
// ranks never mix inside one line; optional [1,R]<stdout>: tags and timestamps; partial
// lines (prompts) flushed after a short quiet time; copies in --output-filename files.
#pragma once

#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sf::mpirun {

enum class Stream { Stdout = 1, Stderr = 2 };

// Splits a byte stream into lines; keeps the unfinished tail.
class LineAssembler {
 public:
  // Appends data; returns the complete lines (each with its '\n').
  std::vector<std::string> feed(const std::string& data);
  // Takes the unfinished tail (may be empty).
  std::string take_partial();
  bool has_partial() const { return !partial_.empty(); }

 private:
  std::string partial_;
};

struct OutputOptions {
  bool tag = false;
  bool timestamp = false;
  bool merge_stderr = false;
  std::string directory;  // --output-filename; empty: none
};

// The prefix Open MPI 4.1 puts before a line: "[1,R]<stdout>:", "<ctime><stdout>:" or "".
std::string line_prefix(const OutputOptions& options, int rank, Stream stream, std::time_t now);

// Formats and writes rank output. `write(fd, bytes)` writes all bytes to 1 or 2; `now` gives
// the time for timestamps. Files under options.directory are opened on first use.
class OutputSink {
 public:
  using Writer = std::function<void(int fd, const std::string& bytes)>;
  OutputSink(OutputOptions options, Writer write, std::function<std::time_t()> now);
  ~OutputSink();

  // Creates DIR/1/rank.N/{stdout,stderr} for every rank (as Open MPI does at start).
  // Returns an error message, or "" on success.
  std::string prepare_files(int nranks);
  // Bytes from a rank. Returns true if an unfinished line is pending (the caller arms a timer
  // and calls flush_partial later).
  bool write(int rank, Stream stream, const std::string& data);
  // Writes out a pending unfinished line (a prompt).
  void flush_partial(int rank, Stream stream);
  // End of a stream: writes out what remains.
  void close(int rank, Stream stream);

 private:
  struct Channel {
    LineAssembler lines;
    bool mid_line = false;  // an unfinished line was already printed with its prefix
    int file_fd = -1;
  };
  Channel& channel(int rank, Stream stream);
  void emit(int rank, Stream stream, Channel& ch, const std::string& text, bool complete);

  OutputOptions options_;
  Writer write_;
  std::function<std::time_t()> now_;
  std::map<std::pair<int, int>, Channel> channels_;
};

}  // namespace sf::mpirun
