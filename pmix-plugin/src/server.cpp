// OpenPMIx server host module: registration of the job and the upcall adapters.
// Facts this relies on are in docs/architecture.md (keys Open MPI 4.1 reads, the
// fence blob being a concatenation, session directory clean-up).
#include "pmix-plugin/server.hpp"

#include <hwloc.h>
#include <pmix.h>
#include <pmix_server.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstring>
#include <future>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace sf::pmix {

static_assert(kSuccess == PMIX_SUCCESS && kErrNotFound == PMIX_ERR_NOT_FOUND &&
              kErrDuplicateKey == PMIX_ERR_DUPLICATE_KEY && kRankWildcard == PMIX_RANK_WILDCARD,
              "server.hpp's copies of PMIx's constants");
namespace {

PmixHost* g_host = nullptr;  // the PMIx server is process-wide, so is its host

std::string text(pmix_status_t rc) { return PMIx_Error_string(rc); }

// A failing PMIx call while building or registering the job, thrown by check(). Internal:
// start(), register_job() and prepare_rank() catch it and return it as an Error.
class PmixError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

Error failure(const PmixError& e) { return Error{Errc::general, e.what()}; }

void check(pmix_status_t rc, const char* step) {
  if (rc != PMIX_SUCCESS && rc != PMIX_OPERATION_SUCCEEDED)
    throw PmixError(std::string("pmix: ") + step + " failed: " + text(rc));
}

ProcId to_proc(const pmix_proc_t* p) { return ProcId{p->nspace, p->rank}; }

// --- builders for info arrays ---------------------------------------------------------
class InfoList {
 public:
  InfoList() : list_(PMIx_Info_list_start()) {}
  ~InfoList() { PMIx_Info_list_release(list_); }
  InfoList(const InfoList&) = delete;
  InfoList& operator=(const InfoList&) = delete;

  void add_u32(const char* key, uint32_t v) { add(key, &v, PMIX_UINT32); }
  void add_u16(const char* key, uint16_t v) { add(key, &v, PMIX_UINT16); }
  void add_rank(const char* key, pmix_rank_t v) { add(key, &v, PMIX_PROC_RANK); }
  void add_i32(const char* key, int32_t v) { add(key, &v, PMIX_INT32); }
  void add_str(const char* key, const std::string& v) { add(key, v.c_str(), PMIX_STRING); }
  void add_bool(const char* key, bool v) { add(key, &v, PMIX_BOOL); }
  void add_regex(const char* key, const char* regex) { add(key, regex, PMIX_REGEX); }
  // Moves another list in as a nested array (PMIX_PROC_DATA, PMIX_APP_INFO, ...).
  void add_array(const char* key, InfoList& inner) {
    pmix_data_array_t darray;
    check(PMIx_Info_list_convert(inner.list_, &darray), "PMIx_Info_list_convert");
    add(key, &darray, PMIX_DATA_ARRAY);
    PMIx_Data_array_destruct(&darray);
  }
  // The flat info array; the caller frees it with PMIx_Data_array_destruct.
  pmix_data_array_t convert() {
    pmix_data_array_t darray;
    check(PMIx_Info_list_convert(list_, &darray), "PMIx_Info_list_convert");
    return darray;
  }

