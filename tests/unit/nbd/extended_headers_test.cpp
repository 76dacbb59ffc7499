// NBD_OPT_EXTENDED_HEADERS spoken by hand, since Debian's libnbd (1.14) and
// qemu-nbd (7.2) predate the extension: first the session fed bytes, then a
// real server over a UNIX socket. The export is a sparse 8 GiB file so that
// effect lengths and status extents can exceed 32 bits.
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "fixture.h"
#include "session.h"
#include "wire.h"
#include "wire_bytes.h"

namespace kiln::nbd::test {
namespace {

constexpr uint64_t kLargeSize = 8ull << 30;
constexpr uint64_t kFourGiB = 1ull << 32;

// One extended reply chunk, taken apart.
struct Chunk {
  uint32_t magic = 0;
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  std::vector<std::byte> payload;
  bool done() const { return flags & kReplyFlagDone; }
};

// Splits bytes into extended reply chunks; a malformed stream fails the test.
std::vector<Chunk> parse_chunks(std::span<const std::byte> bytes) {
  std::vector<Chunk> chunks;
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < kExtendedReplyHeaderSize) {
      ADD_FAILURE() << "truncated reply header at byte " << at;
      break;
    }
    const std::byte* header = bytes.data() + at;
    const uint64_t length = load64(header + 24);
    if (length > bytes.size() - at - kExtendedReplyHeaderSize) {
      ADD_FAILURE() << "reply payload runs past the data at byte " << at;
      break;
    }
    Chunk chunk{load32(header), load16(header + 4), load16(header + 6), load64(header + 8), load64(header + 16), {}};
    chunk.payload.assign(header + kExtendedReplyHeaderSize, header + kExtendedReplyHeaderSize + length);
    chunks.push_back(std::move(chunk));
    at += kExtendedReplyHeaderSize + length;
  }
  return chunks;
}

// Option replies (type by option) and where transmission data starts.
struct OptionReplies {
  std::vector<std::pair<uint32_t, uint32_t>> replies;  // {option, type}
  size_t end = 0;
};

OptionReplies parse_option_replies(std::span<const std::byte> bytes, size_t at) {
  OptionReplies out;
  while (at + 20 <= bytes.size() && load64(bytes.data() + at) == kOptionReplyMagic) {
    out.replies.emplace_back(load32(bytes.data() + at + 8), load32(bytes.data() + at + 12));
    at += 20 + load32(bytes.data() + at + 16);
  }
  out.end = at;
  return out;
}

Bytes& set_meta_context(Bytes& b) {
  return b.u64(kOptionMagic).u32(kOptSetMetaContext).u32(4 + 4 + 4 + 15).u32(0).u32(1).u32(15).raw("base:allocation");
}

// Client flags, NBD_OPT_EXTENDED_HEADERS, base:allocation and NBD_OPT_GO.
Bytes extended_handshake() {
  Bytes b;
  b.u32(kClientFixedNewstyle | kClientNoZeroes);
  b.u64(kOptionMagic).u32(kOptExtendedHeaders).u32(0);
  set_meta_context(b);
  b.u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0);
  return b;
}

Bytes& request(Bytes& b, uint16_t flags, uint16_t type, uint64_t cookie, uint64_t offset, uint64_t length) {
  return b.u32(kExtendedRequestMagic).u16(flags).u16(type).u64(cookie).u64(offset).u64(length);
}

uint32_t error_of(const Chunk& chunk) { return chunk.payload.size() >= 4 ? load32(chunk.payload.data()) : 0; }

struct Descriptor {
  uint64_t length;
  uint32_t padding;
  uint32_t flags;
};

// NBD_REPLY_TYPE_BLOCK_STATUS_EXT payload: context id, count, descriptors.
std::vector<Descriptor> status_descriptors(const Chunk& chunk, uint32_t* context = nullptr) {
  EXPECT_EQ(chunk.type, kChunkBlockStatusExt);
  EXPECT_GE(chunk.payload.size(), 8u + 16u);
  EXPECT_EQ((chunk.payload.size() - 8) % 16, 0u);
  if (chunk.payload.size() < 8) return {};
  if (context != nullptr) *context = load32(chunk.payload.data());
  const uint32_t count = load32(chunk.payload.data() + 4);
  EXPECT_EQ(count * 16ull + 8, chunk.payload.size()) << "descriptor count does not match the length";
  std::vector<Descriptor> out;
  for (size_t at = 8; at + 16 <= chunk.payload.size(); at += 16) {
    const std::byte* p = chunk.payload.data() + at;
    out.push_back({load64(p), load32(p + 8), load32(p + 12)});
  }
  return out;
}

