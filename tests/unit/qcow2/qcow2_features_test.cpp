// qcow2 features: compressed clusters, internal snapshots, check/repair,
// amend, images made by qemu, malformed images.
#include <unistd.h>

#include <fstream>

#include "helpers.h"
#include "qcow2/format.h"

namespace kiln::block::test {
namespace {

void patch(const std::string& file, uint64_t offset, std::vector<uint8_t> bytes) {
  std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
}

std::vector<uint8_t> be64(uint64_t v) {
  std::vector<uint8_t> out(8);
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (56 - 8 * i));
  return out;
}
std::vector<uint8_t> be32(uint32_t v) {
  std::vector<uint8_t> out(4);
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (24 - 8 * i));
  return out;
}

std::string open_error(const std::string& file, bool read_only = true) {
  try {
    auto image = open_image(file, read_only);
    std::vector<std::byte> buffer(65536);
    for (uint64_t offset = 0; offset < image->size(); offset += buffer.size()) {
      image->read(offset, std::span(buffer).first(std::min<uint64_t>(buffer.size(), image->size() - offset)));
    }
    return "";
  } catch (const Error& e) {
    return e.what();
  }
}

TEST(Qcow2Compressed, WrittenByKilnReadByQemu) {
  TempDir dir;
  for (const char* type : {"zlib", "zstd"}) {
    const std::string file = dir.file(std::string(type) + ".qcow2");
    create_qcow2(file, 4 << 20, std::string("compression_type=") + type);
    {
      auto image = open_image(file);
      ASSERT_TRUE(image->top().supports_compressed_writes());
      std::vector<std::byte> data(4 * 65536);
      for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte((i / 4096) & 0xff);
      image->write_compressed(0, data);
      image->write_compressed(1 << 20, pattern(65536, 0x77));
      image->write(1 << 20, pattern(512, 0x78));  // overwrite a compressed cluster: copy-on-write
      std::vector<std::byte> back(data.size());
      image->read(0, back);
      EXPECT_EQ(back, data);
      expect_reads(*image, (1 << 20) + 512, 65536 - 512, 0x77);
      BlockStatus s = image->block_status(0, 65536);
      EXPECT_EQ(s.flags, kStatusData | kStatusAllocated);
    }
    expect_qemu_check_clean(file);
    expect_qemu_reads(file, 4096 * 3, 4096, 3);
    expect_qemu_reads(file, 4096 * 63, 4096, 63);
    expect_qemu_reads(file, 1 << 20, 512, 0x78);
    expect_qemu_reads(file, (1 << 20) + 512, 65536 - 512, 0x77);
    CommandResult r = run("qemu-img check '" + file + "'");
    EXPECT_NE(r.output.find("compressed clusters"), std::string::npos);
    EXPECT_EQ(r.output.find(" 0.00% compressed"), std::string::npos) << r.output;
  }
}

TEST(Qcow2Compressed, WrittenByQemuReadByKiln) {
  TempDir dir;
  for (const char* type : {"zlib", "zstd"}) {
    const std::string file = dir.file(std::string(type) + ".qcow2");
    ASSERT_EQ(run("qemu-img create -f qcow2 -o compression_type=" + std::string(type) + " '" + file + "' 4M").status, 0);
    qemu_io(file, "write -c -P 0x31 0 64k");
    qemu_io(file, "write -c -P 0x32 64k 128k");
    auto image = open_image(file, true);
    expect_reads(*image, 0, 65536, 0x31);
    expect_reads(*image, 65536, 131072, 0x32);
    expect_reads(*image, 196608, 65536, 0);
    CheckResult c = image->top().check(CheckRepair::None);
    EXPECT_EQ(c.compressed_clusters, 3u);
    EXPECT_EQ(c.corruptions + c.leaks, 0u);
  }
}