 private:
  void add(const char* key, const void* value, pmix_data_type_t type) {
    check(PMIx_Info_list_add(list_, key, value, type), key);
  }
  void* list_;
};

// --- upcalls ----------------------------------------------------------------------------
// Each copies what it needs, calls the host, and returns at once. Each runs inside guarded():
// no exception may cross into OpenPMIx's C code. A body that throws has not handed its
// callback on (the host's methods take a completion or throw, never both), so the upcall
// returns an error status instead, and PMIx then answers the client itself: every request
// is answered either way.
template <typename Body>
pmix_status_t guarded(const char* upcall, const pmix_proc_t* proc, Body&& body) noexcept {
  if (g_host == nullptr) return PMIX_ERR_INIT;  // after a server that had to be abandoned
  try {
    return body();
  } catch (const std::exception& e) {
    spdlog::error("pmix: {} from rank {}: {}", upcall, proc ? proc->rank : kRankWildcard, e.what());
  } catch (...) {
    spdlog::error("pmix: {} from rank {}: an unknown exception", upcall, proc ? proc->rank : kRankWildcard);
  }
  return PMIX_ERROR;
}

pmix_status_t on_client_connected(const pmix_proc_t* proc, void*, pmix_op_cbfunc_t cbfunc,
                                  void* cbdata) {
  return guarded("client_connected", proc, [&]() -> pmix_status_t {
    g_host->client_connected(proc->rank);
    if (cbfunc) cbfunc(PMIX_SUCCESS, cbdata);
    return PMIX_SUCCESS;
  });
}

pmix_status_t on_client_finalized(const pmix_proc_t* proc, void*, pmix_op_cbfunc_t cbfunc,
                                  void* cbdata) {
  return guarded("client_finalized", proc, [&]() -> pmix_status_t {
    g_host->client_finalized(proc->rank);
    if (cbfunc) cbfunc(PMIX_SUCCESS, cbdata);
    return PMIX_SUCCESS;
  });
}

pmix_status_t on_abort(const pmix_proc_t* proc, void*, int status, const char msg[],
                       pmix_proc_t[], size_t, pmix_op_cbfunc_t cbfunc, void* cbdata) {
  return guarded("abort", proc, [&]() -> pmix_status_t {
    g_host->abort(proc->rank, status, msg ? msg : "", [cbfunc, cbdata](int rc) {
      if (cbfunc) cbfunc(rc, cbdata);
    });
    return PMIX_SUCCESS;
  });
}

void release_string(void* cbdata) { delete static_cast<std::string*>(cbdata); }

// Completes a modex-style request with data we own until PMIx releases it.
DataDone modex_completion(pmix_modex_cbfunc_t cbfunc, void* cbdata) {
  return [cbfunc, cbdata](int rc, std::string data) {
    if (!cbfunc) return;
    auto* owned = new std::string(std::move(data));
    cbfunc(rc, owned->data(), owned->size(), cbdata, release_string, owned);
  };
}

pmix_status_t on_fence(const pmix_proc_t procs[], size_t nprocs, const pmix_info_t info[],
                       size_t ninfo, char* data, size_t ndata, pmix_modex_cbfunc_t cbfunc,
                       void* cbdata) {
  return guarded("fence", nprocs ? &procs[0] : nullptr, [&]() -> pmix_status_t {
    FenceRequest req;
    for (size_t i = 0; i < nprocs; ++i) req.participants.push_back(to_proc(&procs[i]));
    for (size_t i = 0; i < ninfo; ++i) {
      if (PMIX_CHECK_KEY(&info[i], PMIX_COLLECT_DATA))
        req.collect_data = PMIX_INFO_TRUE(&info[i]);
      else if (PMIX_CHECK_KEY(&info[i], PMIX_LOCAL_COLLECTIVE_STATUS) &&
               info[i].value.type == PMIX_STATUS)
        req.local_status = info[i].value.data.status;
    }
    // PMIx versions disagree on who owns `data`: copy it.
    if (data && ndata) req.data.assign(data, ndata);
    g_host->fence(std::move(req), modex_completion(cbfunc, cbdata));
    return PMIX_SUCCESS;
  });
}

pmix_status_t on_direct_modex(const pmix_proc_t* proc, const pmix_info_t[], size_t,
                              pmix_modex_cbfunc_t cbfunc, void* cbdata) {
  return guarded("direct_modex", proc, [&]() -> pmix_status_t {
    g_host->direct_modex(proc->rank, modex_completion(cbfunc, cbdata));
    return PMIX_SUCCESS;
  });
}

std::string pack_value(const pmix_value_t* value) {
  pmix_data_buffer_t buf;
  PMIX_DATA_BUFFER_CONSTRUCT(&buf);
  std::string out;
  if (PMIx_Data_pack(nullptr, &buf, const_cast<pmix_value_t*>(value), 1, PMIX_VALUE) ==
      PMIX_SUCCESS) {
    pmix_byte_object_t bo;
    PMIX_BYTE_OBJECT_CONSTRUCT(&bo);
    if (PMIx_Data_unload(&buf, &bo) == PMIX_SUCCESS && bo.bytes) out.assign(bo.bytes, bo.size);
    PMIX_BYTE_OBJECT_DESTRUCT(&bo);
  }
  PMIX_DATA_BUFFER_DESTRUCT(&buf);
  return out;
}

// Unpacks a value packed by pack_value into *dest; false if malformed.
bool unpack_value(const std::string& packed, pmix_value_t* dest) {
  pmix_data_buffer_t buf;
  PMIX_DATA_BUFFER_CONSTRUCT(&buf);
  pmix_byte_object_t bo;
  bo.bytes = static_cast<char*>(malloc(packed.size() ? packed.size() : 1));
  bo.size = packed.size();
  memcpy(bo.bytes, packed.data(), packed.size());
  bool ok = PMIx_Data_load(&buf, &bo) == PMIX_SUCCESS;  // takes over bo.bytes
  if (ok) {
    int32_t n = 1;
    ok = PMIx_Data_unpack(nullptr, &buf, dest, &n, PMIX_VALUE) == PMIX_SUCCESS && n == 1;
  } else {
    free(bo.bytes);
  }
  PMIX_DATA_BUFFER_DESTRUCT(&buf);
  return ok;
}

// Keys in pmix.* are directives (range, persistence, user id); the rest are user data.
bool is_directive(const char* key) { return strncmp(key, "pmix.", 5) == 0; }

pmix_status_t on_publish(const pmix_proc_t* proc, const pmix_info_t info[], size_t ninfo,
                         pmix_op_cbfunc_t cbfunc, void* cbdata) {
  return guarded("publish", proc, [&]() -> pmix_status_t {
    std::vector<PackedValue> values;
    for (size_t i = 0; i < ninfo; ++i) {
      if (is_directive(info[i].key)) continue;
      values.push_back(PackedValue{info[i].key, pack_value(&info[i].value)});
    }
    g_host->publish(to_proc(proc), std::move(values), [cbfunc, cbdata](int rc) {
      if (cbfunc) cbfunc(rc, cbdata);
    });
    return PMIX_SUCCESS;
  });
}

pmix_status_t on_lookup(const pmix_proc_t* proc, char** keys, const pmix_info_t info[],
                        size_t ninfo, pmix_lookup_cbfunc_t cbfunc, void* cbdata) {
  return guarded("lookup", proc, [&]() -> pmix_status_t {
    std::vector<std::string> wanted;
    for (size_t i = 0; keys && keys[i]; ++i) wanted.emplace_back(keys[i]);
    bool wait = false;
    for (size_t i = 0; i < ninfo; ++i)
      if (PMIX_CHECK_KEY(&info[i], PMIX_WAIT)) wait = PMIX_INFO_TRUE(&info[i]);
    g_host->lookup(to_proc(proc), std::move(wanted), wait,
                   [cbfunc, cbdata](int rc, std::vector<LookupHit> hits) {
                     if (!cbfunc) return;
                     pmix_pdata_t* pdata = nullptr;
                     size_t n = 0;
                     if (rc == PMIX_SUCCESS && !hits.empty()) {
                       PMIX_PDATA_CREATE(pdata, hits.size());
                       for (auto& h : hits) {
                         pmix_pdata_t* d = &pdata[n];
                         PMIX_LOAD_PROCID(&d->proc, h.publisher.nspace.c_str(), h.publisher.rank);
                         PMIX_LOAD_KEY(d->key, h.key.c_str());
                         if (unpack_value(h.packed, &d->value)) ++n;
                       }
                       if (n == 0) rc = PMIX_ERR_NOT_FOUND;
                     }
                     cbfunc(rc, pdata, n, cbdata);
                     if (pdata) PMIX_PDATA_FREE(pdata, hits.size());
                   });
    return PMIX_SUCCESS;
  });
}

pmix_status_t on_unpublish(const pmix_proc_t* proc, char** keys, const pmix_info_t[], size_t,
                           pmix_op_cbfunc_t cbfunc, void* cbdata) {
  return guarded("unpublish", proc, [&]() -> pmix_status_t {
    std::vector<std::string> gone;
    for (size_t i = 0; keys && keys[i]; ++i) gone.emplace_back(keys[i]);
    g_host->unpublish(to_proc(proc), std::move(gone), [cbfunc, cbdata](int rc) {
      if (cbfunc) cbfunc(rc, cbdata);
    });
    return PMIX_SUCCESS;
  });
}

pmix_status_t on_spawn(const pmix_proc_t* proc, const pmix_info_t[], size_t, const pmix_app_t[],
                       size_t, pmix_spawn_cbfunc_t, void*) {
  spdlog::error("pmix: rank {} asked to spawn processes (MPI_Comm_spawn); mpirun-sf does not "
                "support dynamic process creation yet",
                proc->rank);
  return PMIX_ERR_NOT_SUPPORTED;
}

pmix_server_module_t make_module() {
  pmix_server_module_t m;
  memset(&m, 0, sizeof(m));
  m.client_connected = on_client_connected;
  m.client_finalized = on_client_finalized;
  m.abort = on_abort;
  m.fence_nb = on_fence;
  m.direct_modex = on_direct_modex;
  m.publish = on_publish;
  m.lookup = on_lookup;
  m.unpublish = on_unpublish;
  m.spawn = on_spawn;
  return m;
}

pmix_server_module_t g_module = make_module();

// Waits for a PMIx operation that completes through a pmix_op_cbfunc_t.
struct OpWaiter {
  std::promise<pmix_status_t> done;
  static void callback(pmix_status_t rc, void* cbdata) {
    static_cast<OpWaiter*>(cbdata)->done.set_value(rc);
  }
  pmix_status_t wait(pmix_status_t started) {
    if (started == PMIX_OPERATION_SUCCEEDED) return PMIX_SUCCESS;
    if (started != PMIX_SUCCESS) return started;
    return done.get_future().get();
  }
};

std::string regex_of(const std::string& input, bool ppn) {
  char* regex = nullptr;
  check(ppn ? PMIx_generate_ppn(input.c_str(), &regex) : PMIx_generate_regex(input.c_str(), &regex),
        ppn ? "PMIx_generate_ppn" : "PMIx_generate_regex");
  // The result is a PMIX_REGEX blob whose length PMIx encodes itself; it is NUL-terminated
  // for the "raw" and "native" generators Debian's build uses.
  std::string out(regex);
  free(regex);
  return out;
}

// This node's hwloc topology as XML (hwloc 2 format), or "" if it cannot be had.
// Open MPI 4.1 ranks look for it in the job data (pmix.hwlocxml2, as ORTE's mpirun provides)
// before discovering the topology themselves; discovery in every rank was most of a rank's
// start-up time here (hwloc's x86 backend binds to each PU in turn, and its GL plugin probes
// for X displays). The PMIx server has already discovered the topology: reuse it.
std::string topology_xml() {
  pmix_topology_t topo;
  memset(&topo, 0, sizeof topo);
  hwloc_topology_t own = nullptr;
  hwloc_topology_t t = nullptr;
  if (PMIx_Load_topology(&topo) == PMIX_SUCCESS && topo.source &&
      strncmp(topo.source, "hwloc", 5) == 0 && topo.topology) {
    t = static_cast<hwloc_topology_t>(topo.topology);
  } else if (hwloc_topology_init(&own) == 0) {
    if (hwloc_topology_load(own) == 0) t = own;
  }
  std::string out;
  char* xml = nullptr;
  int len = 0;
  if (t && hwloc_topology_export_xmlbuffer(t, &xml, &len, 0) == 0 && xml) {
    out.assign(xml);
    hwloc_free_xmlbuffer(t, xml);
  } else {
    spdlog::debug("pmix: no topology to pass to the ranks; each will discover its own");
  }
  if (own) hwloc_topology_destroy(own);
  return out;
}

std::string join_ranks(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) {
    if (!s.empty()) s += ',';
    s += std::to_string(r);
  }
  return s;
}

}  // namespace

