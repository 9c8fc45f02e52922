// sf_fuzz_seeds DIR: writes the seed corpus of every fuzz target into DIR/<name>/, made with
// the project's own encoders (control frames, memtap metadata and frames, mcdist packets,
// guest I/O frames, sf.ctl frames, free-page ranges) or, for text protocols, as the peer writes them (QMP as
// QEMU 7.2 speaks it, the origin's reply as RemoteCloneOrigin builds it). The checked-in
// tests/fuzz/corpus/ was made by it; run it again after a format changes.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "clone-core/free_pages.hpp"
#include "clone-core/guest_control.hpp"
#include "control_frame.hpp"
#include "host_link.hpp"
#include "mcdist/packet.hpp"
#include "memtap/image.hpp"
#include "memtap/protocol.hpp"
#include "sfd/guest_io.hpp"

namespace fs = std::filesystem;
using namespace std::string_literals;
using json = nlohmann::json;

namespace {

fs::path out_dir;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = out_dir / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary) << bytes;
}
template <typename T>
std::string str(const T& bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}
template <typename T>
void append_le(std::string& s, T v) {
  for (std::size_t i = 0; i < sizeof v; ++i) s += static_cast<char>((static_cast<std::uint64_t>(v) >> (8 * i)) & 0xff);
}

sf::control::Envelope fence_of(const std::string& signature) {
  sf::control::Envelope m;
  m.mutable_fence()->set_signature(signature);
  m.mutable_fence()->set_seq(1);
  return m;
}

void control_frame() {
  using sf::control::Envelope;
  std::vector<Envelope> all;
  Envelope m;
  m.mutable_output()->set_rank(2);
  m.mutable_output()->set_stream(1);
  m.mutable_output()->set_data("hello from rank 2\n");
  all.push_back(m);
  m.Clear();
  auto* f = m.mutable_fence();
  f->set_signature("fuzz:*;");
  f->set_seq(1);
  f->set_data("modex");
  f->set_node(1);
  all.push_back(m);
  m.Clear();
  f = m.mutable_fence();
  f->set_signature("fuzz:2;fuzz:3;");
  f->set_seq(2);
  all.push_back(m);
  m.Clear();
  auto* p = m.mutable_publish();
  p->set_id(7);
  p->set_rank(3);
  p->set_nspace("fuzz");
  auto* v = p->add_values();
  v->set_key("port");
  v->set_packed("x");
  all.push_back(m);
  m.Clear();
  m.mutable_lookup()->set_id(8);
  m.mutable_lookup()->set_rank(2);
  m.mutable_lookup()->add_keys("port");
  m.mutable_lookup()->set_wait(true);
  all.push_back(m);
  m.Clear();
  m.mutable_unpublish()->set_id(9);
  m.mutable_unpublish()->set_rank(3);
  m.mutable_unpublish()->add_keys("port");
  all.push_back(m);
  m.Clear();
  m.mutable_modex_request()->set_id(1);
  m.mutable_modex_request()->set_rank(0);
  m.mutable_modex_request()->set_from_node(1);
  all.push_back(m);
  m.Clear();
  m.mutable_modex_reply()->set_id(1);
  m.mutable_modex_reply()->set_to_node(2);
  all.push_back(m);
  m.Clear();
  m.mutable_rank_exited()->set_rank(3);
  m.mutable_rank_exited()->set_code(0);
  m.mutable_rank_exited()->set_pid(1234);
  all.push_back(m);
  m.Clear();
  m.mutable_abort()->set_rank(2);
  m.mutable_abort()->set_status(3);
  all.push_back(m);
  m.Clear();
  m.mutable_launch_failed()->set_rank(3);
  m.mutable_launch_failed()->set_code(127);
  m.mutable_launch_failed()->set_reason("no such program");
  all.push_back(m);
  m.Clear();
  m.mutable_node_finished()->set_node(1);
  all.push_back(m);
  // The inputs of past findings (tests/mpirun-sf/control_unit_test.cpp): a rank outside the
  // job, a fence signature whose last item has no ';'.
  m.Clear();
  m.mutable_rank_exited()->set_rank(4);
  put("control_frame", "finding-rank-outside-job", sf::mpirun::encode_frame(m));
  put("control_frame", "finding-signature-without-semicolon", sf::mpirun::encode_frame(fence_of("fuzz:2")));
  std::string stream;
  for (std::size_t i = 0; i < all.size(); ++i) {
    const std::string frame = sf::mpirun::encode_frame(all[i]);
    put("control_frame", "message-" + std::to_string(i), frame);
    if (i < 8) stream += frame;
  }
  put("control_frame", "stream", stream);
}

