// VDI driver: creation, data path, allocation, static images, zeroes/discard,
// concurrency, check/repair and resize — checked against qemu-img/qemu-io.
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "helpers.h"

namespace kiln::block::vdi::test {
namespace {

TEST(VdiCreate, SummaryMatchesQemuImg) {
  TempDir dir;
  for (const std::string& options : {std::string(""), std::string("static=on"), std::string("preallocation=full"),
                                     std::string("static=on,nocow=off,preallocation=off,extent_size_hint=1M"), std::string("static=off")}) {
    const std::string summary = create_vdi(dir.file("k.vdi"), 10000000, options);
    CommandResult r = run("cd '" + dir.path() + "' && qemu-img create -f vdi " + (options.empty() ? "" : "-o " + options) + " q.vdi 10000000");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ("Formatting 'q.vdi', " + summary + "\n", r.output) << options;
  }
}

TEST(VdiCreate, LayoutMatchesQemu) {
  TempDir dir;
  for (const std::string& options : {std::string(""), std::string("static=on")}) {
    for (uint64_t size : {uint64_t{0}, uint64_t{10000000}, 200 * kMiB + 512, uint64_t{1} << 30}) {
      const std::string k = dir.file("k.vdi"), q = dir.file("q.vdi");
      std::filesystem::remove(k);
      create_vdi(k, size, options);
      run(fmt::format("qemu-img create -q -f vdi {} '{}' {}", options.empty() ? "" : "-o " + options, q, size));
      EXPECT_EQ(std::filesystem::file_size(k), std::filesystem::file_size(q)) << options << " " << size;
      // Everything but the free text and the random UUIDs is identical.
      EXPECT_EQ(read_bytes(k, 0x40, 0x188 - 0x40), read_bytes(q, 0x40, 0x188 - 0x40)) << options << " " << size;
      EXPECT_EQ(read_bytes(k, 0x1A8, 512 - 0x1A8), read_bytes(q, 0x1A8, 512 - 0x1A8));
      const Header h = file_header(k);
      EXPECT_EQ(read_bytes(k, 512, h.offset_data - 512), read_bytes(q, 512, h.offset_data - 512));
      EXPECT_FALSE(is_null(h.uuid_image));
      EXPECT_NE(h.uuid_image, h.uuid_last_snap);
      EXPECT_EQ(uuid_text(h.uuid_image)[14], '4');  // a version 4 UUID once byte-swapped
      expect_qemu_check_clean(k);
    }
  }
}

TEST(VdiCreate, RejectsWhatQemuRejects) {
  TempDir dir;
  try {
    create_vdi(dir.file("big.vdi"), uint64_t{5000} << 40);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "Unsupported VDI image size (size is 0x13880000000000, max supported is 0x1fffff8000000)");
  }
  EXPECT_THROW(create_vdi(dir.file("m.vdi"), kMiB, "preallocation=metadata"), Error);
  EXPECT_THROW(create_vdi(dir.file("m.vdi"), kMiB, "preallocation=foo"), Error);
  EXPECT_THROW(create_vdi(dir.file("m.vdi"), kMiB, "static=maybe"), Error);
}

TEST(VdiProbe, BySignature) {
  TempDir dir;
  create_vdi(dir.file("p.vdi"), kMiB);
  const auto head = read_bytes(dir.file("p.vdi"), 0, 512);
  EXPECT_EQ(probe_format(head).name(), "vdi");
  auto image = Image::open(dir.file("p.vdi"), OpenOptions{});
  EXPECT_EQ(image->format(), "vdi");
  std::vector<std::byte> other = head;
  other[0x40] = std::byte{0};
  EXPECT_NE(probe_format(other).name(), "vdi");
}

TEST(VdiData, ReadsWhatQemuWrote) {
  TempDir dir;
  const std::string f = dir.file("q.vdi");
  run("qemu-img create -q -f vdi '" + f + "' 8M");
  qemu_io(f, "write -P 0x11 3M 1M");
  qemu_io(f, "write -P 0x22 512 4096");
  qemu_io(f, "write -P 0x33 7M 512k");
  auto image = open_vdi(f, true);
  expect_reads(*image, 0, 512, 0);
  expect_reads(*image, 512, 4096, 0x22);
  expect_reads(*image, 4608, kMiB - 4608, 0);
  expect_reads(*image, kMiB, 2 * kMiB, 0);
  expect_reads(*image, 3 * kMiB, kMiB, 0x11);
  expect_reads(*image, 7 * kMiB, 512 << 10, 0x33);
  expect_reads(*image, 7 * kMiB + (512 << 10), 512 << 10, 0);
}

TEST(VdiData, AllocatesInWriteOrderAndQemuReadsIt) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 10 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(5 * kMiB + 100, pattern(1000, 0x55));
    image->write(2 * kMiB, pattern(2 * kMiB, 0x22));        // blocks 2 and 3
    image->write(5 * kMiB + 4096, pattern(8192, 0x56));     // same block as the first write
    image->write(9 * kMiB + kMiB - 10, pattern(10, 0x99));  // last bytes
    image->flush();
    const Header h = node_of(*image).header();
    EXPECT_EQ(h.blocks_allocated, 4u);
  }
  EXPECT_EQ(map_entry(f, 5), 0u);
  EXPECT_EQ(map_entry(f, 2), 1u);
  EXPECT_EQ(map_entry(f, 3), 2u);
  EXPECT_EQ(map_entry(f, 9), 3u);
  EXPECT_EQ(map_entry(f, 0), kBlockFree);
  const Header h = file_header(f);
  EXPECT_EQ(std::filesystem::file_size(f), h.offset_data + 4 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 5 * kMiB, 100, 0);
  expect_qemu_reads(f, 5 * kMiB + 100, 1000, 0x55);
  expect_qemu_reads(f, 5 * kMiB + 1100, 4096 - 1100, 0);
  expect_qemu_reads(f, 5 * kMiB + 4096, 8192, 0x56);
  expect_qemu_reads(f, 2 * kMiB, 2 * kMiB, 0x22);
  expect_qemu_reads(f, 10 * kMiB - 10, 10, 0x99);
  expect_qemu_reads(f, 9 * kMiB, kMiB - 10, 0);
}