// Puts a read reply's chunks back together into `length` bytes.
std::vector<std::byte> assemble_read(const std::vector<Chunk>& chunks, uint64_t offset, uint64_t length) {
  std::vector<std::byte> data(length, std::byte{0x7f});
  for (const Chunk& chunk : chunks) {
    EXPECT_EQ(chunk.offset, offset) << "an extended reply carries the request's offset";
    if (chunk.type == kChunkOffsetData) {
      const uint64_t at = load64(chunk.payload.data()) - offset;
      std::copy(chunk.payload.begin() + 8, chunk.payload.end(), data.begin() + static_cast<ptrdiff_t>(at));
    } else if (chunk.type == kChunkOffsetHole) {
      EXPECT_EQ(chunk.payload.size(), 12u);
      const uint64_t at = load64(chunk.payload.data()) - offset;
      std::fill_n(data.begin() + static_cast<ptrdiff_t>(at), load32(chunk.payload.data() + 8), std::byte{0});
    } else {
      ADD_FAILURE() << "unexpected chunk type " << chunk.type << " in a read reply";
    }
  }
  return data;
}

class ExtendedSessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(dir_.path() / "disk.raw", kLargeSize);
    block::OpenOptions options;
    options.format = "raw";
    image_ = block::Image::open((dir_.path() / "disk.raw").string(), options);
    config_.node = &image_->top();
    config_.discard_unmap = true;
  }
  std::unique_ptr<Session> make(bool tls_available = false) {
    auto session = std::make_unique<Session>(config_, SessionLimits{}, output_, executor_, tls_available, false);
    session->start();
    return session;
  }
  void feed(Session& session, const Bytes& bytes) {
    size_t done = 0;
    const auto& data = bytes.data();
    while (done < data.size() && !session.finished()) {
      auto in = session.input();
      const size_t n = std::min(in.size(), data.size() - done);
      std::memcpy(in.data(), data.data() + done, n);
      session.consumed(n);
      done += n;
    }
  }
  // A session in transmission with extended headers and base:allocation.
  std::unique_ptr<Session> transmission() {
    auto session = make();
    feed(*session, extended_handshake());
    EXPECT_TRUE(session->in_transmission());
    output_.bytes.clear();
    return session;
  }
  std::vector<Chunk> take_chunks() {
    auto chunks = parse_chunks(output_.bytes);
    output_.bytes.clear();
    return chunks;
  }

  TempDir dir_;
  std::unique_ptr<block::Image> image_;
  ExportConfig config_;
  CaptureOutput output_;
  InlineExecutor executor_;
};

TEST_F(ExtendedSessionTest, NegotiationAcksOnceAndRefusesDowngrade) {
  auto session = make();
  Bytes b;
  b.u32(kClientFixedNewstyle | kClientNoZeroes);
  b.u64(kOptionMagic).u32(kOptExtendedHeaders).u32(0);
  b.u64(kOptionMagic).u32(kOptExtendedHeaders).u32(0);    // again
  b.u64(kOptionMagic).u32(kOptStructuredReply).u32(0);    // no downgrade
  set_meta_context(b);                                    // allowed without structured replies
  b.u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0);
  feed(*session, b);
  ASSERT_TRUE(session->in_transmission());
  const OptionReplies options = parse_option_replies(output_.bytes, 18);
  std::vector<std::pair<uint32_t, uint32_t>> expected = {
      {kOptExtendedHeaders, kRepAck},         {kOptExtendedHeaders, kRepErrInvalid},
      {kOptStructuredReply, kRepErrExtHeaderReqd}, {kOptSetMetaContext, kRepMetaContext},
      {kOptSetMetaContext, kRepAck}};
  ASSERT_GE(options.replies.size(), expected.size());
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), options.replies.begin()));
  EXPECT_EQ(options.replies.back(), (std::pair<uint32_t, uint32_t>{kOptGo, kRepAck}));
  // NBD_INFO_EXPORT: the size and NBD_FLAG_SEND_DF (replies come in chunks).
  bool found_export = false;
  for (size_t at = 18; at + 20 <= options.end;) {
    const std::byte* p = output_.bytes.data() + at;
    const uint32_t length = load32(p + 16);
    if (load32(p + 12) == kRepInfo && length == 12 && load16(p + 20) == kInfoExport) {
      found_export = true;
      EXPECT_EQ(load64(p + 22), kLargeSize);
      EXPECT_TRUE(load16(p + 30) & kTxSendDf);
    }
    at += 20 + length;
  }
  EXPECT_TRUE(found_export);
}

