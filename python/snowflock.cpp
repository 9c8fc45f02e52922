// The SnowFlock clone API in Python: a thin pybind11 layer over the C++ API (clone.hpp).
//
//   import snowflock
//   with snowflock.request_ticket(clones=3) as ticket:
//       cid = ticket.clone()              # fork semantics: 0 in the parent, 1..3 in clones
//       if cid > 0:
//           work(cid)
//           snowflock.sync(0)             # a clone reports its status and ends here
//       for status in ticket.join():      # the parent waits for every clone
//           print(status.id, status.end, status.value)
//
// Failures raise snowflock.Error, whose `code` is the SF_ERR_* number (also snowflock.ERR_*),
// `name` its short name and `message` what failed and what to do. Leaving the `with` block in
// the parent kills clones that were not joined, as the C++ Ticket's destructor does.
//
// clone() forks, so it runs CPython's own fork hooks around it (PyOS_BeforeFork and the
// AfterFork pair, as os.fork() does): os.register_at_fork() callbacks run, and the clone's
// interpreter state (threads, locks, the random module's seed) is that of a forked child.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "clone-core/clone.hpp"

namespace py = pybind11;

namespace {

// snowflock.Error, made once when the module loads; it lives as long as the interpreter.
PyObject* g_error_type = nullptr;

const char* short_name(sf::Errc code) {
  switch (code) {
    case sf::Errc::ok: return "OK";
    case sf::Errc::invalid_argument: return "INVALID_ARGUMENT";
    case sf::Errc::not_single_threaded: return "NOT_SINGLE_THREADED";
    case sf::Errc::missing_privilege: return "MISSING_PRIVILEGE";
    case sf::Errc::insufficient_resources: return "INSUFFICIENT_RESOURCES";
    case sf::Errc::no_cluster_slot: return "NO_CLUSTER_SLOT";
    case sf::Errc::driver_unavailable: return "DRIVER_UNAVAILABLE";
    case sf::Errc::network_setup: return "NETWORK_SETUP";
    case sf::Errc::namespace_setup: return "NAMESPACE_SETUP";
    case sf::Errc::clone_failed: return "CLONE_FAILED";
    case sf::Errc::wrong_side: return "WRONG_SIDE";
    case sf::Errc::bad_state: return "BAD_STATE";
    case sf::Errc::system: return "SYSTEM";
  }
  return "UNKNOWN";
}

// Raises snowflock.Error(message) with .code, .name and .message set.
[[noreturn]] void raise(const sf::Error& error) {
  py::object type = py::reinterpret_borrow<py::object>(g_error_type);
  py::object exc = type(error.message);
  exc.attr("code") = static_cast<int>(error.code);
  exc.attr("name") = short_name(error.code);
  exc.attr("message") = error.message;
  PyErr_SetObject(g_error_type, exc.ptr());
  throw py::error_already_set();
}

template <class T>
T value_or_raise(sf::Result<T>&& result) {
  if (!result) raise(result.error());
  return std::move(*result);
}

// Python's own buffers must reach the file descriptors before a fork (or they are printed once
// per clone) and before a clone ends with _exit() (or they are lost).
void flush_python_streams() {
  py::module_ sys = py::module_::import("sys");
  for (const char* name : {"stdout", "stderr"}) {
    py::object stream = sys.attr(name);
    if (!stream.is_none()) stream.attr("flush")();
  }
}

void sync_clone(int status) {
  flush_python_streams();
  sf::Status st = sf::sync(status);  // returns only on error
  raise(st.error());
}

struct Node {
  unsigned id;
  std::string address, hostname, interface;
};

class PyTicket {
 public:
  explicit PyTicket(sf::Ticket ticket) : ticket_(std::move(ticket)) {}

  sf::Ticket& get() {
    if (!ticket_) raise(sf::make_error(sf::Errc::bad_state, "snowflock: the ticket was closed"));
    return *ticket_;
  }

  unsigned clone() {
    sf::Ticket& ticket = get();
    flush_python_streams();  // else text buffered before the fork is printed once per clone
    PyOS_BeforeFork();
    sf::Result<unsigned> id = ticket.clone();
    if (id && *id != 0)
      PyOS_AfterFork_Child();
    else
      PyOS_AfterFork_Parent();
    return value_or_raise(std::move(id));
  }

