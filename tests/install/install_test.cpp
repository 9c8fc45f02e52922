// The installed tree: `cmake --install BUILD --prefix P` into a scratch prefix, then what a
// user or a program of theirs does with it, with nothing from the build or source tree on
// any path (the example source file is copied first).
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

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sf::test::CommandOptions;
using sf::test::CommandResult;

class Installed : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok()) << dir_.error();
    root_ = dir_.fs_path();
    prefix_ = root_ / "prefix";
    CommandOptions o;
    o.timeout = 120s;
    CommandResult r = sf::test::run_command(
        {"cmake", "--install", sf::test::build_path(""), "--prefix", prefix_.string()}, o);
    ASSERT_TRUE(r.exited_with(0)) << r.describe();
    // The library directory as GNUInstallDirs chose it (lib, or lib/<multiarch> under /usr).
    for (const auto& e : fs::recursive_directory_iterator(prefix_))
      if (e.path().filename() == "libsnowflock.so") libdir_ = e.path().parent_path();
    ASSERT_FALSE(libdir_.empty()) << "no libsnowflock.so installed";
    // The Python module's directory: P/lib/python3.X/dist-packages.
    for (const auto& e : fs::recursive_directory_iterator(prefix_))
      if (e.path().filename().string().rfind("snowflock.cpython-", 0) == 0) pythondir_ = e.path().parent_path();
    ASSERT_FALSE(pythondir_.empty()) << "no Python module snowflock installed";
  }
  CommandOptions options() const {
    CommandOptions o;
    o.timeout = 120s;
    o.working_directory = root_.string();
    o.environment = {"PKG_CONFIG_PATH=" + (libdir_ / "pkgconfig").string(), "OMPI_ALLOW_RUN_AS_ROOT=1",
                     "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
    return o;
  }
  sf::test::TempDir dir_{"install", "/var/tmp"};
  fs::path root_, prefix_, libdir_, pythondir_;
};

TEST_F(Installed, EverythingIsWhereItBelongs) {
  for (const char* f : {"bin/mpirun-sf", "bin/sfd", "bin/memtap", "bin/mcdist", "bin/sf-cluster-state",
                        "include/clone-core/sf.h", "share/man/man1/mpirun-sf.1",
                        "share/doc/snowflock-mpi/user-guide.md", "share/doc/snowflock-mpi/README.md",
                        "share/doc/snowflock-mpi/examples/sf_sum.c", "share/doc/snowflock-mpi/examples/sf_sum.py"})
    EXPECT_TRUE(fs::exists(prefix_ / f)) << f;
  EXPECT_TRUE(std::regex_match(fs::relative(pythondir_, prefix_).string(), std::regex(R"(lib/python3\.\d+/dist-packages)")))
      << pythondir_;
  for (const char* f : {"libsnowflock.so", "libsnowflock.so.0", "pkgconfig/snowflock.pc",
                        "cmake/SnowFlock/SnowFlockConfig.cmake", "cmake/SnowFlock/SnowFlockConfigVersion.cmake"})
    EXPECT_TRUE(fs::exists(libdir_ / f)) << f;
  // The library: a SONAME, and only the C API's sf_* symbols exported.
  CommandResult soname = sf::test::run_command({"readelf", "-d", (libdir_ / "libsnowflock.so").string()});
  ASSERT_TRUE(soname.exited_with(0)) << soname.describe();
  EXPECT_NE(soname.stdout_text.find("Library soname: [libsnowflock.so.0]"), std::string::npos) << soname.stdout_text;
  CommandResult symbols =
      sf::test::run_command({"nm", "-D", "--defined-only", (libdir_ / "libsnowflock.so").string()});
  ASSERT_TRUE(symbols.exited_with(0)) << symbols.describe();
  int api = 0;
  for (const auto& line : sf::test::lines_of(symbols.stdout_text)) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(line, m, std::regex(R"([0-9a-f]+ (\w) (\S+))"))) << line;
    if (m[1] == "A") continue;  // the version node
    EXPECT_EQ(m[2].str().rfind("sf_", 0), 0u) << "exported: " << line;
    ++api;
  }
  EXPECT_GE(api, 15) << symbols.stdout_text;
}

