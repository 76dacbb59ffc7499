// Pieces shared by the agent's command files.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/ga/agent.h"
#include "kiln/qmp/dispatcher.h"

namespace kiln::ga {

using qmp::CommandError;
using qmp::Json;
using qmp::Param;
using qmp::ParamType;

// Whole small file (sysfs, procfs); nullopt when it cannot be read.
std::optional<std::string> read_text_file(const std::string& path);
std::string trim(std::string_view text);
std::vector<std::string> list_directory(const std::string& path);

std::string base64_encode(std::string_view data);
// Throws CommandError "Guest agent command failed, error was 'Invalid base64 data'".
std::string base64_decode(std::string_view text);

// Runs a helper program (found in paths.helper_dir or the sbin folders) with
// `input` on its stdin; returns its wait status, throws on spawn failure.
int run_helper(const SystemPaths& paths, const std::string& program, const std::vector<std::string>& args,
               std::string_view input = {});

// Optional argument accessors (types were checked by the dispatcher).
template <typename T>
std::optional<T> optional_arg(const Json& args, const char* name) {
  auto it = args.find(name);
  if (it == args.end() || it->is_null()) return std::nullopt;
  return it->get<T>();
}

struct MountEntry {
  std::string device;      // /dev/vda1
  std::string mountpoint;
  std::string fstype;
  unsigned major = 0, minor = 0;
};
// Real (block-device backed) file systems from the mountinfo file.
std::vector<MountEntry> real_mounts(const SystemPaths& paths);

class FileTable;
class ExecTable;
class FreezeState;

void register_basic_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config);
void register_system_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config);
void register_storage_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config, FreezeState& freeze);
void register_file_commands(qmp::Dispatcher& dispatcher, FileTable& files);
void register_exec_commands(qmp::Dispatcher& dispatcher, ExecTable& execs);
void register_user_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config);

}  // namespace kiln::ga
