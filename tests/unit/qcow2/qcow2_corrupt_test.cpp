// The corrupt bit: a corruption detected while the image is in use marks the
// image corrupt on disk (as qemu does), refuses every later write, and keeps
// reads working (qemu: after reopening read-only). The same damage is shown
// to qemu-io for comparison.
#include <fstream>

#include "helpers.h"

namespace kiln::block::test {
namespace {

void patch_be64(const std::string& file, uint64_t offset, uint64_t value) {
  std::byte raw[8];
  for (int i = 0; i < 8; ++i) raw[i] = std::byte(value >> (56 - 8 * i));
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(raw), 8);
}

uint64_t read_be64(const std::string& file, uint64_t offset) {
  std::ifstream f(file, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  unsigned char raw[8] = {};
  f.read(reinterpret_cast<char*>(raw), 8);
  uint64_t value = 0;
  for (unsigned char b : raw) value = value << 8 | b;
  return value;
}

void copy_bytes(const std::string& file, uint64_t from, uint64_t to, size_t length) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  std::vector<char> data(length);
  f.seekg(static_cast<std::streamoff>(from));
  f.read(data.data(), static_cast<std::streamsize>(length));
  f.seekp(static_cast<std::streamoff>(to));
  f.write(data.data(), static_cast<std::streamsize>(length));
}

bool corrupt_bit(const std::string& file) {
  CommandResult r = run("qemu-img info -U --output=json '" + file + "'");
  return r.output.find("\"corrupt\": true") != std::string::npos;
}

// 4 MiB image, 64 KiB clusters: header, refcount table, refcount block, L1,
// one L2 table (cluster 4), data for guest 0 (0x01) and guest 1 MiB (0x02).
std::string make_image(const TempDir& dir, const std::string& name) {
  const std::string file = dir.file(name);
  create_qcow2(file, 4 << 20, "");
  auto image = open_image(file);
  image->write(0, pattern(65536, 1));
  image->write(1 << 20, pattern(65536, 2));
  return file;
}

constexpr uint64_t kL2Table = 4 * 65536;

struct Damage {
  const char* what;
  uint64_t entry;          // new L2 entry for guest cluster 0
  bool detected_on_read;   // invalid entries are caught by reads too; overlaps only by writes
  const char* message;     // part of kiln's error
};

TEST(Qcow2Corrupt, DetectedCorruptionSetsBitRefusesWritesKeepsReads) {
  const std::vector<Damage> cases = {
      {"L2 entry into the L1 table", 0x8000000000030000ull, false, "overlaps with the active L1 table"},
      {"L2 entry into the refcount block", 0x8000000000020000ull, false, "overlaps with a refcount block"},
      {"L2 entry into the L2 table itself", 0x8000000000040000ull, false, "overlaps with an active L2 table"},
      {"L2 entry unaligned", 0x8000000000050200ull, true, "unaligned"},
  };
  for (const Damage& damage : cases) {
    SCOPED_TRACE(damage.what);
    TempDir dir;
    const std::string file = make_image(dir, "k.qcow2");
    patch_be64(file, kL2Table, damage.entry);
    const std::string qemu_copy = dir.file("q.qcow2");
    std::filesystem::copy_file(file, qemu_copy);

    {
      auto image = open_image(file);
      std::vector<std::byte> buffer(65536);
      if (damage.detected_on_read) {
        try {
          image->read(0, buffer);
          ADD_FAILURE() << "the damaged entry was read without an error";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(damage.message), std::string::npos) << e.what();
        }
      } else {
        image->read(0, buffer);  // reads do not check for overlaps, as qemu
        try {
          image->write(0, pattern(512, 9));
          ADD_FAILURE() << "a write over metadata succeeded";
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find(damage.message), std::string::npos) << e.what();
        }
      }
      // Marked on disk at once, not only at close.
      EXPECT_TRUE(corrupt_bit(file));
      // Every later write is refused, even where the metadata is sound; nothing changes.
      EXPECT_THROW(image->write(1 << 20, pattern(512, 9)), Error);
      EXPECT_THROW(image->write(2 << 20, pattern(512, 9)), Error);
      EXPECT_THROW(image->write_zeroes(1 << 20, 65536, {}), Error);
      EXPECT_THROW(image->discard(1 << 20, 65536), Error);
      // Reads of sound areas still work.
      expect_reads(*image, 1 << 20, 65536, 2);
      expect_reads(*image, 2 << 20, 65536, 0);
    }
    EXPECT_TRUE(corrupt_bit(file));
    expect_qemu_reads(file, 1 << 20, 65536, 2);

