#include <sstream>

#include <fmt/format.h>

#include "internal.h"
#include "kiln/common/error.h"
#include "kiln/ga/server.h"

namespace kiln::ga {

std::string default_channel_path(const std::string& method) {
  if (method == "isa-serial") return "/dev/ttyS0";
  if (method == "virtio-serial") return "/dev/virtio-ports/org.qemu.guest_agent.0";
  return {};
}

std::vector<std::string> split_rpc_list(const std::string& text) {
  std::vector<std::string> names;
  std::string current;
  for (char c : text) {
    if (c == ',' || c == ';') {
      if (!trim(current).empty()) names.push_back(trim(current));
      current.clear();
    } else {
      current += c;
    }
  }
  if (!trim(current).empty()) names.push_back(trim(current));
  return names;
}

namespace {

bool parse_bool(const std::string& path, const std::string& key, const std::string& value) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  throw kiln::invalid_argument("{}: key '{}' has invalid boolean value '{}'", path, key, value);
}

}  // namespace

void load_config_file(const std::string& path, ServerOptions& options) {
  auto text = read_text_file(path);
  if (!text) throw kiln::system_error(errno, "failed to read config file '{}'", path);
  std::istringstream lines(*text);
  std::string line, group;
  int number = 0;
  while (std::getline(lines, line)) {
    ++number;
    std::string stripped = trim(line);
    if (stripped.empty() || stripped[0] == '#') continue;
    if (stripped.front() == '[') {
      if (stripped.back() != ']') throw kiln::invalid_argument("{}:{}: malformed group header", path, number);
      group = stripped.substr(1, stripped.size() - 2);
      continue;
    }
    auto eq = stripped.find('=');
    if (eq == std::string::npos) throw kiln::invalid_argument("{}:{}: expected key=value", path, number);
    if (group != "general") continue;  // only [general] carries qemu-ga settings
    std::string key = trim(stripped.substr(0, eq)), value = trim(stripped.substr(eq + 1));
    if (key == "daemon") options.daemonize = parse_bool(path, key, value);
    else if (key == "method") options.method = value;
    else if (key == "path") options.path = value;
    else if (key == "logfile") options.logfile = value;
    else if (key == "pidfile") options.pidfile = value;
    else if (key == "fsfreeze-hook") options.agent.fsfreeze_hook = value;
    else if (key == "statedir") options.agent.state_dir = value;
    else if (key == "verbose") options.verbose = parse_bool(path, key, value);
    else if (key == "retry-path") options.retry_path = parse_bool(path, key, value);
    else if (key == "block-rpcs") options.agent.block_rpcs = split_rpc_list(value);
    else if (key == "allow-rpcs") options.agent.allow_rpcs = split_rpc_list(value);
    else throw kiln::invalid_argument("{}:{}: unknown key '{}'", path, number, key);
  }
}

std::string dump_config(const ServerOptions& options) {
  auto join = [](const std::vector<std::string>& names) {
    std::string out;
    for (const auto& name : names) out += (out.empty() ? "" : ",") + name;
    return out;
  };
  std::string out = "[general]\n";
  out += fmt::format("daemon={}\n", options.daemonize);
  out += fmt::format("method={}\n", options.method);
  out += fmt::format("path={}\n", options.path.empty() ? default_channel_path(options.method) : options.path);
  if (!options.logfile.empty()) out += fmt::format("logfile={}\n", options.logfile);
  out += fmt::format("pidfile={}\n", options.pidfile);
  if (!options.agent.fsfreeze_hook.empty()) out += fmt::format("fsfreeze-hook={}\n", options.agent.fsfreeze_hook);
  out += fmt::format("statedir={}\n", options.agent.state_dir);
  out += fmt::format("verbose={}\n", options.verbose);
  out += fmt::format("retry-path={}\n", options.retry_path);
  if (!options.agent.block_rpcs.empty()) out += fmt::format("block-rpcs={}\n", join(options.agent.block_rpcs));
  if (!options.agent.allow_rpcs.empty()) out += fmt::format("allow-rpcs={}\n", join(options.agent.allow_rpcs));
  return out;
}

}  // namespace kiln::ga