Result<std::unique_ptr<PmixServer>> PmixServer::start(const ServerOptions& options, PmixHost& host) {
  if (g_host) return Error{Errc::general, "pmix: a PMIx server is already running in this process"};
  pmix_data_array_t arr;
  try {
    InfoList info;
    info.add_str(PMIX_SERVER_TMPDIR, options.session_dir);
    info.add_str(PMIX_SYSTEM_TMPDIR, options.session_dir);
    info.add_bool(PMIX_SERVER_TOOL_SUPPORT, false);
    info.add_bool(PMIX_SERVER_SYSTEM_SUPPORT, false);
    info.add_str(PMIX_HOSTNAME, options.hostname);
    info.add_u32(PMIX_SERVER_RANK, options.node_id);
    arr = info.convert();
  } catch (const PmixError& e) {
    return failure(e);
  }
  g_host = &host;
  pmix_status_t rc = PMIx_server_init(&g_module, static_cast<pmix_info_t*>(arr.array), arr.size);
  PMIx_Data_array_destruct(&arr);
  if (rc != PMIX_SUCCESS) {
    g_host = nullptr;
    return Error{Errc::general, "pmix: PMIx_server_init failed: " + text(rc) + " (session directory " + options.session_dir + ")"};
  }
  std::unique_ptr<PmixServer> server(new PmixServer());
  server->session_dir_ = options.session_dir;
  return server;
}