TEST(Qcow2Snapshot, CreateApplyDeleteAgreeWithQemu) {
  TempDir dir;
  const std::string file = dir.file("s.qcow2");
  create_qcow2(file, 8 << 20, "");
  {
    auto image = open_image(file);
    image->write(0, pattern(1 << 20, 1));
    image->top().create_snapshot("first");
    image->write(4096, pattern(4096, 2));           // copy-on-write of a shared cluster
    image->write(2 << 20, pattern(65536, 3));
    image->top().create_snapshot("second");
    image->write(0, pattern(65536, 4));
    auto list = image->top().list_snapshots();
    ASSERT_EQ(list.size(), 2u);
    EXPECT_EQ(list[0].name, "first");
    EXPECT_EQ(list[1].id, "2");
  }
  expect_qemu_check_clean(file);
  CommandResult l = run("qemu-img snapshot -l '" + file + "'");
  EXPECT_NE(l.output.find("first"), std::string::npos) << l.output;
  EXPECT_NE(l.output.find("second"), std::string::npos) << l.output;
  expect_qemu_reads(file, 0, 65536, 4);
  {
    auto image = open_image(file);
    image->top().apply_snapshot("first");
    expect_reads(*image, 0, 1 << 20, 1);
    expect_reads(*image, 2 << 20, 65536, 0);
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 1 << 20, 1);
  // qemu applies our second snapshot.
  ASSERT_EQ(run("qemu-img snapshot -a second '" + file + "'").status, 0);
  expect_qemu_reads(file, 4096, 4096, 2);
  expect_qemu_reads(file, 2 << 20, 65536, 3);
  {
    auto image = open_image(file);
    expect_reads(*image, 4096, 4096, 2);
    image->top().delete_snapshot("first");
    image->top().delete_snapshot("2");
    EXPECT_TRUE(image->top().list_snapshots().empty());
    EXPECT_THROW(image->top().delete_snapshot("nothing"), Error);
    image->write(0, pattern(4096, 5));
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 4096, 5);
  expect_qemu_reads(file, 4096, 4096, 2);
}

TEST(Qcow2Snapshot, RefcountOverflowIsRefusedCleanly) {
  TempDir dir;
  const std::string file = dir.file("o.qcow2");
  create_qcow2(file, 4 << 20, "refcount_bits=1");
  {
    auto image = open_image(file);
    image->write(0, pattern(65536, 1));
    EXPECT_THROW(image->top().create_snapshot("s"), Error);
    EXPECT_TRUE(image->top().list_snapshots().empty());
    image->write(65536, pattern(65536, 2));
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 65536, 1);
}

TEST(Qcow2Snapshot, MadeByQemuUsedByKiln) {
  TempDir dir;
  const std::string file = dir.file("q.qcow2");
  ASSERT_EQ(run("qemu-img create -f qcow2 -o cluster_size=4k '" + file + "' 4M").status, 0);
  qemu_io(file, "write -P 0x41 0 1M");
  ASSERT_EQ(run("qemu-img snapshot -c snap '" + file + "'").status, 0);
  qemu_io(file, "write -P 0x42 0 512k");
  {
    auto image = open_image(file);
    auto list = image->top().list_snapshots();
    ASSERT_EQ(list.size(), 1u);
    EXPECT_EQ(list[0].name, "snap");
    expect_reads(*image, 0, 512 << 10, 0x42);
    image->top().apply_snapshot("snap");
    expect_reads(*image, 0, 1 << 20, 0x41);
    CheckResult c = image->top().check(CheckRepair::None);
    EXPECT_EQ(c.corruptions + c.leaks, 0u) << (c.messages.empty() ? "" : c.messages[0]);
  }
  expect_qemu_check_clean(file);
}

