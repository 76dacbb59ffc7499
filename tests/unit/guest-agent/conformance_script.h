// One request script that exercises every guest agent command and checks
// every reply against qga-qapi-schema.json. Run in-process and over the
// agent's unix socket and pty transports.
#pragma once

#include <functional>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

#include "qapi_schema.h"

namespace kiln::test {

// Sends one request; returns the parsed reply, or nullopt when no reply is
// expected and none came (expect_reply false).
using AgentCall = std::function<std::optional<nlohmann::json>(const nlohmann::json& request, bool expect_reply)>;

struct ScriptSetup {
  std::string scratch_dir;      // for guest-file-* and guest-exec output
  std::string ssh_user;         // a user in the agent's --passwd-file whose home is scratch
  std::string clock_file;       // the agent's --clock-file, checked after guest-set-time
  std::string helper_log;       // where the fake helpers record their arguments
  std::string ssh_keys_file;    // the user's authorized_keys
};

// Commands of the schema that kiln-ga does not implement (see README).
const std::set<std::string>& unimplemented_commands();

// Runs the script; adds GoogleTest failures; returns the commands exercised.
// `read_only` runs queries of the real system; `sandboxed` the commands that change it.
std::set<std::string> run_conformance_script(const QapiSchema& schema, const AgentCall& read_only,
                                             const AgentCall& sandboxed, const ScriptSetup& setup);

// Writes fake shutdown/hwclock/chpasswd helpers, a fake sysfs tree (with the
// real block and bus folders linked in), a passwd file and an empty mount
// table under `dir`; returns the agent options naming them.
struct Sandbox {
  std::string sysfs_root, helper_dir, clock_file, passwd_file, mountinfo, helper_log, home, ssh_keys_file;
};
Sandbox make_sandbox(const std::string& dir);

std::string make_temp_dir();
std::string read_file(const std::string& path);

}  // namespace kiln::test
