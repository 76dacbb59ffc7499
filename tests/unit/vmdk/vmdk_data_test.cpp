// The vmdk data path through the block layer: every subformat kiln writes is
// checked and read back by the real qemu-img; concurrent allocation,
// zeroed grains, delta links and malformed files.
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "../support/command_and_tempdir.h"
#include "kiln/block/image.h"
#include "kiln/common/error.h"
#include "vmdk/format.h"

namespace kiln::block::vmdk {
namespace {

using kiln::test::CommandResult;
using kiln::test::run;

// A temporary folder named kiln-vmdk-XXXXXX.
struct TempDir : kiln::test::TempDir {
  TempDir() : kiln::test::TempDir("kiln-vmdk") {}
};

std::string create_vmdk(const std::string& filename, uint64_t size, const std::string& options = "") {
  CreateOptions parsed = parse_create_options(*find_format("vmdk"), options);
  parsed.size = size;
  return create_image(filename, "vmdk", parsed);
}

std::unique_ptr<Image> open_vmdk(const std::string& filename, bool read_only = false) {
  OpenOptions options;
  options.format = "vmdk";
  options.read_only = read_only;
  return Image::open(filename, options);
}

std::string open_error(const std::string& filename) {
  try {
    OpenOptions options;
    options.read_only = true;
    auto image = Image::open(filename, options);
    std::vector<std::byte> buffer(65536);
    for (uint64_t offset = 0; offset < image->size(); offset += buffer.size()) {
      image->read(offset, std::span(buffer).first(std::min<uint64_t>(buffer.size(), image->size() - offset)));
    }
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

std::vector<std::byte> random_bytes(size_t size, unsigned seed) {
  std::mt19937 random(seed);
  std::vector<std::byte> out(size);
  for (auto& b : out) b = std::byte(random() & 0xff);
  return out;
}

void patch_file(const std::string& path, uint64_t offset, const void* data, size_t size) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}

// Writes a model to the image from several threads at once, then has qemu-img
// check it and compare it with a raw file of the model.
void concurrent_write_and_verify(const std::string& subformat) {
  TempDir dir;
  const std::string image = dir.file("c.vmdk");
  const uint64_t size = 64 << 20;
  create_vmdk(image, size, "subformat=" + subformat);
  std::vector<std::byte> model(size);
  {
    auto img = open_vmdk(image);
    // Unaligned writes into the same grains from 4 threads: each thread owns
    // interleaved 3000-byte stripes (every 7th moved 32 MiB up, into grains no
    // other stripe touches), so the final content is defined.
    constexpr size_t kStripe = 3000;
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (uint64_t stripe = static_cast<uint64_t>(t); stripe * kStripe < 20 << 20; stripe += 4) {
          const uint64_t offset = stripe * kStripe + (stripe % 7 == 0 ? 32 << 20 : 0);
          if (offset + kStripe > size) break;
          std::vector<std::byte> data = random_bytes(kStripe, static_cast<unsigned>(stripe));
          img->write(offset, data);
        }
      });
    }
    for (auto& thread : threads) thread.join();
    img->flush();
    // Build the model in the same order per stripe (stripes never overlap).
    for (uint64_t stripe = 0; stripe * kStripe < 20 << 20; ++stripe) {
      const uint64_t offset = stripe * kStripe + (stripe % 7 == 0 ? 32 << 20 : 0);
      if (offset + kStripe > size) continue;
      std::vector<std::byte> data = random_bytes(kStripe, static_cast<unsigned>(stripe));
      std::memcpy(model.data() + offset, data.data(), kStripe);
    }
    std::vector<std::byte> back(size);
    img->read(0, back);
    EXPECT_TRUE(back == model) << "kiln reads back what it wrote";
  }
  const std::string raw = dir.file("model.raw");
  std::ofstream(raw, std::ios::binary).write(reinterpret_cast<const char*>(model.data()), static_cast<std::streamsize>(model.size()));
  CommandResult check = run("qemu-img check -f vmdk '" + image + "'");
  EXPECT_EQ(check.status, 0) << check.output;
  CommandResult compare = run("qemu-img compare -f vmdk -F raw '" + image + "' '" + raw + "'");
  EXPECT_EQ(compare.status, 0) << compare.output;
}

