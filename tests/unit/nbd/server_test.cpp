// kiln-nbd's server driven through libnbd: options, commands, flags, errors.
#include <atomic>
#include <cstring>
#include <vector>

#include "fixture.h"

namespace kiln::nbd::test {
namespace {

constexpr uint64_t kSize = 16 << 20;

class NbdServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    image_ = dir_.path() / "disk.raw";
    write_file(image_, kSize);
  }
  std::unique_ptr<RunningServer> start(ServerSetup setup = {}) {
    return std::make_unique<RunningServer>(image_, setup, dir_.path() / "nbd.sock");
  }

  TempDir dir_;
  std::filesystem::path image_;
};

struct Extent {
  uint32_t length;
  uint32_t flags;
};

std::vector<Extent> block_status(nbd_handle* h, const char* context, uint64_t offset, uint64_t length, uint32_t flags = 0) {
  struct Collected {
    const char* context;
    std::vector<Extent> extents;
  } collected{context, {}};
  nbd_extent_callback callback{
      .callback = [](void* data, const char* name, uint64_t, uint32_t* entries, size_t count, int*) -> int {
        auto* out = static_cast<Collected*>(data);
        if (std::strcmp(name, out->context) != 0) return 0;
        for (size_t i = 0; i + 1 < count; i += 2) out->extents.push_back({entries[i], entries[i + 1]});
        return 0;
      },
      .user_data = &collected,
      .free = nullptr};
  EXPECT_EQ(nbd_block_status(h, length, offset, callback, flags), 0) << nbd_get_error();
  return collected.extents;
}

TEST_F(NbdServerTest, HandshakeAdvertisesSizeFlagsAndBlockSizes) {
  auto server = start({.description = "test disk"});
  Handle h(nbd_create());
  nbd_set_full_info(h.get(), true);
  nbd_add_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION);
  ASSERT_EQ(nbd_connect_uri(h.get(), server->uri().c_str()), 0) << nbd_get_error();
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_get_size(h.get()), static_cast<int64_t>(kSize));
  EXPECT_STREQ(nbd_get_protocol(h.get()), "newstyle-fixed");
  EXPECT_EQ(nbd_get_structured_replies_negotiated(h.get()), 1);
  EXPECT_EQ(nbd_is_read_only(h.get()), 0);
  EXPECT_EQ(nbd_can_flush(h.get()), 1);
  EXPECT_EQ(nbd_can_fua(h.get()), 1);
  EXPECT_EQ(nbd_can_trim(h.get()), 1);
  EXPECT_EQ(nbd_can_zero(h.get()), 1);
  EXPECT_EQ(nbd_can_fast_zero(h.get()), 1);
  EXPECT_EQ(nbd_can_df(h.get()), 1);
  EXPECT_EQ(nbd_can_cache(h.get()), 1);
  EXPECT_EQ(nbd_can_multi_conn(h.get()), 0);
  EXPECT_EQ(nbd_can_meta_context(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION), 1);
  EXPECT_EQ(nbd_get_block_size(h.get(), LIBNBD_SIZE_MINIMUM), 1);
  EXPECT_EQ(nbd_get_block_size(h.get(), LIBNBD_SIZE_PREFERRED), 4096);
  EXPECT_EQ(nbd_get_block_size(h.get(), LIBNBD_SIZE_MAXIMUM), 32 << 20);
  char* description = nbd_get_export_description(h.get());
  ASSERT_NE(description, nullptr);
  EXPECT_STREQ(description, "test disk");
  free(description);
}

TEST_F(NbdServerTest, ReadOnlyExportRefusesWritesWithEperm) {
  auto server = start({.read_only = true});
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_is_read_only(h.get()), 1);
  EXPECT_EQ(nbd_can_trim(h.get()), 0);
  nbd_set_strict_mode(h.get(), 0);
  char data[512] = {1};
  EXPECT_EQ(nbd_pwrite(h.get(), data, sizeof data, 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EPERM);
  EXPECT_EQ(nbd_pread(h.get(), data, sizeof data, 0, 0), 0);  // still served
}

