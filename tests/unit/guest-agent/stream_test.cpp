#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kiln/qmp/stream.h"

namespace {

struct Recorder : kiln::qmp::StreamSink {
  std::vector<std::string> messages;
  std::vector<std::string> errors;
  void on_message(std::string_view text) override { messages.emplace_back(text); }
  void on_stream_error(std::string_view desc) override { errors.emplace_back(desc); }
};

TEST(QmpStream, SplitsConcatenatedMessages) {
  kiln::qmp::JsonStreamSplitter splitter;
  Recorder sink;
  splitter.feed(R"({"execute":"a"}  {"execute":"b"})" "\n", sink);
  ASSERT_EQ(sink.messages.size(), 2u);
  EXPECT_EQ(sink.messages[0], R"({"execute":"a"})");
  EXPECT_EQ(sink.messages[1], R"({"execute":"b"})");
}

TEST(QmpStream, JoinsPartialMessagesByteByByte) {
  kiln::qmp::JsonStreamSplitter splitter;
  Recorder sink;
  std::string text = R"({"execute":"x","arguments":{"s":"a}\"{["}})";
  for (char c : text) splitter.feed(std::string_view(&c, 1), sink);
  ASSERT_EQ(sink.messages.size(), 1u);
  EXPECT_EQ(sink.messages[0], text);
  EXPECT_TRUE(sink.errors.empty());
}

TEST(QmpStream, ResyncByteDropsPartialInput) {
  kiln::qmp::JsonStreamSplitter splitter;
  Recorder sink;
  splitter.feed("{\"execute\": {{{ \"half", sink);
  splitter.feed("\xff{\"execute\":\"guest-ping\"}", sink);
  ASSERT_EQ(sink.errors.size(), 1u);
  ASSERT_EQ(sink.messages.size(), 1u);
  EXPECT_EQ(sink.messages[0], R"({"execute":"guest-ping"})");
}

TEST(QmpStream, ResyncByteAloneIsSilent) {
  kiln::qmp::JsonStreamSplitter splitter;
  Recorder sink;
  splitter.feed("\xff\xff{}", sink);
  EXPECT_TRUE(sink.errors.empty());
  EXPECT_EQ(sink.messages.size(), 1u);
}

TEST(QmpStream, OversizedMessageIsReportedOnceAndSkipped) {
  kiln::qmp::JsonStreamSplitter splitter(kiln::qmp::StreamLimits{.max_message_bytes = 64});
  Recorder sink;
  std::string big = "{\"execute\":\"" + std::string(1000, 'x') + "\"}";
  splitter.feed(big, sink);
  splitter.feed("{\"execute\":\"guest-ping\"}", sink);
  ASSERT_EQ(sink.errors.size(), 1u);
  EXPECT_NE(sink.errors[0].find("too large"), std::string::npos);
  ASSERT_EQ(sink.messages.size(), 1u);
  EXPECT_EQ(sink.messages[0], R"({"execute":"guest-ping"})");
}

TEST(QmpStream, DeepNestingIsRejected) {
  kiln::qmp::JsonStreamSplitter splitter(kiln::qmp::StreamLimits{.max_nesting = 10});
  Recorder sink;
  splitter.feed(std::string(11, '['), sink);
  EXPECT_EQ(sink.errors.size(), 1u);
  splitter.feed("{}", sink);
  EXPECT_EQ(sink.messages.size(), 1u);
}

TEST(QmpStream, BareWordsAndStrayClosersBecomeSeparateItems) {
  kiln::qmp::JsonStreamSplitter splitter;
  Recorder sink;
  splitter.feed("garbage}\"str\" 12 ", sink);
  EXPECT_EQ(sink.messages, (std::vector<std::string>{"garbage", "\"str\"", "12"}));
  EXPECT_EQ(sink.errors.size(), 1u);
}

}  // namespace
