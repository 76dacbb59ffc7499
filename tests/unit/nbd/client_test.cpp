// The block layer's nbd protocol node against kiln-nbd's server.
#include <cstring>

#include "fixture.h"
#include "kiln/common/error.h"

namespace kiln::nbd::test {
namespace {

class NbdClientTest : public ::testing::Test {
 protected:
  void SetUp() override { write_file(dir_.path() / "disk.raw", kSize); }
  std::unique_ptr<RunningServer> start(ServerSetup setup = {}) {
    return std::make_unique<RunningServer>(dir_.path() / "disk.raw", setup, dir_.path() / "nbd.sock");
  }
  std::unique_ptr<block::Image> open(const std::string& name, bool read_only) {
    block::OpenOptions options;
    options.format = "raw";
    options.read_only = read_only;
    return block::Image::open(name, options);
  }
  static constexpr uint64_t kSize = 8 << 20;
  TempDir dir_;
};

TEST_F(NbdClientTest, ImageOpensNbdUriAndReadsWrites) {
  auto server = start();
  auto image = open(server->uri(), false);
  EXPECT_EQ(image->size(), kSize);
  EXPECT_EQ(image->top().file_child()->driver_name(), "nbd");
  std::vector<std::byte> data(100000, std::byte{0x5a});
  image->write(12345, data, {.fua = true});
  image->flush();
  std::vector<std::byte> back(data.size());
  image->read(12345, back);
  EXPECT_EQ(back, data);
  image->write_zeroes(12345, 1000, {});
  image->read(12345, back);
  EXPECT_EQ(back[0], std::byte{0});
  EXPECT_EQ(back[1000], std::byte{0x5a});
}

TEST_F(NbdClientTest, MultiConnExportIsUsedFromManyThreads) {
  auto server = start({.multi_conn = true});
  auto image = open(server->uri(), false);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::byte> data(64 << 10, std::byte(t + 1)), back(64 << 10);
      for (int round = 0; round < 8; ++round) {
        const uint64_t offset = (t * 8 + round) * data.size();
        image->write(offset, data);
        image->read(offset, back);
        EXPECT_EQ(back, data);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  image->flush();
  std::vector<std::byte> direct(64 << 10);
  server->image().read(3 * 8 * direct.size(), direct);
  EXPECT_EQ(direct[0], std::byte{4});
}

TEST_F(NbdClientTest, BlockStatusMapsHolesToZero) {
  auto server = start();
  auto image = open(server->uri(), true);
  block::BlockStatus status = image->top().file_child()->block_status(0, kSize);
  EXPECT_TRUE(status.flags & block::kStatusZero);
  EXPECT_FALSE(status.flags & block::kStatusData);
}

TEST_F(NbdClientTest, LegacySyntaxIsRewritten) {
  auto server = start({.name = "exp"});
  auto image = open("nbd:unix:" + (dir_.path() / "nbd.sock").string() + ":exportname=exp", true);
  EXPECT_EQ(image->size(), kSize);
}

TEST_F(NbdClientTest, ReadOnlyExportCannotBeOpenedForWriting) {
  auto server = start({.read_only = true});
  try {
    open(server->uri(), false);
    FAIL() << "opened a read-only export for writing";
  } catch (const Error& error) {
    EXPECT_EQ(error.errno_value(), EACCES);
    EXPECT_NE(std::string(error.what()).find("read-only"), std::string::npos);
  }
}

TEST_F(NbdClientTest, MissingServerGivesOneLineError) {
  try {
    open("nbd+unix:///?socket=" + (dir_.path() / "none.sock").string(), true);
    FAIL();
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("Could not open"), std::string::npos);
    EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos);
  }
}

}  // namespace
}  // namespace kiln::nbd::test