TEST_F(ExtendedSessionTest, ExportNameAfterExtendedHeadersEndsTheSession) {
  auto session = make();
  Bytes b;
  b.u32(kClientFixedNewstyle | kClientNoZeroes);
  b.u64(kOptionMagic).u32(kOptExtendedHeaders).u32(0);
  b.u64(kOptionMagic).u32(kOptExportName).u32(0);
  feed(*session, b);
  EXPECT_TRUE(session->finished());
  EXPECT_FALSE(session->in_transmission());
  EXPECT_NE(session->end_reason().find("extended headers"), std::string::npos) << session->end_reason();
}

TEST_F(ExtendedSessionTest, StartTlsForgetsExtendedHeaders) {
  auto session = make(true);
  Bytes b;
  b.u32(kClientFixedNewstyle | kClientNoZeroes);
  b.u64(kOptionMagic).u32(kOptExtendedHeaders).u32(0);
  b.u64(kOptionMagic).u32(kOptStartTls).u32(0);
  feed(*session, b);
  ASSERT_TRUE(session->tls_pending());
  session->tls_started();
  feed(*session, Bytes().u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0));
  ASSERT_TRUE(session->in_transmission());
  output_.bytes.clear();
  // Compact requests and simple replies again.
  feed(*session, Bytes().u32(kRequestMagic).u16(0).u16(kCmdFlush).u64(9).u64(0).u32(0));
  EXPECT_FALSE(session->finished());
  ASSERT_EQ(output_.bytes.size(), 16u);
  EXPECT_EQ(load32(output_.bytes.data()), kSimpleReplyMagic);
  EXPECT_EQ(load64(output_.bytes.data() + 8), 9u);
}

TEST_F(ExtendedSessionTest, WriteAndReadUseExtendedChunks) {
  auto session = transmission();
  constexpr uint64_t kAt = 5ull << 30;  // past 4 GiB
  Bytes b;
  request(b, kCmdFlagPayloadLen, kCmdWrite, 1, kAt, 4096).fill(4096, 'a');
  feed(*session, b);
  auto chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].magic, kExtendedReplyMagic);
  EXPECT_EQ(chunks[0].type, kChunkNone);  // no simple replies with extended headers
  EXPECT_TRUE(chunks[0].done());
  EXPECT_EQ(chunks[0].cookie, 1u);
  EXPECT_EQ(chunks[0].offset, kAt);
  EXPECT_TRUE(chunks[0].payload.empty());

  // A read spanning a hole and the data: chunks that put back the bytes.
  Bytes read;
  request(read, 0, kCmdRead, 2, kAt - 65536, 65536 + 4096);
  feed(*session, read);
  chunks = take_chunks();
  ASSERT_FALSE(chunks.empty());
  EXPECT_TRUE(chunks.back().done());
  EXPECT_TRUE(std::none_of(chunks.begin(), chunks.end() - 1, [](const Chunk& c) { return c.done(); }));
  EXPECT_TRUE(std::any_of(chunks.begin(), chunks.end(), [](const Chunk& c) { return c.type == kChunkOffsetHole; }));
  std::vector<std::byte> expected(65536 + 4096, std::byte{0});
  std::fill(expected.begin() + 65536, expected.end(), std::byte{'a'});
  EXPECT_EQ(assemble_read(chunks, kAt - 65536, 65536 + 4096), expected);

  // NBD_CMD_FLAG_DF: one data chunk.
  Bytes df;
  request(df, kCmdFlagDf, kCmdRead, 3, kAt - 65536, 65536 + 4096);
  feed(*session, df);
  chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].type, kChunkOffsetData);
  EXPECT_TRUE(chunks[0].done());
  EXPECT_EQ(assemble_read(chunks, kAt - 65536, 65536 + 4096), expected);
}