  std::vector<sf::CloneStatus> join() {
    sf::Ticket& ticket = get();
    sf::Result<std::vector<sf::CloneStatus>> statuses = [&] {
      py::gil_scoped_release release;  // clones may run for long; other threads go on
      return ticket.join();
    }();
    return value_or_raise(std::move(statuses));
  }

  void kill() {
    sf::Ticket& ticket = get();
    sf::Status st = [&] {
      py::gil_scoped_release release;
      return ticket.kill();
    }();
    if (!st) raise(st.error());
  }

  void sync(int status) {
    if (!get().is_clone())
      raise(sf::make_error(sf::Errc::wrong_side, "snowflock: sync() called in the parent; the parent calls join()"));
    sync_clone(status);
  }

  std::vector<sf::CloneStatus> poll_exited() {
    sf::Ticket& ticket = get();
    if (ticket.is_clone()) raise(sf::make_error(sf::Errc::wrong_side, "snowflock: poll_exited() called in a clone"));
    return ticket.poll_exited();
  }

  Node node(unsigned id) {
    sf::Ticket& ticket = get();
    if (id > ticket.granted())
      throw py::index_error("snowflock: node " + std::to_string(id) + " out of range 0.." +
                            std::to_string(ticket.granted()));
    const sf::NodeInfo& n = ticket.node(id);
    return Node{n.id, n.address_text, n.hostname, n.interface};
  }

  std::vector<Node> nodes() {
    std::vector<Node> all;
    for (unsigned id = 0; id <= get().granted(); ++id) all.push_back(node(id));
    return all;
  }

  // Leaving a `with` block: the parent kills clones it did not join (kill() is idempotent
  // and does nothing after join()); a clone leaves its ticket alone.
  void exit_block() {
    if (ticket_ && !ticket_->is_clone()) kill();
  }

 private:
  std::optional<sf::Ticket> ticket_;
};

PyTicket request_ticket(unsigned clones, unsigned procs_per_clone, unsigned min_clones,
                        const std::string& driver, const std::string& subnet_pool, const std::string& tmp) {
  sf::TicketRequest request;
  request.clones = clones;
  request.procs_per_clone = procs_per_clone;
  request.min_clones = min_clones;
  request.driver = driver;
  request.subnet_pool = subnet_pool;
  if (tmp == "overlay")
    request.tmp_mode = sf::TmpMode::overlay;
  else if (tmp == "empty")
    request.tmp_mode = sf::TmpMode::empty;
  else
    raise(sf::make_error(sf::Errc::invalid_argument,
                         "snowflock: tmp must be \"overlay\" (the parent's /tmp, copy-on-write) or \"empty\", not \"" +
                             tmp + "\""));
  sf::Result<sf::Ticket> ticket = [&] {
    py::gil_scoped_release release;
    return sf::Ticket::request(request);
  }();
  return PyTicket(value_or_raise(std::move(ticket)));
}

std::string status_repr(const sf::CloneStatus& s) {
  return "CloneStatus(id=" + std::to_string(s.id) + ", end=" + sf::clone_end_name(s.end) +
         ", value=" + std::to_string(s.value) + ")";
}

}  // namespace

