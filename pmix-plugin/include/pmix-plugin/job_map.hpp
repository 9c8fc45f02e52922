// The job map: which rank runs where, as every node's PMIx server must register it.
// It is computed deterministically from the job spec and the cluster, so every node of an
// impromptu cluster derives the same map without asking anyone.
#pragma once

#include <string>
#include <vector>

namespace sf::pmix {

struct NodeSlot {
  std::string hostname;    // as the ranks on that node see it (gethostname())
  std::vector<int> ranks;  // global ranks on the node, ascending
};

struct RankPlacement {
  int node = 0;        // index into JobMap::nodes
  int appnum = 0;      // MPMD application context number
  int app_rank = 0;    // rank within its application context
  int local_rank = 0;  // rank among the processes of this job on its node
  int node_rank = 0;   // same as local_rank: one job per node
};

struct AppContext {
  int first_rank = 0;
  int size = 0;
};

struct JobMap {
  std::string nspace;                // PMIx namespace, identical on every node
  std::vector<NodeSlot> nodes;       // node 0 is the launching machine
  std::vector<RankPlacement> ranks;  // indexed by global rank
  std::vector<AppContext> apps;      // indexed by appnum
  int universe_size = 0;             // MPI_UNIVERSE_SIZE: the slots of the whole cluster

  int size() const { return static_cast<int>(ranks.size()); }
  // "host0,host1,..." and "0,1;2,3" in node order, the inputs of PMIx_generate_regex/_ppn.
  std::string node_list() const;
  std::string proc_list() const;
};

}  // namespace sf::pmix