TEST(Qcow2Check, CountsMatchQemuAndRepairsLeaks) {
  TempDir dir;
  const std::string file = dir.file("c.qcow2");
  ASSERT_EQ(run("qemu-img create -f qcow2 '" + file + "' 16M").status, 0);
  qemu_io(file, "write -P 1 0 1M");
  qemu_io(file, "write -P 2 4M 64k");
  {
    auto image = open_image(file, true);
    CheckResult c = image->top().check(CheckRepair::None);
    EXPECT_EQ(c.leaks + c.corruptions, 0u);
    EXPECT_EQ(c.allocated_clusters, 17u);
    EXPECT_EQ(c.total_clusters, 256u);
    CommandResult r = run("qemu-img check --output=json '" + file + "'");
    auto j = nlohmann::json::parse(r.output);
    EXPECT_EQ(j["image-end-offset"], c.image_end_offset);
    EXPECT_EQ(j["allocated-clusters"], c.allocated_clusters);
    EXPECT_EQ(j.value("fragmented-clusters", uint64_t{0}), c.fragmented_clusters);
  }
  // Leak two clusters: refcount 1 on clusters nothing references.
  // Refcount block at cluster 2, 16-bit entries.
  std::filesystem::resize_file(file, 48 * 65536);
  patch(file, 2 * 65536 + 2 * 40, {0, 1, 0, 1});
  CommandResult q = run("qemu-img check --output=json '" + file + "'");
  auto qj = nlohmann::json::parse(q.output.substr(q.output.find('{')));
  {
    auto image = open_image(file);
    CheckResult c = image->top().check(CheckRepair::None);
    EXPECT_EQ(c.leaks, qj["leaks"].get<uint64_t>());
    EXPECT_EQ(c.leaks, 2u);
    CheckResult fixed = image->top().check(CheckRepair::Leaks);
    EXPECT_EQ(fixed.leaks_fixed, 2u);
    EXPECT_EQ(fixed.leaks, 0u);
  }
  expect_qemu_check_clean(file);
  // Corruption: refcount of a used data cluster set to 0.
  uint64_t data_cluster = 0;
  {
    auto image = open_image(file, true);
    data_cluster = image->block_status(0, 65536).host_offset / 65536;
  }
  patch(file, 2 * 65536 + 2 * data_cluster, {0, 0});
  CommandResult broken = run("qemu-img check --output=json '" + file + "'");
  auto bj = nlohmann::json::parse(broken.output.substr(broken.output.find('{')));
  {
    auto image = open_image(file);
    CheckResult c = image->top().check(CheckRepair::None);
    // The refcount and the COPIED flag disagree, as qemu counts them.
    EXPECT_EQ(c.corruptions, bj["corruptions"].get<uint64_t>());
    EXPECT_EQ(c.corruptions, 2u);
    EXPECT_EQ(c.messages.at(0), fmt::format("ERROR cluster {} refcount=0 reference=1", data_cluster));
    CheckResult fixed = image->top().check(CheckRepair::All);
    EXPECT_GE(fixed.corruptions_fixed, 1u);
    EXPECT_EQ(fixed.corruptions, 0u);
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 1 << 20, 1);
}

TEST(Qcow2Check, LiveImageWithUnflushedTablesIsClean) {
  TempDir dir;
  const std::string file = dir.file("live.qcow2");
  create_qcow2(file, 64 << 20, "cluster_size=4k");
  auto image = open_image(file);
  for (int i = 0; i < 16; ++i) image->write(uint64_t(i) << 22, pattern(4096, static_cast<uint8_t>(i + 1)));
  CheckResult c = image->top().check(CheckRepair::None);
  EXPECT_EQ(c.corruptions + c.leaks, 0u) << (c.messages.empty() ? "" : c.messages[0]);
  EXPECT_EQ(c.allocated_clusters, 16u);
}

TEST(Qcow2Amend, CompatLazyRefcountsAndBacking) {
  TempDir dir;
  const std::string file = dir.file("a.qcow2");
  create_qcow2(file, 4 << 20, "compat=0.10");
  {
    auto image = open_image(file);
    image->write(0, pattern(65536, 6));
    image->top().amend({{"compat", "1.1"}, {"lazy_refcounts", "on"}});
    EXPECT_EQ(image->top().format_specific_info()["data"]["compat"], "1.1");
    image->top().change_backing_file("base.raw", "raw");
    EXPECT_EQ(image->top().backing_filename(), "base.raw");
    EXPECT_EQ(image->top().backing_format(), "raw");
    image->top().amend({{"backing_file", ""}});
  }
  expect_qemu_check_clean(file);
  CommandResult r = run("qemu-img info --output=json '" + file + "'");
  auto j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["format-specific"]["data"]["lazy-refcounts"], true);
  EXPECT_FALSE(j.contains("backing-filename"));
  expect_qemu_reads(file, 0, 65536, 6);
  {
    auto image = open_image(file);
    image->top().amend({{"compat", "0.10"}});
  }
  r = run("qemu-img info --output=json '" + file + "'");
  EXPECT_EQ(nlohmann::json::parse(r.output)["format-specific"]["data"]["compat"], "0.10");
  expect_qemu_check_clean(file);
}