TEST_F(NbdServerTest, MultiConnIsAdvertisedOnlyWhenAsked) {
  auto server = start({.multi_conn = true});
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  EXPECT_EQ(nbd_can_multi_conn(h.get()), 1);
}

TEST_F(NbdServerTest, WriteFuaReadBackAndFlush) {
  auto server = start();
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  std::vector<char> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + 3);
  ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 3 << 20, LIBNBD_CMD_FLAG_FUA), 0) << nbd_get_error();
  ASSERT_EQ(nbd_flush(h.get(), 0), 0);
  std::vector<char> back(data.size());
  ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 3 << 20, 0), 0);
  EXPECT_EQ(back, data);
  // The image underneath holds the same bytes.
  std::vector<std::byte> direct(data.size());
  server->image().read(3 << 20, direct);
  EXPECT_EQ(std::memcmp(direct.data(), data.data(), data.size()), 0);
}

TEST_F(NbdServerTest, StructuredReadSendsHoleChunks) {
  auto server = start();
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  std::vector<char> data(65536, 'x');
  ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 1 << 20, 0), 0);
  struct Counts {
    int data = 0;
    int hole = 0;
  } counts;
  nbd_chunk_callback chunk{
      .callback = [](void* user, const void*, size_t, uint64_t, unsigned status, int*) -> int {
        auto* c = static_cast<Counts*>(user);
        if (status == LIBNBD_READ_DATA) ++c->data;
        if (status == LIBNBD_READ_HOLE) ++c->hole;
        return 0;
      },
      .user_data = &counts,
      .free = nullptr};
  std::vector<char> buffer(4 << 20);
  ASSERT_EQ(nbd_pread_structured(h.get(), buffer.data(), buffer.size(), 0, chunk, 0), 0) << nbd_get_error();
  EXPECT_EQ(counts.data, 1);
  EXPECT_EQ(counts.hole, 2);
  EXPECT_EQ(std::memcmp(buffer.data() + (1 << 20), data.data(), data.size()), 0);
  EXPECT_EQ(buffer[0], 0);
  // With DF the reply is one data chunk.
  counts = {};
  ASSERT_EQ(nbd_pread_structured(h.get(), buffer.data(), buffer.size(), 0, chunk, LIBNBD_CMD_FLAG_DF), 0);
  EXPECT_EQ(counts.data, 1);
  EXPECT_EQ(counts.hole, 0);
}

TEST_F(NbdServerTest, BlockStatusReportsHolesAndData) {
  auto server = start();
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  std::vector<char> data(65536, 'y');
  ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 2 << 20, 0), 0);
  auto extents = block_status(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION, 0, kSize);
  ASSERT_GE(extents.size(), 3u);
  uint64_t position = 0;
  bool saw_data_at_write = false;
  for (const Extent& e : extents) {
    if (position <= (2u << 20) && (2u << 20) < position + e.length) saw_data_at_write = (e.flags & LIBNBD_STATE_HOLE) == 0;
    position += e.length;
  }
  EXPECT_EQ(position, kSize);
  EXPECT_TRUE(saw_data_at_write);
  EXPECT_EQ(extents.front().flags, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  auto one = block_status(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION, 0, kSize, LIBNBD_CMD_FLAG_REQ_ONE);
  EXPECT_EQ(one.size(), 1u);
}

TEST_F(NbdServerTest, AllocationDepthContextIsOfferedWithOption) {
  {
    auto server = start();
    Handle h = connect(server->uri(), true);
    ASSERT_TRUE(h);
    EXPECT_EQ(nbd_can_meta_context(h.get(), "qemu:allocation-depth"), 0);
  }
  auto server = start({.allocation_depth = true});
  Handle h = connect(server->uri(), true);
  ASSERT_TRUE(h);
  ASSERT_EQ(nbd_can_meta_context(h.get(), "qemu:allocation-depth"), 1);
  auto extents = block_status(h.get(), "qemu:allocation-depth", 0, kSize);
  ASSERT_FALSE(extents.empty());
  uint64_t total = 0;
  for (const Extent& e : extents) total += e.length;
  EXPECT_EQ(total, kSize);
}