TEST_F(ExtendedSessionTest, BlockStatusExtReportsExtentsPast4GiB) {
  auto session = transmission();
  // Data at 5 GiB; the rest of the sparse file is one hole each side.
  std::vector<std::byte> data(65536, std::byte{1});
  image_->write(5ull << 30, data);
  Bytes b;
  request(b, 0, kCmdBlockStatus, 4, 0, kLargeSize);
  feed(*session, b);
  auto chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_TRUE(chunks[0].done());
  EXPECT_EQ(chunks[0].cookie, 4u);
  uint32_t context = 0;
  auto descriptors = status_descriptors(chunks[0], &context);
  EXPECT_EQ(context, 1u);  // the id SET_META_CONTEXT announced
  ASSERT_EQ(descriptors.size(), 3u);
  EXPECT_EQ(descriptors[0].length, 5ull << 30);  // more than 32 bits
  EXPECT_EQ(descriptors[0].flags, kStateHole | kStateZero);
  EXPECT_EQ(descriptors[1].flags, 0u);
  EXPECT_EQ(descriptors[2].flags, kStateHole | kStateZero);
  uint64_t total = 0;
  for (const Descriptor& d : descriptors) {
    EXPECT_EQ(d.padding, 0u);
    total += d.length;
  }
  EXPECT_EQ(total, kLargeSize);

  // REQ_ONE: one descriptor, no longer than asked.
  Bytes one;
  request(one, kCmdFlagReqOne, kCmdBlockStatus, 5, 0, kFourGiB + 4096);
  feed(*session, one);
  chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 1u);
  descriptors = status_descriptors(chunks[0]);
  ASSERT_EQ(descriptors.size(), 1u);
  EXPECT_EQ(descriptors[0].length, kFourGiB + 4096);
}

TEST_F(ExtendedSessionTest, TrimAndWriteZeroesTake64BitLengths) {
  auto session = transmission();
  std::vector<std::byte> data(65536, std::byte{1});
  image_->write(5ull << 30, data);
  image_->write(7ull << 30, data);
  Bytes b;
  request(b, 0, kCmdWriteZeroes, 6, 0, 6ull << 30);  // covers 5 GiB, not 7 GiB
  request(b, 0, kCmdTrim, 7, 6ull << 30, 2ull << 30);
  feed(*session, b);
  auto chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 2u);
  for (const Chunk& chunk : chunks) {
    EXPECT_EQ(chunk.type, kChunkNone) << "cookie " << chunk.cookie << " error " << error_of(chunk);
    EXPECT_TRUE(chunk.done());
  }
  std::vector<std::byte> back(65536);
  image_->read(5ull << 30, back);
  EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](std::byte v) { return v == std::byte{0}; }));
  image_->read(7ull << 30, back);  // --discard=unmap trims, and a trimmed range reads back as zero
  EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](std::byte v) { return v == std::byte{0}; }));
  // Past the end: EINVAL/ENOSPC as with compact headers, in an error chunk.
  Bytes past;
  request(past, 0, kCmdWriteZeroes, 8, kFourGiB, kLargeSize);
  feed(*session, past);
  chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 1u);
  EXPECT_EQ(chunks[0].type, kChunkError);
  EXPECT_EQ(chunks[0].offset, kFourGiB);
  EXPECT_EQ(error_of(chunks[0]), kErrNoSpc);
  EXPECT_FALSE(session->finished());
}

TEST_F(ExtendedSessionTest, WriteWithoutPayloadFlagIsRefusedWithoutReadingData) {
  auto session = transmission();
  Bytes b;
  request(b, 0, kCmdWrite, 10, 0, 4096);  // no NBD_CMD_FLAG_PAYLOAD_LEN: no payload follows
  request(b, 0, kCmdFlush, 11, 0, 0);
  feed(*session, b);
  auto chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].cookie, 10u);
  EXPECT_EQ(chunks[0].type, kChunkError);
  EXPECT_EQ(error_of(chunks[0]), kErrInval);
  EXPECT_EQ(chunks[1].cookie, 11u);
  EXPECT_EQ(chunks[1].type, kChunkNone);
}

TEST_F(ExtendedSessionTest, PayloadOnOtherCommandsIsSkippedAndRefused) {
  auto session = transmission();
  Bytes b;
  request(b, kCmdFlagPayloadLen, kCmdFlush, 12, 0, 100).fill(100, 'p');
  request(b, kCmdFlagPayloadLen, kCmdBlockStatus, 13, 0, 7).fill(7, 'q');
  request(b, 0, kCmdFlush, 14, 0, 0);
  feed(*session, b);
  EXPECT_FALSE(session->finished());
  auto chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 3u);
  EXPECT_EQ(chunks[0].type, kChunkError);
  EXPECT_EQ(error_of(chunks[0]), kErrInval);
  EXPECT_EQ(chunks[1].type, kChunkError);
  EXPECT_EQ(error_of(chunks[1]), kErrInval);
  EXPECT_EQ(chunks[2].cookie, 14u);
  EXPECT_EQ(chunks[2].type, kChunkNone);
}

