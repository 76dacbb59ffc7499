// kiln-ga-client: the host side of the guest agent. Connects to the agent's
// unix socket (Kiln's or QEMU's chardev), synchronises, runs one command.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/qmp/client.h"

namespace {

using kiln::qmp::Json;

std::string read_local_file(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), {});
  kiln::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) throw kiln::system_error(errno, "Could not open '{}'", path);
  std::string data;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw kiln::system_error(errno, "Could not read '{}'", path);
    if (n == 0) break;
    data.append(buffer, size_t(n));
  }
  return data;
}

void write_all(int fd, std::string_view data, const std::string& what) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw kiln::system_error(errno, "Could not write '{}'", what);
    data.remove_prefix(size_t(n));
  }
}

// Base64 via a tiny local codec keeps the client independent of the agent library.
std::string base64_encode(std::string_view data) {
  static constexpr char chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((data.size() + 2) / 3 * 4);
  for (size_t i = 0; i < data.size(); i += 3) {
    uint32_t v = uint8_t(data[i]) << 16;
    if (i + 1 < data.size()) v |= uint8_t(data[i + 1]) << 8;
    if (i + 2 < data.size()) v |= uint8_t(data[i + 2]);
    out += chars[v >> 18];
    out += chars[(v >> 12) & 63];
    out += i + 1 < data.size() ? chars[(v >> 6) & 63] : '=';
    out += i + 2 < data.size() ? chars[v & 63] : '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    int v;
    if (c >= 'A' && c <= 'Z') v = c - 'A';
    else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
    else if (c >= '0' && c <= '9') v = c - '0' + 52;
    else if (c == '+') v = 62;
    else if (c == '/') v = 63;
    else if (c == '=' || c == '\n') continue;
    else throw kiln::Error(EPROTO, "agent sent invalid base64 data");
    acc = (acc << 6) | uint32_t(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += char((acc >> bits) & 0xff);
    }
  }
  return out;
}

constexpr size_t kFileChunk = 1 << 20;  // per guest-file-read/-write round trip