TEST_F(NbdServerTest, ListMetaContextsAndExports) {
  auto server = start({.allocation_depth = true, .name = "disk0", .description = "first"});
  Handle h(nbd_create());
  nbd_set_opt_mode(h.get(), true);
  ASSERT_EQ(nbd_connect_uri(h.get(), server->uri("disk0").c_str()), 0) << nbd_get_error();
  std::vector<std::string> names;
  nbd_context_callback collect{.callback = [](void* user, const char* name) -> int {
                                 static_cast<std::vector<std::string>*>(user)->push_back(name);
                                 return 0;
                               },
                               .user_data = &names,
                               .free = nullptr};
  ASSERT_GE(nbd_opt_list_meta_context(h.get(), collect), 0) << nbd_get_error();
  EXPECT_EQ(names, (std::vector<std::string>{"base:allocation", "qemu:allocation-depth"}));
  std::vector<std::string> exports;
  nbd_list_callback list{.callback = [](void* user, const char* name, const char*) -> int {
                           static_cast<std::vector<std::string>*>(user)->push_back(name);
                           return 0;
                         },
                         .user_data = &exports,
                         .free = nullptr};
  ASSERT_GE(nbd_opt_list(h.get(), list), 0) << nbd_get_error();
  EXPECT_EQ(exports, std::vector<std::string>{"disk0"});
  // An unknown export is refused by NBD_OPT_GO; the right one still works.
  nbd_set_export_name(h.get(), "other");
  EXPECT_EQ(nbd_opt_go(h.get()), -1);
  nbd_set_export_name(h.get(), "disk0");
  EXPECT_EQ(nbd_opt_go(h.get()), 0) << nbd_get_error();
  EXPECT_EQ(nbd_get_size(h.get()), static_cast<int64_t>(kSize));
}