TEST(VmdkData, ConcurrentWritesMonolithicSparse) { concurrent_write_and_verify("monolithicSparse"); }
TEST(VmdkData, ConcurrentWritesTwoGbSparse) { concurrent_write_and_verify("twoGbMaxExtentSparse"); }
TEST(VmdkData, ConcurrentWritesMonolithicFlat) { concurrent_write_and_verify("monolithicFlat"); }

TEST(VmdkData, LayoutMatchesQemu) {
  TempDir dir;
  for (uint64_t size : {uint64_t{1000}, uint64_t{100} << 20, uint64_t{5} << 30}) {
    const std::string ours = dir.file("k.vmdk");
    const std::string theirs = dir.file("q.vmdk");
    create_vmdk(ours, size, "zeroed_grain=on");
    ASSERT_EQ(run("qemu-img create -q -f vmdk -o zeroed_grain=on '" + theirs + "' " + std::to_string(size)).status, 0);
    std::array<std::byte, 512> a{}, b{};
    std::ifstream(ours, std::ios::binary).read(reinterpret_cast<char*>(a.data()), 512);
    std::ifstream(theirs, std::ios::binary).read(reinterpret_cast<char*>(b.data()), 512);
    EXPECT_TRUE(a == b) << "sparse header for size " << size;
    EXPECT_EQ(std::filesystem::file_size(ours), std::filesystem::file_size(theirs));
  }
}

TEST(VmdkData, ZeroedGrainsAndSparseness) {
  TempDir dir;
  const std::string image = dir.file("z.vmdk");
  create_vmdk(image, 8 << 20, "zeroed_grain=on");
  auto img = open_vmdk(image);
  std::vector<std::byte> ones(2 << 20, std::byte{1});
  img->write(0, ones);
  img->flush();
  const auto size_before = std::filesystem::file_size(image);
  img->write_zeroes(65536, 4 * 65536, {.may_unmap = false, .no_fallback = true});  // zeroed grains need no data
  EXPECT_THROW(img->write_zeroes(1 << 20, 1000, {.may_unmap = false, .no_fallback = true}), Error);
  img->write_zeroes(1 << 20, 1000, {});  // partial grain: data rewritten
  img->flush();
  EXPECT_EQ(std::filesystem::file_size(image), size_before);
  BlockStatus status = img->block_status(65536, 1 << 20);
  EXPECT_EQ(status.flags, kStatusZero | kStatusAllocated);
  EXPECT_EQ(status.length, 4u * 65536);
  status = img->block_status(4 << 20, 4 << 20);
  EXPECT_EQ(status.flags, 0u);
  EXPECT_EQ(status.length, 4u << 20);
  std::vector<std::byte> back(2 << 20);
  img->read(0, back);
  std::vector<std::byte> expected = ones;
  std::memset(expected.data() + 65536, 0, 4 * 65536);
  std::memset(expected.data() + (1 << 20), 0, 1000);
  EXPECT_TRUE(back == expected);
  img.reset();
  CommandResult map = run("qemu-img map --output=json -f vmdk '" + image + "'");
  EXPECT_NE(map.output.find("\"start\": 65536, \"length\": 262144, \"depth\": 0, \"present\": true, \"zero\": true, \"data\": false"),
            std::string::npos)
      << map.output;
  EXPECT_EQ(run("qemu-img check -f vmdk '" + image + "'").status, 0);
}

