#include "kiln/block/snapshot_overlay.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "kiln/common/error.h"

namespace kiln::block {
namespace {

namespace fs = std::filesystem;

// A base image in memory that counts writes (the overlay must never write it).
class MemoryNode final : public Node {
 public:
  explicit MemoryNode(std::vector<std::byte> data) : data_(std::move(data)) {}
  std::string_view driver_name() const override { return "memory"; }
  const std::string& filename() const override { return name_; }
  uint64_t size() const override { return data_.size(); }
  bool read_only() const override { return true; }
  void read(uint64_t offset, std::span<std::byte> buffer) override {
    ASSERT_LE(offset + buffer.size(), data_.size());
    std::memcpy(buffer.data(), data_.data() + offset, buffer.size());
  }
  void write(uint64_t, std::span<const std::byte>, WriteFlags) override { ++writes; }
  void flush() override {}
  BlockStatus block_status(uint64_t, uint64_t length) override {
    return {.length = length, .flags = kStatusData | kStatusAllocated, .host_offset = 0, .host_file = {}};
  }
  std::atomic<int> writes{0};

 private:
  std::string name_ = "memory-base";
  std::vector<std::byte> data_;
};

std::vector<std::byte> pattern_bytes(size_t size, unsigned seed) {
  std::vector<std::byte> bytes(size);
  std::mt19937 random(seed);
  for (auto& b : bytes) b = static_cast<std::byte>(random());
  return bytes;
}

std::vector<std::byte> filled(size_t size, int value) { return std::vector<std::byte>(size, static_cast<std::byte>(value)); }

class SnapshotOverlayTest : public ::testing::Test {
 protected:
  static constexpr uint64_t kSize = 1 << 20;
  static constexpr uint32_t kCluster = 64 * 1024;

  void SetUp() override {
    directory_ = fs::temp_directory_path() / ("kiln-overlay-test-" + std::to_string(getpid()) + "-" +
                                              ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(directory_);
    base_data_ = pattern_bytes(kSize, 1);
    base_ = std::make_unique<MemoryNode>(base_data_);
    overlay_ = create_snapshot_overlay(*base_, {.cluster_size = kCluster, .temp_dir = directory_.string(), .read_only = false});
  }
  void TearDown() override {
    overlay_.reset();
    fs::remove_all(directory_);
  }

  std::vector<std::byte> read(uint64_t offset, size_t length) {
    std::vector<std::byte> buffer(length);
    overlay_->read(offset, buffer);
    return buffer;
  }
  std::vector<std::byte> base_slice(uint64_t offset, size_t length) const {
    return {base_data_.begin() + static_cast<ptrdiff_t>(offset), base_data_.begin() + static_cast<ptrdiff_t>(offset + length)};
  }

  fs::path directory_;
  std::vector<std::byte> base_data_;
  std::unique_ptr<MemoryNode> base_;
  std::unique_ptr<Node> overlay_;
};

TEST_F(SnapshotOverlayTest, ReadsBaseUntilWritten) {
  EXPECT_EQ(overlay_->size(), kSize);
  EXPECT_EQ(read(0, kSize), base_data_);
  EXPECT_EQ(overlay_->backing_child(), base_.get());
  EXPECT_EQ(overlay_->cluster_size(), kCluster);
}

TEST_F(SnapshotOverlayTest, WritesStayInOverlay) {
  overlay_->write(kCluster, filled(kCluster, 0x11));
  EXPECT_EQ(read(kCluster, kCluster), filled(kCluster, 0x11));
  EXPECT_EQ(read(0, kCluster), base_slice(0, kCluster));
  EXPECT_EQ(read(2 * kCluster, kCluster), base_slice(2 * kCluster, kCluster));
  EXPECT_EQ(base_->writes, 0);
}

TEST_F(SnapshotOverlayTest, PartialClusterWriteKeepsBaseBytesAround) {
  const uint64_t offset = 3 * kCluster + 1000;
  overlay_->write(offset, filled(100, 0x22));
  auto expected = base_slice(3 * kCluster, kCluster);
  std::fill_n(expected.begin() + 1000, 100, std::byte{0x22});
  EXPECT_EQ(read(3 * kCluster, kCluster), expected);
  // A write spanning a cluster boundary with partial ends on both sides.
  const uint64_t span_offset = 5 * kCluster - 10;
  overlay_->write(span_offset, filled(kCluster + 20, 0x33));
  auto around = base_slice(4 * kCluster, 3 * kCluster);
  std::fill_n(around.begin() + kCluster - 10, kCluster + 20, std::byte{0x33});
  EXPECT_EQ(read(4 * kCluster, 3 * kCluster), around);
}

TEST_F(SnapshotOverlayTest, BlockStatusSeparatesOverlayAndBase) {
  overlay_->write(kCluster + 5, filled(10, 0x44));
  overlay_->write_zeroes(4 * kCluster, 2 * kCluster, {});
  BlockStatus status = overlay_->block_status(0, kSize);
  EXPECT_EQ(status.length, kCluster);
  EXPECT_FALSE(status.flags & kStatusAllocated);
  EXPECT_TRUE(status.flags & kStatusData);  // what the base says
  status = overlay_->block_status(kCluster, kSize - kCluster);
  EXPECT_EQ(status.length, kCluster);
  EXPECT_TRUE(status.flags & kStatusAllocated);
  EXPECT_TRUE(status.flags & kStatusData);
  status = overlay_->block_status(2 * kCluster, kSize - 2 * kCluster);
  EXPECT_EQ(status.length, 2 * kCluster);
  EXPECT_FALSE(status.flags & kStatusAllocated);
  status = overlay_->block_status(4 * kCluster, kSize - 4 * kCluster);
  EXPECT_EQ(status.length, 2 * kCluster);
  EXPECT_TRUE(status.flags & kStatusAllocated);
  EXPECT_TRUE(status.flags & kStatusZero);
  EXPECT_EQ(read(4 * kCluster, 2 * kCluster), filled(2 * kCluster, 0));
}

TEST_F(SnapshotOverlayTest, PartialZeroWriteAndDiscard) {
  overlay_->write_zeroes(100, 200, {});
  auto expected = base_slice(0, kCluster);
  std::fill_n(expected.begin() + 100, 200, std::byte{0});
  EXPECT_EQ(read(0, kCluster), expected);
  // Discard only affects whole clusters; they then read as zeroes.
  overlay_->discard(2 * kCluster - 1, 2 * kCluster + 2);
  EXPECT_EQ(read(2 * kCluster, 2 * kCluster), filled(2 * kCluster, 0));
  EXPECT_EQ(read(kCluster, kCluster), base_slice(kCluster, kCluster));
  EXPECT_EQ(read(4 * kCluster, kCluster), base_slice(4 * kCluster, kCluster));
}

TEST_F(SnapshotOverlayTest, TruncateGrowsWithZeroesAndShrinks) {
  overlay_->truncate(kSize + 3 * kCluster + 7, Preallocation::Off, false);
  EXPECT_EQ(overlay_->size(), kSize + 3 * kCluster + 7);
  EXPECT_EQ(read(kSize, 3 * kCluster + 7), filled(3 * kCluster + 7, 0));
  EXPECT_EQ(read(0, kSize), base_data_);
  EXPECT_THROW(overlay_->truncate(1000, Preallocation::Off, false), Error);
  // Shrinking into a cluster and growing again must not resurrect old bytes.
  overlay_->write(kCluster, filled(kCluster, 0x55));
  overlay_->truncate(kCluster + 100, Preallocation::Off, true);
  overlay_->truncate(kSize, Preallocation::Off, false);
  auto expected = filled(kCluster, 0);
  std::fill_n(expected.begin(), 100, std::byte{0x55});
  EXPECT_EQ(read(kCluster, kCluster), expected);
  EXPECT_EQ(read(5 * kCluster, kCluster), filled(kCluster, 0));  // base data beyond the shrink point is gone too
  EXPECT_EQ(read(0, kCluster), base_slice(0, kCluster));
  EXPECT_EQ(base_->writes, 0);
}

TEST_F(SnapshotOverlayTest, ConcurrentPartialWritesToSharedClusters) {
  // Each thread writes its own 512-byte slots, interleaved with the others'
  // inside the same clusters: copy-up must never lose a neighbour's write.
  constexpr int kThreads = 8;
  constexpr int kSlotsPerThread = 64;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto data = filled(512, 0x80 + t);
      for (int i = 0; i < kSlotsPerThread; ++i) overlay_->write(static_cast<uint64_t>((i * kThreads + t) * 1024 + 256), data);
    });
  }
  for (auto& thread : threads) thread.join();
  auto expected = base_data_;
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kSlotsPerThread; ++i) std::fill_n(expected.begin() + (i * kThreads + t) * 1024 + 256, 512, std::byte(0x80 + t));
  }
  EXPECT_EQ(read(0, kSize), expected);
}

