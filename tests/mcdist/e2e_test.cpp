// mcdist end-to-end tests of the tool's user-facing errors and the packet printer (no network).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace {

const std::string kTool = MCDIST_TOOL;

struct Output {
  int code;
  std::string text;
};

Output run(const std::string& args) {
  std::string cmd = kTool + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string text;
  char buf[4096];
  while (p && fgets(buf, sizeof buf, p)) text += buf;
  int rc = p ? pclose(p) : -1;
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, text};
}

std::string temp_path(const std::string& name) {
  return "/tmp/sft-mcdist-e2e-" + std::to_string(getpid()) + "-" + name;
}

TEST(McdistTool, RefusesToRunWithoutAnInterface) {
  auto key = temp_path("key");
  std::ofstream(key) << std::string(64, 'a') << "\n";
  auto out = run("recv /dev/null --key-file " + key);
  EXPECT_EQ(out.code, 2);
  EXPECT_NE(out.text.find("iface"), std::string::npos) << out.text;
  std::remove(key.c_str());
}

TEST(McdistTool, NamesAMissingInterface) {
  auto key = temp_path("key");
  std::ofstream(key) << std::string(64, 'a') << "\n";
  auto out = run("recv /dev/null --iface sft-nonexistent0 --key-file " + key);
  EXPECT_NE(out.code, 0);
  EXPECT_NE(out.text.find("'sft-nonexistent0' does not exist"), std::string::npos) << out.text;
  std::remove(key.c_str());
}

TEST(McdistTool, RejectsABadKeyAndANonMulticastGroup) {
  auto key = temp_path("badkey");
  std::ofstream(key) << "xyz\n";
  auto out = run("recv /dev/null --iface lo --key-file " + key);
  EXPECT_EQ(out.code, 2);
  EXPECT_NE(out.text.find("64 hex digits"), std::string::npos) << out.text;
  std::ofstream(key) << std::string(64, 'b') << "\n";
  out = run("recv /dev/null --iface lo --group 10.0.0.1 --key-file " + key);
  EXPECT_NE(out.code, 0);
  EXPECT_NE(out.text.find("not an IPv4 multicast group"), std::string::npos) << out.text;
  std::remove(key.c_str());
}

TEST(McdistTool, DecodePrintsMalformedForGarbage) {
  auto file = temp_path("garbage");
  std::ofstream(file) << "this is not an mcdist packet, it is long enough to be read as one though......"
                         "..................................................";
  auto out = run("decode " + file);
  EXPECT_NE(out.text.find("MALFORMED"), std::string::npos) << out.text;
  EXPECT_NE(out.text.find("bad magic"), std::string::npos) << out.text;
  std::remove(file.c_str());
}

}  // namespace