TEST(VmdkData, StreamOptimizedSequentialWrite) {
  TempDir dir;
  const std::string image = dir.file("s.vmdk");
  const uint64_t size = (3 << 20) + 4096;  // last grain partial
  create_vmdk(image, size, "subformat=streamOptimized");
  std::vector<std::byte> model(size);
  {
    auto img = open_vmdk(image);
    std::vector<std::byte> data = random_bytes(1 << 20, 7);
    img->write(0, data);  // grains 0..15
    std::memcpy(model.data(), data.data(), data.size());
    // Zero gap, then a write starting mid-grain (the rest of the grain reads as zero).
    std::vector<std::byte> tail = random_bytes(5000, 8);
    img->write((2 << 20) + 100, tail);
    std::memcpy(model.data() + (2 << 20) + 100, tail.data(), tail.size());
    std::vector<std::byte> last = random_bytes(4096, 9);
    img->write(3 << 20, last);
    std::memcpy(model.data() + (3 << 20), last.data(), last.size());
    // Rewriting a stored grain is refused.
    EXPECT_THROW(img->write(0, std::span(data).first(512)), Error);
    img->flush();
  }
  const std::string raw = dir.file("model.raw");
  std::ofstream(raw, std::ios::binary).write(reinterpret_cast<const char*>(model.data()), static_cast<std::streamsize>(model.size()));
  EXPECT_EQ(run("qemu-img check -f vmdk '" + image + "'").status, 0);
  CommandResult compare = run("qemu-img compare -f vmdk -F raw '" + image + "' '" + raw + "'");
  EXPECT_EQ(compare.status, 0) << compare.output;
  auto img = open_vmdk(image, true);
  std::vector<std::byte> back(size);
  img->read(0, back);
  EXPECT_TRUE(back == model);
  EXPECT_TRUE(img->top().format_specific_info()["data"]["extents"][0]["compressed"].get<bool>());
}

TEST(VmdkData, ReadsQemuStreamWithFooterLayout) {
  // VMware's layout (grain directory at the end, footer + end-of-stream) is
  // built by hand from a qemu-made stream: copy its tables behind the grains.
  TempDir dir;
  const std::string raw = dir.file("src.raw");
  std::vector<std::byte> content = random_bytes(1 << 20, 3);
  std::ofstream(raw, std::ios::binary).write(reinterpret_cast<const char*>(content.data()), static_cast<std::streamsize>(content.size()));
  const std::string qemu_stream = dir.file("q.vmdk");
  ASSERT_EQ(run("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized '" + raw + "' '" + qemu_stream + "'").status, 0);
  std::ifstream in(qemu_stream, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), {});
  bytes.resize((bytes.size() + 511) / 512 * 512);
  SparseHeader h = SparseHeader::decode(std::as_bytes(std::span(bytes.data(), 512)));
  // Move GD + GT 0 to the end: [GD sector][GT sectors], then footer marker, footer, EOS.
  const uint64_t gd_sector = bytes.size() / 512;
  std::vector<char> gd(512), gt(2048);
  std::memcpy(gd.data(), bytes.data() + h.gd_offset * 512, 512);
  const uint32_t gt_sector = load_le32(reinterpret_cast<std::byte*>(gd.data()));
  std::memcpy(gt.data(), bytes.data() + uint64_t{gt_sector} * 512, 2048);
  store_le32(reinterpret_cast<std::byte*>(gd.data()), static_cast<uint32_t>(gd_sector + 1));
  std::vector<char> footer_marker(512), footer(512), eos(512);
  store_le32(reinterpret_cast<std::byte*>(footer_marker.data() + 12), kMarkerFooter);
  SparseHeader f = h;
  f.gd_offset = gd_sector;
  f.rgd_offset = 0;
  f.flags &= ~kFlagRedundantGd;
  f.encode(std::as_writable_bytes(std::span(footer.data(), 512)));
  h.gd_offset = kGdAtEnd;
  h.encode(std::as_writable_bytes(std::span(bytes.data(), 512)));
  // Wipe the old tables so only the footer's can be used.
  std::memset(bytes.data() + 21 * 512, 0, (h.overhead - 21) * 512);
  for (auto* part : {&gd, &gt, &footer_marker, &footer, &eos}) bytes.insert(bytes.end(), part->begin(), part->end());
  const std::string vmware = dir.file("w.vmdk");
  std::ofstream(vmware, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto img = open_vmdk(vmware, true);
  std::vector<std::byte> back(1 << 20);
  img->read(0, back);
  EXPECT_TRUE(back == content);
  EXPECT_EQ(run("qemu-img compare -f vmdk -F raw '" + vmware + "' '" + raw + "'").status, 0);
}