TEST_F(SnapshotOverlayTest, TemporaryFileIsUnlinked) {
  overlay_->write(0, filled(kCluster, 1));
  EXPECT_TRUE(fs::is_empty(directory_));
  EXPECT_GT(overlay_->allocated_size(), 0);
}

TEST_F(SnapshotOverlayTest, ReadOnlyOverlayRefusesWrites) {
  auto read_only = create_snapshot_overlay(*base_, {.cluster_size = kCluster, .temp_dir = directory_.string(), .read_only = true});
  EXPECT_THROW(read_only->write(0, filled(1, 1)), Error);
  EXPECT_THROW(read_only->write_zeroes(0, 1, {}), Error);
  EXPECT_TRUE(read_only->read_only());
}

TEST_F(SnapshotOverlayTest, BadClusterSizeAndMissingDirectoryThrow) {
  EXPECT_THROW(create_snapshot_overlay(*base_, {.cluster_size = 1000, .temp_dir = directory_.string(), .read_only = false}), Error);
  EXPECT_THROW(create_snapshot_overlay(*base_, {.cluster_size = kCluster, .temp_dir = (directory_ / "missing").string(), .read_only = false}),
               Error);
}

TEST_F(SnapshotOverlayTest, OwnsAnImage) {
  const std::string file = (directory_ / "base.raw").string();
  CreateOptions create = parse_create_options(*find_format("raw"), "");
  create.size = kSize;
  create_image(file, "raw", create);
  auto overlay = create_snapshot_overlay(Image::open(file, {.format = "raw", .read_only = true}),
                                         {.cluster_size = kCluster, .temp_dir = directory_.string(), .read_only = false});
  overlay->write(10, filled(20, 0x66));
  std::vector<std::byte> buffer(40);
  overlay->read(0, buffer);
  auto expected = filled(40, 0);
  std::fill_n(expected.begin() + 10, 20, std::byte{0x66});
  EXPECT_EQ(buffer, expected);
  overlay.reset();
  auto reopened = Image::open(file, {.format = "raw", .read_only = true});
  reopened->read(0, buffer);
  EXPECT_EQ(buffer, filled(40, 0));
}

}  // namespace
}  // namespace kiln::block