// No program or library looks for its shared libraries in the working directory: an empty or
// relative RUNPATH element (CMake pads the build tree's RUNPATH with a ':' for a target it
// later installs, which the loader reads as ".") would let any directory a user runs
// mpirun-sf from supply its libfmt or libpmix.
TEST_F(Installed, NoProgramLoadsLibrariesFromTheWorkingDirectory) {
  std::vector<fs::path> files;
  for (const char* d : {"bin", "sfd"})
    for (const auto& e : fs::directory_iterator(sf::test::build_path(d)))
      if (e.is_regular_file() && access(e.path().c_str(), X_OK) == 0) files.push_back(e.path());
  for (const auto& e : fs::recursive_directory_iterator(prefix_))
    if (e.is_regular_file() && (e.path().parent_path() == prefix_ / "bin" ||
                                e.path().filename().string().find(".so") != std::string::npos))
      files.push_back(e.path());
  int elf = 0;
  for (const auto& f : files) {
    CommandResult r = sf::test::run_command({"readelf", "-d", f.string()});
    if (!r.exited_with(0)) continue;  // a script
    ++elf;
    std::smatch m;
    std::string text = r.stdout_text;
    for (std::regex re(R"(Library r(?:un)?path: \[([^\]]*)\])"); std::regex_search(text, m, re); text = m.suffix()) {
      std::string path = m[1].str() + ":";
      for (size_t pos = 0, end; (end = path.find(':', pos)) != std::string::npos; pos = end + 1) {
        std::string item = path.substr(pos, end - pos);
        EXPECT_TRUE(!item.empty() && (item[0] == '/' || item.rfind("$ORIGIN", 0) == 0))
            << f << ": RUNPATH element '" << item << "' in [" << m[1] << "]";
      }
    }
  }
  EXPECT_GE(elf, 8) << "too few programs found to check";
}

// The installed mpirun-sf, from a directory that is neither tree, on sandbox clones.
TEST_F(Installed, MpirunSfRunsFromAnotherDirectoryOnClones) {
  if (geteuid() != 0) GTEST_SKIP() << "sandbox clones as root here (the cluster tests cover ordinary users)";
  fs::copy_file(sf::test::build_path("examples/hello"), root_ / "hello");
  CommandResult r = sf::test::run_command({(prefix_ / "bin/mpirun-sf").string(), "-np", "4", "--clones", "2", "./hello"},
                                          options());
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  EXPECT_EQ(sf::test::lines_of(r.stdout_text).size(), 4u) << r.describe();
  EXPECT_NE(r.stdout_text.find("-sf1 "), std::string::npos) << r.describe();  // a rank on clone 1
  CommandResult version = sf::test::run_command({(prefix_ / "bin/mpirun-sf").string(), "--version"}, options());
  EXPECT_TRUE(version.exited_with(0)) << version.describe();
}

// A C program built only with `pkg-config --cflags --libs snowflock` clones and joins.
TEST_F(Installed, ACProgramBuiltWithPkgConfigClonesAndJoins) {
  fs::copy_file(sf::test::source_path("examples/sf-api/sf_sum.c"), root_ / "sf_sum.c");
  CommandResult flags = sf::test::run_command({"pkg-config", "--cflags", "--libs", "snowflock"}, options());
  ASSERT_TRUE(flags.exited_with(0)) << flags.describe();
  std::vector<std::string> cc{"cc", "-o", "sf_sum", "sf_sum.c"};
  std::istringstream words(flags.stdout_text);
  for (std::string w; words >> w;) cc.push_back(w);
  cc.push_back("-Wl,-rpath," + libdir_.string());
  CommandResult build = sf::test::run_command(cc, options());
  ASSERT_TRUE(build.exited_with(0)) << build.describe();
  CommandResult ldd = sf::test::run_command({"ldd", (root_ / "sf_sum").string()}, options());
  EXPECT_NE(ldd.stdout_text.find((libdir_ / "libsnowflock.so.0").string()), std::string::npos) << ldd.stdout_text;
  if (geteuid() != 0) GTEST_SKIP() << "sandbox clones as root here";
  CommandResult run = sf::test::run_command({(root_ / "sf_sum").string()}, options());
  ASSERT_TRUE(run.exited_with(0)) << run.describe();
  EXPECT_NE(run.stdout_text.find("(expected 4995000000): ok"), std::string::npos) << run.describe();
}