PmixServer::~PmixServer() {
  if (job_registered_) {
    // Bounded: a PMIx server wedged by a bug of its own must not keep the launcher (and the
    // user's job) from ending. The waiter lives on the heap: PMIx may still answer later.
    auto* done = new std::promise<void>();
    auto answered = done->get_future();
    PMIx_server_deregister_nspace(
        nspace_.c_str(),
        [](pmix_status_t, void* cbdata) {
          auto* p = static_cast<std::promise<void>*>(cbdata);
          p->set_value();
          delete p;
        },
        done);
    if (answered.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
      // Finalizing would wait for the same stuck thread; the process is about to end.
      spdlog::warn("pmix: the PMIx server did not deregister job {} within 10 s; not finalizing it",
                   nspace_);
      g_host = nullptr;
      return;
    }
  }
  // Bounded too: PMIx 4.2.2 can leave a lock of its own taken when a client dies while it
  // connects ("PMIX ERROR: UNREACHABLE ... ptl_base_connection_hdlr.c"), and its finalize
  // then waits for that lock forever. The thread that is stuck there stays behind; the
  // process is about to end and takes it along.
  auto finalized = std::make_shared<std::promise<pmix_status_t>>();
  auto answered = finalized->get_future();
  std::thread([finalized] { finalized->set_value(PMIx_server_finalize()); }).detach();
  if (answered.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    spdlog::warn("pmix: the PMIx server did not finalize within 10 s; going on without it");
  } else if (pmix_status_t rc = answered.get(); rc != PMIX_SUCCESS) {
    spdlog::warn("pmix: PMIx_server_finalize: {}", text(rc));
  }
  g_host = nullptr;
}

