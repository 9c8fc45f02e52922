// Real applications that Debian packages for Open MPI, under mpirun-sf on sandbox clones and
// under Debian's mpirun in the same test, with their results compared: LAMMPS (the
// Lennard-Jones melt: the whole thermo table), HPCC (residuals, error counts, pass lines) and
// NetPIPE between two clones (every message size up to 64 KiB goes through). Sizes are small
// so each runs in seconds; scripts/bench apps measures the full sizes. Nothing here asserts a
// duration.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "program_output.hpp"
#include "run_command.hpp"
#include "temp_dir.hpp"

namespace {

using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;
namespace fs = std::filesystem;

class RealApps : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(dir_.ok()) << dir_.error(); }
  CommandResult run(std::vector<std::string> argv) {
    CommandOptions o;
    o.timeout = 300s;
    o.working_directory = dir_.path();
    o.environment = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
    return sf::test::run_command(argv, o);
  }
  CommandResult mpirun(int np, std::vector<std::string> program) {
    std::vector<std::string> argv{"mpirun", "--oversubscribe", "-np", std::to_string(np)};
    argv.insert(argv.end(), program.begin(), program.end());
    return run(argv);
  }
  CommandResult mpirun_sf_clones(int np, int clones, std::vector<std::string> program) {
    std::vector<std::string> argv{SF_MPIRUN_SF, "-np", std::to_string(np), "--clones", std::to_string(clones)};
    argv.insert(argv.end(), program.begin(), program.end());
    return run(argv);
  }
  std::string read(const std::string& name) {
    std::ifstream in(dir_ / name);
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  sf::test::TempDir dir_{"apps", "/var/tmp"};
};

// What of HPCC's output must equal mpirun's: HPL's scaled residual and pass line, the
// residual-check counts, PTRANS' residual, the FFT errors and RandomAccess' verdicts (it
// tolerates lost updates by design, so its error counts vary from run to run under any launcher).
std::string hpcc_results(const std::string& text) {
  static const std::regex result(
      R"((\|\|Ax-b\|\|[^\n]*|[^\n]*tests completed and (passed|failed) residual checks[^\n]*|)"
      R"(Found \d+ errors in (\d+) locations \((passed|failed)\)\.|(Success|\w*_residual|\w*maxErr)=[^\n]*))");
  std::string found;
  for (std::sregex_iterator it(text.begin(), text.end(), result), end; it != end; ++it)
    found += (*it)[3].matched ? "RandomAccess over " + (*it)[3].str() + " locations (" + (*it)[4].str() + ")\n"
                              : it->str() + "\n";
  return found;
}

TEST_F(RealApps, LammpsMeltGivesMpirunsThermoTableOnClones) {
  const fs::path melt = "/usr/share/lammps/examples/melt/in.melt";
  ASSERT_TRUE(fs::exists(melt)) << "LAMMPS' examples are not installed: run scripts/setup";
  std::ifstream in(melt);
  std::stringstream text;
  text << in.rdbuf();
  std::ofstream(dir_ / "in.melt") << std::regex_replace(text.str(), std::regex(R"((^|\n)run\s+\d+)"), "$1run 200");
  const std::vector<std::string> lmp{"lmp", "-in", "in.melt", "-log", "none", "-echo", "none"};
  CommandResult ref = mpirun(4, lmp);
  ASSERT_TRUE(ref.exited_with(0)) << ref.describe();
  CommandResult sf = mpirun_sf_clones(4, 2, lmp);
  ASSERT_TRUE(sf.exited_with(0)) << sf.describe();
  const std::regex table(R"(\n\s*Step [^\n]*\n(\s+\d+ [^\n]*\n)+)");
  std::smatch a, b;
  ASSERT_TRUE(std::regex_search(ref.stdout_text, a, table)) << ref.stdout_text;
  ASSERT_TRUE(std::regex_search(sf.stdout_text, b, table)) << sf.stdout_text;
  EXPECT_EQ(b.str(), a.str());
  EXPECT_TRUE(std::regex_search(a.str(), std::regex(R"(\n\s+200 )"))) << a.str();  // all 200 steps
  EXPECT_NE(sf.stdout_text.find("1 by 2 by 2 MPI processor grid"), std::string::npos) << sf.stdout_text;
}