TEST(VmdkData, DeltaLinkReadsThroughParent) {
  TempDir dir;
  const std::string base = dir.file("base.vmdk");
  const std::string child = dir.file("child.vmdk");
  create_vmdk(base, 4 << 20);
  std::vector<std::byte> a(1 << 20, std::byte{0xaa});
  open_vmdk(base)->write(0, a);
  create_vmdk(child, 4 << 20, "backing_file=base.vmdk");
  {
    auto img = open_vmdk(child);
    ASSERT_NE(img->top().backing_child(), nullptr);
    EXPECT_EQ(img->top().backing_filename(), "base.vmdk");
    std::vector<std::byte> b(100, std::byte{0xbb});
    img->write(70000, b);  // partial grain: the rest is copied from the parent
    std::vector<std::byte> back(1 << 20);
    img->read(0, back);
    std::vector<std::byte> expected = a;
    std::memset(expected.data() + 70000, 0xbb, 100);
    EXPECT_TRUE(back == expected);
    const nlohmann::json info = img->top().format_specific_info()["data"];
    auto base_image = open_vmdk(base, true);
    EXPECT_EQ(info["parent-cid"], base_image->top().format_specific_info()["data"]["cid"]);
  }
  CommandResult io = run("qemu-io -f vmdk -r -c 'read -P 0xaa 0 65536' -c 'read -P 0xbb 70000 100' -c 'read -P 0xaa 70100 60000' '" + child + "'");
  EXPECT_EQ(io.status, 0);
  EXPECT_EQ(io.output.find("Pattern verification failed"), std::string::npos) << io.output;
}

TEST(VmdkData, MalformedFilesFailWithOneLineErrors) {
  TempDir dir;
  const std::string good = dir.file("g.vmdk");
  create_vmdk(good, 64 << 20);
  {
    std::vector<std::byte> data(65536, std::byte{5});
    open_vmdk(good)->write(0, data);
  }
  auto copy = [&](const std::string& name) {
    std::filesystem::copy_file(good, dir.file(name));
    return dir.file(name);
  };
  auto expect_error = [&](const std::string& path, const std::string& needle) {
    std::string message = open_error(path);
    EXPECT_NE(message.find(needle), std::string::npos) << path << ": " << message;
    EXPECT_EQ(message.find('\n'), std::string::npos);
  };
  SparseHeader h;
  {
    std::ifstream in(good, std::ios::binary);
    std::array<std::byte, 512> sector{};
    in.read(reinterpret_cast<char*>(sector.data()), 512);
    h = SparseHeader::decode(sector);
  }
  auto patch_header = [&](const std::string& name, auto change) {
    std::string path = copy(name);
    SparseHeader bad = h;
    change(bad);
    std::array<std::byte, 512> sector{};
    bad.encode(sector);
    patch_file(path, 0, sector.data(), 512);
    return path;
  };
  expect_error(patch_header("ver.vmdk", [](SparseHeader& x) { x.version = 9; }), "Unsupported VMDK version 9");
  expect_error(patch_header("gte.vmdk", [](SparseHeader& x) { x.gtes_per_gt = 100000; }), "grain table entries");
  expect_error(patch_header("grain.vmdk", [](SparseHeader& x) { x.grain_sectors = 0; }), "grain size");
  expect_error(patch_header("cap.vmdk", [](SparseHeader& x) { x.capacity = ~uint64_t{0} / 2; }), "capacity");
  expect_error(patch_header("huge.vmdk", [](SparseHeader& x) { x.capacity = uint64_t{1} << 50; }), "grain directory");
  expect_error(patch_header("gd.vmdk", [](SparseHeader& x) { x.gd_offset = 1 << 30; }), "lies beyond the end of the file");
  expect_error(patch_header("over.vmdk", [](SparseHeader& x) { x.overhead = 1 << 30; }), "File truncated");
  expect_error(patch_header("end.vmdk", [](SparseHeader& x) { x.gd_offset = kGdAtEnd; }), "no valid footer");
  {
    // A grain table pointer past the end of the file.
    std::string path = copy("gtpast.vmdk");
    uint32_t far = 1u << 30;
    patch_file(path, h.gd_offset * 512, &far, 4);
    expect_error(path, "grain table 0 at sector 1073741824 lies beyond the end of the file");
  }
  {
    // A grain past EOF is what check reports (reads give zeroes, as qemu).
    std::string path = copy("grainpast.vmdk");
    uint32_t gt_sector = 0;
    std::ifstream(path, std::ios::binary).seekg(static_cast<std::streamoff>(h.gd_offset * 512)).read(reinterpret_cast<char*>(&gt_sector), 4);
    uint32_t far = 1u << 30;
    patch_file(path, uint64_t{gt_sector} * 512 + 4, &far, 4);
    auto img = open_vmdk(path, true);
    ::testing::internal::CaptureStderr();
    try {
      img->top().check(CheckRepair::None);
      ADD_FAILURE() << "check passed a grain past EOF";
    } catch (const Error& error) {
      EXPECT_EQ(error.errno_value(), EINVAL);
    }
    const std::string finding = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(finding, "ERROR: cluster offset for sector 128 points after EOF\n");
    CommandResult qemu = run("qemu-img check -f vmdk '" + path + "'");
    EXPECT_EQ(qemu.status, 1);
    EXPECT_NE(qemu.output.find(finding), std::string::npos) << qemu.output;
  }
  // Descriptor files naming extents outside their folder.
  const std::string outside = dir.file("escape.vmdk");
  std::ofstream(outside) << "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"../etc/passwd\" 0\n";
  expect_error(outside, "climbs out of the descriptor's folder");
  const std::string absolute = dir.file("abs.vmdk");
  std::ofstream(absolute) << "version=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"/etc/passwd\" 0\n";
  expect_error(absolute, "is absolute");
  {
    // Allowed only when the user asks for it: extent-paths=any.
    std::filesystem::create_directories(dir.file("sub"));
    std::ofstream(dir.file("outside-flat.bin"), std::ios::binary) << std::string(4096, '\xab');
    const std::string climbing = dir.file("sub/climb.vmdk");
    std::ofstream(climbing) << "version=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"../outside-flat.bin\" 0\n";
    expect_error(climbing, "extent-paths=any");
    OpenOptions allow;
    allow.format = "vmdk";
    allow.read_only = true;
    allow.driver_options.emplace_back("extent-paths", "any");
    auto img = Image::open(climbing, allow);
    std::vector<std::byte> back(4096);
    img->read(0, back);
    EXPECT_EQ(back, std::vector<std::byte>(4096, std::byte{0xab}));
  }
  const std::string missing = dir.file("missing.vmdk");
  std::ofstream(missing) << "version=1\ncreateType=\"monolithicFlat\"\nRW 8 FLAT \"nothere.vmdk\" 0\n";
  expect_error(missing, "nothere.vmdk");
  const std::string type = dir.file("type.vmdk");
  std::ofstream(type) << "version=1\ncreateType=\"monolithicSparse\"\nRW 8 SPARSE \"g.vmdk\"\n";
  expect_error(type, "Unsupported image type 'monolithicSparse'");
  const std::string truncated = dir.file("t.vmdk");
  std::ofstream(truncated) << "KDMV";
  expect_error(truncated, "truncated");
}