TEST(VdiData, ZeroWritesDoNotAllocate) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  auto image = open_vdi(f);
  image->write(0, pattern(kMiB, 0));
  image->write(kMiB + 4096, pattern(4096, 0));
  image->write_zeroes(2 * kMiB, kMiB, {});
  EXPECT_EQ(node_of(*image).header().blocks_allocated, 0u);
  // A partial zero write into an allocated block does write.
  image->write(3 * kMiB, pattern(kMiB, 0x77));
  image->write(3 * kMiB + 10, pattern(20, 0));
  expect_reads(*image, 3 * kMiB + 10, 20, 0);
  expect_reads(*image, 3 * kMiB + 30, 100, 0x77);
  EXPECT_EQ(node_of(*image).header().blocks_allocated, 1u);
}

TEST(VdiData, UuidsCreationKeptModificationRenewed) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  const Header before = file_header(f);
  { open_vdi(f, true); }
  EXPECT_EQ(file_header(f).uuid_last_snap, before.uuid_last_snap);  // opening alone changes nothing
  {
    auto image = open_vdi(f);
    image->write(0, pattern(512, 1));
    image->write(kMiB, pattern(512, 2));
  }
  const Header after = file_header(f);
  EXPECT_EQ(after.uuid_image, before.uuid_image);
  EXPECT_NE(after.uuid_last_snap, before.uuid_last_snap);
  EXPECT_TRUE(is_null(after.uuid_link));
  EXPECT_TRUE(is_null(after.uuid_parent));
}

