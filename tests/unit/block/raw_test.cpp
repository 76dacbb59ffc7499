#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include "kiln/block/image.h"
#include "kiln/block/protocol.h"
#include "kiln/common/error.h"

namespace kiln::block {
namespace {

namespace fs = std::filesystem;

class RawTest : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / ("kiln-raw-test-" + std::to_string(getpid()) + "-" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(directory_);
  }
  void TearDown() override { fs::remove_all(directory_); }

  std::string path(const char* name) const { return (directory_ / name).string(); }

  std::string create_raw(const char* name, uint64_t size, std::string_view options = "") {
    std::string file = path(name);
    CreateOptions create = parse_create_options(*find_format("raw"), options);
    create.size = size;
    create_image(file, "raw", create);
    return file;
  }

  static std::vector<std::byte> pattern(size_t size, uint8_t seed) {
    std::vector<std::byte> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = std::byte(static_cast<uint8_t>(seed + i * 7));
    return data;
  }

  fs::path directory_;
};

TEST_F(RawTest, CreateMakesSparseFileOfTheRightSize) {
  std::string file = create_raw("a.raw", 64 << 20);
  EXPECT_EQ(fs::file_size(file), 64u << 20);
  struct stat st {};
  ASSERT_EQ(stat(file.c_str(), &st), 0);
  EXPECT_LE(st.st_blocks * 512, 64 * 1024);  // only the first block is allocated
}

TEST_F(RawTest, CreateSummaryListsGivenOptions) {
  CreateOptions options = parse_create_options(*find_format("raw"), "preallocation=falloc");
  options.size = 1 << 20;
  EXPECT_EQ(create_image(path("b.raw"), "raw", options), "fmt=raw size=1048576 preallocation=falloc");
  struct stat st {};
  ASSERT_EQ(stat(path("b.raw").c_str(), &st), 0);
  EXPECT_GE(st.st_blocks * 512, 1 << 20);
}

TEST_F(RawTest, UnknownCreateOptionIsRefused) {
  EXPECT_THROW(parse_create_options(*find_format("raw"), "foo=bar"), Error);
}

TEST_F(RawTest, WriteThenReadBack) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto image = Image::open(file, {.format = "raw"});
  auto data = pattern(8192, 3);
  image->write(4096, data);
  std::vector<std::byte> back(8192);
  image->read(4096, back);
  EXPECT_EQ(back, data);
}

TEST_F(RawTest, ProbingFindsRawAndGuardsTheFirstSector) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto image = Image::open(file, {});
  EXPECT_EQ(image->format(), "raw");
  // Plain data into sector 0 is fine.
  auto data = pattern(512, 1);
  image->write(0, data);

  // A qcow2 header (magic "QFI\xfb", version 3) into sector 0 of a probed raw
  // image would make it probe as qcow2 next time: refused, image unchanged.
  std::vector<std::byte> header(512, std::byte{0});
  const unsigned char magic[] = {'Q', 'F', 'I', 0xfb, 0, 0, 0, 3};
  std::memcpy(header.data(), magic, sizeof magic);
  EXPECT_THROW(image->write(0, header), Error);
  std::vector<std::byte> back(512);
  image->read(0, back);
  EXPECT_EQ(back, data);

  // With the format given explicitly, the same write is the user's choice.
  image.reset();
  auto explicit_raw = Image::open(file, {.format = "raw"});
  explicit_raw->write(0, header);
  explicit_raw->read(0, back);
  EXPECT_EQ(back, header);
}

TEST_F(RawTest, OutOfRangeRequestsAreRefused) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto image = Image::open(file, {.format = "raw"});
  std::vector<std::byte> buffer(4096);
  EXPECT_THROW(image->read((1 << 20) - 100, buffer), Error);
  EXPECT_THROW(image->write(1 << 21, buffer), Error);
}

TEST_F(RawTest, ReadOnlyImageRefusesWrites) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto image = Image::open(file, {.format = "raw", .read_only = true});
  std::vector<std::byte> buffer(512);
  EXPECT_THROW(image->write(0, buffer), Error);
}

