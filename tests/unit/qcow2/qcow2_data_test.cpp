// qcow2 data path: creation, reads/writes, allocation, backing chains,
// zeroes/discard, block status, concurrency — checked against qemu-img/qemu-io.
#include <thread>

#include "helpers.h"

namespace kiln::block::test {
namespace {

TEST(Qcow2Create, SummaryMatchesQemuImg) {
  TempDir dir;
  const std::vector<std::string> option_sets = {
      "",
      "compat=0.10",
      "cluster_size=4k,refcount_bits=8,lazy_refcounts=on",
      "compression_type=zstd,preallocation=metadata",
      "backing_file=base.qcow2,backing_fmt=qcow2",
      "extended_l2=on,cluster_size=16k",
      "data_file=q.raw,data_file_raw=on",
  };
  for (const std::string& options : option_sets) {
    std::string summary = create_qcow2(dir.file("k.qcow2"), 1 << 20,
                                       options.find("data_file") != std::string::npos ? "data_file=" + dir.file("q.raw") + ",data_file_raw=on" : options);
    if (options.find("data_file") != std::string::npos) {
      // Same summary apart from the absolute data file path kiln was given.
      const std::string absolute = dir.file("q.raw");
      summary.replace(summary.find(absolute), absolute.size(), "q.raw");
    }
    std::string command = "cd '" + dir.path() + "' && qemu-img create -f qcow2 " + (options.empty() ? "" : "-o " + options) +
                          " q.qcow2 1M";
    if (options.find("backing") != std::string::npos) {
      run("cd '" + dir.path() + "' && qemu-img create -f qcow2 base.qcow2 1M");
      command += " -u";
    }
    CommandResult r = run(command);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ("Formatting 'q.qcow2', " + summary + "\n", r.output) << options;
  }
}

TEST(Qcow2Create, LayoutMatchesQemuAndChecksClean) {
  TempDir dir;
  for (const std::string& options : {std::string(""), std::string("compat=0.10"), std::string("cluster_size=512,refcount_bits=1"),
                                     std::string("cluster_size=2M,refcount_bits=64"), std::string("extended_l2=on")}) {
    create_qcow2(dir.file("k.qcow2"), 1ull << 30, options);
    run("qemu-img create -f qcow2 " + (options.empty() ? "" : "-o " + options) + " '" + dir.file("q.qcow2") + "' 1G");
    expect_qemu_check_clean(dir.file("k.qcow2"));
    CommandResult a = run("qemu-img info --output=json '" + dir.file("k.qcow2") + "' | grep -v -e filename -e actual-size");
    CommandResult b = run("qemu-img info --output=json '" + dir.file("q.qcow2") + "' | grep -v -e filename -e actual-size");
    EXPECT_EQ(a.output, b.output) << options;
    CommandResult ka = run("qemu-img check '" + dir.file("k.qcow2") + "' | grep 'end offset'");
    CommandResult qa = run("qemu-img check '" + dir.file("q.qcow2") + "' | grep 'end offset'");
    EXPECT_EQ(ka.output, qa.output) << options;
    auto image = open_image(dir.file("k.qcow2"), true);
    auto info = image->top().format_specific_info();
    CommandResult q = run("qemu-img info --output=json '" + dir.file("q.qcow2") + "'");
    EXPECT_EQ(info, nlohmann::json::parse(q.output)["format-specific"]) << options;
  }
}

TEST(Qcow2Create, RejectsBadOptions) {
  TempDir dir;
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "cluster_size=1000"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "cluster_size=4M"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "refcount_bits=3"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "compat=0.10,refcount_bits=8"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "compat=0.10,lazy_refcounts=on"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "compat=1.2"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1000, ""), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1ull << 40, "cluster_size=512"), Error);  // L1 over qemu's 32 MiB limit
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "extended_l2=on,cluster_size=8k"), Error);
  EXPECT_THROW(create_qcow2(dir.file("a"), 1 << 20, "data_file_raw=on"), Error);
}