TEST_F(NbdServerTest, OutOfRangeRequestsGetSpecErrors) {
  auto server = start();
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  nbd_set_strict_mode(h.get(), 0);
  char data[4096] = {};
  EXPECT_EQ(nbd_pread(h.get(), data, sizeof data, kSize - 512, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  EXPECT_EQ(nbd_pwrite(h.get(), data, sizeof data, kSize, 0), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC);
  EXPECT_EQ(nbd_zero(h.get(), 8192, kSize - 4096, 0), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC);
  EXPECT_EQ(nbd_trim(h.get(), 8192, kSize - 4096, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  // Unknown flags on a read.
  EXPECT_EQ(nbd_pread(h.get(), data, 512, 0, LIBNBD_CMD_FLAG_REQ_ONE), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  // The connection keeps working.
  EXPECT_EQ(nbd_pread(h.get(), data, 512, 0, 0), 0);
}

TEST_F(NbdServerTest, WriteZeroesAndTrimMakeHoles) {
  auto server = start();
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  std::vector<char> data(1 << 20, 'z');
  ASSERT_EQ(nbd_pwrite(h.get(), data.data(), data.size(), 0, 0), 0);
  ASSERT_EQ(nbd_zero(h.get(), 512 << 10, 0, 0), 0);
  std::vector<char> back(512 << 10, 'q');
  ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 0, 0), 0);
  EXPECT_EQ(std::count(back.begin(), back.end(), 0), static_cast<long>(back.size()));
  auto extents = block_status(h.get(), LIBNBD_CONTEXT_BASE_ALLOCATION, 0, 1 << 20, LIBNBD_CMD_FLAG_REQ_ONE);
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_TRUE(extents[0].flags & LIBNBD_STATE_ZERO);
  // NO_HOLE keeps the zeroes allocated but still reads zero.
  ASSERT_EQ(nbd_zero(h.get(), 512 << 10, 512 << 10, LIBNBD_CMD_FLAG_NO_HOLE), 0);
  ASSERT_EQ(nbd_pread(h.get(), back.data(), back.size(), 512 << 10, 0), 0);
  EXPECT_EQ(std::count(back.begin(), back.end(), 0), static_cast<long>(back.size()));
  EXPECT_EQ(nbd_trim(h.get(), 1 << 20, 0, LIBNBD_CMD_FLAG_FUA), 0);
  EXPECT_EQ(nbd_cache(h.get(), 1 << 20, 0, 0), 0);
}

TEST_F(NbdServerTest, ManyRequestsInFlightCompleteCorrectly) {
  auto server = start({.limits = {.max_in_flight = 4, .max_in_flight_bytes = 1 << 20}});
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  constexpr int kRequests = 64;
  constexpr size_t kChunk = 128 << 10;
  std::vector<std::vector<char>> buffers(kRequests, std::vector<char>(kChunk));
  for (int i = 0; i < kRequests; ++i) {
    std::fill(buffers[i].begin(), buffers[i].end(), static_cast<char>(i + 1));
    ASSERT_NE(nbd_aio_pwrite(h.get(), buffers[i].data(), kChunk, i * kChunk, NBD_NULL_COMPLETION, 0), -1) << nbd_get_error();
  }
  while (nbd_aio_in_flight(h.get()) > 0) ASSERT_NE(nbd_poll(h.get(), -1), -1);
  std::vector<char> back(kChunk);
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_EQ(nbd_pread(h.get(), back.data(), kChunk, i * kChunk, 0), 0);
    EXPECT_EQ(back, buffers[i]) << "request " << i;
  }
}

TEST_F(NbdServerTest, SeveralClientsAreServedAtOnce) {
  auto server = start({.shared = 4, .multi_conn = true});
  std::vector<Handle> handles;
  for (int i = 0; i < 4; ++i) {
    handles.push_back(connect(server->uri()));
    ASSERT_TRUE(handles.back());
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      std::vector<char> data(256 << 10, static_cast<char>('a' + i)), back(256 << 10);
      for (int round = 0; round < 8; ++round) {
        const uint64_t offset = (i * 8 + round) * data.size();
        if (nbd_pwrite(handles[i].get(), data.data(), data.size(), offset, 0) != 0) ++failures;
        if (nbd_pread(handles[i].get(), back.data(), back.size(), offset, 0) != 0 || back != data) ++failures;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST_F(NbdServerTest, ClientDisconnectingMidRequestLeavesOthersServed) {
  auto server = start();
  Handle good = connect(server->uri());
  ASSERT_TRUE(good);
  {
    // A raw socket that completes a handshake-less connection then vanishes
    // mid-option, and a libnbd client that closes with requests in flight.
    Handle rude = connect(server->uri());
    ASSERT_TRUE(rude);
    std::vector<char> data(4 << 20, 'r');
    for (int i = 0; i < 4; ++i) nbd_aio_pwrite(rude.get(), data.data(), data.size(), i * data.size(), NBD_NULL_COMPLETION, 0);
    // Closing without waiting drops the connection mid-request.
  }
  char buffer[512];
  EXPECT_EQ(nbd_pread(good.get(), buffer, sizeof buffer, 0, 0), 0) << nbd_get_error();
}

TEST_F(NbdServerTest, UnknownExportIsRefused) {
  auto server = start({.name = "right"});
  Handle h(nbd_create());
  EXPECT_EQ(nbd_connect_uri(h.get(), server->uri("wrong").c_str()), -1);
  Handle ok = connect(server->uri("right"));
  EXPECT_TRUE(ok);
}

}  // namespace
}  // namespace kiln::nbd::test