void memtap_seeds() {
  const fs::path image = fs::temp_directory_path() / ("sf-fuzz-seed-" + std::to_string(getpid()));
  {
    std::string bytes(3 * 4096 + 100, '\0');
    for (std::size_t i = 0; i < 4096; ++i) bytes[i] = static_cast<char>(i * 7);
    for (std::size_t i = 2 * 4096; i < bytes.size(); ++i) bytes[i] = 'x';
    std::ofstream(image, std::ios::binary) << bytes;
  }
  auto token = sf::memtap::random_token();
  auto md = sf::memtap::ImageMetadata::build(image.string(), 4096, token.value(), true);
  fs::remove(image);
  put("memtap_image", "with-token", str(md.value().serialize(true)));
  put("memtap_image", "as-served", str(md.value().serialize(false)));

  namespace proto = sf::memtap::protocol;
  proto::FrameHeader h;
  h.type = proto::MessageType::kFetch;
  h.request_id = 5;
  h.body_length = 36;
  put("memtap_protocol", "header-fetch", std::string(1, '\0') + str(proto::encode_header(h)));
  h.type = proto::MessageType::kHello;
  h.status = proto::WireStatus::kBadToken;
  put("memtap_protocol", "header-refusal", std::string(1, '\0') + str(proto::encode_header(h)));
  proto::HelloReply r{4096, 1024, 3 * 4096 + 100, 4, 0x1234};
  put("memtap_protocol", "hello-reply", std::string(1, '\1') + str(proto::encode_hello_reply(r)));
  std::string fetch(1, '\2');
  append_le<std::uint64_t>(fetch, 4);     // page_count
  append_le<std::uint32_t>(fetch, 1024);  // max_batch_pages
  const std::vector<sf::memtap::PageRange> ranges = {{0, 1}, {2, 2}};
  put("memtap_protocol", "fetch", fetch + str(proto::encode_fetch_request(ranges)));
}

constexpr const char* kPacketKey = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

