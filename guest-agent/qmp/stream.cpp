#include "kiln/qmp/stream.h"

namespace kiln::qmp {

namespace {
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool ends_bare_word(char c) {
  return is_space(c) || c == '{' || c == '[' || c == '}' || c == ']' || c == '"' || c == '\'';
}
constexpr char kResyncByte = '\xff';
}  // namespace

void JsonStreamSplitter::reset() {
  state_ = State::Idle;
  buffer_.clear();
  depth_ = 0;
  in_string_ = false;
  escape_ = false;
  discarding_ = false;
}

void JsonStreamSplitter::finish_message(StreamSink& sink) {
  bool was_discarding = discarding_;
  state_ = State::Idle;
  depth_ = 0;
  in_string_ = false;
  escape_ = false;
  discarding_ = false;
  if (was_discarding) {
    sink.on_stream_error("JSON parse error, message too large");
  } else {
    sink.on_message(buffer_);
  }
  buffer_.clear();  // keeps the capacity for the next message
}

void JsonStreamSplitter::drop(StreamSink& sink, std::string_view desc) {
  reset();
  sink.on_stream_error(desc);
}

void JsonStreamSplitter::feed(std::string_view bytes, StreamSink& sink) {
  std::size_t i = 0;
  while (i < bytes.size()) {
    char c = bytes[i];
    if (c == kResyncByte) {
      bool had_input = !buffer_.empty() || state_ != State::Idle;
      reset();
      if (had_input) sink.on_stream_error("JSON parse error, stray '\\xff'");
      ++i;
      continue;
    }
    switch (state_) {
      case State::Idle: {
        ++i;
        if (is_space(c)) break;
        if (c == '}' || c == ']') {
          sink.on_stream_error("JSON parse error, expecting value");
          break;
        }
        buffer_.push_back(c);
        if (c == '{' || c == '[') {
          state_ = State::Nested;
          depth_ = 1;
        } else if (c == '"' || c == '\'') {
          state_ = State::TopString;
          in_string_ = true;
          quote_ = c;
        } else {
          state_ = State::BareWord;
        }
        break;
      }
      case State::BareWord: {
        if (ends_bare_word(c)) {
          finish_message(sink);  // c is examined again in Idle state
          break;
        }
        buffer_.push_back(c);
        ++i;
        if (buffer_.size() > limits_.max_message_bytes) drop(sink, "JSON parse error, message too large");
        break;
      }
      case State::TopString:
      case State::Nested: {
        // Scan a run of bytes at once and copy them in one append.
        std::size_t start = i;
        bool complete = false;
        for (; i < bytes.size(); ++i) {
          char b = bytes[i];
          if (b == kResyncByte) break;
          if (in_string_) {
            if (escape_) {
              escape_ = false;
            } else if (b == '\\') {
              escape_ = true;
            } else if (b == quote_) {
              in_string_ = false;
              if (state_ == State::TopString) {
                ++i;
                complete = true;
                break;
              }
            }
            continue;
          }
          if (b == '"' || b == '\'') {
            // QEMU's JSON also has single-quoted strings; track either kind.
            in_string_ = true;
            quote_ = b;
          } else if (b == '{' || b == '[') {
            if (++depth_ > limits_.max_nesting) {
              ++i;
              drop(sink, "JSON parse error, too many nested data structures");
              start = i;
              break;
            }
          } else if (b == '}' || b == ']') {
            if (--depth_ == 0) {
              ++i;
              complete = true;
              break;
            }
          }
        }
        if (state_ == State::Idle) break;  // dropped for nesting
        if (!discarding_) {
          buffer_.append(bytes.data() + start, i - start);
          if (buffer_.size() > limits_.max_message_bytes) {
            discarding_ = true;
            buffer_.clear();
            buffer_.shrink_to_fit();
          }
        }
        if (complete) finish_message(sink);
        break;
      }
    }
  }
}

}  // namespace kiln::qmp
