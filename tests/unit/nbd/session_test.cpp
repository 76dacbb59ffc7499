// The protocol state machine fed raw bytes, without sockets: the paths a
// well-behaved client never takes.
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>
#include <vector>

#include "fixture.h"
#include "wire_bytes.h"
#include "session.h"
#include "wire.h"

namespace kiln::nbd::test {
namespace {

class SessionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(dir_.path() / "disk.raw", kSize);
    block::OpenOptions options;
    options.format = "raw";
    image_ = block::Image::open((dir_.path() / "disk.raw").string(), options);
    config_.node = &image_->top();
    config_.discard_unmap = true;
  }
  std::unique_ptr<Session> make(bool tls_required = false) {
    auto session = std::make_unique<Session>(config_, SessionLimits{}, output_, executor_, tls_required, tls_required);
    session->start();
    return session;
  }
  // Feeds bytes the way a transport would; returns bytes accepted.
  size_t feed(Session& session, const std::vector<std::byte>& bytes) {
    size_t done = 0;
    while (done < bytes.size() && !session.finished()) {
      auto in = session.input();
      const size_t n = std::min(in.size(), bytes.size() - done);
      std::memcpy(in.data(), bytes.data() + done, n);
      session.consumed(n);
      done += n;
    }
    return done;
  }
  // Client flags + NBD_OPT_GO for the default export with structured replies.
  Bytes handshake(bool structured = true) {
    Bytes b;
    b.u32(kClientFixedNewstyle | kClientNoZeroes);
    if (structured) b.u64(kOptionMagic).u32(kOptStructuredReply).u32(0);
    b.u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0);
    return b;
  }
  // Reply types of every option reply in the output, in order.
  std::vector<uint32_t> option_reply_types() const {
    std::vector<uint32_t> types;
    size_t at = 18;  // after the greeting
    while (at + 20 <= output_.bytes.size() && load64(output_.bytes.data() + at) == kOptionReplyMagic) {
      types.push_back(load32(output_.bytes.data() + at + 12));
      at += 20 + load32(output_.bytes.data() + at + 16);
    }
    return types;
  }

  static constexpr uint64_t kSize = 1 << 20;
  TempDir dir_;
  std::unique_ptr<block::Image> image_;
  ExportConfig config_;
  CaptureOutput output_;
  InlineExecutor executor_;
};

TEST_F(SessionTest, GreetingIsFixedNewstyle) {
  auto session = make();
  ASSERT_EQ(output_.bytes.size(), 18u);
  EXPECT_EQ(load64(output_.bytes.data()), kNbdMagic);
  EXPECT_EQ(load64(output_.bytes.data() + 8), kOptionMagic);
  EXPECT_EQ(load16(output_.bytes.data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
}

TEST_F(SessionTest, UnknownClientFlagsEndTheSession) {
  auto session = make();
  feed(*session, Bytes().u32(0x80).data());
  EXPECT_TRUE(session->finished());
}

TEST_F(SessionTest, BadOptionMagicEndsTheSession) {
  auto session = make();
  feed(*session, Bytes().u32(1).u64(0x1234).u32(1).u32(0).data());
  EXPECT_TRUE(session->finished());
}

TEST_F(SessionTest, OversizedOptionIsSkippedAndRefused) {
  auto session = make();
  Bytes b;
  b.u32(1).u64(kOptionMagic).u32(kOptList).u32(1 << 20).fill(1 << 20, 'x');
  feed(*session, b.data());
  EXPECT_FALSE(session->finished());
  EXPECT_EQ(option_reply_types(), std::vector<uint32_t>{kRepErrTooBig});
}

TEST_F(SessionTest, UnknownAndMalformedOptionsGetErrors) {
  auto session = make();
  Bytes b;
  b.u32(1);
  b.u64(kOptionMagic).u32(99).u32(0);                                  // unknown
  b.u64(kOptionMagic).u32(kOptGo).u32(10).u32(100).u16(0).u32(0);      // name longer than option
  b.u64(kOptionMagic).u32(kOptSetMetaContext).u32(0);                  // before structured replies
  b.u64(kOptionMagic).u32(kOptStartTls).u32(0);                        // no TLS configured
  b.u64(kOptionMagic).u32(kOptInfo).u32(9).u32(3).raw("abc").u16(0);   // unknown export
  b.u64(kOptionMagic).u32(kOptExtendedHeaders).u32(2).u16(0);         // takes no data
  feed(*session, b.data());
  EXPECT_FALSE(session->finished());
  EXPECT_EQ(option_reply_types(), (std::vector<uint32_t>{kRepErrUnsup, kRepErrInvalid, kRepErrInvalid, kRepErrPolicy,
                                                         kRepErrUnknown, kRepErrInvalid}));
}

TEST_F(SessionTest, TlsRequiredRefusesPlaintextOptions) {
  auto session = make(true);
  Bytes b;
  b.u32(1).u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0);
  b.u64(kOptionMagic).u32(kOptList).u32(0);
  feed(*session, b.data());
  EXPECT_EQ(option_reply_types(), (std::vector<uint32_t>{kRepErrTlsReqd, kRepErrTlsReqd}));
  feed(*session, Bytes().u64(kOptionMagic).u32(kOptExportName).u32(0).data());
  EXPECT_TRUE(session->finished());
}

TEST_F(SessionTest, StartTlsAsksTheTransportForAHandshake) {
  auto session = make(true);
  feed(*session, Bytes().u32(1).u64(kOptionMagic).u32(kOptStartTls).u32(0).data());
  EXPECT_TRUE(session->tls_pending());
  EXPECT_EQ(option_reply_types(), std::vector<uint32_t>{kRepAck});
  session->tls_started();
  feed(*session, Bytes().u64(kOptionMagic).u32(kOptGo).u32(6).u32(0).u16(0).data());
  EXPECT_TRUE(session->in_transmission());
}

TEST_F(SessionTest, ExportNameWithoutNoZeroesSendsPadding) {
  auto session = make();
  feed(*session, Bytes().u32(1).u64(kOptionMagic).u32(kOptExportName).u32(0).data());
  ASSERT_TRUE(session->in_transmission());
  ASSERT_EQ(output_.bytes.size(), 18u + 8 + 2 + 124);
  EXPECT_EQ(load64(output_.bytes.data() + 18), kSize);
}

TEST_F(SessionTest, OversizedWriteIsDiscardedAndRefused) {
  auto session = make();
  feed(*session, handshake(false).data());
  ASSERT_TRUE(session->in_transmission());
  output_.bytes.clear();
  const uint32_t length = kMaxPayload + 4096;
  Bytes b;
  b.u32(kRequestMagic).u16(0).u16(kCmdWrite).u64(7).u64(0).u32(length).fill(length, 'w');
  feed(*session, b.data());
  EXPECT_FALSE(session->finished());
  ASSERT_EQ(output_.bytes.size(), 16u);
  EXPECT_EQ(load32(output_.bytes.data()), kSimpleReplyMagic);
  EXPECT_EQ(load32(output_.bytes.data() + 4), kErrInval);
  EXPECT_EQ(load64(output_.bytes.data() + 8), 7u);
  // Nothing was written.
  std::vector<std::byte> back(4096);
  image_->read(0, back);
  EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](std::byte b) { return b == std::byte{0}; }));
}

