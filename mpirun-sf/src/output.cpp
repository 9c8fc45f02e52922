// Rank output formatting; see the header.
#include "mpirun-sf/output.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace sf::mpirun {

std::vector<std::string> LineAssembler::feed(const std::string& data) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] != '\n') continue;
    partial_.append(data, start, i + 1 - start);
    out.push_back(std::move(partial_));
    partial_.clear();
    start = i + 1;
  }
  partial_.append(data, start, std::string::npos);
  return out;
}

std::string LineAssembler::take_partial() {
  std::string out = std::move(partial_);
  partial_.clear();
  return out;
}

std::string line_prefix(const OutputOptions& options, int rank, Stream stream, std::time_t now) {
  if (!options.tag && !options.timestamp) return "";
  const char* suffix = stream == Stream::Stdout ? "stdout" : "stderr";
  std::string out;
  if (options.timestamp) {
    char buf[64];
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(buf, sizeof buf, "%a %b %e %H:%M:%S %Y", &tm);  // ctime() without its newline
    out = buf;
  }
  // Appended piece by piece: GCC 12 at -O3 reports a false -Wrestrict on
  // `"[1," + std::to_string(rank)` (a temporary string prepended to).
  if (options.tag) {
    out += "[1,";
    out += std::to_string(rank);
    out += ']';
  }
  out += '<';
  out += suffix;
  out += ">:";
  return out;
}

OutputSink::OutputSink(OutputOptions options, Writer write, std::function<std::time_t()> now)
    : options_(std::move(options)), write_(std::move(write)), now_(std::move(now)) {}

OutputSink::~OutputSink() {
  for (auto& [key, ch] : channels_)
    if (ch.file_fd >= 0) ::close(ch.file_fd);
}

std::string OutputSink::prepare_files(int nranks) {
  if (options_.directory.empty()) return "";
  namespace fs = std::filesystem;
  for (int r = 0; r < nranks; ++r) {
    fs::path dir = fs::path(options_.directory) / "1" / ("rank." + std::to_string(r));
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return "cannot create output directory " + dir.string() + ": " + ec.message();
    for (Stream s : {Stream::Stdout, Stream::Stderr}) {
      fs::path file = dir / (s == Stream::Stdout ? "stdout" : "stderr");
      int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) return "cannot create output file " + file.string() + ": " + strerror(errno);
      channel(r, s).file_fd = fd;
    }
  }
  return "";
}

OutputSink::Channel& OutputSink::channel(int rank, Stream stream) {
  return channels_[{rank, static_cast<int>(stream)}];
}

void OutputSink::emit(int rank, Stream stream, Channel& ch, const std::string& text,
                      bool complete) {
  if (ch.file_fd >= 0) {
    // Files get the raw output, as Open MPI writes them.
    size_t off = 0;
    while (off < text.size()) {
      ssize_t n = ::write(ch.file_fd, text.data() + off, text.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  Stream shown = options_.merge_stderr ? Stream::Stdout : stream;
  std::string line = ch.mid_line ? text : line_prefix(options_, rank, shown, now_()) + text;
  write_(shown == Stream::Stdout ? 1 : 2, line);
  ch.mid_line = !complete;
}

bool OutputSink::write(int rank, Stream stream, const std::string& data) {
  Channel& ch = channel(rank, stream);
  for (const std::string& line : ch.lines.feed(data)) emit(rank, stream, ch, line, true);
  return ch.lines.has_partial();
}

void OutputSink::flush_partial(int rank, Stream stream) {
  Channel& ch = channel(rank, stream);
  if (ch.lines.has_partial()) emit(rank, stream, ch, ch.lines.take_partial(), false);
}

void OutputSink::close(int rank, Stream stream) {
  Channel& ch = channel(rank, stream);
  if (ch.lines.has_partial()) emit(rank, stream, ch, ch.lines.take_partial(), false);
  if (ch.file_fd >= 0) {
    ::close(ch.file_fd);
    ch.file_fd = -1;
  }
}

}  // namespace sf::mpirun