TEST(Qcow2Amend, RefcountBits) {
  TempDir dir;
  const std::string file = dir.file("r.qcow2");
  create_qcow2(file, 64 << 20, "cluster_size=4k");
  {
    auto image = open_image(file);
    for (int i = 0; i < 64; ++i) image->write(uint64_t(i) << 20, pattern(8192, static_cast<uint8_t>(i + 1)));
    image->top().create_snapshot("s");  // refcounts of 2 everywhere
    image->write(0, pattern(4096, 0xf0));
    EXPECT_THROW(image->top().amend({{"refcount_bits", "1"}}), Error);
    image->top().amend({{"refcount_bits", "64"}});
    EXPECT_EQ(image->top().format_specific_info()["data"]["refcount-bits"], 64);
    image->write(5 << 20, pattern(4096, 0xf1));
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 4096, 0xf0);
  expect_qemu_reads(file, 4096, 4096, 1);
  expect_qemu_reads(file, 5 << 20, 4096, 0xf1);
  expect_qemu_reads(file, 63ull << 20, 8192, 64);
  {
    auto image = open_image(file);
    image->top().delete_snapshot("s");
    image->top().amend({{"refcount_bits", "1"}});
    image->write(7 << 20, pattern(4096, 0xf2));
  }
  expect_qemu_check_clean(file);
  CommandResult r = run("qemu-img info --output=json '" + file + "'");
  EXPECT_EQ(nlohmann::json::parse(r.output)["format-specific"]["data"]["refcount-bits"], 1);
  expect_qemu_reads(file, 7 << 20, 4096, 0xf2);
  expect_qemu_reads(file, 6 << 20, 8192, 7);
}

// Zero-copy readers (kiln-nbd) get the host file range of plain data
// clusters, through the backing chain, and only while the image is read-only.
TEST(Qcow2HostExtent, PlainClustersMapToTheirHostBytesOnlyWhileReadOnly) {
  TempDir dir;
  const std::string top = create_backed_qcow2(dir, 4 << 20, "write -P 0xaa 2M 1M").top;
  {
    auto image = open_image(top);
    image->write(0, pattern(196608, 1));  // three clusters, allocated in order
    image->write_compressed(262144, pattern(65536, 2));
    image->write_zeroes(327680, 65536, {});
    EXPECT_FALSE(image->top().host_extent(0, 65536).has_value()) << "writable images must not share their mapping";
  }
  auto image = open_image(top, true);
  Node& node = image->top();
  auto bytes_at = [](const HostExtent& extent) {
    std::vector<std::byte> data(extent.length);
    EXPECT_EQ(pread(extent.fd, data.data(), data.size(), static_cast<off_t>(extent.offset)), static_cast<ssize_t>(data.size()));
    return data;
  };
  std::optional<HostExtent> extent = node.host_extent(1000, 196608 - 1000);
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(extent->offset, image->block_status(1000, 1).host_offset);
  EXPECT_EQ(extent->length, 196608u - 1000);  // contiguous clusters form one range
  EXPECT_EQ(bytes_at(*extent), pattern(196608 - 1000, 1));
  EXPECT_FALSE(node.host_extent(262144, 65536).has_value()) << "compressed";
  EXPECT_FALSE(node.host_extent(327680, 65536).has_value()) << "zero cluster";
  // Unallocated here: the backing file's bytes, where it has them.
  extent = node.host_extent((2 << 20) + 512, 4096);
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(bytes_at(*extent), pattern(4096, 0xaa));
  EXPECT_FALSE(node.host_extent(3 << 20, 4096).has_value()) << "unallocated in the whole chain";
}

TEST(Qcow2Extended, SubclustersWithBackingAgreeWithQemu) {
  TempDir dir;
  const std::string top = create_backed_qcow2(dir, 4 << 20, "write -P 0xaa 0 4M", "extended_l2=on,cluster_size=64k").top;
  {
    auto image = open_image(top);
    EXPECT_EQ(image->top().format_specific_info()["data"]["extended-l2"], true);
    image->write(2048 + 100, pattern(1000, 1));     // inside subcluster 1 (2 KiB subclusters)
    image->write(65536 + 4096, pattern(8192, 2));  // whole subclusters 2..5 of cluster 1
    image->write(131072 + 60000, pattern(10000, 3));  // across a cluster boundary
    image->write_zeroes(262144, 65536, {});
    image->top().create_snapshot("s");
    image->write(65536 + 4096, pattern(100, 4));   // copy-on-write of a shared cluster keeps the other subclusters
    image->write_compressed(393216, pattern(65536, 5));
    image->discard(458752, 65536);
    expect_reads(*image, 0, 2148, 0xaa);
    expect_reads(*image, 2148, 1000, 1);
    expect_reads(*image, 3148, 65536 - 3148, 0xaa);
    expect_reads(*image, 65536 + 4096, 100, 4);
    expect_reads(*image, 65536 + 4196, 8092, 2);
    expect_reads(*image, 65536 + 12288, 65536 - 12288, 0xaa);
    BlockStatus st = image->block_status(0, 65536);
    EXPECT_EQ(st.flags, 0u);
    EXPECT_EQ(st.length, 2048u);
    st = image->block_status(2048, 65536);
    EXPECT_EQ(st.flags, kStatusData | kStatusAllocated | kStatusOffsetValid);
    EXPECT_EQ(st.length, 2048u);
  }
  expect_qemu_check_clean(top);
  expect_qemu_reads(top, 0, 2148, 0xaa);
  expect_qemu_reads(top, 2148, 1000, 1);
  expect_qemu_reads(top, 3148, 65536 - 3148, 0xaa);
  expect_qemu_reads(top, 65536, 4096, 0xaa);
  expect_qemu_reads(top, 65536 + 4096, 100, 4);
  expect_qemu_reads(top, 65536 + 4196, 8092, 2);
  expect_qemu_reads(top, 131072, 60000, 0xaa);
  expect_qemu_reads(top, 131072 + 60000, 10000, 3);
  expect_qemu_reads(top, 262144, 65536, 0);
  expect_qemu_reads(top, 393216, 65536, 5);
  CommandResult map = run("qemu-img map --output=json '" + top + "'");
  EXPECT_NE(map.output.find("\"start\": 2048, \"length\": 2048, \"depth\": 0"), std::string::npos) << map.output;
  ASSERT_EQ(run("qemu-img snapshot -a s '" + top + "'").status, 0);
  expect_qemu_reads(top, 65536 + 4096, 8192, 2);
}

