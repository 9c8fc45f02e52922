// The PMIx server of one node: it registers the job with OpenPMIx's server library, hands
// each local rank the environment it needs to connect back, and turns the library's upcalls
// (connect, finalize, abort, fence, direct modex, publish/lookup) into calls on a PmixHost.
//
// Threading: upcalls arrive on PMIx's progress thread. PmixServer copies their arguments and
// calls the host at once; the host must not block there (post the work to its own event
// loop) and completes each request through the completion function it was given, from any
// thread. No exception crosses an upcall.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pmix-plugin/job_map.hpp"
#include "sf-common/result.hpp"

namespace sf::pmix {

// Errors as values (sf-common's vocabulary). No caller branches on the kind of a PMIx
// failure (they report the message, which carries the PMIx status text), so there is one code.
enum class Errc {
  general,
};
using Error = sf::common::Error<Errc>;
template <class T>
using Result = sf::common::Result<T, Error>;
using Status = sf::common::Status<Error>;

inline constexpr uint32_t kRankWildcard = UINT32_MAX - 1;  // PMIX_RANK_WILDCARD
// The PMIx statuses the host side sets or tests (it does not include PMIx's headers: PMIx is
// this component's private dependency). server.cpp checks them against PMIx's values.
inline constexpr int kSuccess = 0;                          // PMIX_SUCCESS
inline constexpr int kErrNotFound = -46;                    // PMIX_ERR_NOT_FOUND
inline constexpr int kErrDuplicateKey = -53;                // PMIX_ERR_DUPLICATE_KEY

struct ProcId {
  std::string nspace;
  uint32_t rank = kRankWildcard;
};

// One node's contribution to a fence.
struct FenceRequest {
  std::vector<ProcId> participants;  // a wildcard rank stands for the whole namespace
  bool collect_data = false;
  int local_status = kSuccess;  // PMIX_LOCAL_COLLECTIVE_STATUS reported by the local clients
  std::string data;             // opaque blob; the fence result is the concatenation of all nodes'
};

// A published key with its value packed by PMIx_Data_pack (opaque outside this library).
struct PackedValue {
  std::string key;
  std::string packed;
};

struct LookupHit {
  std::string key;
  std::string packed;
  ProcId publisher;
};

using OpDone = std::function<void(int status)>;
using DataDone = std::function<void(int status, std::string data)>;
using LookupDone = std::function<void(int status, std::vector<LookupHit> hits)>;

class PmixHost {
 public:
  virtual ~PmixHost() = default;
  virtual void client_connected(uint32_t rank) = 0;
  virtual void client_finalized(uint32_t rank) = 0;
  virtual void abort(uint32_t rank, int status, std::string message, OpDone done) = 0;
  virtual void fence(FenceRequest request, DataDone done) = 0;
  // The modex data of a rank on another node (the caller's server asks for it).
  virtual void direct_modex(uint32_t rank, DataDone done) = 0;
  virtual void publish(ProcId publisher, std::vector<PackedValue> values, OpDone done) = 0;
  virtual void lookup(ProcId requester, std::vector<std::string> keys, bool wait,
                      LookupDone done) = 0;
  virtual void unpublish(ProcId publisher, std::vector<std::string> keys, OpDone done) = 0;
};

struct ServerOptions {
  // Created and removed by the caller; the server's rendezvous files and the job's session
  // directories (PMIX_TMPDIR, PMIX_NSDIR) go here.
  std::string session_dir;
  std::string hostname;     // this node's hostname, as in the job map
  uint32_t node_id = 0;
};

class PmixServer {
 public:
  // Starts the (process-wide, single) PMIx server, or says why it could not.
  static Result<std::unique_ptr<PmixServer>> start(const ServerOptions& options, PmixHost& host);
  ~PmixServer();
  PmixServer(const PmixServer&) = delete;
  PmixServer& operator=(const PmixServer&) = delete;

  // Registers the whole job as seen from node `local_node`; blocks until PMIx has it.
  Status register_job(const JobMap& map, int local_node);
  // Registers a local rank and returns the "KEY=VALUE" entries its environment must add.
  Result<std::vector<std::string>> prepare_rank(uint32_t rank, uint32_t uid, uint32_t gid);
  // Asks the local PMIx store for the modex data of a local rank (for another node).
  void local_modex(uint32_t rank, DataDone done);
  // Deregisters local ranks that are about to be killed: PMIx closes its connection to each
  // (so their deaths are not "lost connections") and will answer none of their requests.
  // `done` runs on PMIx's thread once PMIx has processed all of them.
  //
  // Why, before every kill: when ranks of a collective held only on this node die together,
  // PMIx 4.2 (ptl_base_sendrecv.c, lost_connection) completes that collective once per death
  // whose processing finds the remaining participants all arrived, and the second completion
  // frees the collective a second time (seen as a hang in deregister_nspace or a crash of the
  // launcher, about one in ten aborts during MPI_Finalize's fence under load). A deregistered
  // rank's death touches no collective.
  void release_ranks(const std::vector<uint32_t>& ranks, std::function<void()> done);

  const std::string& nspace() const { return nspace_; }

 private:
  PmixServer() = default;
  std::string nspace_;
  std::string session_dir_;
  bool job_registered_ = false;
};

}  // namespace sf::pmix