void mcdist_seeds() {
  sf::mcdist::PacketAuthenticator auth(sf::mcdist::ClusterKey::from_hex(kPacketKey).value());
  auto datagram = [&](sf::mcdist::Header h, const std::vector<std::uint8_t>& payload) {
    std::vector<std::uint8_t> d(sf::mcdist::kHeaderSize);
    sf::mcdist::encode_header(h, payload, auth, std::span<std::uint8_t, sf::mcdist::kHeaderSize>(d.data(), sf::mcdist::kHeaderSize));
    d.insert(d.end(), payload.begin(), payload.end());
    return str(d);
  };
  sf::mcdist::Header h;
  h.cluster_id = 7;
  h.session_id = 0xabc;
  h.sequence = 1;
  h.type = sf::mcdist::PacketType::kData;
  h.flags = sf::mcdist::flags::kPushActive;
  h.page_index = 1;
  h.page_count = 4;
  h.page_size = 512;
  std::vector<std::uint8_t> page(512, 0x5a);
  put("mcdist_packet", "data", datagram(h, page));
  h.type = sf::mcdist::PacketType::kHeartbeat;
  h.flags = sf::mcdist::flags::kPushDone;
  put("mcdist_packet", "heartbeat", datagram(h, {}));
  h.type = sf::mcdist::PacketType::kRequest;
  h.origin = 9;
  const std::vector<sf::mcdist::PageRange> ranges = {{0, 2}, {3, 1}};
  put("mcdist_packet", "request", datagram(h, sf::mcdist::encode_ranges(ranges)));
  h.type = sf::mcdist::PacketType::kStatus;
  put("mcdist_packet", "status", datagram(h, sf::mcdist::encode_status({3, 100})));

  // mcdist_authed: the header fields in the target's order, then the payload.
  auto fields = [](std::uint8_t type, std::uint16_t fl, std::uint64_t page_index, std::uint64_t page_count,
                   std::uint32_t page_size, const std::vector<std::uint8_t>& payload) {
    std::string s;
    append_le<std::uint8_t>(s, type);
    append_le<std::uint16_t>(s, fl);
    append_le<std::uint8_t>(s, 7);         // cluster
    append_le<std::uint64_t>(s, 0xabc);    // session
    append_le<std::uint8_t>(s, type >= 3 ? 9 : 0);  // origin: clients only
    append_le<std::uint64_t>(s, 5);        // sequence
    append_le<std::uint64_t>(s, page_index);
    append_le<std::uint64_t>(s, page_count);
    append_le<std::uint32_t>(s, page_size);
    append_le<std::uint32_t>(s, 100);      // aux
    s += std::string(payload.begin(), payload.end());
    return s;
  };
  put("mcdist_authed", "data", fields(1, sf::mcdist::flags::kPushActive, 1, 4, 512, page));
  put("mcdist_authed", "heartbeat", fields(2, sf::mcdist::flags::kClosing, 0, 4, 512, {}));
  put("mcdist_authed", "request", fields(3, sf::mcdist::flags::kDemand, 0, 0, 0, sf::mcdist::encode_ranges(ranges)));
  put("mcdist_authed", "status", fields(4, sf::mcdist::flags::kComplete, 12, 4, 0, sf::mcdist::encode_status({3, 100})));
}

void vm_descriptor() {
  const json vm = {{"mem_mib", 512}, {"cpus", 1}, {"mode", "run"}, {"accel", "tcg"},
                   {"image_key", "0123456789abcdef"}, {"agent", "/usr/bin/sfd"}, {"system_disk", "/var/lib/sf/root.img"}};
  const json reply = {{"version", 1},
                      {"memtap", "10.213.0.1:40000"},
                      {"mcast", {{"group", "239.1.2.3"}, {"port", 5000}, {"key", kPacketKey}}},
                      {"image_id", "00000000deadbeef"},
                      {"vm", vm},
                      {"descriptor_bytes", 755316},
                      {"descriptor_xxh3", "0123456789abcdef"}};
  put("vm_descriptor", "origin-reply", "\x01" + reply.dump());
  put("vm_descriptor", "origin-refusal", "\x01" + json{{"error", "wrong token: this is not the ticket of this clone family"}}.dump());
  const std::vector<sf::PageRange> free = {{0x100, 0x400}, {0x1a00, 2}, {0x20000, 0x8000}};
  put("vm_descriptor", "free-pages", "\x00"s + sf::encode_page_ranges(free));
}

void guest_io() {
  namespace gio = sf::sfd::guest_io;
  const json spec = {{"argv", {"/bin/sh", "-c", "echo hi"}}, {"env", {"PATH=/usr/bin:/bin"}}, {"cwd", "/tmp"},
                     {"hostname", "sf-vm"}, {"stdin", true},
                     {"net", {{"interface", "sf0"}, {"mac", "52:54:00:53:46:01"}, {"address", "10.213.0.2/24"}, {"hostname", "sf-vm-1"}}}};
  auto frame = [](gio::FrameType t, const std::string& payload) { return str(gio::encode(t, payload)); };
  put("guest_io", "spec", "\x10" + frame(gio::FrameType::spec, spec.dump()));
  put("guest_io", "run", "\x03" + frame(gio::FrameType::stdin_data, "input\n") + frame(gio::FrameType::stdin_data, "") +
                             frame(gio::FrameType::stdout_data, "hi\n") + frame(gio::FrameType::stderr_data, "warning\n") +
                             frame(gio::FrameType::exit, json{{"code", 0}, {"signal", 0}}.dump()));
  put("guest_io", "error", "\x3f" + frame(gio::FrameType::error, json{{"message", "cannot run x"}}.dump()) +
                               frame(gio::FrameType::exit, json{{"code", 127}, {"signal", 0}}.dump()));
  put("guest_io", "signaled", "\x01" + frame(gio::FrameType::exit, json{{"code", 0}, {"signal", 9}}.dump()));
}

