// Command-line parsing, compatible with Open MPI 4.1's mpirun.
//
// Boost.Program_options holds the table of options and parses their values. It cannot on its
// own tell where the program's own arguments begin (`mpirun -np 2 ./a --flag` gives --flag to
// ./a), split MPMD contexts at ':' or take Open MPI's single-dash long options (-np, -wdir),
// so a pre-scan walks the tokens with the same table: it normalises `-np` to `--np`, looks up
// each option's arity, and stops at the first token that is not an option.
#include <boost/program_options.hpp>

#include <charconv>
#include <map>

#include "mpirun-sf/job_spec.hpp"
#include "sf-common/slurm.hpp"

namespace po = boost::program_options;

namespace sf::mpirun {
namespace {

po::options_description options_table() {
  po::options_description d;
  auto text = [] { return po::value<std::string>(); };
  auto flag = [] { return po::bool_switch(); };
  d.add_options()
      ("np", text())("n", text())("c", text())
      ("x", po::value<std::vector<std::string>>()->composing())
      ("mca", po::value<std::vector<std::string>>()->composing())
      ("gmca", po::value<std::vector<std::string>>()->composing())
      ("tag-output", flag())("timestamp-output", flag())("merge-stderr-to-stdout", flag())
      ("output-filename", text())("wdir", text())("wd", text())("stdin", text())
      ("timeout", text())("oversubscribe", flag())("nooversubscribe", flag())
      ("allow-run-as-root", flag())("display-map", flag())("display-allocation", flag())
      ("q", flag())("quiet", flag())("v", flag())("verbose", flag())
      ("V", flag())("version", flag())("h", flag())("help", flag())
      ("clones", text())("procs-per-clone", text())("map-by", text())("npernode", text())
      ("bind-to", text())("report-bindings", flag())("use-hwthread-cpus", flag())
      ("driver", text())("allocator", text())("partition", text())("account", text())
      ("time-limit", text())("cluster-subnet", text())("cleanup", flag())("prefix", text())
      ("host", text())("H", text())("hostfile", text())("machinefile", text());
  return d;
}

int to_int(const std::string& option, const std::string& value) {
  int v = 0;
  auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size())
    throw UsageError("option " + option + " expects a whole number, got '" + value + "'");
  return v;
}

int to_positive(const std::string& option, const std::string& value) {
  int v = to_int(option, value);
  if (v < 1) throw UsageError("option " + option + " must be at least 1, got " + value);
  return v;
}

struct Context {
  std::vector<std::string> option_tokens;  // normalised to --name / --name=value
  AppSpec app;
  bool has_program = false;
};

// Walks one ':'-separated context; see the header comment.
Context prescan(const std::vector<std::string>& tokens, const po::options_description& table) {
  Context ctx;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& t = tokens[i];
    if (ctx.has_program) {
      ctx.app.args.push_back(t);
      continue;
    }
    if (t.size() < 2 || t[0] != '-') {
      ctx.app.program = t;
      ctx.has_program = true;
      continue;
    }
    std::string body = t.substr(t[1] == '-' ? 2 : 1);
    std::string name = body, attached;
    bool has_attached = false;
    if (auto eq = body.find('='); eq != std::string::npos) {
      name = body.substr(0, eq);
      attached = body.substr(eq + 1);
      has_attached = true;
    }
    // An empty name ("-=x", "--=x") matches every option: Boost throws ambiguous_option even
    // from find_nothrow. It is an unknown option like any other.
    const po::option_description* d = nullptr;
    try {
      if (!name.empty()) d = table.find_nothrow(name, false);
    } catch (const po::error&) {
      d = nullptr;
    }
    if (!d) throw UsageError("unknown option \"" + t + "\"; type 'mpirun-sf --help' for usage");
    size_t arity = (name == "mca" || name == "gmca") ? 2 : (d->semantic()->max_tokens() ? 1 : 0);
    std::vector<std::string> values;
    if (has_attached) {
      if (arity == 0) throw UsageError("option " + t + " takes no value");
      values.push_back(attached);
    }
    while (values.size() < arity) {
      if (i + 1 >= tokens.size())
        throw UsageError("option -" + std::string(t[1] == '-' ? "-" : "") + name + " needs " +
                         (arity == 2 ? "a key and a value" : "a value"));
      values.push_back(tokens[++i]);
    }
    if (arity == 2) {
      if (values[0].find('=') != std::string::npos)
        throw UsageError("option --" + name + ": parameter name '" + values[0] + "' contains '='");
      ctx.option_tokens.push_back("--" + name + "=" + values[0] + "=" + values[1]);
    } else if (arity == 1) {
      ctx.option_tokens.push_back("--" + name + "=" + values[0]);
    } else {
      ctx.option_tokens.push_back("--" + name);
    }
  }
  return ctx;
}