// An ESX sparse (COWD) delta built by hand, opened directly and through a
// vmfsSparse descriptor.
TEST(VmdkData, ReadsCowdExtents) {
  TempDir dir;
  constexpr uint32_t kGrainSectors = 8;
  constexpr uint32_t kCapacity = 40960;  // 20 MiB: two grain tables
  const uint32_t gd_entries = (kCapacity + kCowdGtes * kGrainSectors - 1) / (kCowdGtes * kGrainSectors);
  std::vector<std::byte> file(4 * 512);
  auto put32 = [&](uint64_t at, uint32_t v) { store_le32(file.data() + at, v); };
  put32(0, kCowdMagic);
  put32(4, 1);
  put32(8, 3);
  put32(12, kCapacity);
  put32(16, kGrainSectors);
  put32(20, 4);  // GD at sector 4
  put32(24, gd_entries);
  file.resize((4 + 1) * 512);  // GD: one sector
  // Only the second table exists; it maps grains 0 and 5 of its range.
  const uint32_t gt_sector = 5;
  put32(4 * 512 + 4, gt_sector);
  file.resize((gt_sector + kCowdGtes * 4 / 512) * 512);
  std::vector<std::byte> model(uint64_t{kCapacity} * 512);
  const uint64_t table_span = uint64_t{kCowdGtes} * kGrainSectors * 512;
  for (uint32_t grain : {0u, 5u}) {
    const uint32_t data_sector = static_cast<uint32_t>(file.size() / 512);
    put32(uint64_t{gt_sector} * 512 + grain * 4, data_sector);
    std::vector<std::byte> data = random_bytes(kGrainSectors * 512, grain + 1);
    file.insert(file.end(), data.begin(), data.end());
    std::memcpy(model.data() + table_span + uint64_t{grain} * kGrainSectors * 512, data.data(), data.size());
  }
  const std::string cowd = dir.file("d-delta.vmdk");
  std::ofstream(cowd, std::ios::binary).write(reinterpret_cast<const char*>(file.data()), static_cast<std::streamsize>(file.size()));
  const std::string descriptor = dir.file("d.vmdk");
  std::ofstream(descriptor) << "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"vmfsSparse\"\n\n"
                            << "RW " << kCapacity << " VMFSSPARSE \"d-delta.vmdk\"\n";
  for (const std::string& name : {cowd, descriptor}) {
    OpenOptions options;
    options.read_only = true;
    auto img = Image::open(name, options);
    EXPECT_EQ(img->format(), "vmdk");
    ASSERT_EQ(img->size(), model.size());
    std::vector<std::byte> back(model.size());
    img->read(0, back);
    EXPECT_TRUE(back == model) << name;
    BlockStatus status = img->block_status(0, model.size());
    EXPECT_EQ(status.flags, 0u);
    EXPECT_EQ(status.length, table_span);
    status = img->block_status(table_span, model.size() - table_span);
    EXPECT_EQ(status.flags, kStatusData | kStatusAllocated | kStatusOffsetValid);
    EXPECT_EQ(status.length, kGrainSectors * 512u);
    EXPECT_NO_THROW(img->top().check(CheckRepair::None));
  }
  // qemu-img 7.2 is no oracle here: it lists a VMFSSPARSE extent twice (a
  // 40 MiB disk for this 20 MiB descriptor) and refuses to open a COWD file
  // directly. Its map of the first 20 MiB agrees with the model:
  CommandResult map = run("qemu-img map --output=json '" + descriptor + "'");
  EXPECT_NE(map.output.find("{ \"start\": 16777216, \"length\": 4096, \"depth\": 0, \"present\": true, \"zero\": false, \"data\": true, \"offset\": 18944}"),
            std::string::npos)
      << map.output;
  // Writing to a COWD extent is refused, not silently dropped.
  auto img = open_vmdk(descriptor);
  std::vector<std::byte> data(512);
  EXPECT_THROW(img->write(0, data), Error);
}