TEST(VdiData, BlockStatusHolesAndData) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 8 * kMiB);
  auto image = open_vdi(f);
  image->write(2 * kMiB, pattern(2 * kMiB, 3));
  BlockStatus s = image->block_status(0, 8 * kMiB);
  EXPECT_EQ(s.length, 2 * kMiB);
  EXPECT_TRUE(reads_as_hole(s.flags));
  s = image->block_status(2 * kMiB + 512, 6 * kMiB - 512);
  EXPECT_EQ(s.length, 2 * kMiB - 512);  // two contiguous data blocks
  EXPECT_EQ(s.flags & kStatusData, kStatusData);
  EXPECT_EQ(s.host_offset, file_header(f).offset_data + 512);
  s = image->block_status(4 * kMiB, 4 * kMiB);
  EXPECT_EQ(s.length, 4 * kMiB);
  EXPECT_TRUE(reads_as_hole(s.flags));
}

TEST(VdiStatic, IdentityMapAndWrites) {
  TempDir dir;
  const std::string f = dir.file("s.vdi");
  create_vdi(f, 5 * kMiB + 512, "static=on");
  const Header h = file_header(f);
  EXPECT_EQ(h.image_type, kTypeFixed);
  EXPECT_EQ(h.blocks_allocated, 6u);
  for (uint32_t b = 0; b < 6; ++b) EXPECT_EQ(map_entry(f, b), b);
  EXPECT_EQ(std::filesystem::file_size(f), h.offset_data + 6 * kMiB);
  {
    auto image = open_vdi(f);
    EXPECT_EQ(image->size(), 5 * kMiB + 512);
    image->write(kMiB - 512, pattern(2048, 0x44));
    image->discard(2 * kMiB, 2 * kMiB);  // static blocks stay
    image->write_zeroes(0, 512, {.may_unmap = true, .no_fallback = false});
    EXPECT_EQ(node_of(*image).header().blocks_allocated, 6u);
  }
  EXPECT_EQ(std::filesystem::file_size(f), h.offset_data + 6 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, kMiB - 512, 2048, 0x44);
  expect_qemu_reads(f, 0, kMiB - 512, 0);
}

TEST(VdiZeroes, DiscardCompactsTheDataArea) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 8 * kMiB);
  {
    auto image = open_vdi(f);
    for (uint8_t b = 0; b < 5; ++b) image->write(b * kMiB, pattern(kMiB, 0x10 + b));
    image->discard(kMiB + 100, kMiB);  // no whole block: nothing happens
    EXPECT_EQ(node_of(*image).header().blocks_allocated, 5u);
    image->discard(kMiB, kMiB);  // block 1 (data index 1): block 4 moves into its place
    EXPECT_EQ(node_of(*image).header().blocks_allocated, 4u);
    expect_reads(*image, kMiB, kMiB, 0);
    expect_reads(*image, 4 * kMiB, kMiB, 0x14);
    image->write_zeroes(3 * kMiB, kMiB, {.may_unmap = true, .no_fallback = false});  // block 3 becomes a zero block
    image->write_zeroes(0, kMiB, {});  // no unmap: block 0 stays allocated, zeroed
    EXPECT_EQ(node_of(*image).header().blocks_allocated, 3u);
    expect_reads(*image, 0, kMiB, 0);
  }
  EXPECT_EQ(map_entry(f, 1), kBlockFree);
  EXPECT_EQ(map_entry(f, 3), kBlockZero);
  EXPECT_EQ(map_entry(f, 4), 1u);
  EXPECT_EQ(map_entry(f, 0), 0u);
  EXPECT_EQ(std::filesystem::file_size(f), file_header(f).offset_data + 3 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 0, 2 * kMiB, 0);
  expect_qemu_reads(f, 2 * kMiB, kMiB, 0x12);
  expect_qemu_reads(f, 3 * kMiB, kMiB, 0);
  expect_qemu_reads(f, 4 * kMiB, kMiB, 0x14);
  // Discarding everything (to the end of the disk) empties the data area.
  {
    auto image = open_vdi(f);
    image->discard(0, image->size());
  }
  EXPECT_EQ(file_header(f).blocks_allocated, 0u);
  EXPECT_EQ(std::filesystem::file_size(f), file_header(f).offset_data);
  expect_qemu_check_clean(f);
}

