// memtap: the command-line tool. create/zeromap/inspect work on frozen images; serve runs the
// page server; mount exports an image as MOUNTPOINT/image through FUSE; touch fills a
// userfaultfd region (a client for tests and benchmarks); fetch copies a whole image;
// stats prints a running server's counters. See docs/memtap.md.
#include <fcntl.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "memtap/fuse_export.hpp"
#include "memtap/image.hpp"
#include "memtap/local_page_source.hpp"
#include "memtap/mcdist_page_source.hpp"
#include "memtap/page_server.hpp"
#include "memtap/tcp_page_source.hpp"
#include "memtap/uffd_region.hpp"

namespace po = boost::program_options;
using namespace sf::memtap;

namespace {

constexpr const char* kUsage =
    "usage: memtap COMMAND [options]\n"
    "  create IMAGE [--page-size N] [--token-file F] [--no-zero-map]   freeze IMAGE: write IMAGE.memtap\n"
    "  zeromap IMAGE                                 rebuild the no-fetch (zero) map of IMAGE.memtap\n"
    "  inspect IMAGE|METADATA [--map]                print the header and maps\n"
    "  serve IMAGE --listen ADDR:PORT                serve IMAGE to holders of its token\n"
    "  serve ... --mcast-iface IF --mcast-key-file K [--push]   also serve by multicast (mcdist)\n"
    "  mount ADDR:PORT MOUNTPOINT --token-file F     show the image as MOUNTPOINT/image\n"
    "  touch ADDR:PORT --token-file F                fill a userfaultfd region by touching every page\n"
    "  fetch ADDR:PORT OUT --token-file F            copy the whole image to OUT\n"
    "  stats ADDR:PORT --token-file F                print the server's counters (JSON)\n"
    "Run 'memtap COMMAND --help' for a command's options. See docs/memtap.md.\n";

int fail(const std::string& what) {
  spdlog::error("{}", what);
  return 1;
}

struct Parsed {
  po::variables_map vm;
  bool help = false;
};

// Parses argv[1..] of a subcommand; prints help on --help.
Result<Parsed> parse(int argc, char** argv, po::options_description& desc, const po::positional_options_description& pos,
                     const char* synopsis) {
  desc.add_options()("help,h", "this help")("log-level", po::value<std::string>()->default_value("info"),
                                            "trace, debug, info, warn, error");
  Parsed p;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).positional(pos).run(), p.vm);
    if (p.vm.count("help")) {
      std::cout << "usage: memtap " << synopsis << "\n" << desc;
      p.help = true;
      return p;
    }
    po::notify(p.vm);
  } catch (const po::error& e) {
    return make_error(ErrorCode::kInvalidArgument, std::string(e.what()) + " (see memtap " +
                                                       std::string(synopsis).substr(0, std::string(synopsis).find(' ')) +
                                                       " --help)");
  }
  spdlog::set_level(spdlog::level::from_str(p.vm["log-level"].as<std::string>()));
  return p;
}

Result<OwnerToken> token_from(const po::variables_map& vm) {
  if (!vm.count("token-file")) return make_error(ErrorCode::kInvalidArgument, "--token-file F is required (the image's owner token)");
  return read_token_file(vm["token-file"].as<std::string>());
}

Result<std::shared_ptr<TcpPageSource>> connect_from(const po::variables_map& vm) {
  auto ep = parse_endpoint(vm["server"].as<std::string>());
  if (!ep) return ep.error();
  auto tok = token_from(vm);
  if (!tok) return tok.error();
  TcpSourceOptions o;
  o.timeout = std::chrono::milliseconds(vm["timeout-ms"].as<unsigned>());
  o.spin = std::chrono::microseconds(vm["spin-us"].as<unsigned>());
  return TcpPageSource::connect(*ep, *tok, o);
}