void file_get(kiln::qmp::AgentClient& client, const std::string& remote, const std::string& local) {
  std::int64_t handle = client.execute("guest-file-open", {{"path", remote}, {"mode", "r"}}).get<std::int64_t>();
  kiln::UniqueFd out;
  int out_fd = 1;
  if (local != "-") {
    out.reset(::open(local.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!out.valid()) throw kiln::system_error(errno, "Could not create '{}'", local);
    out_fd = out.get();
  }
  try {
    for (;;) {
      Json chunk = client.execute("guest-file-read", {{"handle", handle}, {"count", kFileChunk}});
      write_all(out_fd, base64_decode(chunk["buf-b64"].get<std::string>()), local);
      if (chunk["eof"].get<bool>() || chunk["count"].get<std::int64_t>() == 0) break;
    }
  } catch (...) {
    client.execute("guest-file-close", {{"handle", handle}});
    throw;
  }
  client.execute("guest-file-close", {{"handle", handle}});
}

void file_put(kiln::qmp::AgentClient& client, const std::string& local, const std::string& remote) {
  std::string data = read_local_file(local);
  std::int64_t handle = client.execute("guest-file-open", {{"path", remote}, {"mode", "w"}}).get<std::int64_t>();
  try {
    for (size_t offset = 0; offset < data.size(); offset += kFileChunk) {
      std::string_view piece = std::string_view(data).substr(offset, kFileChunk);
      client.execute("guest-file-write", {{"handle", handle}, {"buf-b64", base64_encode(piece)}});
    }
  } catch (...) {
    client.execute("guest-file-close", {{"handle", handle}});
    throw;
  }
  client.execute("guest-file-close", {{"handle", handle}});
}

int run_exec(kiln::qmp::AgentClient& client, const std::vector<std::string>& command,
             const std::vector<std::string>& env, const std::string& input_file, double wait_seconds) {
  Json args = {{"path", command.front()}, {"capture-output", true}};
  if (command.size() > 1) args["arg"] = std::vector<std::string>(command.begin() + 1, command.end());
  if (!env.empty()) args["env"] = env;
  if (!input_file.empty()) args["input-data"] = base64_encode(read_local_file(input_file));
  std::int64_t pid = client.execute("guest-exec", args)["pid"].get<std::int64_t>();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(wait_seconds);
  auto delay = std::chrono::milliseconds(5);
  for (;;) {
    Json status = client.execute("guest-exec-status", {{"pid", pid}});
    if (status["exited"].get<bool>()) {
      if (status.contains("out-data")) write_all(1, base64_decode(status["out-data"].get<std::string>()), "stdout");
      if (status.contains("err-data")) write_all(2, base64_decode(status["err-data"].get<std::string>()), "stderr");
      if (status.contains("signal")) return 128 + status["signal"].get<int>();
      return status.value("exitcode", 1);
    }
    if (std::chrono::steady_clock::now() > deadline) {
      throw kiln::Error(ETIMEDOUT, fmt::format("guest process {} did not exit within {} s", pid, wait_seconds));
    }
    std::this_thread::sleep_for(delay);
    delay = std::min(delay * 2, std::chrono::milliseconds(200));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kiln-ga-client: talk to a QEMU-compatible guest agent (kiln-ga or qemu-ga)"};
  app.require_subcommand(1);
  std::string socket_path;
  double timeout_seconds = 5;
  bool no_sync = false;
  app.add_option("-s,--socket", socket_path, "the agent's unix socket (QEMU chardev, kiln-ga -m unix-listen) or vsock:CID:PORT")->required();
  app.add_option("-t,--timeout", timeout_seconds, "seconds to wait for each reply (default 5)");
  app.add_flag("--no-sync", no_sync, "skip the guest-sync-delimited handshake");

  std::string command_name, command_args = "{}";
  auto* raw = app.add_subcommand("command", "run any command; prints its return value as JSON");
  raw->alias("cmd");
  raw->add_option("name", command_name, "command name, e.g. guest-get-osinfo")->required();
  raw->add_option("arguments", command_args, "arguments as a JSON object");
  auto* ping = app.add_subcommand("ping", "check that the agent answers");
  auto* info = app.add_subcommand("info", "agent version and commands");

  std::vector<std::string> exec_command, exec_env;
  std::string exec_input;
  double exec_wait = 60;
  auto* exec = app.add_subcommand("exec", "run a program in the guest; prints its output, exits with its exit code");
  exec->add_option("--env", exec_env, "environment entry NAME=VALUE (replaces the environment)");
  exec->add_option("--input", exec_input, "file (or -) fed to the program's stdin");
  exec->add_option("--wait", exec_wait, "seconds to wait for the program (default 60)");
  exec->add_option("command", exec_command, "program and arguments")->required();
  exec->prefix_command(false);

  auto* file = app.add_subcommand("file", "copy files from or to the guest");
  file->require_subcommand(1);
  std::string get_remote, get_local, put_local, put_remote;
  auto* file_get_cmd = file->add_subcommand("get", "copy a guest file to the host");
  file_get_cmd->add_option("remote", get_remote)->required();
  file_get_cmd->add_option("local", get_local, "host file, - for stdout")->required();
  auto* file_put_cmd = file->add_subcommand("put", "copy a host file to the guest");
  file_put_cmd->add_option("local", put_local, "host file, - for stdin")->required();
  file_put_cmd->add_option("remote", put_remote)->required();

  std::string freeze_action;
  std::vector<std::string> freeze_mounts;
  auto* fsfreeze = app.add_subcommand("fsfreeze", "freeze or thaw guest file systems");
  fsfreeze->add_option("action", freeze_action, "status, freeze or thaw")->required()->check(CLI::IsMember({"status", "freeze", "thaw"}));
  fsfreeze->add_option("mountpoints", freeze_mounts, "for freeze: only these mount points");

  std::string shutdown_mode = "powerdown";
  auto* shutdown = app.add_subcommand("shutdown", "shut the guest down");
  shutdown->add_option("-m,--mode", shutdown_mode, "halt, powerdown or reboot")->check(CLI::IsMember({"halt", "powerdown", "reboot"}));

  CLI11_PARSE(app, argc, argv);

  try {
    auto timeout = std::chrono::milliseconds(std::int64_t(timeout_seconds * 1000));
    kiln::qmp::AgentClient client(socket_path, timeout);
    if (!no_sync) client.sync();
    if (raw->parsed()) {
      Json arguments;
      try {
        arguments = Json::parse(command_args);
      } catch (const Json::exception&) {
        throw kiln::invalid_argument("arguments are not valid JSON: {}", command_args);
      }
      if (!arguments.is_object()) throw kiln::invalid_argument("arguments must be a JSON object: {}", command_args);
      std::cout << kiln::qmp::to_qmp_text(client.execute(command_name, arguments)) << "\n";
    } else if (ping->parsed()) {
      client.execute("guest-ping");
    } else if (info->parsed()) {
      Json result = client.execute("guest-info");
      std::cout << "version: " << result["version"].get<std::string>() << "\n";
      for (const auto& command : result["supported_commands"]) {
        std::cout << command["name"].get<std::string>() << (command["enabled"].get<bool>() ? "" : " (disabled)") << "\n";
      }
    } else if (exec->parsed()) {
      return run_exec(client, exec_command, exec_env, exec_input, exec_wait);
    } else if (file_get_cmd->parsed()) {
      file_get(client, get_remote, get_local);
    } else if (file_put_cmd->parsed()) {
      file_put(client, put_local, put_remote);
    } else if (fsfreeze->parsed()) {
      if (freeze_action == "status") {
        std::cout << client.execute("guest-fsfreeze-status").get<std::string>() << "\n";
      } else if (freeze_action == "freeze") {
        Json result = freeze_mounts.empty() ? client.execute("guest-fsfreeze-freeze")
                                            : client.execute("guest-fsfreeze-freeze-list", {{"mountpoints", freeze_mounts}});
        std::cout << "frozen " << result.get<std::int64_t>() << " file system(s)\n";
      } else {
        std::cout << "thawed " << client.execute("guest-fsfreeze-thaw").get<std::int64_t>() << " file system(s)\n";
      }
    } else if (shutdown->parsed()) {
      client.execute_no_reply("guest-shutdown", {{"mode", shutdown_mode}}, std::chrono::milliseconds(500));
    }
  } catch (const kiln::qmp::CommandError& error) {
    std::fprintf(stderr, "kiln-ga-client: %s: %s\n", error.error_class().c_str(), error.what());
    return 1;
  } catch (const kiln::Error& error) {
    std::fprintf(stderr, "kiln-ga-client: %s\n", error.what());
    return 1;
  }
  return 0;
}