TEST(VdiConcurrency, ParallelWritersAllocateEachBlockOnce) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  constexpr uint64_t kBlocks = 24;
  constexpr uint64_t kChunk = 64 << 10;
  create_vdi(f, kBlocks * kMiB);
  {
    auto image = open_vdi(f);
    // Eight threads write interleaved 64 KiB chunks, so every block is first
    // touched by several threads at once.
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        std::vector<std::byte> data(kChunk, std::byte(0x40 + t));
        for (uint64_t chunk = static_cast<uint64_t>(t); chunk < kBlocks * kMiB / kChunk; chunk += 8) {
          if (chunk % 3 == 0) continue;  // leave some chunks unwritten
          image->write(chunk * kChunk, data);
        }
      });
    }
    for (auto& thread : threads) thread.join();
    EXPECT_EQ(node_of(*image).header().blocks_allocated, kBlocks);
    for (uint64_t chunk = 0; chunk < kBlocks * kMiB / kChunk; ++chunk) {
      expect_reads(*image, chunk * kChunk, kChunk, chunk % 3 == 0 ? 0 : static_cast<uint8_t>(0x40 + chunk % 8));
    }
    EXPECT_EQ(image->top().check(CheckRepair::None).corruptions, 0u);
  }
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 0, kChunk, 0);
  expect_qemu_reads(f, kChunk, kChunk, 0x41);
  expect_qemu_reads(f, (kBlocks * kMiB / kChunk - 1) * kChunk, kChunk, 0x40 + (kBlocks * kMiB / kChunk - 1) % 8);
}

TEST(VdiConcurrency, ReadersAndWritersDuringDiscard) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 24 * kMiB);
  {
    auto image = open_vdi(f);
    for (uint8_t b = 0; b < 16; ++b) image->write(b * kMiB, pattern(kMiB, 0x20 + b));
    std::atomic<bool> stop{false};
    std::thread reader([&] {
      std::vector<std::byte> buffer(kMiB);
      while (!stop) {
        for (uint8_t b = 8; b < 16; b += 2) {  // blocks that are never discarded (but get moved)
          image->read(b * kMiB, buffer);
          if (buffer.front() != std::byte(0x20 + b) || buffer.back() != std::byte(0x20 + b)) {
            ADD_FAILURE() << "block " << int(b) << " read wrong data while blocks moved";
            return;
          }
        }
      }
    });
    std::thread writer([&] {  // allocates new blocks and rewrites moving ones meanwhile
      for (uint8_t b = 16; b < 24; ++b) {
        image->write(b * kMiB + 4096, pattern(kMiB - 4096, 0x20 + b));
        image->write(9 * kMiB, pattern(4096, 0x29));
      }
    });
    for (uint8_t b = 0; b < 8; ++b) image->discard(b * kMiB, kMiB);
    writer.join();
    stop = true;
    reader.join();
    EXPECT_EQ(node_of(*image).header().blocks_allocated, 16u);
    for (uint8_t b = 0; b < 8; ++b) expect_reads(*image, b * kMiB, kMiB, 0);
    for (uint8_t b = 8; b < 16; ++b) expect_reads(*image, b * kMiB, kMiB, 0x20 + b);
    for (uint8_t b = 16; b < 24; ++b) {
      expect_reads(*image, b * kMiB, 4096, 0);
      expect_reads(*image, b * kMiB + 4096, kMiB - 4096, 0x20 + b);
    }
  }
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 23 * kMiB + 4096, kMiB - 4096, 0x37);
  expect_qemu_reads(f, 9 * kMiB, kMiB, 0x29);
}