// Function try blocks: check() throws PmixError on the first failing PMIx call.
Status PmixServer::register_job(const JobMap& map, int local_node) try {
  nspace_ = map.nspace;
  const NodeSlot& here = map.nodes.at(static_cast<size_t>(local_node));
  std::string node_regex = regex_of(map.node_list(), false);
  std::string proc_regex = regex_of(map.proc_list(), true);

  InfoList job;
  job.add_u32(PMIX_UNIV_SIZE, static_cast<uint32_t>(map.universe_size));
  job.add_u32(PMIX_JOB_SIZE, static_cast<uint32_t>(map.size()));
  job.add_u32(PMIX_MAX_PROCS, static_cast<uint32_t>(map.universe_size));
  job.add_str(PMIX_JOBID, map.nspace);
  job.add_u32(PMIX_NUM_NODES, static_cast<uint32_t>(map.nodes.size()));
  job.add_u32(PMIX_JOB_NUM_APPS, static_cast<uint32_t>(map.apps.size()));
  job.add_regex(PMIX_NODE_MAP, node_regex.c_str());
  job.add_regex(PMIX_PROC_MAP, proc_regex.c_str());
  job.add_u32(PMIX_LOCAL_SIZE, static_cast<uint32_t>(here.ranks.size()));
  job.add_u32(PMIX_NODE_SIZE, static_cast<uint32_t>(here.ranks.size()));
  job.add_str(PMIX_LOCAL_PEERS, join_ranks(here.ranks));
  if (!here.ranks.empty()) job.add_rank(PMIX_LOCALLDR, static_cast<pmix_rank_t>(here.ranks[0]));
  // Session directories inside ours, which the launcher removes at the end; otherwise Open
  // MPI leaves /tmp/ompi.<host>.<uid> behind.
  job.add_str(PMIX_TMPDIR, session_dir_);
  job.add_str(PMIX_NSDIR, session_dir_ + "/" + map.nspace);
  job.add_bool(PMIX_TDIR_RMCLEAN, true);
  // The topology, so that the ranks do not discover it each (see topology_xml).
  if (std::string xml = topology_xml(); !xml.empty()) job.add_str("pmix.hwlocxml2", xml);
  for (size_t a = 0; a < map.apps.size(); ++a) {
    InfoList app;
    app.add_u32(PMIX_APPNUM, static_cast<uint32_t>(a));
    app.add_u32(PMIX_APP_SIZE, static_cast<uint32_t>(map.apps[a].size));
    app.add_rank(PMIX_APPLDR, static_cast<pmix_rank_t>(map.apps[a].first_rank));
    job.add_array(PMIX_APP_INFO, app);
  }
  // Every rank's data. Once any PMIX_PROC_DATA is registered PMIx stops deriving node id,
  // local rank and node rank from the maps, so all of them are given for every rank.
  for (int r = 0; r < map.size(); ++r) {
    const RankPlacement& p = map.ranks[static_cast<size_t>(r)];
    InfoList proc;
    proc.add_rank(PMIX_RANK, static_cast<pmix_rank_t>(r));
    proc.add_u32(PMIX_APPNUM, static_cast<uint32_t>(p.appnum));
    proc.add_rank(PMIX_APPLDR, static_cast<pmix_rank_t>(map.apps[static_cast<size_t>(p.appnum)].first_rank));
    proc.add_rank(PMIX_APP_RANK, static_cast<pmix_rank_t>(p.app_rank));
    proc.add_rank(PMIX_GLOBAL_RANK, static_cast<pmix_rank_t>(r));
    proc.add_u16(PMIX_LOCAL_RANK, static_cast<uint16_t>(p.local_rank));
    proc.add_u16(PMIX_NODE_RANK, static_cast<uint16_t>(p.node_rank));
    proc.add_u32(PMIX_NODEID, static_cast<uint32_t>(p.node));
    proc.add_str(PMIX_HOSTNAME, map.nodes[static_cast<size_t>(p.node)].hostname);
    job.add_array(PMIX_PROC_DATA, proc);
  }
  pmix_data_array_t arr = job.convert();
  OpWaiter w;
  pmix_status_t rc = w.wait(PMIx_server_register_nspace(
      map.nspace.c_str(), static_cast<int>(here.ranks.size()),
      static_cast<pmix_info_t*>(arr.array), arr.size, OpWaiter::callback, &w));
  PMIx_Data_array_destruct(&arr);
  check(rc, "PMIx_server_register_nspace");
  job_registered_ = true;
  return sf::common::ok_status();
} catch (const PmixError& e) {
  return failure(e);
}

