// clone-core unit tests: address planning, the allocator, the ticket lifecycle over the fake
// driver, the C API over the fake driver, and the status-record and state-file formats.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "clone-core/clone.hpp"
#include "qemu_driver.hpp"
#include "xen_driver.hpp"
#include "clone-core/fake_driver.hpp"
#include "clone-core/sf.h"
#include "cluster_slots.hpp"
#include "status_record.hpp"

namespace {

using namespace sf;

TEST(Layout, ParsesAndRejectsSubnets) {
  auto net = parse_ipv4_net("10.213.0.0/16");
  ASSERT_TRUE(net.ok());
  EXPECT_EQ(net->base, 0x0AD50000u);
  EXPECT_EQ(net->prefix, 16u);
  EXPECT_EQ(net->to_string(), "10.213.0.0/16");
  for (const char* bad : {"10.213.0.0", "10.213.0.1/16", "10.213.0.0/33", "300.1.1.1/8", "10.0.0.0/", "x/8"}) {
    auto r = parse_ipv4_net(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.error().code, Errc::invalid_argument);
  }
}

TEST(Layout, CarvesPoolIntoSlash24Slots) {
  EXPECT_EQ(slot_count(*parse_ipv4_net("10.213.0.0/16")), 256u);
  EXPECT_EQ(slot_count(*parse_ipv4_net("10.213.4.0/22")), 4u);
  EXPECT_EQ(slot_count(*parse_ipv4_net("10.213.4.0/24")), 1u);
  EXPECT_EQ(slot_count(*parse_ipv4_net("10.213.4.0/25")), 0u);
  EXPECT_EQ(slot_count(*parse_ipv4_net("10.0.0.0/8")), 256u);  // capped
  auto s = slot_subnet(*parse_ipv4_net("10.213.0.0/16"), 7);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->to_string(), "10.213.7.0/24");
  EXPECT_FALSE(slot_subnet(*parse_ipv4_net("10.213.4.0/22"), 4).ok());
}

TEST(Layout, DerivesAddressesHostnamesAndInterfaces) {
  auto layout = plan_layout(*parse_ipv4_net("10.213.0.0/16"), 3, 4, "node");
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->clones(), 4u);
  EXPECT_EQ(layout->subnet_cidr(), "10.213.3.0/24");
  EXPECT_EQ(layout->bridge, "sfbr3");
  EXPECT_EQ(layout->nodes[0].address_text, "10.213.3.1");
  EXPECT_EQ(layout->nodes[0].hostname, "node");
  EXPECT_EQ(layout->nodes[0].interface, "sfbr3");
  EXPECT_EQ(layout->nodes[4].address_text, "10.213.3.5");
  EXPECT_EQ(layout->nodes[4].hostname, "node-sf4");
  EXPECT_EQ(layout->nodes[4].interface, "sf0");
  EXPECT_EQ(veth_name(3, 4), "sfv3_4");
  auto full = plan_layout(*parse_ipv4_net("10.213.0.0/16"), 0, kMaxClonesPerCluster, "h");
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->nodes.back().address_text, "10.213.0.254");
  EXPECT_FALSE(plan_layout(*parse_ipv4_net("10.213.0.0/16"), 0, kMaxClonesPerCluster + 1, "h").ok());
}

TEST(Layout, TruncatesLongHostnames) {
  std::string longname(80, 'a');
  std::string h = derive_hostname(longname, 123);
  EXPECT_EQ(h.size(), 64u);
  EXPECT_EQ(h.substr(h.size() - 6), "-sf123");
}

TEST(Allocator, GrantsInFullWhenItFits) {
  LocalAllocator a({2, 24ull << 30});
  auto g = a.grant({.clones = 32, .procs_per_clone = 4});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->clones, 32u);
  EXPECT_EQ(g->limited_by, "");
}