TEST(Qcow2Extended, MadeByQemuReadByKiln) {
  TempDir dir;
  const std::string file = dir.file("e.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=32k '" + file + "' 4M").status, 0);
  qemu_io(file, "write -P 0x11 0 64k");
  qemu_io(file, "write -z 1k 1k");
  qemu_io(file, "write -P 0x12 70k 3k");
  auto image = open_image(file);
  expect_reads(*image, 0, 1024, 0x11);
  expect_reads(*image, 1024, 1024, 0);
  expect_reads(*image, 2048, 62 << 10, 0x11);
  expect_reads(*image, 64 << 10, 6 << 10, 0);
  expect_reads(*image, 70 << 10, 3 << 10, 0x12);
  CheckResult c = image->top().check(CheckRepair::None);
  EXPECT_EQ(c.corruptions + c.leaks, 0u) << (c.messages.empty() ? "" : c.messages[0]);
  image->write(1024 + 512, pattern(100, 0x13));
  image.reset();
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 1024, 512, 0);
  expect_qemu_reads(file, 1536, 100, 0x13);
  expect_qemu_reads(file, 1636, 412, 0);
}

TEST(Qcow2DataFile, ExternalDataFileAgreesWithQemu) {
  TempDir dir;
  for (const char* raw : {"off", "on"}) {
    const std::string file = dir.file(std::string("d-") + raw + ".qcow2");
    const std::string data = dir.file(std::string("d-") + raw + ".raw");
    // The data file name is used as stored (relative to the working directory, as qemu does).
    create_qcow2(file, 4 << 20, "data_file=" + data + ",data_file_raw=" + raw);
    {
      auto image = open_image(file);
      EXPECT_EQ(image->top().format_specific_info()["data"]["data-file"], data);
      image->write(1000, pattern(70000, 1));
      image->write(2 << 20, pattern(65536, 2));
      image->write_zeroes(2 << 20, 65536, {});
      image->discard(3 << 20, 1 << 20);
      BlockStatus st = image->block_status(0, 65536);
      EXPECT_EQ(st.host_file, data);
      EXPECT_EQ(st.host_offset, 0u);
      EXPECT_THROW(image->top().create_snapshot("s"), Error);
      EXPECT_THROW(image->write_compressed(0, pattern(65536, 3)), Error);
    }
    expect_qemu_check_clean(file);
    expect_qemu_reads(file, 0, 1000, 0);
    expect_qemu_reads(file, 1000, 70000, 1);
    expect_qemu_reads(file, 2 << 20, 65536, 0);
    // Data sits at its guest offset in the data file.
    CommandResult r = run("qemu-io -f raw -r -c 'read -P 1 1000 70000' '" + data + "'");
    EXPECT_EQ(r.status, 0) << r.output;
    if (std::string(raw) == "on") {
      r = run("qemu-io -f raw -r -c 'read -P 0 2M 64k' '" + data + "'");
      EXPECT_EQ(r.status, 0) << r.output;
    }
  }
  // Made by qemu, used by kiln.
  const std::string file = dir.file("q.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 -o data_file='" + dir.file("q.raw") + "' '" + file + "' 1M").status, 0);
  qemu_io(file, "write -P 7 64k 4k");
  qemu_io(file, "write -z 128k 64k");
  auto image = open_image(file);
  expect_reads(*image, 65536, 4096, 7);
  expect_reads(*image, 65536 + 4096, 65536 - 4096, 0);
  EXPECT_EQ(image->block_status(131072, 65536).flags & kStatusZero, kStatusZero);
  CheckResult c = image->top().check(CheckRepair::None);
  EXPECT_EQ(c.leaks + c.corruptions, 0u);
  EXPECT_EQ(c.allocated_clusters, 1u);
}

