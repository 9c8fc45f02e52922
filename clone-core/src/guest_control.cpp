// clone-core: the sf.ctl codec (see guest_control.hpp, docs/protocols/vm-clone.md).
#include "clone-core/guest_control.hpp"

#include "sf-common/byte_order.hpp"

namespace sf::guest_control {
namespace {

static_assert(static_cast<int>(sf::CloneEnd::synced) == CLONE_END_SYNCED);
static_assert(static_cast<int>(sf::CloneEnd::exited) == CLONE_END_EXITED);
static_assert(static_cast<int>(sf::CloneEnd::signaled) == CLONE_END_SIGNALED);
static_assert(static_cast<int>(sf::CloneEnd::killed) == CLONE_END_KILLED);
static_assert(static_cast<int>(sf::CloneEnd::lost) == CLONE_END_LOST);

Result<std::string> encode(const google::protobuf::MessageLite& message, const char* what) {
  const std::size_t n = message.ByteSizeLong();
  if (n > kMaxFrame)
    return make_error(Errc::invalid_argument, std::string("sf.ctl: a ") + what + " of " + std::to_string(n) +
                                                  " bytes exceeds the frame limit of " + std::to_string(kMaxFrame) + " bytes");
  std::string frame(kHeaderBytes, '\0');
  put_be32(frame.data(), static_cast<std::uint32_t>(n));
  if (!message.AppendToString(&frame))
    return make_error(Errc::system, std::string("sf.ctl: cannot serialize a ") + what);
  return frame;
}

}  // namespace

Request make_request() {
  Request r;
  r.set_version(kVersion);
  return r;
}

HostMessage make_host_message() {
  HostMessage m;
  m.set_version(kVersion);
  return m;
}

Result<std::string> encode_frame(const Request& message) { return encode(message, "request"); }
Result<std::string> encode_frame(const HostMessage& message) { return encode(message, "message from sfd"); }

void FrameReader::feed(const void* data, std::size_t size) {
  if (broken_) return;
  if (pos_ > 0 && pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  buf_.append(static_cast<const char*>(data), size);
}

Result<std::optional<std::string>> FrameReader::next() {
  if (broken_) return *broken_;
  if (buffered() < kHeaderBytes) return std::optional<std::string>();
  const auto* h = reinterpret_cast<const unsigned char*>(buf_.data() + pos_);
  const std::uint32_t n = get_be32(h);
  if (n > kMaxFrame) {
    std::string why = "sf.ctl: a frame announces " + std::to_string(n) + " bytes, more than the limit of " +
                      std::to_string(kMaxFrame) + "; the stream is not sf.ctl version " + std::to_string(kVersion);
    // Version 1 sent JSON lines: their first bytes read as a huge length.
    if (h[0] == '{') why += " (it starts like a JSON line: a program or sfd built for sf.ctl version 1; rebuild it)";
    broken_ = make_error(Errc::system, std::move(why));
    buf_.clear();
    pos_ = 0;
    return *broken_;
  }
  if (buffered() < kHeaderBytes + n) return std::optional<std::string>();
  std::string body = buf_.substr(pos_ + kHeaderBytes, n);
  pos_ += kHeaderBytes + n;
  // Keep the buffer from growing without bound when frames keep arriving behind each other.
  if (pos_ >= 65536 && pos_ * 2 >= buf_.size()) {
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return std::optional<std::string>(std::move(body));
}

Status FrameReader::finish() const {
  if (broken_) return *broken_;
  if (buffered() == 0) return ok_status();
  return make_error(Errc::system, "sf.ctl: the stream ended inside a frame (" + std::to_string(buffered()) +
                                      " bytes of an unfinished frame)");
}

Result<Request> decode_request(std::string_view body) {
  Request r;
  if (body.size() > kMaxFrame || !r.ParseFromArray(body.data(), static_cast<int>(body.size())))
    return make_error(Errc::system, "sf.ctl: a frame of " + std::to_string(body.size()) +
                                        " bytes that is not a request (sf.ctl version " + std::to_string(kVersion) + ")");
  return r;
}

Result<HostMessage> decode_host_message(std::string_view body) {
  HostMessage m;
  if (body.size() > kMaxFrame || !m.ParseFromArray(body.data(), static_cast<int>(body.size())))
    return make_error(Errc::system, "sf.ctl: a frame of " + std::to_string(body.size()) +
                                        " bytes from sfd that is not a message of sf.ctl version " + std::to_string(kVersion));
  return m;
}

std::string version_mismatch(std::uint32_t sfd_version, std::uint32_t program_version) {
  return "sfd speaks sf.ctl version " + std::to_string(sfd_version) + ", this program version " +
         std::to_string(program_version) +
         ": rebuild the program against the clone-core (libsnowflock) of this sfd, or run it under the sfd it was built with";
}

CloneEnd to_wire(sf::CloneEnd end) { return static_cast<CloneEnd>(static_cast<int>(end)); }

Result<sf::CloneEnd> from_wire(int end) {
  if (!CloneEnd_IsValid(end))
    return make_error(Errc::system, "sf.ctl: an unknown clone end " + std::to_string(end));
  return static_cast<sf::CloneEnd>(end);
}

const char* op_name(const Request& request) {
  switch (request.op_case()) {
    case Request::kTicket: return "ticket";
    case Request::kClone: return "clone";
    case Request::kSync: return "sync";
    case Request::kJoin: return "join";
    case Request::kKill: return "kill";
    case Request::kExit: return "exit";
    case Request::OP_NOT_SET: break;
  }
  return "empty";
}

}  // namespace sf::guest_control