void guest_control() {
  namespace gc = sf::guest_control;
  auto frame = [](const auto& message) {
    auto f = gc::encode_frame(message);
    if (!f) {
      std::cerr << f.error().message << "\n";
      std::exit(1);
    }
    return *f;
  };
  // The parent's side of a run: ticket, clone (with a free-page report), join, kill.
  gc::Request ticket = gc::make_request();
  ticket.mutable_ticket()->set_clones(2);
  ticket.mutable_ticket()->set_min_clones(2);
  ticket.mutable_ticket()->set_procs_per_clone(1);
  ticket.mutable_ticket()->set_hostname("sf-vm");
  gc::Request clone = gc::make_request();
  const std::vector<sf::PageRange> free = {{0x100, 0x400}, {0x1a00, 2}, {0x20000, 0x8000}};
  clone.mutable_clone()->set_free_pages(sf::encode_page_ranges(free));
  clone.mutable_clone()->set_free_page_count(0x8402);
  gc::Request join = gc::make_request();
  join.mutable_join();
  gc::Request kill = gc::make_request();
  kill.mutable_kill();
  put("guest_control", "parent-requests", "\x07" + frame(ticket) + frame(clone) + frame(join) + frame(kill));
  gc::Request sync = gc::make_request();
  sync.mutable_sync()->set_status(3);
  put("guest_control", "clone-sync", "\x00"s + frame(sync));
  gc::Request old = gc::make_request();
  old.set_version(1);
  old.mutable_join();
  put("guest_control", "other-version", "\x02" + frame(old));
  // sfd's side: ticket reply, clone reply, an event, join reply, a refusal.
  gc::HostMessage granted = gc::make_host_message();
  granted.mutable_ticket()->set_granted(2);
  granted.mutable_ticket()->set_subnet("10.213.0.0/24");
  for (unsigned i = 0; i <= 2; ++i) {
    gc::Node& n = *granted.mutable_ticket()->add_nodes();
    n.set_id(i);
    n.set_address("10.213.0." + std::to_string(i + 1));
    n.set_prefix(24);
    n.set_mac("52:54:00:53:46:0" + std::to_string(i));
    n.set_hostname(i == 0 ? "sf-vm" : "sf-vm-" + std::to_string(i));
  }
  gc::HostMessage cloned = gc::make_host_message();
  cloned.mutable_clone()->set_id(1);
  gc::HostMessage ended = gc::make_host_message();
  ended.mutable_ended()->set_id(2);
  ended.mutable_ended()->set_end(gc::to_wire(sf::CloneEnd::signaled));
  ended.mutable_ended()->set_value(11);
  gc::HostMessage joined = gc::make_host_message();
  for (unsigned i = 1; i <= 2; ++i) {
    gc::CloneStatus& s = *joined.mutable_join()->add_statuses();
    s.set_id(i);
    s.set_end(gc::to_wire(i == 1 ? sf::CloneEnd::synced : sf::CloneEnd::signaled));
    s.set_value(i == 1 ? 0 : 11);
  }
  gc::HostMessage done = gc::make_host_message();
  done.mutable_done();
  put("guest_control", "sfd-replies", "\x3f" + frame(granted) + frame(cloned) + frame(ended) + frame(joined) + frame(done));
  gc::HostMessage refusal = gc::make_host_message();
  refusal.set_error(gc::version_mismatch(gc::kVersion, 1));
  put("guest_control", "refusal", "\x10" + frame(refusal));
}