TEST_F(ExtendedSessionTest, PayloadAboveTheMaximumDisconnects) {
  auto session = transmission();
  Bytes b;
  request(b, kCmdFlagPayloadLen, kCmdWrite, 15, 0, uint64_t{kMaxPayload} + 1);
  feed(*session, b);
  EXPECT_TRUE(session->finished());
  EXPECT_TRUE(output_.bytes.empty());
}

TEST_F(ExtendedSessionTest, ErrorsAndUnknownCommandsGetErrorChunks) {
  auto session = transmission();
  Bytes b;
  request(b, 0, kCmdRead, 16, kLargeSize, 512);                   // past the end
  request(b, 0, kCmdRead, 17, 0, uint64_t{kMaxPayload} + 1);      // larger than the maximum payload
  request(b, 0, 42, 18, 0, 0);                                     // unknown command
  feed(*session, b);
  EXPECT_FALSE(session->finished());
  auto chunks = take_chunks();
  ASSERT_EQ(chunks.size(), 3u);
  for (const Chunk& chunk : chunks) {
    EXPECT_EQ(chunk.magic, kExtendedReplyMagic);
    EXPECT_EQ(chunk.type, kChunkError);
    EXPECT_TRUE(chunk.done());
    EXPECT_EQ(error_of(chunk), kErrInval);
    ASSERT_GE(chunk.payload.size(), 6u);
    EXPECT_EQ(load16(chunk.payload.data() + 4) + 6u, chunk.payload.size());  // message length
  }
  EXPECT_EQ(chunks[0].offset, kLargeSize);
}

TEST_F(ExtendedSessionTest, CompactHeaderAfterNegotiationDisconnects) {
  auto session = transmission();
  feed(*session, Bytes().u32(kRequestMagic).u16(0).u16(kCmdFlush).u64(1).u64(0).u32(0).u32(0));
  EXPECT_TRUE(session->finished());
  EXPECT_NE(session->end_reason().find("compact"), std::string::npos) << session->end_reason();
  EXPECT_TRUE(output_.bytes.empty());
}

TEST_F(ExtendedSessionTest, ExtendedHeaderWithoutNegotiationDisconnects) {
  auto session = make();
  Bytes b;
  b.u32(kClientFixedNewstyle | kClientNoZeroes);
  b.u64(kOptionMagic).u32(kOptStructuredReply).u32(0);
  b.u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0);
  feed(*session, b);
  ASSERT_TRUE(session->in_transmission());
  output_.bytes.clear();
  Bytes r;
  request(r, 0, kCmdFlush, 1, 0, 0);
  feed(*session, r);
  EXPECT_TRUE(session->finished());
  EXPECT_NE(session->end_reason().find("extended"), std::string::npos) << session->end_reason();
}

// ---- The same over a socket, through the real server --------------------------

class Socket {
 public:
  explicit Socket(const std::filesystem::path& path) : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    timeval timeout{.tv_sec = 10, .tv_usec = 0};  // a broken server fails the test instead of hanging it
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  }
  ~Socket() { ::close(fd_); }
  bool connected() const { return connected_; }
  bool send(const Bytes& bytes) {
    return ::send(fd_, bytes.data().data(), bytes.data().size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.data().size());
  }
  // Exactly `count` bytes, or nothing when the stream ends or times out first.
  std::optional<std::vector<std::byte>> receive(size_t count) {
    std::vector<std::byte> data(count);
    size_t done = 0;
    while (done < count) {
      const ssize_t n = ::recv(fd_, data.data() + done, count - done, 0);
      if (n <= 0) return std::nullopt;
      done += static_cast<size_t>(n);
    }
    return data;
  }
  // True when the peer closed the connection (not a timeout).
  bool closed_by_peer() {
    std::byte byte;
    return ::recv(fd_, &byte, 1, 0) == 0;
  }

 private:
  int fd_;
  bool connected_ = false;
};

// Reads option replies until the final one for NBD_OPT_GO.
std::vector<std::pair<uint32_t, uint32_t>> receive_option_replies(Socket& socket) {
  std::vector<std::pair<uint32_t, uint32_t>> replies;
  while (true) {
    auto header = socket.receive(20);
    if (!header || load64(header->data()) != kOptionReplyMagic) {
      ADD_FAILURE() << "no option reply";
      return replies;
    }
    const uint32_t option = load32(header->data() + 8);
    const uint32_t type = load32(header->data() + 12);
    replies.emplace_back(option, type);
    if (!socket.receive(load32(header->data() + 16))) return replies;
    if (option == kOptGo && (type == kRepAck || (type & kRepErrorBit))) return replies;
  }
}