TEST(Allocator, LimitsByCoresWithoutOversubscription) {
  LocalAllocator a({8, 24ull << 30});
  auto g = a.grant({.clones = 10, .procs_per_clone = 2, .min_clones = 1, .oversubscribe = false});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->clones, 3u);  // 8 cores / 2 per machine = 4 machines, one is the parent
  EXPECT_EQ(g->limited_by, "cores");
  auto none = a.grant({.clones = 10, .procs_per_clone = 2, .oversubscribe = false});  // all or nothing
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.error().code, Errc::insufficient_resources);
  EXPECT_NE(none.error().message.find("limited by cores"), std::string::npos);
}

TEST(Allocator, LimitsByMemoryAndAddresses) {
  LocalAllocator a({64, 100ull << 20});
  auto g = a.grant({.clones = 20, .min_clones = 2, .memory_per_clone = 16ull << 20});
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(g->clones, 6u);
  EXPECT_EQ(g->limited_by, "memory");
  LocalAllocator big({64, 1ull << 40});
  auto h = big.grant({.clones = 300, .min_clones = 1});
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->clones, 253u);
  EXPECT_EQ(h->limited_by, "addresses");
}

TEST(Allocator, RejectsInvalidRequests) {
  LocalAllocator a({2, 1ull << 30});
  EXPECT_EQ(a.grant({.clones = 0}).error().code, Errc::invalid_argument);
  EXPECT_EQ(a.grant({.clones = 1, .procs_per_clone = 0}).error().code, Errc::invalid_argument);
  EXPECT_EQ(a.grant({.clones = 2, .min_clones = 3}).error().code, Errc::invalid_argument);
}

Result<Ticket> fake_ticket(TicketRequest r, FakeScript script, std::shared_ptr<FakeCalls>* calls) {
  auto driver = std::make_unique<FakeDriver>(std::move(script));
  if (calls) *calls = driver->calls();
  return Ticket::request(r, std::move(driver), HostResources{2, 24ull << 30});
}

TEST(TicketFake, ClonesJoinsAndReportsStatuses) {
  std::shared_ptr<FakeCalls> calls;
  FakeScript script;
  script.slot = 5;
  script.outcomes = {{1, CloneEnd::synced, 0}, {2, CloneEnd::signaled, 11}, {3, CloneEnd::exited, 4}};
  auto t = fake_ticket({.clones = 3, .procs_per_clone = 2}, script, &calls);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_EQ(t->granted(), 3u);
  EXPECT_EQ(t->procs_per_clone(), 2u);
  EXPECT_EQ(t->driver_name(), "fake");
  EXPECT_EQ(t->subnet_cidr(), "10.213.5.0/24");
  EXPECT_EQ(t->node(2).address_text, "10.213.5.3");
  EXPECT_EQ(calls->last_spec.clones, 3u);
  auto id = t->clone();
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, 0u);
  EXPECT_EQ(t->id(), 0u);
  EXPECT_EQ(t->interface_name(), "sfbr5");
  EXPECT_EQ(t->sync(0).error().code, Errc::wrong_side);
  EXPECT_EQ(sf::sync(0).error().code, Errc::wrong_side);
  EXPECT_GE(t->exit_fd(), 0);
  auto early = t->poll_exited();
  EXPECT_EQ(early.size(), 3u);
  auto statuses = t->join();
  ASSERT_TRUE(statuses.ok());
  ASSERT_EQ(statuses->size(), 3u);
  EXPECT_TRUE((*statuses)[0].success());
  EXPECT_EQ((*statuses)[1].end, CloneEnd::signaled);
  EXPECT_EQ((*statuses)[1].value, 11);
  EXPECT_FALSE((*statuses)[2].success());
  EXPECT_EQ(t->join().error().code, Errc::bad_state);  // joined already
  EXPECT_EQ(calls->joins, 1u);
}

TEST(TicketFake, RefusesOutOfOrderCalls) {
  auto t = fake_ticket({.clones = 1}, {}, nullptr);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->join().error().code, Errc::bad_state);  // before clone()
  ASSERT_TRUE(t->clone().ok());
  EXPECT_EQ(t->clone().error().code, Errc::bad_state);  // twice
  EXPECT_THROW(t->node(2), std::out_of_range);
}