void qmp_reply() {
  const std::string greeting =
      R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}})"
      "\n";
  put("qmp_reply", "conversation",
      greeting + "{\"return\": {}, \"id\": 1}\n" +
          R"({"timestamp": {"seconds": 1700000000, "microseconds": 1}, "event": "STOP"})" "\n" +
          "{\"return\": {}, \"id\": 2}\n" +
          R"({"return": {"status": "paused", "singlestep": false, "running": false}, "id": 3})" "\n" +
          R"({"return": {"status": "completed", "total-time": 120, "ram": {"total": 536870912, "transferred": 1024}}, "id": 4})"
          "\n");
  put("qmp_reply", "error",
      greeting + "{\"return\": {}, \"id\": 1}\n" +
          R"({"id": 2, "error": {"class": "GenericError", "desc": "this feature or command is not currently supported"}})" "\n");
  put("qmp_reply", "greeting-only", greeting);
}

void mpirun_cli() {
  auto args = [](std::vector<std::string> a) {
    std::string s;
    for (std::size_t i = 0; i < a.size(); ++i) s += (i ? std::string(1, '\0') : "") + a[i];
    return s;
  };
  put("mpirun_cli", "simple", args({"-np", "4", "./hello"}));
  put("mpirun_cli", "clones", args({"--clones", "3", "--procs-per-clone", "2", "--driver", "sandbox", "--tag-output", "./ring", "10"}));
  put("mpirun_cli", "mpmd", args({"-np", "2", "-x", "FOO=bar", "--mca", "btl", "self,vader", "./a", ":", "-np", "1", "-wdir", "/tmp", "./b"}));
  put("mpirun_cli", "timeout", args({"--timeout", "30", "--map-by", "ppr:2:node", "--output-filename", "/tmp/out", "--stdin", "all", "./x", "30"}));
  put("mpirun_cli", "help", args({"--help"}));
}

// The origin/host-agent link: both directions of a ticket's conversation, one JSON per line.
void xen_host_link() {
  namespace hl = sf::sfd::xen;
  hl::RestoreRequest r;
  r.family = "g0";
  r.group = "239.255.78.1";
  r.port = 7790;
  r.cluster = 0x5eed5eed5eed5eedull;
  r.receiver = 1;
  r.image_bytes = 134479872;
  r.clones = {{2, "g0-sf2", "52:54:00:53:46:02"}};
  r.config = json::parse(R"({"c_info":{"type":"pv","name":"g0"},"b_info":{"max_memkb":131072,"target_memkb":131072},"nics":[{"mac":"00:16:3e:00:00:01","bridge":"xenbr0"}]})");
  auto line = [](const json& j) { return j.dump() + "\n"; };
  put("xen_host_link", "origin-says", line({{"op", "auth"}, {"proof", std::string(64, 'a')}}) + line(hl::encode_restore(r)) +
                                          line({{"op", "unpause"}}) + line({{"op", "kill"}, {"id", 2}}));
  put("xen_host_link", "agent-says", line({{"sfd-xen-host", 1}, {"nonce", std::string(32, 'b')}}) + line({{"op", "ready"}}) +
                                         line({{"op", "joined"}}) + line({{"op", "received"}, {"ms", 812}}) +
                                         line({{"op", "restored"}, {"id", 2}, {"domid", 7}}) +
                                         line({{"op", "ended"}, {"id", 2}, {"end", 1}, {"value", 11}}));
  put("xen_host_link", "refused", line({{"sfd-xen-host", 1}, {"nonce", std::string(32, 'c')}}) +
                                      line({{"op", "error"}, {"message", "the origin does not hold this host's key"}}));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: sf_fuzz_seeds DIR\n";
    return 2;
  }
  out_dir = argv[1];
  control_frame();
  memtap_seeds();
  mcdist_seeds();
  vm_descriptor();
  guest_io();
  guest_control();
  qmp_reply();
  mpirun_cli();
  xen_host_link();
  return 0;
}