TEST_F(RawTest, MissingFileNamesTheFileAndCause) {
  try {
    Image::open(path("missing.raw"), {});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.errno_value(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("missing.raw"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("No such file or directory"), std::string::npos);
  }
}

TEST_F(RawTest, UnknownFormatIsRefused) {
  std::string file = create_raw("a.raw", 1 << 20);
  EXPECT_THROW(Image::open(file, {.format = "nonsense"}), Error);
}

TEST_F(RawTest, OffsetAndSizeOptionsSelectAWindow) {
  std::string file = create_raw("a.raw", 1 << 20);
  {
    auto whole = Image::open(file, {.format = "raw"});
    whole->write(65536, pattern(4096, 9));
  }
  auto window = Image::open(file, {.format = "raw", .driver_options = {{"offset", "64k"}, {"size", "128k"}}});
  EXPECT_EQ(window->size(), 128u << 10);
  std::vector<std::byte> back(4096);
  window->read(0, back);
  EXPECT_EQ(back, pattern(4096, 9));
  EXPECT_THROW(Image::open(file, {.format = "raw", .driver_options = {{"offset", "1M"}, {"size", "1"}}}), Error);
}

TEST_F(RawTest, BlockStatusSeesHolesAndData) {
  std::string file = create_raw("a.raw", 4 << 20);
  auto image = Image::open(file, {.format = "raw"});
  image->write(2 << 20, pattern(65536, 5));
  image->flush();
  BlockStatus head = image->block_status(1 << 20, 1 << 20);
  EXPECT_TRUE(head.flags & kStatusZero);
  EXPECT_FALSE(head.flags & kStatusData);
  EXPECT_EQ(head.length, 1u << 20);
  BlockStatus data = image->block_status(2 << 20, 1 << 20);
  EXPECT_TRUE(data.flags & kStatusData);
  EXPECT_EQ(data.length, 65536u);
}

TEST_F(RawTest, WriteZeroesWithUnmapPunchesAHole) {
  std::string file = create_raw("a.raw", 4 << 20);
  auto image = Image::open(file, {.format = "raw"});
  image->write(0, pattern(1 << 20, 1));
  image->write_zeroes(0, 1 << 20, {.may_unmap = true});
  std::vector<std::byte> back(1 << 20);
  image->read(0, back);
  EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](std::byte b) { return b == std::byte{0}; }));
  EXPECT_TRUE(image->block_status(0, 1 << 20).flags & kStatusZero);
}

TEST_F(RawTest, TruncateGrowsAndShrinksOnlyWhenAllowed) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto image = Image::open(file, {.format = "raw"});
  image->truncate(2 << 20, Preallocation::Off, false);
  EXPECT_EQ(image->size(), 2u << 20);
  EXPECT_THROW(image->truncate(1 << 20, Preallocation::Off, false), Error);
  image->truncate(1 << 20, Preallocation::Off, true);
  EXPECT_EQ(fs::file_size(file), 1u << 20);
}

TEST_F(RawTest, ConcurrentWritersFromManyThreads) {
  constexpr size_t kBlock = 4096;
  constexpr size_t kBlocks = 1024;
  std::string file = create_raw("a.raw", kBlock * kBlocks);
  auto image = Image::open(file, {.format = "raw"});
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (size_t block = static_cast<size_t>(t); block < kBlocks; block += 8) {
        image->write(block * kBlock, pattern(kBlock, static_cast<uint8_t>(block)));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<std::byte> back(kBlock);
  for (size_t block = 0; block < kBlocks; ++block) {
    image->read(block * kBlock, back);
    ASSERT_EQ(back, pattern(kBlock, static_cast<uint8_t>(block))) << block;
  }
}

TEST_F(RawTest, MisalignedConcurrentWritesWithCacheNone) {
  std::string file = create_raw("a.raw", 1 << 20);
  std::unique_ptr<Image> image;
  try {
    image = Image::open(file, {.format = "raw", .cache = CacheMode::None});
  } catch (const Error& e) {
    GTEST_SKIP() << "O_DIRECT not supported here: " << e.what();
  }
  // Neighbouring 100-byte writes share 512-byte blocks; read-modify-write must not lose any.
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = t; i < 400; i += 4) image->write(static_cast<uint64_t>(i) * 100 + 1, pattern(100, static_cast<uint8_t>(i)));
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<std::byte> back(100);
  for (int i = 0; i < 400; ++i) {
    image->read(static_cast<uint64_t>(i) * 100 + 1, back);
    ASSERT_EQ(back, pattern(100, static_cast<uint8_t>(i))) << i;
  }
}