std::vector<std::vector<std::string>> split_contexts(const std::vector<std::string>& args) {
  std::vector<std::vector<std::string>> out(1);
  for (const auto& a : args) {
    if (a == ":")
      out.emplace_back();
    else
      out.back().push_back(a);
  }
  return out;
}

}  // namespace

JobSpec parse_command_line(const std::vector<std::string>& args,
                           const std::function<const char*(const char*)>& getenv) {
  const po::options_description table = options_table();
  JobSpec spec;
  spec.command_line = args;
  bool timeout_given = false;
  auto contexts = split_contexts(args);
  for (size_t c = 0; c < contexts.size(); ++c) {
    Context ctx = prescan(contexts[c], table);
    po::variables_map vm;
    try {
      po::store(po::command_line_parser(ctx.option_tokens)
                    .options(table)
                    .style(po::command_line_style::allow_long |
                           po::command_line_style::long_allow_adjacent)
                    .run(),
                vm);
      po::notify(vm);
    } catch (const po::error& e) {
      throw UsageError(e.what());
    }
    auto has = [&](const char* k) { return vm.count(k) && !vm[k].defaulted(); };
    auto on = [&](const char* k) { return vm.count(k) && vm[k].as<bool>(); };
    auto str = [&](const char* k) { return vm[k].as<std::string>(); };

    // -np and --wdir belong to their application context; every other option to the job.
    AppSpec app = ctx.app;
    for (const char* k : {"np", "n", "c"}) {
      if (!has(k)) continue;
      std::string v = str(k);
      app.np = to_int(std::string("-") + k, v);
      if (app.np < 0)
        throw UsageError("application " + (app.program.empty() ? std::string("?") : app.program) +
                         " was given a negative number of processes (" + v + ")");
    }
    for (const char* k : {"wdir", "wd"})
      if (has(k)) app.wdir = str(k);

    if (has("x"))
      for (const auto& x : vm["x"].as<std::vector<std::string>>()) {
        if (x.empty() || x[0] == '=')
          throw UsageError("option -x expects VAR or VAR=value, got '" + x + "'");
        spec.exports.push_back(x);
      }
    for (const char* k : {"mca", "gmca"})
      if (has(k))
        for (const auto& kv : vm[k].as<std::vector<std::string>>()) {
          auto eq = kv.find('=');
          spec.mca.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
        }
    spec.tag_output |= on("tag-output");
    spec.timestamp_output |= on("timestamp-output");
    spec.merge_stderr_to_stdout |= on("merge-stderr-to-stdout");
    if (has("output-filename")) spec.output_filename = str("output-filename");
    if (has("stdin")) {
      std::string v = str("stdin");
      if (v == "none")
        spec.stdin_target = {StdinTarget::Kind::None, 0};
      else if (v == "all")
        spec.stdin_target = {StdinTarget::Kind::All, 0};
      else {
        int r = to_int("--stdin", v);
        if (r < 0) throw UsageError("option --stdin expects a rank, 'all' or 'none', got '" + v + "'");
        spec.stdin_target = {StdinTarget::Kind::Rank, r};
      }
    }
    if (has("timeout")) {
      spec.timeout_seconds = to_positive("--timeout", str("timeout"));
      timeout_given = true;
    }
    if (on("oversubscribe")) spec.oversubscribe = true;
    if (on("nooversubscribe")) spec.oversubscribe = false;
    spec.allow_run_as_root |= on("allow-run-as-root");
    spec.display_map |= on("display-map") || on("display-allocation");
    spec.quiet |= on("q") || on("quiet");
    if (on("v") || on("verbose")) spec.verbose = 1;
    if (on("h") || on("help")) spec.action = Action::Help;
    if ((on("V") || on("version")) && spec.action == Action::Run) spec.action = Action::Version;
    if (on("cleanup") && spec.action == Action::Run) spec.action = Action::Cleanup;
    if (has("clones")) spec.clones = to_positive("--clones", str("clones"));
    if (has("procs-per-clone"))
      spec.procs_per_clone = to_positive("--procs-per-clone", str("procs-per-clone"));
    if (has("npernode")) spec.procs_per_clone = to_positive("--npernode", str("npernode"));
    if (has("map-by")) {
      std::string v = str("map-by");
      std::string lower = v.substr(0, v.find(':'));
      if (v.rfind("ppr:", 0) == 0) {
        auto second = v.find(':', 4);
        std::string count = v.substr(4, second == std::string::npos ? std::string::npos : second - 4);
        std::string unit = second == std::string::npos ? "" : v.substr(second + 1);
        if (unit != "node")
          throw UsageError("--map-by " + v + ": mpirun-sf supports ppr:P:node (P processes per machine)");
        spec.procs_per_clone = to_positive("--map-by ppr", count);
      } else if (lower != "slot" && lower != "core") {
        throw UsageError("--map-by " + v + ": mpirun-sf supports slot, core and ppr:P:node");
      }
    }
    if (has("bind-to")) {
      std::string v = str("bind-to");
      if (v != "none" && v != "core" && v != "socket" && v != "hwthread" && v != "numa")
        throw UsageError("--bind-to " + v + ": expected none, core, socket, numa or hwthread");
    }
    if (has("driver")) {
      spec.driver = str("driver");
      if (spec.driver != "auto" && spec.driver != "sandbox" && spec.driver != "qemu" && spec.driver != "xen" &&
          spec.driver != "none")
        throw UsageError("--driver " + spec.driver + ": expected sandbox, qemu, xen, auto or none");
    }
    if (has("cluster-subnet")) spec.subnet = str("cluster-subnet");
    if (has("allocator")) {
      spec.allocator = str("allocator");
      if (spec.allocator != "auto" && spec.allocator != "local" && spec.allocator != "slurm")
        throw UsageError("--allocator " + spec.allocator + ": expected auto, local or slurm");
    }
    if (has("partition")) spec.slurm_partition = str("partition");
    if (has("account")) spec.slurm_account = str("account");
    if (has("time-limit")) spec.slurm_time_limit = str("time-limit");
    for (const char* k : {"host", "H", "hostfile", "machinefile"})
      if (has(k))
        throw UsageError(std::string("option --") + k +
                         ": mpirun-sf makes its own cluster by cloning this machine; "
                         "use --clones N instead of a host list");
    if (!ctx.has_program && (contexts.size() > 1 || spec.action == Action::Run))
      throw UsageError(contexts.size() > 1
                           ? "application context " + std::to_string(c + 1) + " names no program"
                           : "no executable was given; usage: mpirun-sf [options] PROGRAM [ARGS...]");
    if (ctx.has_program) spec.apps.push_back(std::move(app));
  }
  if (!timeout_given && getenv) {
    if (const char* t = getenv("MPIEXEC_TIMEOUT"); t && *t)
      spec.timeout_seconds = to_positive("MPIEXEC_TIMEOUT", t);
  }
  if (getenv) {
    // Slurm requests: the options win over SF_SLURM_PARTITION, _ACCOUNT and _TIME_LIMIT.
    auto o = sf::common::slurm::with_environment(
        {spec.slurm_partition, spec.slurm_account, spec.slurm_time_limit}, getenv);
    spec.slurm_partition = o.partition;
    spec.slurm_account = o.account;
    spec.slurm_time_limit = o.time_limit;
  }
  if (getenv) {
    const char* a = getenv("OMPI_ALLOW_RUN_AS_ROOT");
    const char* b = getenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM");
    if (a && b && std::string(a) == "1" && std::string(b) == "1") spec.allow_run_as_root = true;
  }
  if (spec.stdin_target.kind == StdinTarget::Kind::Rank && spec.stdin_target.rank != 0 &&
      spec.apps.empty())
    throw UsageError("--stdin given without a program");
  return spec;
}

