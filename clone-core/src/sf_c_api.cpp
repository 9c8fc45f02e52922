// clone-core: the C API (sf.h) on top of the C++ API. Every entry point catches everything:
// no exception crosses into C. Messages of failures are kept per thread for sf_last_error().
#include "clone-core/sf.h"

#include <exception>
#include <new>
#include <string>

#include "clone-core/clone.hpp"

struct sf_ticket {
  sf::Ticket ticket;
  std::string subnet;  // storage for sf_subnet()
};

namespace {

thread_local std::string t_last_error;

int fail(const sf::Error& e) {
  t_last_error = e.message;
  return -static_cast<int>(e.code);
}

template <class F>
int guarded(F&& body) noexcept {
  try {
    return body();
  } catch (const std::bad_alloc&) {
    t_last_error = "clone-core: out of memory";
    return -SF_ERR_SYSTEM;
  } catch (const std::exception& e) {
    t_last_error = std::string("clone-core: ") + e.what();
    return -SF_ERR_SYSTEM;
  } catch (...) {
    t_last_error = "clone-core: unknown internal error";
    return -SF_ERR_SYSTEM;
  }
}

void copy_status(const sf::CloneStatus& in, sf_clone_status& out) {
  out.id = in.id;
  out.end = static_cast<int>(in.end);
  out.value = in.value;
}

}  // namespace

static_assert(static_cast<int>(sf::CloneEnd::synced) == SF_CLONE_SYNCED);
static_assert(static_cast<int>(sf::CloneEnd::lost) == SF_CLONE_LOST);
static_assert(static_cast<int>(sf::Errc::system) == SF_ERR_SYSTEM);

extern "C" {

void sf_ticket_options_init(sf_ticket_options* o) {
  if (!o) return;
  o->clones = 1;
  o->procs_per_clone = 1;
  o->min_clones = 0;
  o->driver = "auto";
  o->subnet_pool = sf::kDefaultSubnetPool;
  o->tmp_mode = SF_TMP_OVERLAY;
}

int sf_request_ticket(const sf_ticket_options* o, sf_ticket** out) {
  return guarded([&] {
    if (!o || !out) return fail(sf::make_error(sf::Errc::invalid_argument, "clone-core: sf_request_ticket: NULL argument"));
    *out = nullptr;
    sf::TicketRequest r;
    r.clones = o->clones;
    r.procs_per_clone = o->procs_per_clone;
    r.min_clones = o->min_clones;
    if (o->driver) r.driver = o->driver;
    if (o->subnet_pool) r.subnet_pool = o->subnet_pool;
    if (o->tmp_mode != SF_TMP_OVERLAY && o->tmp_mode != SF_TMP_EMPTY)
      return fail(sf::make_error(sf::Errc::invalid_argument, "clone-core: tmp_mode must be SF_TMP_OVERLAY or SF_TMP_EMPTY"));
    r.tmp_mode = o->tmp_mode == SF_TMP_EMPTY ? sf::TmpMode::empty : sf::TmpMode::overlay;
    auto ticket = sf::Ticket::request(r);
    if (!ticket) return fail(ticket.error());
    *out = new sf_ticket{std::move(*ticket), {}};
    (*out)->subnet = (*out)->ticket.subnet_cidr();
    return SF_OK;
  });
}

int sf_clone(sf_ticket* t) {
  return guarded([&] {
    if (!t) return fail(sf::make_error(sf::Errc::invalid_argument, "clone-core: sf_clone: NULL ticket"));
    auto id = t->ticket.clone();
    if (!id) return fail(id.error());
    return static_cast<int>(*id);
  });
}

int sf_sync(int status) {
  return guarded([&] {
    sf::Status st = sf::sync(status);  // in a clone, returns only when it fails
    return st ? SF_OK : fail(st.error());
  });
}

int sf_join(sf_ticket* t, sf_clone_status* statuses, size_t n) {
  return guarded([&] {
    if (!t) return fail(sf::make_error(sf::Errc::invalid_argument, "clone-core: sf_join: NULL ticket"));
    auto result = t->ticket.join();
    if (!result) return fail(result.error());
    for (size_t i = 0; i < n && i < result->size(); ++i) copy_status((*result)[i], statuses[i]);
    return SF_OK;
  });
}

int sf_kill(sf_ticket* t) {
  return guarded([&] {
    if (!t) return fail(sf::make_error(sf::Errc::invalid_argument, "clone-core: sf_kill: NULL ticket"));
    if (sf::Status st = t->ticket.kill(); !st) return fail(st.error());
    return SF_OK;
  });
}

void sf_ticket_free(sf_ticket* t) {
  guarded([&] {
    delete t;
    return 0;
  });
}

int sf_granted(const sf_ticket* t) {
  if (!t) return -SF_ERR_INVALID_ARGUMENT;
  return static_cast<int>(t->ticket.granted());
}

int sf_clone_id(void) { return static_cast<int>(sf::current_clone_id()); }

const char* sf_node_address(const sf_ticket* t, unsigned id) {
  if (!t || id > t->ticket.granted()) return nullptr;
  return t->ticket.node(id).address_text.c_str();
}

const char* sf_node_hostname(const sf_ticket* t, unsigned id) {
  if (!t || id > t->ticket.granted()) return nullptr;
  return t->ticket.node(id).hostname.c_str();
}

const char* sf_subnet(const sf_ticket* t) { return t ? t->subnet.c_str() : nullptr; }

const char* sf_interface(const sf_ticket* t) { return t ? t->ticket.interface_name().c_str() : nullptr; }

int sf_exit_fd(const sf_ticket* t) { return t ? t->ticket.exit_fd() : -SF_ERR_INVALID_ARGUMENT; }

int sf_poll_exited(sf_ticket* t, sf_clone_status* statuses, size_t n) {
  return guarded([&] {
    if (!t) return fail(sf::make_error(sf::Errc::invalid_argument, "clone-core: sf_poll_exited: NULL ticket"));
    auto ended = t->ticket.poll_exited();
    // Reported once each: anything beyond n would be lost, so callers pass n >= granted.
    size_t k = 0;
    for (; k < n && k < ended.size(); ++k) copy_status(ended[k], statuses[k]);
    return static_cast<int>(k);
  });
}

int sf_cleanup(void) {
  return guarded([&] {
    auto report = sf::cleanup_stale_clusters();
    if (!report) return fail(report.error());
    return static_cast<int>(report->clusters);
  });
}

const char* sf_strerror(int code) {
  if (code < 0) code = -code;
  if (code > SF_ERR_SYSTEM) return "unknown error";
  return sf::errc_name(static_cast<sf::Errc>(code));
}

const char* sf_last_error(void) { return t_last_error.c_str(); }

}  // extern "C"
