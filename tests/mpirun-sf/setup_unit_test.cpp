// The per-node setup steps of mpirun-sf/src/job_setup.hpp that decide from the machine.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "job_setup.hpp"
#include "temp_dir.hpp"

namespace fs = std::filesystem;
using sf::mpirun::has_fabric_devices;

namespace {

// A fake root with the directories has_fabric_devices looks at, empty.
class FabricDevices : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(tmp_.ok()) << tmp_.error();
    root_ = tmp_.fs_path();
    for (const char* d : {"sys/class/infiniband", "sys/class/cxi", "sys/class/net/eth0", "dev/pts"})
      fs::create_directories(root_ / d);
    for (const char* f : {"dev/null", "dev/tty1", "dev/hfi", "dev/xipath"}) std::ofstream(root_ / f).put('\n');
  }
  sf::test::TempDir tmp_{"fabric"};
  fs::path root_;
};

TEST_F(FabricDevices, AMachineWithEthernetOnlyHasNone) {
  EXPECT_FALSE(has_fabric_devices(root_.string()));
  fs::remove_all(root_ / "sys/class/infiniband");  // no RDMA stack loaded at all
  fs::remove_all(root_ / "sys/class/cxi");
  EXPECT_FALSE(has_fabric_devices(root_.string()));
}

TEST_F(FabricDevices, AnRdmaDeviceCounts) {
  fs::create_directory(root_ / "sys/class/infiniband/mlx5_0");
  EXPECT_TRUE(has_fabric_devices(root_.string()));
}

TEST_F(FabricDevices, ASlingshotNicCounts) {
  fs::create_directory(root_ / "sys/class/cxi/cxi0");
  EXPECT_TRUE(has_fabric_devices(root_.string()));
}

TEST_F(FabricDevices, PsmCharacterDevicesCount) {
  std::ofstream(root_ / "dev/hfi1_0").put('\n');
  EXPECT_TRUE(has_fabric_devices(root_.string()));
  fs::remove(root_ / "dev/hfi1_0");
  std::ofstream(root_ / "dev/ipath").put('\n');
  EXPECT_TRUE(has_fabric_devices(root_.string()));
}

}  // namespace