TEST(Qcow2Measure, MatchesQemuImg) {
  const FormatDriver* driver = find_format("qcow2");
  for (const auto& [size, options] : std::vector<std::pair<std::string, std::string>>{
           {"1G", ""}, {"100G", ""}, {"1G", "cluster_size=512,refcount_bits=64"}, {"16T", "cluster_size=2M"}, {"7M", "refcount_bits=1"},
           {"1G", "preallocation=full"}, {"3G", "extended_l2=on"}, {"1G", "encrypt.format=luks,encrypt.key-secret=s0"},
           {"1G", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=aes-128,cluster_size=4k"}}) {
    CommandResult r = run_retrying("qemu-img measure --object secret,id=s0,data=x --size " + size + " -O qcow2 " + (options.empty() ? "" : "-o " + options));
    ASSERT_EQ(r.status, 0) << r.output;
    CreateOptions parsed = parse_create_options(*driver, options);
    MeasureResult m = driver->measure(*parse_size(size), 0, parsed);
    EXPECT_EQ(r.output, fmt::format("required size: {}\nfully allocated size: {}\n", m.required, m.fully_allocated)) << size << " " << options;
  }
}

TEST(Qcow2Measure, BitmapsSizeFromQcow2Source) {
  TempDir dir;
  const std::string file = dir.file("bm.qcow2");
  ASSERT_EQ(run("qemu-img create -q -f qcow2 '" + file + "' 1G").status, 0);
  const FormatDriver* driver = find_format("qcow2");
  {
    auto image = open_image(file, true);
    EXPECT_EQ(driver->measure_bitmaps(image->top(), parse_create_options(*driver, "")), 0u);
    EXPECT_EQ(driver->measure_bitmaps(image->top(), parse_create_options(*driver, "compat=0.10")), std::nullopt);
  }
  ASSERT_EQ(run("qemu-img bitmap --add -g 64k '" + file + "' b1 && qemu-img bitmap --add -g 512 '" + file + "' bitmap-two").status, 0);
  for (const std::string& options : {std::string(""), std::string("cluster_size=4k")}) {
    CommandResult r = run("qemu-img measure -O qcow2 -f qcow2 " + (options.empty() ? "" : "-o " + options) + " '" + file + "'");
    auto image = open_image(file, true);
    auto bitmaps = driver->measure_bitmaps(image->top(), parse_create_options(*driver, options));
    ASSERT_TRUE(bitmaps.has_value());
    EXPECT_NE(r.output.find(fmt::format("bitmaps size: {}\n", *bitmaps)), std::string::npos) << r.output;
    // Bitmap tables and data are referenced, so nothing looks leaked.
    CheckResult c = image->top().check(CheckRepair::None);
    EXPECT_EQ(c.leaks + c.corruptions, 0u);
  }
}

TEST(Qcow2Data, WritesReadBackAndQemuAgrees) {
  TempDir dir;
  const std::string file = dir.file("a.qcow2");
  create_qcow2(file, 64 << 20, "");
  {
    auto image = open_image(file);
    image->write(0, pattern(65536, 0x11));
    image->write(100000, pattern(5000, 0x22));        // partial clusters both ends
    image->write(3 << 20, pattern(3 << 20, 0x33));    // multi-cluster
    image->write((3 << 20) + 512, pattern(512, 0x44));  // in-place overwrite
    expect_reads(*image, 0, 65536, 0x11);
    expect_reads(*image, 65536, 100000 - 65536, 0x00);
    expect_reads(*image, 100000, 5000, 0x22);
    expect_reads(*image, (3 << 20) + 1024, 1024, 0x33);
    expect_reads(*image, (3 << 20) + 512, 512, 0x44);
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 65536, 0x11);
  expect_qemu_reads(file, 65536, 100000 - 65536, 0x00);
  expect_qemu_reads(file, 100000, 5000, 0x22);
  expect_qemu_reads(file, 105000, 131072 * 2 - 105000, 0x00);
  expect_qemu_reads(file, 3 << 20, 512, 0x33);
  expect_qemu_reads(file, (3 << 20) + 512, 512, 0x44);
  expect_qemu_reads(file, (3 << 20) + 1024, (3 << 20) - 1024, 0x33);
}

TEST(Qcow2Data, ClusterSizesAndRefcountWidthsGrowTables) {
  TempDir dir;
  struct Case {
    const char* options;
    uint64_t size;
  };
  for (const Case& c : {Case{"cluster_size=512,refcount_bits=64", 64 << 20}, Case{"cluster_size=512,refcount_bits=1", 8 << 20},
                        Case{"cluster_size=4k,refcount_bits=2", 64 << 20}, Case{"cluster_size=2M,refcount_bits=4", 1ull << 32},
                        Case{"compat=0.10,cluster_size=1k", 32 << 20}}) {
    const std::string file = dir.file("g.qcow2");
    create_qcow2(file, c.size, c.options);
    {
      auto image = open_image(file, false, {{"l2-cache-size", "4k"}, {"refcount-cache-size", "4k"}});
      // Spread writes so that many L2 tables and refcount blocks are needed,
      // and the refcount table has to grow (small clusters).
      const uint64_t step = c.size / 97;
      for (uint64_t i = 0; i < 97; ++i) image->write(i * step, pattern(4096, static_cast<uint8_t>(i + 1)));
      image->write(c.size - 4096, pattern(4096, 0xee));
      for (uint64_t i = 0; i < 97; ++i) expect_reads(*image, i * step, 4096, static_cast<uint8_t>(i + 1));
    }
    expect_qemu_check_clean(file);
    const uint64_t step = c.size / 97;
    for (uint64_t i : {0ull, 13ull, 50ull, 96ull}) expect_qemu_reads(file, i * step, 4096, static_cast<uint8_t>(i + 1));
    expect_qemu_reads(file, c.size - 4096, 4096, 0xee);
  }
}

TEST(Qcow2Data, ManyClustersForceRefcountTableGrowth) {
  TempDir dir;
  const std::string file = dir.file("g.qcow2");
  // 512-byte clusters, 64-bit refcounts: one block covers 64 clusters, one table cluster 64 blocks.
  create_qcow2(file, 16 << 20, "cluster_size=512,refcount_bits=64");
  {
    auto image = open_image(file);
    std::vector<std::byte> data(1 << 20);
    for (size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7 % 251);
    image->write(1 << 20, data);
    std::vector<std::byte> back(data.size());
    image->read(1 << 20, back);
    EXPECT_EQ(back, data);
  }
  expect_qemu_check_clean(file);
  CommandResult r = run("qemu-img compare -f qcow2 -F qcow2 '" + file + "' '" + file + "'");
  EXPECT_EQ(r.status, 0);
}

TEST(Qcow2Data, ConcurrentWritersDistinctAndSameClusters) {
  TempDir dir;
  const std::string file = dir.file("c.qcow2");
  create_qcow2(file, 256 << 20, "cluster_size=64k");
  {
    auto image = open_image(file);
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        try {
        for (int i = 0; i < 40; ++i) {
          // Distinct clusters per thread.
          image->write((uint64_t(t) * 40 + i) * 65536 + 4096, pattern(8192, static_cast<uint8_t>(0x10 + t)));
          // The same clusters for every thread, distinct 4 KiB slices.
          image->write((200ull << 20) + uint64_t(i) * 65536 + uint64_t(t) * 4096, pattern(4096, static_cast<uint8_t>(0x80 + t)));
        }
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
      });
    }
    for (auto& thread : threads) thread.join();
    image->flush();
  }
  expect_qemu_check_clean(file);
  for (int t = 0; t < 8; ++t) {
    expect_qemu_reads(file, (uint64_t(t) * 40 + 7) * 65536 + 4096, 8192, static_cast<uint8_t>(0x10 + t));
    expect_qemu_reads(file, (uint64_t(t) * 40 + 7) * 65536, 4096, 0);
    expect_qemu_reads(file, (200ull << 20) + 39 * 65536 + uint64_t(t) * 4096, 4096, static_cast<uint8_t>(0x80 + t));
  }
  expect_qemu_reads(file, (200ull << 20) + 32768, 32768, 0);
}