Result<std::vector<std::string>> PmixServer::prepare_rank(uint32_t rank, uint32_t uid, uint32_t gid) try {
  pmix_proc_t proc;
  PMIX_LOAD_PROCID(&proc, nspace_.c_str(), rank);
  OpWaiter w;
  check(w.wait(PMIx_server_register_client(&proc, uid, gid, nullptr, OpWaiter::callback, &w)),
        "PMIx_server_register_client");
  char** env = nullptr;
  check(PMIx_server_setup_fork(&proc, &env), "PMIx_server_setup_fork");
  std::vector<std::string> out;
  for (char** e = env; e && *e; ++e) {
    out.emplace_back(*e);
    free(*e);
  }
  free(env);
  return out;
} catch (const PmixError& e) {
  return failure(e);
}

namespace {
void dmodex_answer(pmix_status_t rc, char* data, size_t size, void* cbdata) {
  auto* done = static_cast<DataDone*>(cbdata);
  (*done)(rc, data ? std::string(data, size) : std::string());
  delete done;
}
}  // namespace

void PmixServer::local_modex(uint32_t rank, DataDone done) {
  pmix_proc_t proc;
  PMIX_LOAD_PROCID(&proc, nspace_.c_str(), rank);
  auto* owned = new DataDone(std::move(done));
  pmix_status_t rc = PMIx_server_dmodex_request(&proc, dmodex_answer, owned);
  if (rc != PMIX_SUCCESS) {
    (*owned)(rc, {});
    delete owned;
  }
}

namespace {
struct ReleaseBatch {
  std::atomic<size_t> pending;
  std::function<void()> done;
  static void callback(pmix_status_t, void* cbdata) {
    auto* b = static_cast<ReleaseBatch*>(cbdata);
    if (b->pending.fetch_sub(1) == 1) {
      b->done();
      delete b;
    }
  }
};
}  // namespace

void PmixServer::release_ranks(const std::vector<uint32_t>& ranks, std::function<void()> done) {
  auto* batch = new ReleaseBatch{{ranks.size() + 1}, std::move(done)};
  for (uint32_t rank : ranks) {
    pmix_proc_t proc;
    PMIX_LOAD_PROCID(&proc, nspace_.c_str(), rank);
    // Completes through the callback (on PMIx's thread); it has no failing return.
    PMIx_server_deregister_client(&proc, ReleaseBatch::callback, batch);
  }
  ReleaseBatch::callback(PMIX_SUCCESS, batch);  // the extra count: none may finish before all are asked
}

}  // namespace sf::pmix