TEST(TicketFake, DestructorKillsWhenNotJoined) {
  std::shared_ptr<FakeCalls> calls;
  {
    auto t = fake_ticket({.clones = 2}, {}, &calls);
    ASSERT_TRUE(t.ok());
    ASSERT_TRUE(t->clone().ok());
  }
  EXPECT_EQ(calls->clones, 1u);
  EXPECT_EQ(calls->kills, 1u);
  EXPECT_EQ(calls->joins, 0u);
}

TEST(TicketFake, PropagatesDriverAndAllocatorErrors) {
  FakeScript script;
  script.fail_prepare = make_error(Errc::no_cluster_slot, "no slot");
  auto t = fake_ticket({.clones = 2}, script, nullptr);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.error().code, Errc::no_cluster_slot);
  auto big = fake_ticket({.clones = 300}, {}, nullptr);
  ASSERT_FALSE(big.ok());
  EXPECT_EQ(big.error().code, Errc::insufficient_resources);
  FakeScript failing_clone;
  failing_clone.fail_clone = make_error(Errc::clone_failed, "boom");
  auto c = fake_ticket({.clones = 1}, failing_clone, nullptr);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->clone().error().code, Errc::clone_failed);
}

TEST(TicketFake, PartialGrantHonoursMinimum) {
  auto driver = std::make_unique<FakeDriver>();
  auto t = Ticket::request({.clones = 10, .min_clones = 2, .memory_per_clone = 1ull << 30}, std::move(driver),
                           HostResources{2, 4ull << 30});
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->granted(), 4u);
  EXPECT_EQ(t->requested(), 10u);
}

TEST(TicketFake, SharedNetworkLayoutHasHostnamesOnlyAndIsASandboxMode) {
  auto t = fake_ticket({.clones = 2, .network = CloneNetwork::shared, .parent_hostname = "node7"}, {}, nullptr);
  ASSERT_TRUE(t.ok()) << t.error().message;
  EXPECT_TRUE(t->layout().shared_network);
  EXPECT_EQ(t->subnet_cidr(), "");
  EXPECT_EQ(t->node(0).hostname, "node7");
  EXPECT_EQ(t->node(2).hostname, "node7-sf2");
  EXPECT_EQ(t->node(2).address_text, "");
  EXPECT_EQ(t->node(2).interface, "");
  // The VM drivers (not probed: this test runs on a bare host) refuse before they do anything.
  for (auto* make : {&make_qemu_driver, &make_xen_driver}) {
    auto driver = make();
    auto refused = Ticket::request({.clones = 1, .network = CloneNetwork::shared}, std::move(driver),
                                   HostResources{4, 4ull << 30});
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.error().code, Errc::invalid_argument);
    EXPECT_NE(refused.error().message.find("sandbox driver mode"), std::string::npos) << refused.error().message;
  }
}

TEST(Drivers, NamesAreCheckedAndFakeProbes) {
  auto bogus = make_driver("xen9");
  ASSERT_FALSE(bogus.ok());
  EXPECT_EQ(bogus.error().code, Errc::invalid_argument);
  auto fake = make_driver("fake");
  ASSERT_TRUE(fake.ok());
  EXPECT_TRUE((*fake)->probe().available);
  FakeScript unavailable;
  unavailable.available = false;
  FakeDriver down(unavailable);
  EXPECT_FALSE(down.probe().available);
}