TEST(Qcow2Data, ConcurrentMixedRequestsOverBackingWithSmallCaches) {
  TempDir dir;
  const std::string file = create_backed_qcow2(dir, 64 << 20, "write -P 0x55 0 64M", "cluster_size=4k", "m.qcow2").top;
  {
    // Tiny caches force evictions while other threads allocate.
    auto image = open_image(file, false, {{"l2-cache-size", "8k"}, {"refcount-cache-size", "8k"}});
    std::vector<std::thread> threads;
    for (int t = 0; t < 6; ++t) {
      threads.emplace_back([&, t] {
        try {
          std::vector<std::byte> buffer(16384);
          for (int i = 0; i < 200; ++i) {
            const uint64_t slot = uint64_t(t) * 200 + i;  // each thread owns its 16 KiB slots
            const uint64_t offset = slot * 16384 * 3;
            image->write(offset + 1000, pattern(6000, static_cast<uint8_t>(t + 1)));
            if (i % 7 == 0) image->write_zeroes(offset + 8192, 8192, {});
            if (i % 11 == 0) image->discard(offset + 32768, 16384);
            if (i % 13 == 0) image->flush();
            image->read(offset, buffer);
            if (buffer[999] != std::byte{0x55} || buffer[1000] != std::byte(t + 1) || buffer[6999] != std::byte(t + 1)) {
              ADD_FAILURE() << "thread " << t << " slot " << slot << " read back wrong data";
              return;
            }
            image->block_status(offset, 65536);
          }
        } catch (const Error& e) {
          ADD_FAILURE() << e.what();
        }
      });
    }
    for (auto& thread : threads) thread.join();
  }
  expect_qemu_check_clean(file);
  for (int t : {0, 5}) {
    const uint64_t offset = (uint64_t(t) * 200 + 14) * 16384 * 3;
    expect_qemu_reads(file, offset, 1000, 0x55);
    expect_qemu_reads(file, offset + 1000, 6000, static_cast<uint8_t>(t + 1));
    expect_qemu_reads(file, offset + 8192, 8192, 0);
  }
}

