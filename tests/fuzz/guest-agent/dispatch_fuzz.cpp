// Bytes from the host through the QMP stream splitter into kiln-ga's
// dispatcher. Only commands that cannot change the machine are enabled
// (allow list), and system paths point at a folder that does not exist, so
// the fuzzer reaches argument checking and error paths, never real effects.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kiln/ga/agent.h"
#include "kiln/qmp/stream.h"

namespace {

struct Sink : kiln::qmp::StreamSink {
  explicit Sink(kiln::ga::Agent& agent) : agent(agent) {}
  void on_message(std::string_view text) override { replies += agent.handle(text).size(); }
  void on_stream_error(std::string_view desc) override { replies += desc.size(); }
  kiln::ga::Agent& agent;
  std::size_t replies = 0;
};

kiln::ga::Agent& fuzz_agent() {
  static kiln::ga::Agent* agent = [] {
    kiln::ga::AgentConfig config;
    const std::string nowhere = "/nonexistent/kiln-ga-fuzz";
    config.paths = {nowhere + "/sys", nowhere + "/proc", nowhere + "/mountinfo", nowhere + "/os-release",
                    nowhere + "/bin", nowhere + "/clock", nowhere + "/passwd"};
    config.allow_rpcs = {"guest-sync", "guest-sync-delimited", "guest-ping", "guest-info", "guest-get-timezone",
                         "guest-fsfreeze-status", "guest-set-vcpus", "guest-get-vcpus", "guest-set-memory-blocks",
                         "guest-file-read", "guest-file-seek", "guest-file-close", "guest-file-flush",
                         "guest-exec-status", "guest-get-memory-block-info", "guest-ssh-get-authorized-keys"};
    return new kiln::ga::Agent(config);
  }();
  return *agent;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  kiln::qmp::JsonStreamSplitter splitter(kiln::qmp::StreamLimits{.max_message_bytes = 1 << 16, .max_nesting = 64});
  Sink sink(fuzz_agent());
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  // Feed in two pieces so partial-message handling is exercised too.
  std::size_t split = size ? data[0] % (size + 1) : 0;
  splitter.feed(bytes.substr(0, split), sink);
  splitter.feed(bytes.substr(split), sink);
  return 0;
}
