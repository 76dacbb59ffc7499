// READ replies spliced from the image file to the socket (no copy through
// user space), and the fallbacks to reading into memory.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>
#include <vector>

#include "fixture.h"
#include "kiln/block/driver.h"

namespace kiln::nbd::test {
namespace {

constexpr uint64_t kSize = 4 << 20;
constexpr size_t kRead = 256 << 10;  // what nbdcopy asks for

std::vector<char> pattern(size_t size, int seed) {
  std::vector<char> data(size);
  for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(seed + i * 7 + i / 4096);
  return data;
}

// Data in [0, 1 MiB) and [2 MiB, 3 MiB), holes elsewhere.
std::vector<char> write_raw_image(const std::filesystem::path& path) {
  write_file(path, kSize);
  std::vector<char> expected(kSize, 0);
  const std::vector<char> data = pattern(1 << 20, 11);
  int fd = ::open(path.c_str(), O_WRONLY);
  for (uint64_t at : {0u, 2u << 20}) {
    EXPECT_EQ(pwrite(fd, data.data(), data.size(), static_cast<off_t>(at)), static_cast<ssize_t>(data.size()));
    std::memcpy(expected.data() + at, data.data(), data.size());
  }
  ::close(fd);
  return expected;
}

struct ChunkCounts {
  int data = 0;
  int hole = 0;
};

// Reads the whole export in nbdcopy-sized requests; counts chunks when structured.
void read_all(nbd_handle* h, const std::vector<char>& expected, uint32_t flags, ChunkCounts* counts = nullptr) {
  std::vector<char> buffer(kRead);
  nbd_chunk_callback chunk{
      .callback = [](void* user, const void*, size_t, uint64_t, unsigned status, int*) -> int {
        auto* c = static_cast<ChunkCounts*>(user);
        if (status == LIBNBD_READ_DATA) ++c->data;
        if (status == LIBNBD_READ_HOLE) ++c->hole;
        return 0;
      },
      .user_data = counts,
      .free = nullptr};
  for (uint64_t offset = 0; offset < expected.size(); offset += kRead) {
    std::memset(buffer.data(), 0x55, buffer.size());
    const int rc = counts != nullptr ? nbd_pread_structured(h, buffer.data(), kRead, offset, chunk, flags)
                                     : nbd_pread(h, buffer.data(), kRead, offset, flags);
    ASSERT_EQ(rc, 0) << nbd_get_error();
    ASSERT_EQ(std::memcmp(buffer.data(), expected.data() + offset, kRead), 0) << "at offset " << offset;
  }
}

bool kernel_has_cachestat() {
  long rc = ::syscall(451, -1, nullptr, nullptr, 0);
  return !(rc == -1 && errno == ENOSYS);
}

class NbdZeroCopyTest : public ::testing::Test {
 protected:
  std::unique_ptr<RunningServer> start(const std::filesystem::path& image, ServerSetup setup) {
    return std::make_unique<RunningServer>(image, setup, dir_.path() / "nbd.sock");
  }
  TempDir dir_;
};

TEST_F(NbdZeroCopyTest, RawReadsAreSplicedInEveryReplyStyle) {
  const std::filesystem::path image = dir_.path() / "disk.raw";
  const std::vector<char> expected = write_raw_image(image);
  auto server = start(image, {.read_only = true});
  constexpr uint64_t kReads = kSize / kRead;
  {
    Handle h = connect(server->uri());
    ASSERT_TRUE(h);
    ChunkCounts counts;
    read_all(h.get(), expected, 0, &counts);
    EXPECT_EQ(counts.data, 8);  // the data requests; the hole requests are one hole chunk each
    EXPECT_EQ(counts.hole, 8);
    counts = {};
    read_all(h.get(), expected, LIBNBD_CMD_FLAG_DF, &counts);
    EXPECT_EQ(counts.data, 16);
    EXPECT_EQ(counts.hole, 0);
  }
  {
    Handle h(nbd_create());
    nbd_set_request_structured_replies(h.get(), false);
    ASSERT_EQ(nbd_connect_uri(h.get(), server->uri().c_str()), 0) << nbd_get_error();
    ASSERT_EQ(nbd_get_structured_replies_negotiated(h.get()), 0);
    read_all(h.get(), expected, 0);
  }
  const ReadStats& stats = server->read_stats();
  EXPECT_EQ(stats.zero_copy.load(), 3 * kReads);
  EXPECT_EQ(stats.copied.load(), 0u);
  // The file was just written, so its pages are cached: no worker is needed.
  if (kernel_has_cachestat()) {
    EXPECT_GT(stats.answered_now.load(), 0u);
  }
}

TEST_F(NbdZeroCopyTest, Qcow2IsSplicedOnlyWhenServedReadOnly) {
  const std::filesystem::path image = dir_.path() / "disk.qcow2";
  block::CreateOptions options = block::parse_create_options(*block::find_format("qcow2"), "");
  options.size = kSize;
  block::create_image(image.string(), "qcow2", options);
  std::vector<char> expected(kSize, 0);
  {
    block::OpenOptions open_options{.format = "qcow2"};
    auto writer = block::Image::open(image.string(), open_options);
    const std::vector<char> data = pattern(3 << 20, 5);
    writer->write(512 << 10, std::as_bytes(std::span(data)));
    std::memcpy(expected.data() + (512 << 10), data.data(), data.size());
  }
  for (bool read_only : {true, false}) {
    auto server = start(image, {.read_only = read_only, .format = "qcow2"});
    Handle h = connect(server->uri());
    ASSERT_TRUE(h);
    ChunkCounts counts;
    read_all(h.get(), expected, 0, &counts);
    const ReadStats& stats = server->read_stats();
    // 12 requests hold data, 4 only holes (nothing to copy either way).
    if (read_only) {
      EXPECT_EQ(stats.zero_copy.load(), 16u);
      EXPECT_EQ(stats.copied.load(), 0u);
    } else {
      // A writable image may move clusters under a reader: its data is copied.
      EXPECT_EQ(stats.zero_copy.load(), 4u);
      EXPECT_EQ(stats.copied.load(), 12u);
    }
  }
}

TEST_F(NbdZeroCopyTest, FileShrunkUnderTheExportFallsBackToReadingZeroes) {
  const std::filesystem::path image = dir_.path() / "disk.raw";
  std::vector<char> expected = write_raw_image(image);
  auto server = start(image, {.read_only = true});
  Handle h = connect(server->uri());
  ASSERT_TRUE(h);
  // Someone else cuts the file; the export keeps its size and, as a read
  // past the end of a file does, reads zeroes there.
  constexpr uint64_t kNewEnd = (2 << 20) + 100000;
  std::filesystem::resize_file(image, kNewEnd);
  std::fill(expected.begin() + kNewEnd, expected.end(), 0);
  std::vector<char> buffer(kRead);
  const uint64_t offset = kNewEnd / kRead * kRead;
  // DF: one data chunk, so the server tries to splice past the new end.
  nbd_chunk_callback ignore{.callback = [](void*, const void*, size_t, uint64_t, unsigned, int*) -> int { return 0; },
                            .user_data = nullptr,
                            .free = nullptr};
  ASSERT_EQ(nbd_pread_structured(h.get(), buffer.data(), kRead, offset, ignore, LIBNBD_CMD_FLAG_DF), 0) << nbd_get_error();
  EXPECT_EQ(std::memcmp(buffer.data(), expected.data() + offset, kRead), 0);
  EXPECT_EQ(server->read_stats().copied.load(), 1u);
  // The connection is fine, and data inside the file is still spliced.
  ASSERT_EQ(nbd_pread(h.get(), buffer.data(), kRead, 0, 0), 0) << nbd_get_error();
  EXPECT_EQ(std::memcmp(buffer.data(), expected.data(), kRead), 0);
  EXPECT_EQ(server->read_stats().zero_copy.load(), 1u);
}

TEST_F(NbdZeroCopyTest, ClientLeavingWithSplicedRepliesPendingLeavesTheServerUp) {
  const std::filesystem::path image = dir_.path() / "disk.raw";
  const std::vector<char> expected = write_raw_image(image);
  auto server = start(image, {.read_only = true});
  for (int round = 0; round < 16; ++round) {
    // 16 MiB of replies asked for, then gone: splicing into the closed socket
    // must fail with EPIPE, not raise SIGPIPE (which would end this process).
    Handle rude = connect(server->uri());
    ASSERT_TRUE(rude);
    std::vector<char> sink(kRead);
    for (int i = 0; i < 64; ++i) {
      nbd_aio_pread(rude.get(), sink.data(), kRead, (i % 16) * kRead, NBD_NULL_COMPLETION, 0);
    }
    nbd_aio_notify_write(rude.get());
  }
  Handle good = connect(server->uri());
  ASSERT_TRUE(good);
  read_all(good.get(), expected, 0);
}

// To a TCP client on this host the data is copied (cheaper for that
// client); cached reads are still answered without a worker.
TEST_F(NbdZeroCopyTest, LoopbackTcpRepliesAreCopied) {
  const std::filesystem::path image = dir_.path() / "disk.raw";
  const std::vector<char> expected = write_raw_image(image);
  auto opened = block::Image::open(image.string(), {.format = "raw", .read_only = true});
  ServerOptions options;
  options.export_config = {.node = &opened->top(), .read_only = true};
  options.persistent = true;
  options.shared = 4;
  options.workers = 2;
  std::vector<UniqueFd> listeners = listen_tcp("127.0.0.1", "0");
  sockaddr_in bound{};
  socklen_t size = sizeof bound;
  ASSERT_EQ(getsockname(listeners.front().get(), reinterpret_cast<sockaddr*>(&bound), &size), 0);
  Server server(std::move(options), std::move(listeners));
  std::thread thread([&] { server.run(); });
  {
    Handle h = connect("nbd://127.0.0.1:" + std::to_string(ntohs(bound.sin_port)));
    ASSERT_TRUE(h);
    read_all(h.get(), expected, 0);
  }
  server.stop();
  thread.join();
  EXPECT_EQ(server.read_stats().zero_copy.load(), 0u);
  EXPECT_EQ(server.read_stats().copied.load(), kSize / kRead);
  if (kernel_has_cachestat()) {
    EXPECT_GT(server.read_stats().answered_now.load(), 0u);
  }
}

}  // namespace
}  // namespace kiln::nbd::test