TEST(Qcow2Backing, CopyOnWriteFromChainWithRelativeNames) {
  TempDir dir;
  const std::string base = dir.file("base.qcow2");
  const std::string mid = dir.file("mid.qcow2");
  const std::string top = dir.file("top.qcow2");
  ASSERT_EQ(run("qemu-img create -f qcow2 '" + base + "' 4M").status, 0);
  qemu_io(base, "write -P 0xaa 0 4M");
  create_qcow2(mid, 4 << 20, "backing_file=base.qcow2,backing_fmt=qcow2");
  {
    auto image = open_image(mid);
    image->write(65536 + 1000, pattern(100, 0xbb));
  }
  // Unknown backing format: probed.
  create_qcow2(top, 8 << 20, "backing_file=mid.qcow2");
  {
    auto image = open_image(top);
    EXPECT_EQ(image->top().backing_filename(), "mid.qcow2");
    ASSERT_NE(image->top().backing_child(), nullptr);
    ASSERT_NE(image->top().backing_child()->backing_child(), nullptr);
    image->write(65536 + 2000, pattern(10, 0xcc));
    expect_reads(*image, 65536, 1000, 0xaa);
    expect_reads(*image, 65536 + 1000, 100, 0xbb);
    expect_reads(*image, 65536 + 2000, 10, 0xcc);
    expect_reads(*image, 65536 + 2010, 65536 - 2010, 0xaa);
    expect_reads(*image, 4 << 20, 4 << 20, 0x00);  // past the shorter backing file
    ChainStatus st = image->chain_status(0, 65536);
    EXPECT_EQ(st.depth, 2);
    image->write_zeroes(0, 65536, {});
    expect_reads(*image, 0, 65536, 0x00);
  }
  expect_qemu_check_clean(top);
  expect_qemu_check_clean(mid);
  expect_qemu_reads(top, 65536, 1000, 0xaa);
  expect_qemu_reads(top, 65536 + 1000, 100, 0xbb);
  expect_qemu_reads(top, 65536 + 2000, 10, 0xcc);
  expect_qemu_reads(top, 0, 65536, 0x00);
  expect_qemu_reads(top, 131072, 65536, 0xaa);
}

TEST(Qcow2Backing, LoopIsRefused) {
  TempDir dir;
  const std::string a = dir.file("a.qcow2");
  const std::string b = dir.file("b.qcow2");
  create_qcow2(a, 1 << 20, "");
  create_qcow2(b, 1 << 20, "backing_file=a.qcow2,backing_fmt=qcow2");
  ASSERT_EQ(run("qemu-img rebase -u -f qcow2 -b b.qcow2 -F qcow2 '" + a + "'").status, 0);
  try {
    open_image(b, true);
    FAIL() << "a backing loop was opened";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("loop"), std::string::npos) << e.what();
  }
}

TEST(Qcow2Zero, WriteZeroesDiscardAndBlockStatus) {
  TempDir dir;
  const std::string file = dir.file("z.qcow2");
  create_qcow2(file, 16 << 20, "");
  {
    auto image = open_image(file);
    image->write(0, pattern(1 << 20, 0x5a));
    image->write_zeroes(65536, 131072, {.may_unmap = false});
    image->write_zeroes(300000, 1000, {});       // partial: written as data
    image->discard(512 << 10, 256 << 10);
    BlockStatus s = image->block_status(0, 1 << 20);
    EXPECT_EQ(s.flags, kStatusData | kStatusAllocated | kStatusOffsetValid);
    EXPECT_EQ(s.length, 65536u);
    s = image->block_status(65536, 1 << 20);
    EXPECT_EQ(s.flags, kStatusZero | kStatusAllocated);
    EXPECT_EQ(s.length, 131072u);
    // As qemu: a discarded allocated cluster becomes a zero cluster (v3).
    s = image->block_status(512 << 10, 256 << 10);
    EXPECT_EQ(s.flags, kStatusZero | kStatusAllocated);
    EXPECT_EQ(s.length, 256u << 10);
    s = image->block_status(2 << 20, 14 << 20);
    EXPECT_EQ(s.flags, 0u);
    expect_reads(*image, 65536, 131072, 0);
    expect_reads(*image, 300000, 1000, 0);
    expect_reads(*image, 301000, 1000, 0x5a);
    // Fast zeroing of whole clusters is metadata only.
    image->write_zeroes(4 << 20, 8 << 20, {.may_unmap = true, .no_fallback = true});
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 65536, 0x5a);
  expect_qemu_reads(file, 65536, 131072, 0);
  expect_qemu_reads(file, 196608, 300000 - 196608, 0x5a);
  expect_qemu_reads(file, 300000, 1000, 0);
  expect_qemu_reads(file, 512 << 10, 256 << 10, 0);
  expect_qemu_reads(file, 768 << 10, 256 << 10, 0x5a);
  CommandResult map = run("qemu-img map --output=json -f qcow2 '" + file + "'");
  EXPECT_NE(map.output.find("\"zero\": true, \"data\": false"), std::string::npos) << map.output;
}