std::unique_ptr<Image> open_encrypted(const std::string& file, const std::string& passphrase, bool read_only = false) {
  OpenOptions options;
  options.format = "qcow2";
  options.read_only = read_only;
  options.secrets["sec0"] = passphrase;
  options.driver_options = {{"encrypt.key-secret", "sec0"}};
  return Image::open(file, options);
}

CommandResult qemu_io_luks(const std::string& file, const std::string& command) {
  return run(fmt::format("qemu-io --object secret,id=s0,data=secret --image-opts -c '{}' driver=qcow2,encrypt.key-secret=s0,file.filename='{}'",
                         command, file));
}

void expect_qemu_check_clean_luks(const std::string& file) {
  CommandResult r = run("qemu-img check --object secret,id=s0,data=secret --image-opts driver=qcow2,encrypt.key-secret=s0,file.filename='" +
                        file + "'");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("No errors were found"), std::string::npos) << r.output;
}

TEST(Qcow2Luks, MadeByQemuUsedByKiln) {
  TempDir dir;
  const std::string file = dir.file("l.qcow2");
  // qemu's PBKDF2 benchmark sometimes fails under load ("Unable to get accurate CPU usage"): retry.
  CommandResult created;
  for (int attempt = 0; attempt < 3; ++attempt) {
    created = run("qemu-img create -q -f qcow2 --object secret,id=s0,data=secret -o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=50 '" +
                  file + "' 4M");
    if (created.status == 0) break;
  }
  ASSERT_EQ(created.status, 0) << created.output;
  ASSERT_EQ(qemu_io_luks(file, "write -P 0x5a 1000 5000").status, 0);
  {
    auto image = open_encrypted(file, "secret");
    EXPECT_EQ(image->top().request_alignment(), 512u);
    expect_reads(*image, 0, 1000, 0);
    expect_reads(*image, 1000, 5000, 0x5a);
    image->write(70000, pattern(3333, 0x6b));  // unaligned: read-modify-write of sectors
    image->write(1 << 20, pattern(65536, 0x7c));
    auto info = image->top().format_specific_info();
    EXPECT_EQ(info["data"]["encrypt"]["format"], "luks");
    EXPECT_EQ(info["data"]["encrypt"]["cipher-alg"], "aes-256");
  }
  expect_qemu_check_clean_luks(file);
  EXPECT_EQ(qemu_io_luks(file, "read -P 0x6b 70000 3333").status, 0);
  EXPECT_EQ(qemu_io_luks(file, "read -P 0 69632 368").status, 0);
  EXPECT_EQ(qemu_io_luks(file, "read -P 0x7c 1M 64k").status, 0);
  EXPECT_EQ(qemu_io_luks(file, "read -P 0x5a 1000 5000").status, 0);
  try {
    open_encrypted(file, "wrong", true);
    ADD_FAILURE() << "opened with a wrong passphrase";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Invalid password"), std::string::npos) << e.what();
  }
  // Without the key: metadata only.
  auto image = open_image(file, true);
  std::vector<std::byte> buffer(512);
  EXPECT_THROW(image->read(1000, buffer), Error);
  EXPECT_THROW(open_image(file, false), Error);
}