TEST_F(SessionTest, UnknownCommandGetsEinvalAndSessionContinues) {
  auto session = make();
  feed(*session, handshake(false).data());
  output_.bytes.clear();
  Bytes b;
  b.u32(kRequestMagic).u16(0).u16(42).u64(1).u64(0).u32(512);
  b.u32(kRequestMagic).u16(0).u16(kCmdFlush).u64(2).u64(0).u32(0);
  feed(*session, b.data());
  ASSERT_EQ(output_.bytes.size(), 32u);
  EXPECT_EQ(load32(output_.bytes.data() + 4), kErrInval);
  EXPECT_EQ(load32(output_.bytes.data() + 16 + 4), 0u);
  EXPECT_EQ(load64(output_.bytes.data() + 16 + 8), 2u);
}

TEST_F(SessionTest, BlockStatusWithoutContextsIsInvalid) {
  auto session = make();
  feed(*session, handshake(true).data());
  output_.bytes.clear();
  feed(*session, Bytes().u32(kRequestMagic).u16(0).u16(kCmdBlockStatus).u64(5).u64(0).u32(4096).data());
  ASSERT_GE(output_.bytes.size(), 26u);
  EXPECT_EQ(load32(output_.bytes.data()), kStructuredReplyMagic);
  EXPECT_EQ(load16(output_.bytes.data() + 6), kChunkError);
  EXPECT_EQ(load32(output_.bytes.data() + 20), kErrInval);
}

TEST_F(SessionTest, BadRequestMagicAndDiscEndTheSession) {
  {
    auto session = make();
    feed(*session, handshake().data());
    feed(*session, Bytes().u32(0xdeadbeef).fill(24, 0).data());
    EXPECT_TRUE(session->finished());
  }
  auto session = make();
  feed(*session, handshake().data());
  feed(*session, Bytes().u32(kRequestMagic).u16(0).u16(kCmdDisc).u64(1).u64(0).u32(0).data());
  EXPECT_TRUE(session->finished());
  EXPECT_TRUE(session->end_reason().empty());
}

TEST(NbdBufferPool, ReusesBestFitAndBoundsIdleBytes) {
  BufferPool pool(3u << 20);
  auto first = pool.take(1u << 20);
  ASSERT_GE(first.size(), 1u << 20);
  const std::byte* first_data = first.data();
  pool.give(std::move(first));
  EXPECT_EQ(pool.idle_bytes(), 1u << 20);
  auto again = pool.take(4096);  // reused, not allocated
  EXPECT_EQ(again.data(), first_data);
  EXPECT_EQ(pool.idle_bytes(), 0u);
  pool.give(std::move(again));
  pool.give(std::vector<std::byte>(2u << 20));
  EXPECT_EQ(pool.idle_bytes(), 3u << 20);
  pool.give(std::vector<std::byte>(4096));  // over the limit: freed, not kept
  EXPECT_EQ(pool.idle_bytes(), 3u << 20);
  EXPECT_EQ(pool.take(1536u << 10).size(), 2u << 20);  // the smallest that fits
  EXPECT_EQ(pool.take(8u << 20).size(), 8u << 20);     // none fits: a new one
  EXPECT_EQ(pool.idle_bytes(), 1u << 20);
}

}  // namespace
}  // namespace kiln::nbd::test