void add_client_options(po::options_description& d) {
  d.add_options()("server", po::value<std::string>()->required(), "ADDR:PORT of the page server")(
      "token-file", po::value<std::string>(), "file with the owner token (64 hex digits)")(
      "timeout-ms", po::value<unsigned>()->default_value(5000), "deadline per connect and per fetch")(
      "spin-us", po::value<unsigned>()->default_value(0), "poll for a reply this long before sleeping (0: never)");
}

// Multicast (mcdist) options, shared by serve, mount and touch.
void add_mcast_options(po::options_description& d, bool server) {
  d.add_options()("mcast-iface", po::value<std::string>(), "multicast through mcdist on this interface (the cluster link)")(
      "mcast-group", po::value<std::string>()->default_value("239.255.77.1"), "IPv4 multicast group")(
      "mcast-port", po::value<std::uint16_t>()->default_value(7700), "group port")(
      "mcast-key-file", po::value<std::string>(), "file with the 64-hex-digit cluster key (required with --mcast-iface)")(
      "mcast-cluster", po::value<std::uint64_t>(), "cluster id (default: the image id)");
  if (server) {
    d.add_options()("push", "multicast the whole image in the background (demand requests first)")(
        "mcast-rate-mbit", po::value<std::uint64_t>()->default_value(900), "multicast rate limit, Mbit/s");
  } else {
    d.add_options()("mcast-id", po::value<std::uint32_t>()->default_value(0), "receiver id reported to the server")(
        "mcast-server-timeout-ms", po::value<unsigned>()->default_value(2000), "the server is dead after this much silence");
  }
}

MulticastOptions mcast_from(const po::variables_map& vm) {
  MulticastOptions m;
  m.interface = vm["mcast-iface"].as<std::string>();
  m.group = vm["mcast-group"].as<std::string>();
  m.port = vm["mcast-port"].as<std::uint16_t>();
  if (vm.count("mcast-key-file")) m.key_file = vm["mcast-key-file"].as<std::string>();
  if (vm.count("mcast-cluster")) m.cluster_id = vm["mcast-cluster"].as<std::uint64_t>();
  if (vm.count("push")) m.push = true;
  if (vm.count("mcast-rate-mbit")) m.max_rate_bps = vm["mcast-rate-mbit"].as<std::uint64_t>() * 1'000'000;
  if (vm.count("mcast-id")) m.receiver_id = vm["mcast-id"].as<std::uint32_t>();
  if (vm.count("mcast-server-timeout-ms")) m.server_timeout = std::chrono::milliseconds(vm["mcast-server-timeout-ms"].as<unsigned>());
  if (vm.count("timeout-ms")) m.timeout = std::chrono::milliseconds(vm["timeout-ms"].as<unsigned>());
  return m;
}

// The client's page source: TCP, or (with --mcast-iface) mcdist, with the metadata from the
// TCP HELLO (mcdist carries no no-fetch map or checksums). `mcast` is set in the second case.
Result<std::shared_ptr<PageSource>> source_from(const po::variables_map& vm, std::shared_ptr<McdistPageSource>* mcast) {
  auto tcp = connect_from(vm);
  if (!tcp) return tcp.error();
  if (!vm.count("mcast-iface")) return std::shared_ptr<PageSource>(*tcp);
  auto m = McdistPageSource::start((*tcp)->metadata(), mcast_from(vm));
  if (!m) return m.error();
  if (mcast) *mcast = *m;
  return std::shared_ptr<PageSource>(*m);
}