TEST_F(RawTest, WriterLockExcludesSecondWriter) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto writer = Image::open(file, {.format = "raw"});
  EXPECT_THROW(Image::open(file, {.format = "raw"}), Error);
  // Raw readers hold no metadata, so (as with qemu) they may read alongside a writer.
  EXPECT_NO_THROW(Image::open(file, {.format = "raw", .read_only = true}));
}

TEST_F(RawTest, ReadersDoNotBlockWriters) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto first = Image::open(file, {.format = "raw", .read_only = true});
  EXPECT_NO_THROW(Image::open(file, {.format = "raw", .read_only = true}));
  EXPECT_NO_THROW(Image::open(file, {.format = "raw"}));
}

TEST_F(RawTest, LockBytesFollowQemuLayout) {
  std::string file = create_raw("a.raw", 1 << 20);
  auto writer = Image::open(file, {.format = "raw"});
  // A writer holds "uses write" (101) and "does not share write" (201) as shared OFD locks.
  int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  for (off_t byte : {100, 101, 103, 201, 203}) {
    struct flock probe {};
    probe.l_type = F_WRLCK;
    probe.l_whence = SEEK_SET;
    probe.l_start = byte;
    probe.l_len = 1;
    ASSERT_EQ(fcntl(fd, F_OFD_GETLK, &probe), 0);
    EXPECT_EQ(probe.l_type, F_RDLCK) << "byte " << byte;
  }
  struct flock free_byte {};
  free_byte.l_type = F_WRLCK;
  free_byte.l_whence = SEEK_SET;
  free_byte.l_start = 200;
  free_byte.l_len = 1;
  ASSERT_EQ(fcntl(fd, F_OFD_GETLK, &free_byte), 0);
  EXPECT_EQ(free_byte.l_type, F_UNLCK);
  ::close(fd);
}

TEST_F(RawTest, HostExtentPointsIntoTheFileAndStopsAtItsEnd) {
  std::string file = create_raw("h.raw", 1 << 20);
  {
    auto image = Image::open(file, {.format = "raw"});
    image->write(4096, pattern(8192, 5));
  }
  KeyValueList options;
  options.emplace_back("offset", "4096");
  auto image = Image::open(file, {.format = "raw", .read_only = true, .driver_options = options});
  std::optional<HostExtent> extent = image->top().host_extent(100, 5000);
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(extent->offset, 4196u);
  EXPECT_EQ(extent->length, 5000u);
  // The bytes there are the image's bytes.
  std::vector<std::byte> via_fd(5000), via_image(5000);
  ASSERT_EQ(pread(extent->fd, via_fd.data(), via_fd.size(), static_cast<off_t>(extent->offset)), 5000);
  image->read(100, via_image);
  EXPECT_EQ(via_fd, via_image);
  // Clipped at the end of the file; nothing past it.
  extent = image->top().host_extent((1 << 20) - 4096 - 10, 100);
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(extent->length, 10u);
  EXPECT_FALSE(image->top().host_extent((1 << 20) - 4096, 100).has_value());
}

TEST_F(RawTest, BlockStatusSeesAHolePunchedInsideAKnownDataRun) {
  std::string file = create_raw("run.raw", 4 << 20);
  auto image = Image::open(file, {.format = "raw"});
  image->write(0, pattern(4 << 20, 9));
  BlockStatus status = image->top().block_status(0, 4 << 20);
  ASSERT_TRUE(status.flags & kStatusData);
  ASSERT_EQ(status.length, 4u << 20);  // the run [0, 4 MiB) is now known
  image->discard(1 << 20, 1 << 20);
  status = image->top().block_status(1 << 20, 1 << 20);
  EXPECT_FALSE(status.flags & kStatusData) << "a remembered data run survived the discard";
  image->write(1 << 20, pattern(65536, 1));
  status = image->top().block_status(2 << 20, 65536);
  EXPECT_TRUE(status.flags & kStatusData);
  image->write_zeroes(2 << 20, 1 << 20, {.may_unmap = true});
  status = image->top().block_status((2 << 20) + 4096, 4096);
  EXPECT_FALSE(status.flags & kStatusData) << "a remembered data run survived the zeroing";
}

}  // namespace
}  // namespace kiln::block