TEST(CApi, FakeDriverRoundTrip) {
  sf_ticket_options o;
  sf_ticket_options_init(&o);
  EXPECT_STREQ(o.driver, "auto");
  o.clones = 2;
  o.driver = "fake";
  sf_ticket* t = nullptr;
  ASSERT_EQ(sf_request_ticket(&o, &t), SF_OK) << sf_last_error();
  EXPECT_EQ(sf_granted(t), 2);
  EXPECT_STREQ(sf_node_address(t, 0), "10.213.0.1");
  EXPECT_STREQ(sf_node_address(t, 2), "10.213.0.3");
  EXPECT_EQ(sf_node_address(t, 3), nullptr);
  EXPECT_STREQ(sf_subnet(t), "10.213.0.0/24");
  EXPECT_EQ(sf_clone(t), 0);
  EXPECT_EQ(sf_clone_id(), 0);
  EXPECT_EQ(sf_sync(0), -SF_ERR_WRONG_SIDE);
  EXPECT_NE(std::string(sf_last_error()).find("outside a clone"), std::string::npos);
  sf_clone_status st[2];
  ASSERT_EQ(sf_join(t, st, 2), SF_OK);
  EXPECT_EQ(st[0].id, 1u);
  EXPECT_EQ(st[1].end, SF_CLONE_SYNCED);
  sf_ticket_free(t);
}

TEST(CApi, ErrorsAreCodesNotExceptions) {
  sf_ticket* t = nullptr;
  EXPECT_EQ(sf_request_ticket(nullptr, &t), -SF_ERR_INVALID_ARGUMENT);
  sf_ticket_options o;
  sf_ticket_options_init(&o);
  o.driver = "nonsense";
  EXPECT_EQ(sf_request_ticket(&o, &t), -SF_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(sf_last_error()).find("unknown driver"), std::string::npos);
  o.driver = "fake";
  o.subnet_pool = "not-a-subnet";
  EXPECT_EQ(sf_request_ticket(&o, &t), -SF_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(sf_clone(nullptr), -SF_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(sf_join(nullptr, nullptr, 0), -SF_ERR_INVALID_ARGUMENT);
  EXPECT_STREQ(sf_strerror(-SF_ERR_NOT_SINGLE_THREADED), "process is not single-threaded");
  sf_ticket_free(nullptr);
}

TEST(StatusRecord, RoundTripsAndRejectsCorruption) {
  auto r = status::make(status::Kind::synced, 7, -3, 0, "hello");
  auto back = status::decode(&r, sizeof r);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->clone_id, 7u);
  EXPECT_EQ(back->value, -3);
  EXPECT_STREQ(back->message, "hello");
  auto bad = r;
  bad.value = 4;
  EXPECT_FALSE(status::decode(&bad, sizeof bad).has_value());
  EXPECT_FALSE(status::decode(&r, sizeof r - 1).has_value());
  auto wrong_version = r;
  wrong_version.version = 2;
  EXPECT_FALSE(status::decode(&wrong_version, sizeof wrong_version).has_value());
}

TEST(StateFile, RoundTripsAndDetectsTampering) {
  slots::ClusterState s;
  s.slot = 9;
  s.subnet = "10.213.9.0/24";
  s.bridge = "sfbr9";
  s.parent_pid = 1234;
  s.inits = {{1, 2000, 555}, {2, 2001, 556}};
  char path[] = "/tmp/sft-state-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  {
    std::ofstream(path) << slots::format_state(s);
  }
  auto back = slots::read_state(path);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(back->inits.size(), 2u);
  EXPECT_EQ(back->inits[1].pid, 2001);
  std::string text = slots::format_state(s);
  text.replace(text.find("1234"), 4, "4321");
  {
    std::ofstream(path, std::ios::trunc) << text;
  }
  auto tampered = slots::read_state(path);
  ASSERT_FALSE(tampered.ok());
  EXPECT_NE(tampered.error().message.find("checksum"), std::string::npos);
  unlink(path);
}

TEST(Cleanup, ParsesOnlyOurNames) {
  unsigned slot = 0;
  EXPECT_TRUE(slots::parse_slot_suffix("sfbr12", "sfbr", slot));
  EXPECT_EQ(slot, 12u);
  EXPECT_TRUE(slots::parse_slot_suffix("sfv3_14", "sfv", slot));
  EXPECT_EQ(slot, 3u);
  EXPECT_FALSE(slots::parse_slot_suffix("sfb25563br", "sfbr", slot));
  EXPECT_FALSE(slots::parse_slot_suffix("sfvx", "sfv", slot));
  EXPECT_FALSE(slots::parse_slot_suffix("sfbr999", "sfbr", slot));
}

}  // namespace