// The Python module from the installed tree: the installed Python example gives the C
// example's answer (the same input: 10000000 numbers, 4 clones).
TEST_F(Installed, ThePythonExampleGivesTheCExamplesAnswer) {
  CommandOptions o = options();
  o.environment.push_back("PYTHONPATH=" + pythondir_.string());
  CommandResult import = sf::test::run_command(
      {"/usr/bin/python3", "-c", "import snowflock; print(snowflock.__file__)"}, o);
  ASSERT_TRUE(import.exited_with(0)) << import.describe();
  EXPECT_EQ(import.stdout_text.rfind(pythondir_.string(), 0), 0u) << import.stdout_text;
  if (geteuid() != 0) GTEST_SKIP() << "sandbox clones as root here (tests/python covers ordinary users)";
  CommandResult run = sf::test::run_command(
      {"/usr/bin/python3", (prefix_ / "share/doc/snowflock-mpi/examples/sf_sum.py").string()}, o);
  ASSERT_TRUE(run.exited_with(0)) << run.describe();
  EXPECT_NE(run.stdout_text.find("sum 4995000000 (expected 4995000000): ok"), std::string::npos) << run.describe();
  EXPECT_EQ(sf::test::lines_of(run.stdout_text).size(), 6u) << run.describe();  // granted, 4 clones, sum
}

// A CMake project: find_package(SnowFlock) and the imported target SnowFlock::snowflock.
TEST_F(Installed, ACMakeProjectFindsThePackage) {
  fs::create_directories(root_ / "consumer");
  fs::copy_file(sf::test::source_path("examples/sf-api/sf_sum.c"), root_ / "consumer/sf_sum.c");
  std::ofstream(root_ / "consumer/CMakeLists.txt")
      << "cmake_minimum_required(VERSION 3.25)\nproject(consumer C)\nfind_package(SnowFlock 0.1 REQUIRED)\n"
         "add_executable(sf_sum sf_sum.c)\ntarget_link_libraries(sf_sum PRIVATE SnowFlock::snowflock)\n";
  CommandResult configure = sf::test::run_command(
      {"cmake", "-S", (root_ / "consumer").string(), "-B", (root_ / "consumer/b").string(),
       "-DCMAKE_PREFIX_PATH=" + prefix_.string()},
      options());
  ASSERT_TRUE(configure.exited_with(0)) << configure.describe();
  CommandResult build = sf::test::run_command({"cmake", "--build", (root_ / "consumer/b").string()}, options());
  ASSERT_TRUE(build.exited_with(0)) << build.describe();
  CommandResult ldd = sf::test::run_command({"ldd", (root_ / "consumer/b/sf_sum").string()}, options());
  EXPECT_NE(ldd.stdout_text.find((libdir_ / "libsnowflock.so.0").string()), std::string::npos) << ldd.stdout_text;
}

}  // namespace