TEST_F(RealApps, HpccPassesWithMpirunsResidualsOnClones) {
  std::ofstream(dir_ / "hpccinf.txt")
      << "HPLinpack benchmark input file\nInnovative Computing Laboratory, University of Tennessee\n"
         "HPL.out      output file name (if any)\n8            device out (6=stdout,7=stderr,file)\n"
         "1            # of problems sizes (N)\n400          Ns\n1            # of NBs\n40           NBs\n"
         "0            PMAP process mapping (0=Row-,1=Column-major)\n1            # of process grids (P x Q)\n"
         "2            Ps\n2            Qs\n16.0         threshold\n1            # of panel fact\n"
         "2            PFACTs (0=left, 1=Crout, 2=Right)\n1            # of recursive stopping criterium\n"
         "4            NBMINs (>= 1)\n1            # of panels in recursion\n2            NDIVs\n"
         "1            # of recursive panel fact.\n1            RFACTs (0=left, 1=Crout, 2=Right)\n"
         "1            # of broadcast\n1            BCASTs (0=1rg,1=1rM,2=2rg,3=2rM,4=Lng,5=LnM)\n"
         "1            # of lookahead depth\n1            DEPTHs (>=0)\n2            SWAP (0=bin-exch,1=long,2=mix)\n"
         "64           swapping threshold\n0            L1 in (0=transposed,1=no-transposed) form\n"
         "0            U  in (0=transposed,1=no-transposed) form\n1            Equilibration (0=no,1=yes)\n"
         "8            memory alignment in double (> 0)\n"
         "##### This line (no. 32) is ignored (it serves as a separator). ######\n"
         "0                               Number of additional problem sizes for PTRANS\n"
         "1200 10000 30000                values of N\n"
         "0                               number of additional blocking sizes for PTRANS\n"
         "40 9 8 13 13 20 16 32 64        values of NB\n";
  CommandResult ref = mpirun(4, {"hpcc"});
  ASSERT_TRUE(ref.exited_with(0)) << ref.describe();
  const std::string ref_results = hpcc_results(read("hpccoutf.txt"));
  fs::remove(dir_ / "hpccoutf.txt");
  CommandResult sf = mpirun_sf_clones(4, 2, {"hpcc"});
  ASSERT_TRUE(sf.exited_with(0)) << sf.describe();
  const std::string out = read("hpccoutf.txt");
  EXPECT_EQ(hpcc_results(out), ref_results);
  EXPECT_NE(ref_results.find("Success=1\n"), std::string::npos) << ref_results;
  EXPECT_NE(ref_results.find("...... PASSED"), std::string::npos) << ref_results;
  EXPECT_NE(ref_results.find("RandomAccess over "), std::string::npos) << ref_results;
  EXPECT_EQ(ref_results.find("(failed)"), std::string::npos) << ref_results;
  EXPECT_NE(out.find("Number of nodes: 4"), std::string::npos);
}

TEST_F(RealApps, NetpipeRunsBetweenTwoClones) {
  CommandResult r = mpirun_sf_clones(2, 2, {"NPopenmpi", "-u", "65536", "-p", "0", "-o", "np.out"});
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  // NetPIPE prints each rank's host: rank 1 runs on the clone.
  EXPECT_TRUE(std::regex_search(r.stdout_text, std::regex(R"((^|\n)1: \S+-sf1\n)"))) << r.stdout_text;
  auto rows = sf::test::lines_of(read("np.out"));
  ASSERT_FALSE(rows.empty());
  std::istringstream first(rows.front()), last(rows.back());
  long bytes_first = 0, bytes_last = 0;
  double mbps = 0;
  first >> bytes_first >> mbps;
  EXPECT_EQ(bytes_first, 1);
  EXPECT_GT(mbps, 0);
  last >> bytes_last >> mbps;
  EXPECT_EQ(bytes_last, 65536);
  EXPECT_GT(mbps, 0);
}

}  // namespace
