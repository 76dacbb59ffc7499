// Splits a QMP byte stream into top-level JSON texts without parsing them.
// Like QEMU's JSON streamer it tracks nesting and strings, so a message may
// arrive in pieces or several per read, and a 0xFF byte (never valid in
// UTF-8 JSON) discards whatever was buffered so a client can resynchronise.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kiln::qmp {

struct StreamLimits {
  std::size_t max_message_bytes = 64u << 20;  // QEMU's token size limit
  std::size_t max_nesting = 1024;             // QEMU's nesting limit
};

class StreamSink {
 public:
  virtual ~StreamSink() = default;
  // One complete top-level JSON text (not yet validated).
  virtual void on_message(std::string_view text) = 0;
  // Malformed or oversized input that was dropped; desc is a QMP error text.
  virtual void on_stream_error(std::string_view desc) = 0;
};

class JsonStreamSplitter {
 public:
  explicit JsonStreamSplitter(StreamLimits limits = {}) : limits_(limits) {}

  void feed(std::string_view bytes, StreamSink& sink);
  // Forgets any partial message (new connection, host reopened the channel).
  void reset();
  bool idle() const { return state_ == State::Idle && buffer_.empty(); }

 private:
  enum class State { Idle, Nested, BareWord, TopString };

  void finish_message(StreamSink& sink);
  void drop(StreamSink& sink, std::string_view desc);

  StreamLimits limits_;
  State state_ = State::Idle;
  std::string buffer_;
  std::size_t depth_ = 0;
  bool in_string_ = false;
  bool escape_ = false;
  char quote_ = '"';
  bool discarding_ = false;  // oversized message: skip to its end
};

}  // namespace kiln::qmp