std::string help_text() {
  return R"(Usage: mpirun-sf [OPTIONS] PROGRAM [ARGS...] [: [OPTIONS] PROGRAM [ARGS...]]...

Runs an MPI program like Open MPI's mpirun, on an impromptu cluster made by cloning this
machine (SnowFlock). Options follow mpirun's; single-dash long forms (-np, -wdir) work too.

Processes and placement
  -np, -n, -c N             number of processes of this application context
  --oversubscribe           allow more processes than slots; --nooversubscribe forbids it
  --clones N                machines to run on, this one counted (--clones 4: this + 3 clones)
  --procs-per-clone P       processes per machine (also --map-by ppr:P:node, --npernode P)
  --driver sandbox|qemu|xen|auto|none  how to clone (auto: qemu inside a SnowFlock VM,
                              xen inside a Xen guest served by sfd-xen, sandbox elsewhere;
                              none: run everything on this machine)
  --cluster-subnet CIDR     address range of the cluster network (default 10.213.0.0/16)
  --allocator auto|local|slurm  where the machines come from (auto: the nodes of the Slurm
                              allocation mpirun-sf runs in, if any, else this machine and
                              its clones; local: this machine and its clones; slurm: the
                              allocation, or outside one a new one from salloc)
  --partition P, --account A, --time-limit T  what --allocator slurm asks Slurm for
                              (also SF_SLURM_PARTITION, SF_SLURM_ACCOUNT, SF_SLURM_TIME_LIMIT)
  --display-map             print where every rank runs
Environment and files
  -x VAR[=VALUE]            export VAR (with VALUE) to the processes
  --mca KEY VALUE           set Open MPI parameter KEY (as OMPI_MCA_KEY)
  -wdir, --wdir DIR         working directory of the processes
Input and output
  --stdin RANK|all|none     where standard input goes (default: rank 0)
  --tag-output              prefix each line with [1,RANK]<stdout|stderr>:
  --timestamp-output        prefix each line with the time
  --merge-stderr-to-stdout  send the processes' stderr to stdout
  --output-filename DIR     also write output to DIR/1/rank.N/{stdout,stderr}
Control
  --timeout SECONDS         end the job after SECONDS (also MPIEXEC_TIMEOUT); exit status 110
  --allow-run-as-root       allow running as root (or OMPI_ALLOW_RUN_AS_ROOT=1 and
                            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
  --cleanup                 remove what a crashed run left behind (namespaces, bridges, files)
  -q, --quiet               fewer messages;  -v, --verbose  more
  -V, --version             print the version;  -h, --help  this text

Exit status: 0 if every process exits 0; otherwise that of the lowest failing rank; the
MPI_Abort error code; 128+N for a rank killed by signal N; 110 on --timeout; 1 for usage errors.
See mpirun-sf(1).
)";
}

}  // namespace sf::mpirun