namespace {

// The Debian package of the same tree (what scripts/package makes from a release build).
TEST(DebianPackage, DeclaresItsDependenciesInstallsAndItsMpirunSfRuns) {
  const sf::test::TempDir dir("deb", "/var/tmp");
  ASSERT_TRUE(dir.ok()) << dir.error();
  const fs::path root = dir.fs_path();
  CommandOptions o;
  o.timeout = 240s;
  o.working_directory = root.string();
  CommandResult pack = sf::test::run_command(
      {"cpack", "-G", "DEB", "-B", (root / "out").string(), "--config", sf::test::build_path("CPackConfig.cmake")}, o);
  ASSERT_TRUE(pack.exited_with(0)) << pack.describe();
  fs::path deb;
  for (const auto& e : fs::directory_iterator(root / "out"))
    if (e.path().extension() == ".deb") deb = e.path();
  ASSERT_FALSE(deb.empty()) << pack.describe();
  EXPECT_EQ(deb.filename().string().rfind("snowflock-mpi_", 0), 0u) << deb;

  CommandResult info = sf::test::run_command({"dpkg-deb", "--info", deb.string()}, o);
  ASSERT_TRUE(info.exited_with(0)) << info.describe();
  for (const char* field : {"Package: snowflock-mpi", "libpmix2", "libhwloc15", "libnl-route-3-200", "Recommends:",
                            "python3 (>= 3."})
    EXPECT_NE(info.stdout_text.find(field), std::string::npos) << field << "\n" << info.stdout_text;
  CommandResult contents = sf::test::run_command({"dpkg-deb", "--contents", deb.string()}, o);
  for (const char* f : {"./usr/bin/mpirun-sf", "./usr/bin/sfd", "./usr/include/clone-core/sf.h",
                        "./usr/share/man/man1/mpirun-sf.1", "libsnowflock.so.0", "snowflock.pc",
                        "./usr/lib/python3/dist-packages/snowflock.cpython-"})
    EXPECT_NE(contents.stdout_text.find(f), std::string::npos) << f;
  // apt-get would install it here: every dependency can be satisfied.
  CommandResult simulate = sf::test::run_command({"apt-get", "install", "-s", deb.string()}, o);
  EXPECT_TRUE(simulate.exited_with(0)) << simulate.describe();
  EXPECT_NE(simulate.stdout_text.find("Inst snowflock-mpi"), std::string::npos) << simulate.describe();

  // Its mpirun-sf, unpacked into a scratch root, runs a job.
  CommandResult unpack = sf::test::run_command({"dpkg-deb", "-x", deb.string(), (root / "root").string()}, o);
  ASSERT_TRUE(unpack.exited_with(0)) << unpack.describe();
  fs::copy_file(sf::test::build_path("examples/hello"), root / "hello");
  o.environment = {"OMPI_ALLOW_RUN_AS_ROOT=1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1"};
  CommandResult run = sf::test::run_command(
      {(root / "root/usr/bin/mpirun-sf").string(), "-np", "2", "--driver", "none", "./hello"}, o);
  EXPECT_TRUE(run.exited_with(0)) << run.describe();
  EXPECT_EQ(sf::test::lines_of(run.stdout_text).size(), 2u) << run.describe();
  // Its Python module imports in Debian's python3 from where the package puts it.
  o.environment.push_back("PYTHONPATH=" + (root / "root/usr/lib/python3/dist-packages").string());
  CommandResult import = sf::test::run_command({"/usr/bin/python3", "-c", "import snowflock; print(snowflock.ERR_BAD_STATE)"}, o);
  EXPECT_TRUE(import.exited_with(0)) << import.describe();
  EXPECT_EQ(import.stdout_text, "11\n") << import.describe();
}

}  // namespace

namespace {

// The environment module: Lmod's `module load` puts the installed tree on every path a user
// and a build need.
TEST_F(Installed, TheEnvironmentModuleSetsThePaths) {
  ASSERT_TRUE(fs::exists("/usr/share/lmod/lmod/init/bash")) << "Lmod is not installed: run scripts/setup";
  const std::string script =
      "source /usr/share/lmod/lmod/init/bash && module use " + (prefix_ / "share/modulefiles").string() +
      " && module load snowflock-mpi && command -v mpirun-sf && pkg-config --variable=libdir snowflock && "
      "mpirun-sf --version | head -1 && echo \"$CMAKE_PREFIX_PATH\" && echo \"$MANPATH\" && "
      "/usr/bin/python3 -c 'import snowflock, os; print(os.path.dirname(snowflock.__file__))'";
  CommandOptions o = options();
  o.unset_environment = {"PKG_CONFIG_PATH", "MANPATH", "CMAKE_PREFIX_PATH", "MODULEPATH", "LOADEDMODULES", "PYTHONPATH"};
  CommandResult r = sf::test::run_command({"bash", "--norc", "--noprofile", "-c", script}, o);
  ASSERT_TRUE(r.exited_with(0)) << r.describe();
  auto lines = sf::test::lines_of(r.stdout_text);
  ASSERT_EQ(lines.size(), 6u) << r.describe();
  EXPECT_EQ(fs::path(lines[0]), prefix_ / "bin/mpirun-sf");
  EXPECT_EQ(fs::weakly_canonical(lines[1]), fs::weakly_canonical(libdir_));
  EXPECT_EQ(lines[2].rfind("mpirun-sf (SnowFlock MPI)", 0), 0u) << lines[2];
  EXPECT_EQ(lines[3].rfind(prefix_.string(), 0), 0u) << lines[3];
  EXPECT_EQ(lines[4].rfind((prefix_ / "share/man").string(), 0), 0u) << lines[4];
  EXPECT_EQ(fs::path(lines[5]), pythondir_);
}

}  // namespace