TEST(Qcow2Zero, DiscardFreesClustersForReuse) {
  TempDir dir;
  const std::string file = dir.file("d.qcow2");
  create_qcow2(file, 16 << 20, "");
  {
    auto image = open_image(file);
    image->write(0, pattern(4 << 20, 1));
    image->discard(0, 4 << 20);
    image->write(8 << 20, pattern(4 << 20, 2));
  }
  expect_qemu_check_clean(file);
  CommandResult r = run("qemu-img check '" + file + "' | grep 'end offset'");
  // Header, refcount table and block, L1, one L2 table, 64 data clusters.
  EXPECT_EQ(r.output, fmt::format("Image end offset: {}\n", (5 + 64) * 65536)) << r.output;
  expect_qemu_reads(file, 8 << 20, 4 << 20, 2);
  expect_qemu_reads(file, 0, 4 << 20, 0);
}

TEST(Qcow2Resize, GrowAndShrink) {
  TempDir dir;
  const std::string file = dir.file("r.qcow2");
  create_qcow2(file, 1 << 20, "cluster_size=512");
  {
    auto image = open_image(file);
    image->write(0, pattern(1 << 20, 7));
    image->truncate(64 << 20, Preallocation::Off, false);  // L1 must grow (512-byte clusters)
    image->write((64 << 20) - 512, pattern(512, 8));
    EXPECT_THROW(image->truncate(512 << 10, Preallocation::Off, false), Error);
    image->truncate(512 << 10, Preallocation::Off, true);
    EXPECT_EQ(image->size(), 512u << 10);
  }
  expect_qemu_check_clean(file);
  expect_qemu_reads(file, 0, 512 << 10, 7);
  CommandResult r = run("qemu-img info '" + file + "' | grep 'virtual size'");
  EXPECT_NE(r.output.find("524288 bytes"), std::string::npos) << r.output;
}

TEST(Qcow2Create, PreallocationModes) {
  TempDir dir;
  for (const char* mode : {"metadata", "falloc", "full"}) {
    const std::string file = dir.file(std::string(mode) + ".qcow2");
    create_qcow2(file, 8 << 20, std::string("preallocation=") + mode);
    expect_qemu_check_clean(file);
    expect_qemu_reads(file, 0, 8 << 20, 0);
    CommandResult map = run("qemu-img map --output=json -f qcow2 '" + file + "'");
    EXPECT_NE(map.output.find("\"data\": true"), std::string::npos) << mode << map.output;
    auto image = open_image(file);
    image->write(4096, pattern(4096, 3));
    expect_reads(*image, 4096, 4096, 3);
  }
}

TEST(Qcow2Info, DirtyBitWithLazyRefcountsIsRepairedOnOpen) {
  TempDir dir;
  const std::string file = dir.file("l.qcow2");
  const std::string copy = dir.file("copy.qcow2");
  create_qcow2(file, 8 << 20, "lazy_refcounts=on");
  {
    auto image = open_image(file);
    image->write(0, pattern(1 << 20, 9));
    image->flush();
    EXPECT_TRUE(image->top().dirty());
    // A copy taken now looks like a crashed image.
    std::filesystem::copy_file(file, copy);
  }
  EXPECT_FALSE(open_image(file, true)->top().dirty());
  EXPECT_TRUE(open_image(copy, true)->top().dirty());
  { auto image = open_image(copy); EXPECT_FALSE(image->top().dirty()); }
  expect_qemu_check_clean(copy);
  expect_qemu_reads(copy, 0, 1 << 20, 9);
}

}  // namespace
}  // namespace kiln::block::test