// A hand-written descriptor mixing RW and RDONLY flat extents (with offsets)
// and a ZERO extent: reads concatenate them; writes land only where allowed.
TEST(VmdkData, MixedExtentDescriptor) {
  TempDir dir;
  std::vector<std::byte> first = random_bytes(8192 + 1024, 1);  // 2 sectors of header before the data
  std::vector<std::byte> second = random_bytes(4096, 2);
  std::ofstream(dir.file("one.bin"), std::ios::binary).write(reinterpret_cast<const char*>(first.data()), static_cast<std::streamsize>(first.size()));
  std::ofstream(dir.file("sub-two.bin"), std::ios::binary).write(reinterpret_cast<const char*>(second.data()), static_cast<std::streamsize>(second.size()));
  const std::string descriptor = dir.file("mixed.vmdk");
  std::ofstream(descriptor) << "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n"
                            << "RW 16 FLAT \"one.bin\" 2\nRDONLY 8 FLAT \"sub-two.bin\" 0\nRW 8 ZERO\n";
  auto img = open_vmdk(descriptor);
  ASSERT_EQ(img->size(), 32u * 512);
  std::vector<std::byte> back(32 * 512);
  img->read(0, back);
  EXPECT_EQ(std::memcmp(back.data(), first.data() + 1024, 8192), 0);
  EXPECT_EQ(std::memcmp(back.data() + 8192, second.data(), 4096), 0);
  EXPECT_TRUE(std::all_of(back.begin() + 12288, back.end(), [](std::byte b) { return b == std::byte{0}; }));
  std::vector<std::byte> data(1024, std::byte{0x5a});
  img->write(8192 - 512, std::span(data).first(512));  // last sector of the RW extent
  EXPECT_THROW(img->write(8192 - 512, data), Error);      // runs into the RDONLY extent
  EXPECT_THROW(img->write(12288, std::span(data).first(512)), Error);
  img->read(0, back);
  EXPECT_EQ(back[8191], std::byte{0x5a});
  BlockStatus status = img->block_status(12288, 4096);
  EXPECT_EQ(status.flags, kStatusZero | kStatusAllocated);
  const nlohmann::json info = img->top().format_specific_info()["data"]["extents"];
  ASSERT_EQ(info.size(), 3u);
  EXPECT_EQ(info[1]["filename"], dir.file("sub-two.bin"));
  EXPECT_EQ(info[2]["format"], "ZERO");
}

