// Malformed VDI headers and block maps: one-line errors (QEMU's wording where
// QEMU rejects the image too), no crash, no huge allocation, image untouched.
#include "helpers.h"

namespace kiln::block::vdi::test {
namespace {

struct Patch {
  uint32_t offset;
  uint64_t value;
  int width = 4;
};

struct Case {
  const char* name;
  std::vector<Patch> patches;
  const char* message;  // expected text after "Could not open '<file>': "
  bool qemu_rejects;    // qemu-img refuses it with the same message
};

std::string open_error(const std::string& f) {
  try {
    open_vdi(f, true);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(VdiMalformed, HeadersAreRefusedWithOneLine) {
  TempDir dir;
  const std::string base = dir.file("base.vdi");
  create_vdi(base, 10 * kMiB);
  const std::vector<Case> cases = {
      {"signature", {{0x40, 0x12345678}}, "Image not in VDI format (bad signature 12345678)", true},
      {"version", {{0x44, 0x00010002}}, "unsupported VDI image (version 1.2)", true},
      {"version0", {{0x44, 0}}, "unsupported VDI image (version 0.0)", true},
      {"map-align", {{0x154, 0x201}}, "unsupported VDI image (unaligned block map offset 0x201)", true},
      {"data-align", {{0x158, 0x401}}, "unsupported VDI image (unaligned data offset 0x401)", true},
      {"sector", {{0x168, 4096}}, "unsupported VDI image (sector size 4096 is not 512)", true},
      {"block-size", {{0x178, 4096}}, "unsupported VDI image (block size 4096 is not 1048576)", true},
      {"block-size-huge", {{0x178, 0x80000000}}, "unsupported VDI image (block size 2147483648 is not 1048576)", true},
      {"disk-size", {{0x170, 11 * kMiB, 8}}, "unsupported VDI image (disk size 11534336, image bitmap has room for 10485760)", true},
      {"disk-size-absurd", {{0x40, 0x1234}, {0x170, ~uint64_t{0}, 8}},
       "Unsupported VDI image size (size is 0xffffffffffffffff, max supported is 0x1fffff8000000)", true},
      {"link", {{0x1A8, 1}}, "unsupported VDI image (non-NULL link UUID)", true},
      {"parent", {{0x1B8, 1}}, "unsupported VDI image (non-NULL parent UUID)", true},
      {"blocks", {{0x180, 0x7fffffff}}, "unsupported VDI image (too many blocks 2147483647, max is 536870784)", true},
      {"header-small", {{0x48, 0x10}}, "invalid VDI image (header size 16 is not between 384 and 440)", false},
      {"header-large", {{0x48, 0x1000}}, "invalid VDI image (header size 4096 is not between 384 and 440)", false},
      {"type", {{0x4C, 9}}, "unsupported VDI image (image type 9)", false},
      {"diff", {{0x4C, 4}}, "unsupported VDI image (differencing images are not supported)", false},
      {"extra", {{0x17C, 100}}, "unsupported VDI image (block extra size 100 is not a multiple of 512 up to the block size)", false},
      {"map-in-header", {{0x154, 0}}, "invalid VDI image (block map offset 0x0 overlaps the header)", false},
      // 0x1fffff80 blocks would be a 2 GiB map in a 1 KiB file: refused before anything is allocated.
      {"map-past-eof",
       {{0x180, 0x1fffff80}, {0x170, 0, 8}},
       "invalid VDI image (block map of 536870784 entries at 0x200 lies past the end of the file (1024 bytes))",
       false},
      {"map-offset-past-eof", {{0x154, 0x100000}}, "invalid VDI image (block map of 10 entries at 0x100000 lies past the end of the file (1024 bytes))",
       false},
      {"data-over-map", {{0x158, 0x200}}, "invalid VDI image (data offset 0x200 overlaps the block map (which ends at 0x228))", false},
  };
  for (const Case& c : cases) {
    const std::string f = dir.file(std::string(c.name) + ".vdi");
    std::filesystem::copy_file(base, f, std::filesystem::copy_options::overwrite_existing);
    for (const Patch& p : c.patches) {
      if (p.width == 8) {
        poke_le64(f, p.offset, p.value);
      } else {
        poke_le32(f, p.offset, static_cast<uint32_t>(p.value));
      }
    }
    const auto before = read_bytes(f, 0, 1 << 16);
    const std::string expected = "Could not open '" + f + "': " + c.message;
    EXPECT_EQ(open_error(f), expected) << c.name;
    if (c.qemu_rejects) {
      CommandResult q = run("qemu-img info -f vdi '" + f + "'");
      EXPECT_EQ(q.output, "qemu-img: " + expected + "\n") << c.name;
    }
    EXPECT_EQ(read_bytes(f, 0, 1 << 16), before) << c.name << ": image modified";
  }
}

TEST(VdiMalformed, ShortFiles) {
  TempDir dir;
  const std::string base = dir.file("base.vdi");
  create_vdi(base, 10 * kMiB);
  for (uint64_t length : {0, 60, 300, 511}) {
    const std::string f = dir.file("short.vdi");
    std::filesystem::copy_file(base, f, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(f, length);
    EXPECT_NE(open_error(f), "") << length;
  }
  // The header survives but the map is cut off.
  const std::string f = dir.file("nomap.vdi");
  std::filesystem::copy_file(base, f, std::filesystem::copy_options::overwrite_existing);
  std::filesystem::resize_file(f, 512 + 20);
  EXPECT_NE(open_error(f).find("lies past the end of the file"), std::string::npos);
}

TEST(VdiMalformed, MapEntriesPastTheFileReadAsZeroes) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(0, pattern(kMiB, 9));
    image->write(kMiB, pattern(kMiB, 8));
  }
  std::filesystem::resize_file(f, file_header(f).offset_data + kMiB);  // data block 1 cut off
  auto image = open_vdi(f, true);
  expect_reads(*image, 0, kMiB, 9);
  expect_reads(*image, kMiB, kMiB, 0);
}

TEST(VdiMalformed, DuplicateAndHugeEntriesOpenButRefuseWrites) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  {
    auto image = open_vdi(f);
    image->write(0, pattern(kMiB, 9));
  }
  const Header h = file_header(f);
  poke_le32(f, h.offset_bmap + 4, 0);           // duplicate
  poke_le32(f, h.offset_bmap + 8, 0xFFFFFFFD);  // the largest data index there is
  auto image = open_vdi(f);
  expect_reads(*image, kMiB, kMiB, 9);
  expect_reads(*image, 2 * kMiB, kMiB, 0);  // far past the end of the file
  try {
    image->write(3 * kMiB, pattern(512, 1));
    ADD_FAILURE() << "write accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "'" + f + "': the VDI block map is inconsistent; writes are refused (run check -r all)");
  }
  BlockStatus s = image->block_status(2 * kMiB, kMiB);
  EXPECT_EQ(s.length, kMiB);
}

TEST(VdiMalformed, AllocatedCountBeyondTheMap) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  poke_le32(f, 0x184, 0xFFFFFFFF);
  {
    auto image = open_vdi(f);
    EXPECT_THROW(image->write(0, pattern(512, 1)), Error);
    CheckResult r = image->top().check(CheckRepair::Leaks);
    EXPECT_EQ(r.corruptions, 0u);
    image->write(0, pattern(512, 1));
  }
  expect_qemu_check_clean(f);
  expect_qemu_reads(f, 0, 512, 1);
}

TEST(VdiFormat, HeaderRoundTripKeepsUnknownBytes) {
  TempDir dir;
  const std::string f = dir.file("k.vdi");
  create_vdi(f, 4 * kMiB);
  auto sector = read_bytes(f, 0, 512);
  sector[0x1C8] = std::byte{0x42};  // LCHS geometry area of a VirtualBox header
  sector[0x60] = std::byte{'c'};    // comment
  Header h = decode_header(sector);
  h.blocks_allocated = 7;
  const auto encoded = encode_header(h);
  EXPECT_EQ(encoded[0x1C8], std::byte{0x42});
  EXPECT_EQ(encoded[0x60], std::byte{'c'});
  EXPECT_EQ(decode_header(encoded).blocks_allocated, 7u);
  EXPECT_EQ(decode_header(encoded).uuid_image, h.uuid_image);
}

}  // namespace
}  // namespace kiln::block::vdi::test