TEST(Qcow2Luks, MadeByKilnUsedByQemu) {
  TempDir dir;
  const std::string file = dir.file("k.qcow2");
  const FormatDriver* driver = find_format("qcow2");
  CreateOptions options = parse_create_options(*driver, "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10,cluster_size=4k");
  options.size = 4 << 20;
  options.secrets["sec0"] = "secret";
  create_image(file, "qcow2", options);
  {
    auto image = open_encrypted(file, "secret");
    image->write(4096, pattern(8192, 0x21));
    image->write(100, pattern(10, 0x22));
  }
  expect_qemu_check_clean_luks(file);
  CommandResult info = run("qemu-img info --output=json '" + file + "'");
  auto j = nlohmann::json::parse(info.output);
  EXPECT_EQ(j["encrypted"], true) << info.output;
  EXPECT_EQ(j["format-specific"]["data"]["encrypt"]["format"], "luks");
  EXPECT_EQ(qemu_io_luks(file, "read -P 0x21 4k 8k").status, 0);
  EXPECT_EQ(qemu_io_luks(file, "read -P 0x22 100 10").status, 0);
  EXPECT_EQ(qemu_io_luks(file, "read -P 0 0 100").status, 0);
  ASSERT_EQ(qemu_io_luks(file, "write -P 0x23 2M 4k").status, 0);
  auto image = open_encrypted(file, "secret", true);
  expect_reads(*image, 2 << 20, 4096, 0x23);
  expect_reads(*image, 4096, 8192, 0x21);
}

TEST(Qcow2Interop, ImagesMadeByQemuReadCorrectly) {
  TempDir dir;
  for (const std::string& options : {std::string("compat=0.10"), std::string("cluster_size=512"), std::string("cluster_size=2M"),
                                     std::string("refcount_bits=1"), std::string("refcount_bits=64,cluster_size=4k")}) {
    const std::string file = dir.file("q.qcow2");
    ASSERT_EQ(run("qemu-img create -f qcow2 -o " + options + " '" + file + "' 8M").status, 0);
    qemu_io(file, "write -P 0x61 0 100k");
    qemu_io(file, "write -P 0x62 3M 1M");
    qemu_io(file, "write -z 3200k 64k");
    {
      auto image = open_image(file);
      expect_reads(*image, 0, 100 << 10, 0x61);
      expect_reads(*image, 100 << 10, 100 << 10, 0);
      expect_reads(*image, 3 << 20, 128 << 10, 0x62);
      expect_reads(*image, 3200 << 10, 64 << 10, 0);
      expect_reads(*image, (3200 + 64) << 10, (4096 - 3264) << 10, 0x62);
      CheckResult c = image->top().check(CheckRepair::None);
      EXPECT_EQ(c.leaks + c.corruptions, 0u) << options << (c.messages.empty() ? "" : c.messages[0]);
      image->write(50 << 10, pattern(100 << 10, 0x63));
    }
    expect_qemu_check_clean(file);
    expect_qemu_reads(file, 50 << 10, 100 << 10, 0x63);
    expect_qemu_reads(file, 0, 50 << 10, 0x61);
  }
}