std::optional<Chunk> receive_chunk(Socket& socket) {
  auto header = socket.receive(kExtendedReplyHeaderSize);
  if (!header) return std::nullopt;
  const uint64_t length = load64(header->data() + 24);
  if (length > (64u << 20)) return std::nullopt;
  auto payload = socket.receive(length);
  if (!payload) return std::nullopt;
  Chunk chunk{load32(header->data()), load16(header->data() + 4), load16(header->data() + 6), load64(header->data() + 8),
              load64(header->data() + 16), std::move(*payload)};
  return chunk;
}

class ExtendedServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(dir_.path() / "disk.raw", kLargeSize);
    server_ = std::make_unique<RunningServer>(dir_.path() / "disk.raw", ServerSetup{}, dir_.path() / "nbd.sock");
  }
  std::unique_ptr<Socket> connect_extended() {
    auto socket = std::make_unique<Socket>(dir_.path() / "nbd.sock");
    EXPECT_TRUE(socket->connected());
    auto greeting = socket->receive(18);
    EXPECT_TRUE(greeting && load64(greeting->data()) == kNbdMagic);
    EXPECT_TRUE(socket->send(extended_handshake()));
    auto replies = receive_option_replies(*socket);
    EXPECT_FALSE(replies.empty());
    if (!replies.empty()) {
      EXPECT_EQ(replies.front(), (std::pair<uint32_t, uint32_t>{kOptExtendedHeaders, kRepAck}));
      EXPECT_EQ(replies.back(), (std::pair<uint32_t, uint32_t>{kOptGo, kRepAck}));
    }
    return socket;
  }

  TempDir dir_;
  std::unique_ptr<RunningServer> server_;
};

TEST_F(ExtendedServerTest, WriteReadAndBlockStatusOverASocket) {
  auto socket = connect_extended();
  constexpr uint64_t kAt = 6ull << 30;
  Bytes b;
  request(b, kCmdFlagPayloadLen | kCmdFlagFua, kCmdWrite, 21, kAt, 8192).fill(8192, 'z');
  ASSERT_TRUE(socket->send(b));
  auto written = receive_chunk(*socket);
  ASSERT_TRUE(written);
  EXPECT_EQ(written->magic, kExtendedReplyMagic);
  EXPECT_EQ(written->cookie, 21u);
  EXPECT_EQ(written->type, kChunkNone);
  EXPECT_TRUE(written->done());

  // Two requests in flight; replies may interleave, so collect by cookie.
  Bytes requests;
  request(requests, 0, kCmdRead, 22, kAt, 8192);
  request(requests, 0, kCmdBlockStatus, 23, 0, kLargeSize);
  ASSERT_TRUE(socket->send(requests));
  std::vector<Chunk> read_chunks;
  std::vector<Chunk> status_chunks;
  int done = 0;
  while (done < 2) {
    auto chunk = receive_chunk(*socket);
    ASSERT_TRUE(chunk) << "connection ended before both replies";
    done += chunk->done();
    (chunk->cookie == 22 ? read_chunks : status_chunks).push_back(std::move(*chunk));
  }
  EXPECT_EQ(assemble_read(read_chunks, kAt, 8192), std::vector<std::byte>(8192, std::byte{'z'}));
  ASSERT_EQ(status_chunks.size(), 1u);
  auto descriptors = status_descriptors(status_chunks[0]);
  ASSERT_FALSE(descriptors.empty());
  EXPECT_EQ(descriptors[0].length, kAt);
  EXPECT_EQ(descriptors[0].flags, kStateHole | kStateZero);

  // A compact header now is a protocol violation: the server hangs up...
  Bytes compact;
  compact.u32(kRequestMagic).u16(0).u16(kCmdFlush).u64(24).u64(0).u32(0).u32(0);
  ASSERT_TRUE(socket->send(compact));
  EXPECT_TRUE(socket->closed_by_peer());
  // ...and goes on serving others.
  auto again = connect_extended();
  Bytes disc;
  request(disc, 0, kCmdDisc, 25, 0, 0);
  EXPECT_TRUE(again->send(disc));
  EXPECT_TRUE(again->closed_by_peer());
}

}  // namespace
}  // namespace kiln::nbd::test
