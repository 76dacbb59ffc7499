// Host side of a QMP-style channel: connect to a unix socket, resynchronise
// with guest-sync-delimited, send commands and wait for replies with a timeout.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>

#include "kiln/common/fd.h"
#include "kiln/qmp/protocol.h"
#include "kiln/qmp/stream.h"

namespace kiln::qmp {

class AgentClient : private StreamSink {
 public:
  // Connects to a unix socket, or to vsock:CID:PORT; throws kiln::Error naming it.
  AgentClient(const std::string& socket_path, std::chrono::milliseconds timeout);

  // Sends 0xFF and guest-sync-delimited, discarding stale replies until the
  // matching id comes back. Throws kiln::Error (ETIMEDOUT) if no agent answers.
  void sync();
  // Sends a command; returns the "return" value, throws CommandError on an
  // error response and kiln::Error on timeouts or a closed channel.
  Json execute(const std::string& command, const Json& arguments = Json::object());
  // Sends a command that has no success response (guest-shutdown): succeeds
  // when no error arrives within `grace`.
  void execute_no_reply(const std::string& command, const Json& arguments, std::chrono::milliseconds grace);

  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 private:
  void on_message(std::string_view text) override;
  void on_stream_error(std::string_view desc) override;
  void connect_vsock(const std::string& spec);
  void send_text(const std::string& text);
  // Waits for the next reply; false on timeout.
  bool next_reply(Json& reply, std::chrono::milliseconds timeout);

  std::string path_;
  UniqueFd fd_;
  std::chrono::milliseconds timeout_;
  JsonStreamSplitter splitter_;
  std::deque<Json> replies_;
};

}  // namespace kiln::qmp