TEST(VdiCheck, FindingsMatchQemuAndRepairAll) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 8 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(3 * kMiB, pattern(kMiB, 0x33));  // data index 0
    image->write(0, pattern(kMiB, 0x10));         // data index 1
  }
  const Header h = file_header(f);
  poke_le32(f, h.offset_bmap + 5 * 4, 0);    // block 5 shares data block 0 with block 3
  poke_le32(f, h.offset_bmap + 6 * 4, 100);  // block 6 points outside the data area
  CommandResult q = run("qemu-img check -f vdi '" + f + "'");
  EXPECT_EQ(q.status, 2);
  {
    auto image = open_vdi(f, true);
    CheckResult result = image->top().check(CheckRepair::None);
    EXPECT_EQ(result.corruptions, 3u);
    std::string messages;
    for (const auto& m : result.messages) messages += m + "\n";
    // qemu prints the same lines (to stderr, before its summary).
    EXPECT_EQ(q.output.substr(0, messages.size()), messages);
    expect_reads(*image, 5 * kMiB, kMiB, 0x33);
  }
  {
    auto image = open_vdi(f);
    EXPECT_THROW(image->write(7 * kMiB, pattern(512, 1)), Error);  // refused on a broken map
    CheckResult result = image->top().check(CheckRepair::All);
    EXPECT_EQ(result.corruptions, 0u);
    EXPECT_EQ(result.corruptions_fixed, 3u);
    image->write(7 * kMiB, pattern(512, 0x77));  // writable again
    image->write(5 * kMiB, pattern(512, 0x55));  // the copy is its own block now
  }
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 3 * kMiB, kMiB, 0x33);
  expect_qemu_reads(f, 5 * kMiB, 512, 0x55);
  expect_qemu_reads(f, 5 * kMiB + 512, kMiB - 512, 0x33);
  expect_qemu_reads(f, 6 * kMiB, kMiB, 0);
  expect_qemu_reads(f, 0, kMiB, 0x10);
  expect_qemu_reads(f, 7 * kMiB, 512, 0x77);
}

TEST(VdiCheck, RepairLeaksCompactsAndFixesTheCount) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 8 * kMiB);
  {
    auto image = open_vdi(f);
    for (uint8_t b = 0; b < 4; ++b) image->write(b * kMiB, pattern(kMiB, 0x60 + b));
  }
  const Header h = file_header(f);
  // Block 1's data block leaks (as after a crash): the count says 4, three are used.
  poke_le32(f, h.offset_bmap + 1 * 4, kBlockFree);
  CommandResult q = run("qemu-img check -f vdi '" + f + "'");
  EXPECT_NE(q.output.find("ERROR: allocated blocks mismatch, is 3, should be 4"), std::string::npos) << q.output;
  {
    auto image = open_vdi(f);
    CheckResult result = image->top().check(CheckRepair::Leaks);
    EXPECT_EQ(result.corruptions, 0u);
    EXPECT_EQ(result.corruptions_fixed, 1u);
  }
  EXPECT_EQ(file_header(f).blocks_allocated, 3u);
  EXPECT_EQ(std::filesystem::file_size(f), h.offset_data + 3 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 0, kMiB, 0x60);
  expect_qemu_reads(f, kMiB, kMiB, 0);
  expect_qemu_reads(f, 2 * kMiB, kMiB, 0x62);
  expect_qemu_reads(f, 3 * kMiB, kMiB, 0x63);
}

TEST(VdiCheck, GapBelowAMatchingCountIsFound) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(0, pattern(kMiB, 1));
    image->write(kMiB, pattern(kMiB, 2));
  }
  const Header h = file_header(f);
  poke_le32(f, h.offset_bmap + 4, 2);  // block 1 -> data block 2 (index 1 unused, count still 2)
  auto image = open_vdi(f, true);
  CheckResult result = image->top().check(CheckRepair::None);
  ASSERT_EQ(result.messages.size(), 1u);
  EXPECT_EQ(result.messages[0], "ERROR: block 1 uses data block 2 beyond the 2 allocated blocks");
}

