// The guest agent proper: the command set of qemu-ga (qga-qapi-schema.json)
// registered on a QMP dispatcher, plus the agent state (open file handles,
// running guest-exec children, the fsfreeze state).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kiln/qmp/dispatcher.h"

namespace kiln::ga {

// Where the agent looks at and changes the system. The defaults are the real
// system; tests point them at scratch trees and fake helper programs so that
// shutdown, set-time, set-vcpus, set-user-password and fsfreeze can be
// exercised without touching the machine running the tests.
struct SystemPaths {
  std::string sysfs_root = "/sys";
  std::string proc_root = "/proc";
  std::string mountinfo = "/proc/self/mountinfo";
  std::string os_release = "/etc/os-release";
  std::string helper_dir;       // shutdown, hwclock, chpasswd; empty: the usual sbin folders
  std::string clock_file;       // non-empty: guest-set-time writes the time here instead of the clock
  std::string passwd_file;      // non-empty: users are looked up here instead of getpwnam()
};

struct AgentConfig {
  SystemPaths paths;
  std::string state_dir;        // for the file handle counter (qga.state); empty: keep in memory
  std::string fsfreeze_hook;    // empty: no hook
  std::vector<std::string> block_rpcs;
  std::vector<std::string> allow_rpcs;  // non-empty: only these (plus the sync commands) are enabled
};

class Agent {
 public:
  explicit Agent(AgentConfig config);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  qmp::Dispatcher& dispatcher();
  // Handles a JSON text received from the host; returns the bytes to send back.
  std::string handle(std::string_view text);
  // Thaws frozen file systems (called on exit).
  void shutdown_cleanup();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The agent's version string as reported by guest-info.
std::string agent_version();

}  // namespace kiln::ga