PYBIND11_MODULE(snowflock, m) {
  m.doc() =
      "SnowFlock: clone this machine with fork() semantics into an impromptu cluster.\n\n"
      "request_ticket() reserves clones; Ticket.clone() forks them (0 in the parent, the clone's\n"
      "id in each clone); a clone ends with sync(status); the parent's Ticket.join() returns how\n"
      "each clone ended. Errors raise snowflock.Error (code, name, message).";

  g_error_type = PyErr_NewExceptionWithDoc(
      "snowflock.Error",
      "A SnowFlock call failed. code: the SF_ERR_* number (snowflock.ERR_*); name: its short name;\n"
      "message: what failed and what to do.",
      nullptr, nullptr);
  if (g_error_type == nullptr) throw py::error_already_set();
  m.attr("Error") = py::handle(g_error_type);
  for (int code = 1; code <= static_cast<int>(sf::Errc::system); ++code)
    m.attr((std::string("ERR_") + short_name(static_cast<sf::Errc>(code))).c_str()) = code;

  py::enum_<sf::CloneEnd>(m, "End", "How a clone ended.")
      .value("SYNCED", sf::CloneEnd::synced, "called sync(); value is its status")
      .value("EXITED", sf::CloneEnd::exited, "exited without sync(); value is the exit code")
      .value("SIGNALED", sf::CloneEnd::signaled, "died of a signal; value is the signal number")
      .value("KILLED", sf::CloneEnd::killed, "ended by Ticket.kill() or by leaving the with block")
      .value("LOST", sf::CloneEnd::lost, "vanished without a report");

  py::class_<sf::CloneStatus>(m, "CloneStatus", "How one clone ended.")
      .def_readonly("id", &sf::CloneStatus::id)
      .def_readonly("end", &sf::CloneStatus::end)
      .def_readonly("value", &sf::CloneStatus::value)
      .def_property_readonly("ok", &sf::CloneStatus::success, "synced or exited with status 0")
      .def("__repr__", &status_repr);

  py::class_<Node>(m, "Node", "A node of the cluster: 0 is the parent, 1..granted the clones.")
      .def_readonly("id", &Node::id)
      .def_readonly("address", &Node::address, "IPv4 address on the cluster network")
      .def_readonly("hostname", &Node::hostname)
      .def_readonly("interface", &Node::interface, "the cluster interface on that node")
      .def("__repr__", [](const Node& n) {
        return "Node(id=" + std::to_string(n.id) + ", address='" + n.address + "', hostname='" + n.hostname + "')";
      });

  py::class_<PyTicket>(m, "Ticket", "A reservation of clones; made by request_ticket().")
      .def("clone", &PyTicket::clone,
           "Fork the clones. Returns 0 in the parent (once every clone runs) and the clone's id\n"
           "(1..granted) in each clone. The process must be single-threaded.")
      .def("join", &PyTicket::join,
           "Parent: wait for every clone to end; returns a list of CloneStatus ordered by id and\n"
           "removes the cluster.")
      .def("kill", &PyTicket::kill, "Parent: end every clone now and remove the cluster.")
      .def("sync", &PyTicket::sync, py::arg("status") = 0,
           "Clone: report status to the parent and end this clone (does not return).")
      .def("poll_exited", &PyTicket::poll_exited,
           "Parent, non-blocking: the clones that ended since the last call.")
      .def("exit_fd", [](PyTicket& t) { return t.get().exit_fd(); },
           "Parent: a file descriptor that becomes readable when a clone may have ended.")
      .def("node", &PyTicket::node, py::arg("id"))
      .def_property_readonly("nodes", &PyTicket::nodes)
      .def_property_readonly("granted", [](PyTicket& t) { return t.get().granted(); })
      .def_property_readonly("requested", [](PyTicket& t) { return t.get().requested(); })
      .def_property_readonly("procs_per_clone", [](PyTicket& t) { return t.get().procs_per_clone(); })
      .def_property_readonly("driver", [](PyTicket& t) { return std::string(t.get().driver_name()); })
      .def_property_readonly("id", [](PyTicket& t) { return t.get().id(); }, "0 in the parent, i in clone i")
      .def_property_readonly("is_clone", [](PyTicket& t) { return t.get().is_clone(); })
      .def_property_readonly("subnet", [](PyTicket& t) { return t.get().subnet_cidr(); })
      .def_property_readonly("interface", [](PyTicket& t) { return t.get().interface_name(); },
                             "this node's cluster interface")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyTicket& t, py::args) {
        t.exit_block();
        return false;
      });

  m.def("request_ticket", &request_ticket, py::arg("clones"), py::arg("procs_per_clone") = 1,
        py::arg("min_clones") = 0, py::arg("driver") = "auto", py::arg("subnet_pool") = sf::kDefaultSubnetPool,
        py::arg("tmp") = "overlay",
        "Reserve `clones` clones of this machine (fewer down to min_clones if min_clones > 0).\n"
        "driver: \"auto\", \"sandbox\" or \"qemu\" (auto picks qemu inside an sfd guest).");
  m.def("sync", &sync_clone, py::arg("status") = 0,
        "Clone: report status to the parent and end this clone (does not return).");
  m.def("clone_id", &sf::current_clone_id, "0 in a parent (or an unrelated process), i in clone i.");
  m.def("run_dir", &sf::run_dir, "Where this user's cluster locks and state files live.");
  m.def("cleanup", [] {
        py::dict report;
        sf::CleanupReport r = value_or_raise(sf::cleanup_stale_clusters());
        report["clusters"] = r.clusters;
        report["links"] = r.links;
        report["processes"] = r.processes;
        report["notes"] = r.notes;
        return report;
      },
      "Remove what crashed runs left (as mpirun-sf --cleanup); returns what was removed.");
}