TEST(VdiResize, GrowWithinAndBeyondTheMapSector) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 3 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(0, pattern(kMiB, 0xA0));
    image->write(2 * kMiB, pattern(kMiB, 0xA2));
    image->truncate(100 * kMiB, Preallocation::Off, false);  // 100 entries still fit in the first map sector
    EXPECT_EQ(node_of(*image).header().offset_data, 1024u);
    image->write(99 * kMiB, pattern(kMiB, 0xA9));
    // 1000 blocks need 4000 map bytes: the first data blocks move out of the way.
    image->truncate(1000 * kMiB, Preallocation::Off, false);
    EXPECT_EQ(node_of(*image).header().offset_data, 1024u + kMiB);  // one data block moved
    expect_reads(*image, 0, kMiB, 0xA0);
    expect_reads(*image, 2 * kMiB, kMiB, 0xA2);
    expect_reads(*image, 99 * kMiB, kMiB, 0xA9);
    image->write(999 * kMiB, pattern(kMiB, 0xAF));
    EXPECT_THROW(image->truncate(500 * kMiB, Preallocation::Off, true), Error);  // no shrinking
    EXPECT_THROW(image->truncate(2000 * kMiB + 1, Preallocation::Off, false), Error);
  }
  EXPECT_EQ(file_header(f).disk_size, 1000 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 0, kMiB, 0xA0);
  expect_qemu_reads(f, kMiB, kMiB, 0);
  expect_qemu_reads(f, 2 * kMiB, kMiB, 0xA2);
  expect_qemu_reads(f, 99 * kMiB, kMiB, 0xA9);
  expect_qemu_reads(f, 999 * kMiB, kMiB, 0xAF);
  expect_qemu_reads(f, 500 * kMiB, kMiB, 0);
  CommandResult info = run("qemu-img info -f vdi '" + f + "'");
  EXPECT_NE(info.output.find("(1048576000 bytes)"), std::string::npos) << info.output;
}

TEST(VdiResize, StaticGrowAllocatesTheNewBlocks) {
  TempDir dir;
  const std::string f = dir.file("s.vdi");
  create_vdi(f, 2 * kMiB, "static=on");
  {
    auto image = open_vdi(f);
    image->write(kMiB, pattern(kMiB, 0x5A));
    image->truncate(130 * kMiB, Preallocation::Off, false);  // map grows past the first sector
  }
  const Header h = file_header(f);
  EXPECT_EQ(h.blocks_allocated, 130u);
  EXPECT_EQ(h.blocks_in_image, 130u);
  EXPECT_EQ(std::filesystem::file_size(f), h.offset_data + 130 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 0, kMiB, 0);
  expect_qemu_reads(f, kMiB, kMiB, 0x5A);
  expect_qemu_reads(f, 2 * kMiB, 2 * kMiB, 0);
  expect_qemu_reads(f, 129 * kMiB, kMiB, 0);
}

