// guest-exec children: each runs with its own capture thread that feeds
// input-data, collects stdout/stderr (capped like qemu-ga) and reaps it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace kiln::ga {

struct ExecRequest {
  std::string path;
  std::vector<std::string> args;
  std::vector<std::string> env;
  bool has_env = false;
  std::string input;
  bool capture_stdout = false;
  bool capture_stderr = false;
  bool merge_output = false;  // stderr into the stdout capture
};

struct ExecResult {
  bool exited = false;
  int exit_code = -1;  // valid when signal == 0
  int signal = 0;
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
};

class ExecTable {
 public:
  ExecTable() = default;
  ~ExecTable() = default;
  ExecTable(const ExecTable&) = delete;
  ExecTable& operator=(const ExecTable&) = delete;

  std::int64_t start(ExecRequest request);
  // Returns the status; a finished child is forgotten after it is reported.
  // Throws CommandError "Invalid parameter 'pid'" for unknown pids.
  ExecResult status(std::int64_t pid, bool& captured_stdout, bool& captured_stderr);

  static constexpr std::size_t kMaxOutput = 16u << 20;

 private:
  // Shared with the child's capture thread, which is detached so that a
  // long-running child never blocks the agent (or its exit).
  struct Child {
    std::mutex mutex;
    ExecRequest request;
    ExecResult result;
  };
  std::mutex mutex_;
  std::map<std::int64_t, std::shared_ptr<Child>> children_;
};

}  // namespace kiln::ga