int cmd_create(int argc, char** argv) {
  po::options_description d("memtap create");
  d.add_options()("image", po::value<std::string>()->required(), "the raw image file")(
      "page-size", po::value<std::uint32_t>()->default_value(4096), "bytes per page")(
      "token-file", po::value<std::string>(), "read the token from F, or write a new one there (default IMAGE.token)")(
      "metadata", po::value<std::string>(), "metadata path (default IMAGE.memtap)")(
      "no-zero-map", "do not mark all-zero pages no-fetch");
  po::positional_options_description pos;
  pos.add("image", 1);
  auto p = parse(argc, argv, d, pos, "create IMAGE [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  const auto& vm = p->vm;
  std::string image = vm["image"].as<std::string>();
  std::string token_path = vm.count("token-file") ? vm["token-file"].as<std::string>() : image + ".token";
  OwnerToken token{};
  if (::access(token_path.c_str(), F_OK) == 0) {
    auto t = read_token_file(token_path);
    if (!t) return fail(t.error().message);
    token = *t;
  } else {
    auto t = random_token();
    if (!t) return fail(t.error().message);
    token = *t;
    if (auto s = write_token_file(token_path, token); !s) return fail(s.error().message);
  }
  auto md = ImageMetadata::build(image, vm["page-size"].as<std::uint32_t>(), token, !vm.count("no-zero-map"));
  if (!md) return fail(md.error().message);
  std::string out = vm.count("metadata") ? vm["metadata"].as<std::string>() : metadata_path_for(image);
  if (auto s = md->save(out); !s) return fail(s.error().message);
  std::printf("memtap: froze %s: %llu pages of %u bytes, %llu no-fetch (%.1f%%); metadata %s, token %s (%s)\n",
              image.c_str(), static_cast<unsigned long long>(md->page_count()), md->page_size(),
              static_cast<unsigned long long>(md->no_fetch_count()),
              100.0 * static_cast<double>(md->no_fetch_count()) / static_cast<double>(md->page_count()), out.c_str(),
              token_path.c_str(), token_fingerprint(token).c_str());
  return 0;
}

int cmd_zeromap(int argc, char** argv) {
  po::options_description d("memtap zeromap");
  d.add_options()("image", po::value<std::string>()->required(), "the raw image file")(
      "metadata", po::value<std::string>(), "metadata path (default IMAGE.memtap)");
  po::positional_options_description pos;
  pos.add("image", 1);
  auto p = parse(argc, argv, d, pos, "zeromap IMAGE [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  std::string image = p->vm["image"].as<std::string>();
  std::string mdp = p->vm.count("metadata") ? p->vm["metadata"].as<std::string>() : metadata_path_for(image);
  auto md = ImageMetadata::load(mdp);
  if (!md) return fail(md.error().message);
  if (auto s = md->rebuild_zero_map(image); !s) return fail(s.error().message);
  if (auto s = md->save(mdp); !s) return fail(s.error().message);
  std::printf("memtap: zero map of %s: %llu of %llu pages need no fetch\n", image.c_str(),
              static_cast<unsigned long long>(md->no_fetch_count()), static_cast<unsigned long long>(md->page_count()));
  return 0;
}

int cmd_inspect(int argc, char** argv) {
  po::options_description d("memtap inspect");
  d.add_options()("file", po::value<std::string>()->required(), "IMAGE or its metadata file")(
      "map", "list the no-fetch page ranges")("checksums", "list every page checksum")("json", "print JSON");
  po::positional_options_description pos;
  pos.add("file", 1);
  auto p = parse(argc, argv, d, pos, "inspect IMAGE|METADATA [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  std::string f = p->vm["file"].as<std::string>();
  std::string mdp = f;
  {
    char magic[8] = {};
    std::ifstream in(f, std::ios::binary);
    in.read(magic, 8);
    if (std::memcmp(magic, "SFMEMTAP", 8) != 0) mdp = metadata_path_for(f);
  }
  auto md = ImageMetadata::load(mdp);
  if (!md) return fail(md.error().message);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;  // [first, last]
  for (std::uint64_t i = 0; i < md->page_count(); ++i) {
    if (!md->no_fetch(i)) continue;
    if (!runs.empty() && runs.back().second + 1 == i) {
      runs.back().second = i;
    } else {
      runs.emplace_back(i, i);
    }
  }
  char idbuf[17], hcbuf[17];
  std::snprintf(idbuf, sizeof idbuf, "%016llx", static_cast<unsigned long long>(md->image_id()));
  std::snprintf(hcbuf, sizeof hcbuf, "%016llx", static_cast<unsigned long long>(md->header_checksum()));
  if (p->vm.count("json")) {
    nlohmann::json j;
    j["metadata"] = mdp;
    j["version"] = ImageMetadata::kVersion;
    j["page_size"] = md->page_size();
    j["image_length"] = md->image_length();
    j["page_count"] = md->page_count();
    j["no_fetch_pages"] = md->no_fetch_count();
    j["no_fetch_runs"] = runs.size();
    j["image_id"] = idbuf;
    j["header_checksum"] = hcbuf;
    j["token"] = md->has_token() ? token_fingerprint(md->token()) : "none";
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("metadata:        %s\n", mdp.c_str());
  std::printf("format version:  %u\n", ImageMetadata::kVersion);
  std::printf("page size:       %u\n", md->page_size());
  std::printf("image length:    %llu bytes\n", static_cast<unsigned long long>(md->image_length()));
  std::printf("pages:           %llu\n", static_cast<unsigned long long>(md->page_count()));
  std::printf("no-fetch pages:  %llu (%.2f%%) in %zu runs\n", static_cast<unsigned long long>(md->no_fetch_count()),
              100.0 * static_cast<double>(md->no_fetch_count()) / static_cast<double>(md->page_count()), runs.size());
  std::printf("pages to fetch:  %llu\n", static_cast<unsigned long long>(md->page_count() - md->no_fetch_count()));
  std::printf("image id:        %s\n", idbuf);
  std::printf("header checksum: %s\n", hcbuf);
  std::printf("owner token:     %s\n", md->has_token() ? ("fingerprint " + token_fingerprint(md->token())).c_str() : "none");
  if (p->vm.count("map")) {
    std::printf("no-fetch map (first-last page):\n");
    for (auto [a, b] : runs) std::printf("  %llu-%llu\n", static_cast<unsigned long long>(a), static_cast<unsigned long long>(b));
  }
  if (p->vm.count("checksums")) {
    for (std::uint64_t i = 0; i < md->page_count(); ++i) {
      std::printf("  page %llu xxh3 %016llx%s\n", static_cast<unsigned long long>(i),
                  static_cast<unsigned long long>(md->checksum(i)), md->no_fetch(i) ? " no-fetch" : "");
    }
  }
  return 0;
}

Status write_file_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << text;
    if (!out) return make_error(ErrorCode::kIo, "cannot write " + tmp);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return make_error(ErrorCode::kIo, "cannot rename " + tmp);
  return ok_status();
}

int cmd_serve(int argc, char** argv) {
  po::options_description d("memtap serve");
  d.add_options()("image", po::value<std::string>()->required(), "the frozen image")(
      "listen", po::value<std::string>()->required(), "ADDR:PORT to bind (an IP address of this host; port 0: any)")(
      "metadata", po::value<std::string>(), "metadata path (default IMAGE.memtap)")(
      "threads", po::value<unsigned>()->default_value(1), "I/O threads")(
      "spin-us", po::value<unsigned>()->default_value(0), "busy-poll this long after each request (0: never)")(
      "max-batch-pages", po::value<std::uint32_t>()->default_value(1024), "largest FETCH")(
      "port-file", po::value<std::string>(), "write the bound port to this file once listening")(
      "verify", "check every page against its checksum before serving");
  add_mcast_options(d, true);
  po::positional_options_description pos;
  pos.add("image", 1);
  auto p = parse(argc, argv, d, pos, "serve IMAGE --listen ADDR:PORT [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  const auto& vm = p->vm;
  auto ep = parse_endpoint(vm["listen"].as<std::string>());
  if (!ep) return fail(ep.error().message);
  auto img = FrozenImage::open(vm["image"].as<std::string>(), vm.count("metadata") ? vm["metadata"].as<std::string>() : "");
  if (!img) return fail("memtap serve: " + img.error().message);
  auto image = std::make_shared<const FrozenImage>(std::move(img).value());
  if (vm.count("verify")) {
    for (std::uint64_t i = 0; i < image->metadata().page_count(); ++i) {
      if (!image->metadata().verify_page(i, image->page(i))) {
        return fail("memtap serve: page " + std::to_string(i) + " of " + image->path() +
                    " does not match its checksum: the image changed after memtap create");
      }
    }
  }
  PageServerOptions o;
  o.threads = vm["threads"].as<unsigned>();
  o.spin_us = vm["spin-us"].as<unsigned>();
  o.max_batch_pages = vm["max-batch-pages"].as<std::uint32_t>();
  auto server = PageServer::create(image, *ep, o);
  if (!server) return fail("memtap serve: " + server.error().message);
  std::unique_ptr<MulticastPageServer> mcast;
  if (vm.count("mcast-iface")) {
    auto m = MulticastPageServer::start(image, mcast_from(vm));
    if (!m) return fail("memtap serve: " + m.error().message);
    mcast = std::move(m).value();
    spdlog::info("memtap serve: multicasting through mcdist on {} group {}:{} (requests on port {}){}",
                 vm["mcast-iface"].as<std::string>(), vm["mcast-group"].as<std::string>(),
                 vm["mcast-port"].as<std::uint16_t>(), mcast->request_port(), vm.count("push") ? ", pushing the image" : "");
  }
  Endpoint bound = *ep;
  bound.port = (*server)->port();
  spdlog::info("memtap serve: serving {} ({} pages, {} no-fetch) on {}", image->path(), image->metadata().page_count(),
               image->metadata().no_fetch_count(), bound.to_string());
  if (vm.count("port-file")) {
    if (auto s = write_file_atomic(vm["port-file"].as<std::string>(), std::to_string(bound.port) + "\n"); !s) {
      return fail(s.error().message);
    }
  }
  (*server)->run(true);
  spdlog::info("memtap serve: stopped; counters {}", (*server)->stats_json());
  if (mcast) {
    mcast->stop();
    spdlog::info("memtap serve: multicast counters {}", mcast->stats_json());
  }
  return 0;
}

int cmd_mount(int argc, char** argv) {
  po::options_description d("memtap mount");
  add_client_options(d);
  d.add_options()("mountpoint", po::value<std::string>()->required(), "an existing empty directory")(
      "readahead-pages", po::value<std::uint32_t>()->default_value(8), "kernel read-ahead for the file, in 4 KiB pages")(
      "no-zero-map", "fetch no-fetch pages too")("threads", po::value<unsigned>()->default_value(8), "FUSE threads")(
      "no-auto-unmount", "do not ask fusermount3 to unmount when this process dies")("debug", "FUSE debug output");
  add_mcast_options(d, false);
  po::positional_options_description pos;
  pos.add("server", 1).add("mountpoint", 1);
  auto p = parse(argc, argv, d, pos, "mount ADDR:PORT MOUNTPOINT --token-file F [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  const auto& vm = p->vm;
  auto src = source_from(vm, nullptr);
  if (!src) return fail("memtap mount: " + src.error().message);
  FuseExportOptions o;
  o.readahead_pages = vm["readahead-pages"].as<std::uint32_t>();
  o.use_no_fetch_map = !vm.count("no-zero-map");
  o.max_threads = vm["threads"].as<unsigned>();
  o.auto_unmount = !vm.count("no-auto-unmount");
  o.debug = vm.count("debug") > 0;
  if (auto s = run_fuse_export(*src, vm["mountpoint"].as<std::string>(), o); !s) return fail("memtap mount: " + s.error().message);
  return 0;
}

int cmd_touch(int argc, char** argv) {
  po::options_description d("memtap touch");
  add_client_options(d);
  d.add_options()("prefetch", po::value<std::uint32_t>()->default_value(8), "prefetch window in pages")(
      "handlers", po::value<unsigned>()->default_value(2), "fault-handler threads")(
      "threads", po::value<unsigned>()->default_value(1), "threads that touch pages")(
      "order", po::value<std::string>()->default_value("seq"), "seq or random")(
      "compare", po::value<std::string>(), "compare the filled region with this image file")(
      "no-zero-map", "fetch no-fetch pages too")(
      "pause-after", po::value<std::uint64_t>(), "after touching this many pages, wait for a line on stdin");
  add_mcast_options(d, false);
  po::positional_options_description pos;
  pos.add("server", 1);
  auto p = parse(argc, argv, d, pos, "touch ADDR:PORT --token-file F [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  const auto& vm = p->vm;
  std::shared_ptr<McdistPageSource> mcast;
  auto src = source_from(vm, &mcast);
  if (!src) return fail("memtap touch: " + src.error().message);
  UffdRegionOptions o;
  o.prefetch_pages = vm["prefetch"].as<std::uint32_t>();
  o.handler_threads = vm["handlers"].as<unsigned>();
  o.use_no_fetch_map = !vm.count("no-zero-map");
  auto region = UffdRegion::create(*src, o);
  if (!region) return fail("memtap touch: " + region.error().message);
  const std::size_t ps = (*src)->metadata().page_size();
  const std::uint64_t pages = (*src)->metadata().page_count();
  std::vector<std::uint64_t> order(pages);
  for (std::uint64_t i = 0; i < pages; ++i) order[i] = i;
  if (vm["order"].as<std::string>() == "random") std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  volatile std::uint64_t sink = 0;
  std::byte* base = (*region)->data();
  const unsigned nthreads = std::max(1u, vm["threads"].as<unsigned>());
  const std::uint64_t pause_after = vm.count("pause-after") ? vm["pause-after"].as<std::uint64_t>() : pages + 1;
  auto t0 = std::chrono::steady_clock::now();
  auto touch_range = [&](std::uint64_t from, std::uint64_t to) {
    std::vector<std::thread> ts;
    for (unsigned t = 0; t < nthreads; ++t) {
      ts.emplace_back([&, t] {
        std::uint64_t acc = 0;
        for (std::uint64_t i = from + t; i < to; i += nthreads) acc += static_cast<std::uint8_t>(base[order[i] * ps]);
        sink = sink + acc;
      });
    }
    for (auto& t : ts) t.join();
  };
  touch_range(0, std::min(pause_after, pages));
  if (pause_after < pages) {
    std::printf("paused after %llu pages\n", static_cast<unsigned long long>(pause_after));
    std::fflush(stdout);
    std::string line;
    std::getline(std::cin, line);
    touch_range(pause_after, pages);
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int rc = 0;
  if (vm.count("compare")) {
    std::ifstream in(vm["compare"].as<std::string>(), std::ios::binary);
    std::vector<char> buf(1 << 20);
    std::uint64_t off = 0;
    const std::uint64_t len = (*src)->metadata().image_length();
    while (off < len && in) {
      in.read(buf.data(), static_cast<std::streamsize>(std::min<std::uint64_t>(buf.size(), len - off)));
      auto n = static_cast<std::size_t>(in.gcount());
      if (n == 0) break;
      if (std::memcmp(buf.data(), base + off, n) != 0) {
        std::fprintf(stderr, "memtap touch: region differs from the image in [%llu, %llu)\n",
                     static_cast<unsigned long long>(off), static_cast<unsigned long long>(off + n));
        rc = 2;
        break;
      }
      off += n;
    }
    if (rc == 0 && off != len) rc = 2;
  }
  nlohmann::json j = nlohmann::json::parse((*region)->counters().to_json());
  j["seconds"] = secs;
  if (mcast) j["mcdist"] = nlohmann::json::parse(mcast->stats_json());
  j["equal"] = vm.count("compare") ? nlohmann::json(rc == 0) : nlohmann::json(nullptr);
  std::cout << j.dump() << "\n";
  return rc;
}

int cmd_fetch(int argc, char** argv) {
  po::options_description d("memtap fetch");
  add_client_options(d);
  d.add_options()("out", po::value<std::string>()->required(), "output file")(
      "batch-pages", po::value<std::uint32_t>()->default_value(256), "pages per request")(
      "no-zero-map", "fetch no-fetch pages too (otherwise they are left as holes)");
  po::positional_options_description pos;
  pos.add("server", 1).add("out", 1);
  auto p = parse(argc, argv, d, pos, "fetch ADDR:PORT OUT --token-file F [options]");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  const auto& vm = p->vm;
  auto t0 = std::chrono::steady_clock::now();
  auto src = connect_from(vm);
  if (!src) return fail("memtap fetch: " + src.error().message);
  const auto& md = (*src)->metadata();
  int fd = ::open(vm["out"].as<std::string>().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("memtap fetch: cannot create " + vm["out"].as<std::string>() + ": " + std::strerror(errno));
  if (::ftruncate(fd, static_cast<off_t>(md.image_length())) != 0) return fail("memtap fetch: ftruncate failed");
  const bool skip = !vm.count("no-zero-map");
  const std::uint32_t batch = std::min(vm["batch-pages"].as<std::uint32_t>(), (*src)->max_batch_pages());
  std::vector<std::byte> buf(static_cast<std::size_t>(batch) * md.page_size());
  std::uint64_t fetched = 0;
  for (std::uint64_t p0 = 0; p0 < md.page_count();) {
    std::vector<PageRange> ranges;
    std::uint32_t n = 0;
    std::uint64_t q = p0;
    for (; q < md.page_count() && n < batch; ++q) {
      if (skip && md.no_fetch(q)) continue;
      if (!ranges.empty() && ranges.back().first + ranges.back().count == q) {
        ++ranges.back().count;
      } else {
        ranges.push_back({q, 1});
      }
      ++n;
    }
    p0 = q;
    if (n == 0) continue;
    auto st = (*src)->fetch(ranges, {buf.data(), static_cast<std::size_t>(n) * md.page_size()});
    if (!st) return fail("memtap fetch: " + st.error().message);
    std::size_t off = 0;
    for (const auto& r : ranges) {
      for (std::uint32_t i = 0; i < r.count; ++i, off += md.page_size()) {
        std::uint64_t page = r.first + i;
        if (!md.verify_page(page, {buf.data() + off, md.page_size()})) return fail("memtap fetch: page checksum mismatch");
        std::size_t len = md.bytes_in_page(page);
        if (::pwrite(fd, buf.data() + off, len, static_cast<off_t>(page * md.page_size())) != static_cast<ssize_t>(len)) {
          return fail("memtap fetch: write failed");
        }
      }
    }
    fetched += n;
  }
  ::close(fd);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json j;
  j["pages_fetched"] = fetched;
  j["seconds"] = secs;
  std::cout << j.dump() << "\n";
  return 0;
}

int cmd_stats(int argc, char** argv) {
  po::options_description d("memtap stats");
  add_client_options(d);
  po::positional_options_description pos;
  pos.add("server", 1);
  auto p = parse(argc, argv, d, pos, "stats ADDR:PORT --token-file F");
  if (!p) return fail(p.error().message);
  if (p->help) return 0;
  auto src = connect_from(p->vm);
  if (!src) return fail("memtap stats: " + src.error().message);
  auto s = (*src)->server_stats();
  if (!s) return fail("memtap stats: " + s.error().message);
  std::cout << *s << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  auto logger = spdlog::stderr_color_mt("memtap");
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("[%H:%M:%S.%e] [%l] %v");
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  std::string cmd = argv[1];
  int sub_argc = argc - 1;
  char** sub_argv = argv + 1;
  if (cmd == "create") return cmd_create(sub_argc, sub_argv);
  if (cmd == "zeromap") return cmd_zeromap(sub_argc, sub_argv);
  if (cmd == "inspect") return cmd_inspect(sub_argc, sub_argv);
  if (cmd == "serve") return cmd_serve(sub_argc, sub_argv);
  if (cmd == "mount") return cmd_mount(sub_argc, sub_argv);
  if (cmd == "touch") return cmd_touch(sub_argc, sub_argv);
  if (cmd == "fetch") return cmd_fetch(sub_argc, sub_argv);
  if (cmd == "stats") return cmd_stats(sub_argc, sub_argv);
  std::fprintf(stderr, "memtap: unknown command '%s'\n%s", cmd.c_str(), kUsage);
  return 2;
}