    // Read-write opens are refused like qemu's; read-only opens read.
    try {
      open_image(file);
      ADD_FAILURE() << "a corrupt image opened read-write";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("Image is corrupt; cannot be opened read/write"), std::string::npos) << e.what();
    }
    CommandResult qemu_rw = run("qemu-io -f qcow2 -c 'read 1M 512' '" + file + "'");
    EXPECT_NE(qemu_rw.status, 0);
    EXPECT_NE(qemu_rw.output.find("Image is corrupt; cannot be opened read/write"), std::string::npos) << qemu_rw.output;
    expect_reads(*open_image(file, true), 1 << 20, 65536, 2);

    // qemu marks the same damage corrupt on the same request.
    run(fmt::format("qemu-io -f qcow2 -c '{}' '{}'", damage.detected_on_read ? "read 0 512" : "write -P 9 0 512", qemu_copy));
    EXPECT_TRUE(corrupt_bit(qemu_copy)) << "qemu did not mark the damage corrupt: the test case is wrong";

    // Both checks see the damage; qemu-img check -r all on kiln's image clears the bit.
    CommandResult qcheck = run("qemu-img check '" + file + "'");
    EXPECT_EQ(qcheck.status, 2) << qcheck.output;
    {
      auto image = open_image(file, true);
      EXPECT_GT(image->top().check(CheckRepair::None).corruptions, 0u);
    }
  }
}

// Repairing clears the bit and makes the image writable again.
TEST(Qcow2Corrupt, RepairClearsTheBit) {
  TempDir dir;
  const std::string file = make_image(dir, "k.qcow2");
  patch_be64(file, kL2Table, 0x8000000000030000ull);
  {
    auto image = open_image(file);
    EXPECT_THROW(image->write(0, pattern(512, 9)), Error);
  }
  ASSERT_TRUE(corrupt_bit(file));
  CommandResult repair = run("qemu-img check -r all '" + file + "'");
  EXPECT_FALSE(corrupt_bit(file)) << repair.output;
  {
    auto image = open_image(file);
    image->write(2 << 20, pattern(65536, 7));
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 2 << 20, 65536, 7);
  expect_qemu_reads(file, 1 << 20, 65536, 2);
}

// A crash with lazy refcounts can leave data clusters in a range that has no
// refcount block yet. Rebuilding the refcounts on open must place the new block
// where nothing is referenced, not at the range's first cluster over live data.
TEST(Qcow2Corrupt, DirtyImageRepairKeepsDataWhereAMissingRefblockWouldGo) {
  TempDir dir;
  const std::string file = dir.file("lazy.qcow2");
  // 512-byte clusters, 16-bit refcounts: one refcount block covers 256 clusters (128 KiB).
  create_qcow2(file, 1 << 20, "cluster_size=512,lazy_refcounts=on");
  {
    auto image = open_image(file);
    for (uint64_t k = 0; k < 512; ++k) image->write(k * 512, pattern(512, static_cast<uint8_t>(k % 251 + 1)));
  }
  const uint64_t reftable = read_be64(file, 48);
  const uint64_t second_block = read_be64(file, reftable + 8);
  ASSERT_EQ(second_block / 512 / 256, 1u) << "the second refcount block describes itself";
  // Lose the second block, move guest cluster 0's data onto the cluster it
  // occupied, and leave the image dirty, as a crash could.
  const uint64_t l2 = read_be64(file, read_be64(file, 40)) & 0x00fffffffffffe00ull;
  const uint64_t data = read_be64(file, l2) & 0x00fffffffffffe00ull;
  copy_bytes(file, data, second_block, 512);
  patch_be64(file, l2, 0x8000000000000000ull | second_block);
  patch_be64(file, reftable + 8, 0);
  patch_be64(file, 72, read_be64(file, 72) | 1);  // incompatible feature: dirty

  open_image(file).reset();  // read-write open rebuilds the refcounts
  expect_qemu_check_clean(file);
  auto image = open_image(file, true);
  for (uint64_t k = 0; k < 512; ++k) expect_reads(*image, k * 512, 512, static_cast<uint8_t>(k % 251 + 1));
}

}  // namespace
}  // namespace kiln::block::test