TEST(VdiVirtualBox, AlignedLayoutAndLongHeaderArePreserved) {
  // VirtualBox's layout: header with LCHS geometry (0x190), block map and data each 1 MiB aligned.
  TempDir dir;
  const std::string f = dir.file("vbox.vdi");
  Header h = new_header(4 * kMiB, false);
  const char text[] = "<<< Oracle VirtualBox Disk Image >>>\n";
  std::fill(h.sector.begin(), h.sector.begin() + 64, std::byte{0});
  std::memcpy(h.sector.data(), text, sizeof text - 1);
  h.header_size = kHeaderSizeV1Plus;
  store_le32(h.sector.data() + 0x1C8, 1024);  // LCHS cylinders, heads, sectors, sector size
  store_le32(h.sector.data() + 0x1CC, 16);
  store_le32(h.sector.data() + 0x1D0, 63);
  store_le32(h.sector.data() + 0x1D4, 512);
  h.offset_bmap = kMiB;
  h.offset_data = 2 * kMiB;
  {
    std::ofstream out(f, std::ios::binary);
    const auto sector = encode_header(h);
    out.write(reinterpret_cast<const char*>(sector.data()), sector.size());
    out.seekp(kMiB);
    const std::vector<char> map(16, char(0xFF));
    out.write(map.data(), map.size());
  }
  std::filesystem::resize_file(f, 2 * kMiB);
  expect_qemu_check_clean(f);
  {
    auto image = open_vdi(f);
    image->write(3 * kMiB, pattern(kMiB, 0x31));
    image->write(kMiB + 512, pattern(512, 0x32));
  }
  const auto after = read_bytes(f, 0, 512);
  EXPECT_EQ(std::vector<std::byte>(after.begin() + 0x1C8, after.begin() + 0x1D8),
            std::vector<std::byte>(h.sector.begin() + 0x1C8, h.sector.begin() + 0x1D8));
  EXPECT_EQ(std::vector<std::byte>(after.begin(), after.begin() + 64), std::vector<std::byte>(h.sector.begin(), h.sector.begin() + 64));
  const Header read_back = file_header(f);
  EXPECT_EQ(read_back.header_size, kHeaderSizeV1Plus);
  EXPECT_EQ(read_back.blocks_allocated, 2u);
  EXPECT_EQ(map_entry(f, 3), 0u);
  EXPECT_EQ(std::filesystem::file_size(f), 4 * kMiB);
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 3 * kMiB, kMiB, 0x31);
  expect_qemu_reads(f, kMiB + 512, 512, 0x32);
  expect_qemu_reads(f, kMiB, 512, 0);
  expect_qemu_reads(f, 0, kMiB, 0);
  // Growing keeps the aligned map: 600 entries still fit below the data area.
  {
    auto image = open_vdi(f);
    image->truncate(600 * kMiB, Preallocation::Off, false);
    EXPECT_EQ(node_of(*image).header().offset_data, 2 * kMiB);
  }
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 3 * kMiB, kMiB, 0x31);
}

TEST(VdiVirtualBox, BlockExtraBytesPrecedeEachBlock) {
  // VirtualBox's layout allows block_extra bytes in front of each block (qemu ignores the field).
  TempDir dir;
  const std::string f = dir.file("extra.vdi");
  create_vdi(f, 4 * kMiB);
  poke_le32(f, 0x17C, 512);
  const Header h = file_header(f);
  {
    auto image = open_vdi(f);
    image->write(2 * kMiB + 4096, pattern(4096, 0x61));
    image->write(0, pattern(512, 0x62));
    expect_reads(*image, 2 * kMiB, 4096, 0);
    expect_reads(*image, 2 * kMiB + 4096, 4096, 0x61);
    expect_reads(*image, 0, 512, 0x62);
    image->discard(2 * kMiB, kMiB);  // block 0 moves into data block 0, extra bytes and all
    expect_reads(*image, 0, 512, 0x62);
    expect_reads(*image, 512, kMiB - 512, 0);
  }
  EXPECT_EQ(std::filesystem::file_size(f), h.offset_data + kMiB + 512);
  EXPECT_EQ(read_bytes(f, h.offset_data, 512), pattern(512, 0));     // the extra bytes
  EXPECT_EQ(read_bytes(f, h.offset_data + 512, 512), pattern(512, 0x62));
}

// Zero-copy readers (kiln-nbd) get the file range of allocated blocks, only
// while the image is read-only.
TEST(VdiHostExtent, AllocatedBlocksMapToTheirFileBytes) {
  TempDir dir;
  const std::string f = dir.file("h.vdi");
  create_vdi(f, 4 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(kMiB, pattern(kMiB, 0x3c));
    EXPECT_FALSE(image->top().host_extent(kMiB, 4096).has_value()) << "writable";
  }
  auto image = open_vdi(f, true);
  std::optional<HostExtent> extent = image->top().host_extent(kMiB + 100, 5000);
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(extent->length, 5000u);
  std::vector<std::byte> bytes(extent->length);
  ASSERT_EQ(pread(extent->fd, bytes.data(), bytes.size(), static_cast<off_t>(extent->offset)), 5000);
  EXPECT_EQ(bytes, pattern(5000, 0x3c));
  EXPECT_FALSE(image->top().host_extent(0, 4096).has_value()) << "unallocated block";
}

}  // namespace
}  // namespace kiln::block::vdi::test
