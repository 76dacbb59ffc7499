// Persistent dirty bitmaps: read what qemu stored, track kiln's own writes,
// store them so qemu reads them back, in_use while open and after a crash.
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

namespace kiln::block::test {
namespace {

using Runs = std::vector<std::pair<uint64_t, uint64_t>>;  // dirty [offset, length)

// Every dirty run of bitmap `name`, from the block layer.
Runs dirty_runs(Node& node, const std::string& name) {
  Runs runs;
  for (uint64_t offset = 0; offset < node.size();) {
    const Node::DirtyRun run = node.dirty_bitmap_status(name, offset, node.size() - offset);
    EXPECT_GT(run.length, 0u);
    if (run.length == 0) break;
    if (run.dirty) runs.emplace_back(offset, run.length);
    offset += run.length;
  }
  return runs;
}

std::string qemu_info(const std::string& file) { return run("qemu-img info -U --output=json '" + file + "'").output; }

TEST(Qcow2Bitmap, ReadsWhatQemuStored) {
  TempDir dir;
  const std::string file = dir.file("q.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 '" + file + "' 64M").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add '" + file + "' fine").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add -g 1M '" + file + "' coarse").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add --disable '" + file + "' off").status, 0);
  qemu_io(file, "write 1M 64k");
  qemu_io(file, "write 10M 4k");
  qemu_io(file, "discard 20M 128k");
  auto image = open_image(file, true);
  const std::vector<Node::DirtyBitmapInfo> list = image->top().dirty_bitmaps();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].name, "fine");
  EXPECT_EQ(list[0].granularity, 65536u);
  EXPECT_TRUE(list[0].enabled);
  EXPECT_EQ(list[1].granularity, 1u << 20);
  EXPECT_FALSE(list[2].enabled);
  EXPECT_EQ(dirty_runs(image->top(), "fine"), (Runs{{1 << 20, 65536}, {10 << 20, 65536}, {20 << 20, 131072}}));
  EXPECT_EQ(dirty_runs(image->top(), "coarse"), (Runs{{1 << 20, 1 << 20}, {10 << 20, 1 << 20}, {20 << 20, 1 << 20}}));
  EXPECT_TRUE(dirty_runs(image->top(), "off").empty());
  EXPECT_THROW(image->top().dirty_bitmap_status("missing", 0, 1), Error);
}

TEST(Qcow2Bitmap, KilnWritesAreTrackedAndStoredForQemu) {
  TempDir dir;
  const std::string file = dir.file("k.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 '" + file + "' 64M").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add '" + file + "' fine").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add --disable '" + file + "' off").status, 0);
  {
    auto image = open_image(file);
    // While open read-write the bitmaps are marked in use on disk.
    EXPECT_NE(qemu_info(file).find("in-use"), std::string::npos);
    image->write(3 << 20, pattern(4096, 1));
    image->write_zeroes(5 << 20, 65536);
    image->discard(7 << 20, 1 << 20);
    image->top().write_compressed(9 << 20, pattern(65536, 2));
  }
  EXPECT_EQ(qemu_info(file).find("in-use"), std::string::npos);
  expect_qemu_check_clean(file);
  const Runs expected{{3 << 20, 65536}, {5 << 20, 65536}, {7 << 20, 1 << 20}, {9 << 20, 65536}};
  {
    auto image = open_image(file, true);
    EXPECT_EQ(dirty_runs(image->top(), "fine"), expected);
    EXPECT_TRUE(dirty_runs(image->top(), "off").empty());
  }
  // qemu copies the bitmaps kiln stored; kiln reads qemu's copy the same.
  const std::string copy = dir.file("copy.qcow2");
  CommandResult convert = run("qemu-img convert --bitmaps -O qcow2 '" + file + "' '" + copy + "'");
  ASSERT_EQ(convert.status, 0) << convert.output;
  auto image = open_image(copy, true);
  EXPECT_EQ(dirty_runs(image->top(), "fine"), expected);
}

TEST(Qcow2Bitmap, GrowingKeepsBitmapsValid) {
  TempDir dir;
  const std::string file = dir.file("g.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 -o cluster_size=4096 '" + file + "' 16M").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add -g 512 '" + file + "' b").status, 0);  // 4 KiB of bits: one data cluster
  qemu_io(file, "write 8M 512");
  {
    auto image = open_image(file);
    image->top().truncate(256 << 20, Preallocation::Off, false);  // 64 KiB of bits: a bigger table
    image->write(200 << 20, pattern(1024, 3));
  }
  expect_qemu_check_clean(file);
  CommandResult convert = run("qemu-img convert --bitmaps -O qcow2 '" + file + "' '" + dir.file("c.qcow2") + "'");
  ASSERT_EQ(convert.status, 0) << convert.output;
  auto image = open_image(dir.file("c.qcow2"), true);
  EXPECT_EQ(dirty_runs(image->top(), "b"), (Runs{{8 << 20, 512}, {200 << 20, 1024}}));
}

TEST(Qcow2Bitmap, CrashLeavesBitmapInconsistent) {
  TempDir dir;
  const std::string file = dir.file("c.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 '" + file + "' 16M").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add '" + file + "' b").status, 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto image = open_image(file);
    image->write(0, pattern(4096, 1));
    ::_exit(0);  // no close: the bitmap is never stored
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_NE(qemu_info(file).find("in-use"), std::string::npos);
  auto image = open_image(file, true);
  ASSERT_EQ(image->top().dirty_bitmaps().size(), 1u);
  EXPECT_FALSE(image->top().dirty_bitmaps()[0].consistent);
  try {
    image->top().dirty_bitmap_status("b", 0, 4096);
    ADD_FAILURE() << "an in-use bitmap was used";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "Bitmap 'b' is inconsistent and cannot be used");
  }
}

TEST(Qcow2Bitmap, SnapshotApplyRefusedWithActiveBitmaps) {
  TempDir dir;
  const std::string file = dir.file("s.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 '" + file + "' 16M").status, 0);
  ASSERT_EQ(run("qemu-img snapshot -c s1 '" + file + "'").status, 0);
  ASSERT_EQ(run("qemu-img bitmap --add '" + file + "' b").status, 0);
  auto image = open_image(file);
  try {
    image->top().apply_snapshot("s1");
    ADD_FAILURE() << "applied a snapshot under an active bitmap";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "Could not apply snapshot 's1': Device has active dirty bitmaps");
  }
}

}  // namespace
}  // namespace kiln::block::test