TEST(VmdkData, CidChangesOnFirstWrite) {
  TempDir dir;
  const std::string image = dir.file("cid.vmdk");
  create_vmdk(image, 1 << 20, "subformat=monolithicFlat");
  auto cid_of = [&] { return open_vmdk(image, true)->top().format_specific_info()["data"]["cid"].get<uint32_t>(); };
  const uint32_t before = cid_of();
  EXPECT_EQ(cid_of(), before);
  std::vector<std::byte> data(512, std::byte{1});
  open_vmdk(image)->write(0, data);
  const uint32_t after = cid_of();
  EXPECT_NE(after, before);
  CommandResult info = run("qemu-img info --output=json '" + image + "'");
  EXPECT_NE(info.output.find("\"cid\": " + std::to_string(after)), std::string::npos) << info.output;
}

TEST(VmdkData, CreateOptionErrors) {
  TempDir dir;
  auto error_of = [&](const std::string& options) {
    try {
      create_vmdk(dir.file("e.vmdk"), 1 << 20, options);
    } catch (const Error& error) {
      return std::string(error.what());
    }
    return std::string();
  };
  EXPECT_EQ(error_of("subformat=foo"), "invalid parameter value: foo");
  EXPECT_EQ(error_of("adapter_type=scsi"), "invalid parameter value: scsi");
  EXPECT_EQ(error_of("compat6=on,hwversion=7"), "compat6 cannot be enabled with hwversion set");
  EXPECT_EQ(error_of("subformat=monolithicFlat,backing_file=x.vmdk"), "Flat image can't have backing file");
}

// Zero-copy readers (kiln-nbd): flat extents always map to their file, sparse
// grains only while read-only, compressed grains never.
TEST(VmdkData, HostExtentsOfFlatAndSparseData) {
  TempDir dir;
  auto bytes_at = [](const HostExtent& extent) {
    std::vector<std::byte> data(extent.length);
    EXPECT_EQ(pread(extent.fd, data.data(), data.size(), static_cast<off_t>(extent.offset)), static_cast<ssize_t>(data.size()));
    return data;
  };
  const std::vector<std::byte> data = random_bytes(1 << 20, 7);
  for (const char* subformat : {"monolithicFlat", "monolithicSparse", "streamOptimized"}) {
    const std::string file = dir.file(std::string("h-") + subformat + ".vmdk");
    create_vmdk(file, 4 << 20, std::string("subformat=") + subformat);
    const bool flat = std::string(subformat) == "monolithicFlat";
    {
      auto image = open_vmdk(file);
      image->write(1 << 20, data);
      std::optional<HostExtent> extent = image->top().host_extent((1 << 20) + 512, 4096);
      EXPECT_EQ(extent.has_value(), flat) << subformat << " writable";
      if (extent) {
        EXPECT_EQ(bytes_at(*extent), std::vector<std::byte>(data.begin() + 512, data.begin() + 512 + 4096));
      }
    }
    auto image = open_vmdk(file, true);
    std::optional<HostExtent> extent = image->top().host_extent((1 << 20) + 512, 4096);
    if (std::string(subformat) == "streamOptimized") {
      EXPECT_FALSE(extent.has_value()) << "compressed grains";
      continue;
    }
    ASSERT_TRUE(extent.has_value()) << subformat;
    EXPECT_EQ(bytes_at(*extent), std::vector<std::byte>(data.begin() + 512, data.begin() + 512 + 4096)) << subformat;
    if (!flat) {
      EXPECT_FALSE(image->top().host_extent(0, 4096).has_value()) << "unallocated grain";
    }
  }
}

}  // namespace
}  // namespace kiln::block::vmdk