TEST(Qcow2Malformed, ClearErrors) {
  TempDir dir;
  const std::string good = dir.file("good.qcow2");
  create_qcow2(good, 4 << 20, "");
  {
    auto image = open_image(good);
    image->write(0, pattern(65536, 1));
  }
  struct Case {
    const char* what;
    uint64_t offset;
    std::vector<uint8_t> bytes;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"bad magic", 0, {'Q', 'F', 'I', 0}, "not in qcow2 format"},
      {"version 4", 4, be32(4), "Unsupported qcow2 version"},
      {"cluster bits 30", 20, be32(30), "cluster size"},
      {"cluster bits 8", 20, be32(8), "cluster size"},
      {"L1 past EOF", 40, be64(1ull << 40), "past the end of the file"},
      {"L1 unaligned", 40, be64(0x30001), "not cluster aligned"},
      {"L1 overlaps header", 40, be64(0), "overlaps the header"},
      {"L1 huge", 36, be32(0x10000000), "L1 table too large"},
      {"L1 too small", 24, be64(1ull << 50), "too small"},
      {"refcount table past EOF", 48, be64(1ull << 40), "past the end of the file"},
      {"refcount table huge", 56, be32(0x7fffffff), "too large"},
      {"refcount table overlaps L1", 48, be64(0x30000), "overlaps"},
      {"snapshots past EOF", 60, {0, 0, 0, 3, 0, 0, 1, 0, 0, 0, 0, 0}, "past the end"},
      {"unknown incompatible bit", 72, be64(1ull << 40), "Unsupported qcow2 feature"},
      {"refcount order 7", 96, be32(7), "64 bits"},
      {"header length odd", 100, be32(105), "header length"},
      {"backing name too long", 8, be64(0x200), "Backing file name"},
      {"compression type unknown", 72, be64(1ull << 3), "compression type"},
  };
  for (const Case& c : cases) {
    const std::string file = dir.file("bad.qcow2");
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    patch(file, c.offset, c.bytes);
    if (std::string(c.what) == "backing name too long") patch(file, 16, be32(5000));
    std::string error = open_error(file);
    EXPECT_NE(error.find(c.expected), std::string::npos) << c.what << ": '" << error << "'";
    EXPECT_EQ(error.find('\n'), std::string::npos) << c.what;
  }
  // The feature table names an unknown incompatible bit.
  {
    const std::string file = dir.file("bad.qcow2");
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    patch(file, 72, be64(1ull << 5));
    // Rename "extended L2 entries" (entry 4) to describe bit 5.
    patch(file, 0x78 + 4 * 48, {0, 5, 'f', 'u', 't', 'u', 'r', 'e'});
    EXPECT_NE(open_error(file).find("future"), std::string::npos) << open_error(file);
  }
  // An L2 entry pointing into the refcount table: reads work, writes mark the image corrupt.
  {
    const std::string file = dir.file("bad.qcow2");
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    // L1 at cluster 3, the only L2 table at cluster 4, its first entry -> cluster 1 (refcount table).
    patch(file, 4 * 65536, be64(0x8000000000010000ull));
    auto image = open_image(file);
    std::vector<std::byte> buffer(512);
    image->read(0, buffer);
    EXPECT_THROW(image->write(0, pattern(512, 9)), Error);
    EXPECT_THROW(image->write(1 << 20, pattern(512, 9)), Error);  // refused once corrupt
    image.reset();
    CommandResult r = run("qemu-img info --output=json '" + file + "'");
    EXPECT_NE(r.output.find("\"corrupt\": true"), std::string::npos) << r.output;
    EXPECT_NE(open_error(file, false).find("corrupt"), std::string::npos);
  }
  // An L2 table overlapping the refcount block: check reports it like qemu-img check.
  {
    const std::string file = dir.file("bad.qcow2");
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    patch(file, 3 * 65536, be64(0x8000000000020000ull));  // L1[0] -> cluster 2 (refcount block)
    CommandResult q = run("qemu-img check --output=json '" + file + "'");
    auto qj = nlohmann::json::parse(q.output.substr(q.output.find('{')));
    auto image = open_image(file, true);
    CheckResult c = image->top().check(CheckRepair::None);
    EXPECT_GT(c.corruptions, 0u);
    EXPECT_EQ(c.corruptions, qj.value("corruptions", uint64_t{0})) << q.output;
    EXPECT_EQ(c.leaks, qj.value("leaks", uint64_t{0})) << q.output;
    EXPECT_NE(std::find(c.messages.begin(), c.messages.end(), "ERROR cluster 2 refcount=1 reference=2"), c.messages.end());
  }
  // An L1 entry pointing past the end of the file.
  {
    const std::string file = dir.file("bad.qcow2");
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    patch(file, 3 * 65536, be64(0x8000000100000000ull));
    EXPECT_NE(open_error(file).find("outside"), std::string::npos) << open_error(file);
  }
  // A truncated file.
  {
    const std::string file = dir.file("bad.qcow2");
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(file, 50);
    EXPECT_NE(open_error(file).find("not in qcow2 format"), std::string::npos) << open_error(file);
    std::filesystem::copy_file(good, file, std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(file, 65536);
    EXPECT_NE(open_error(file).find("past the end"), std::string::npos) << open_error(file);
  }
}

TEST(Qcow2Format, HeaderRoundTripKeepsUnknownExtensions) {
  using namespace kiln::block::qcow2;
  Header h;
  h.cluster_bits = 16;
  h.size = 1 << 20;
  h.l1_size = 1;
  h.l1_table_offset = 0x30000;
  h.refcount_table_offset = 0x10000;
  h.refcount_table_clusters = 1;
  h.header_length = 112;
  h.extra_fields.assign(7, std::byte{0});
  h.extensions.push_back(default_feature_table());
  h.extensions.push_back({0x12345678, {std::byte{1}, std::byte{2}, std::byte{3}}});
  h.backing_file = "base.img";
  std::vector<std::byte> raw = encode_header(h);
  raw.resize(65536);
  Header back = parse_header(raw, 4 * 65536, "x");
  ASSERT_EQ(back.extensions.size(), 2u);
  EXPECT_EQ(back.extensions[1].type, 0x12345678u);
  EXPECT_EQ(back.extensions[1].data.size(), 3u);
  EXPECT_EQ(back.backing_file, "base.img");
  EXPECT_EQ(parse_feature_table(back).size(), 8u);
}

}  // namespace
}  // namespace kiln::block::test
