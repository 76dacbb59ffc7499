#include "kiln/ga/agent.h"

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "exec.h"
#include "files.h"
#include "freeze.h"
#include "internal.h"

#ifndef KILN_VERSION
#define KILN_VERSION "0.1.0"
#endif

namespace kiln::ga {

std::string agent_version() { return KILN_VERSION; }

namespace {

// Commands qemu-ga still runs while file systems are frozen (anything that
// could write to a frozen file system would hang).
constexpr std::array<std::string_view, 8> kAllowedWhileFrozen = {
    "guest-ping", "guest-info", "guest-sync", "guest-sync-delimited",
    "guest-fsfreeze-status", "guest-fsfreeze-thaw", "guest-get-time", "guest-get-host-name"};

// Never blocked, or a client could not even resynchronise.
constexpr std::array<std::string_view, 2> kAlwaysEnabled = {"guest-sync", "guest-sync-delimited"};

}  // namespace

struct Agent::State {
  explicit State(AgentConfig agent_config)
      : config(std::move(agent_config)), files(config.state_dir), freeze(config) {}
  AgentConfig config;
  qmp::Dispatcher dispatcher;
  FileTable files;
  ExecTable execs;
  FreezeState freeze;
};

void register_basic_commands(qmp::Dispatcher& dispatcher, const AgentConfig&) {
  dispatcher.add({"guest-sync", {{"id", ParamType::Int}}, [](const Json& args) { return args["id"]; }});
  dispatcher.add({"guest-sync-delimited", {{"id", ParamType::Int}}, [](const Json& args) { return args["id"]; },
                  true, std::string(1, '\xff')});
  dispatcher.add({"guest-ping", {}, [](const Json&) { return Json::object(); }});
  dispatcher.add({"guest-info", {}, [&dispatcher](const Json&) {
                    Json commands = Json::array();
                    for (const auto& info : dispatcher.list()) {
                      commands.push_back(
                          {{"name", info.name}, {"enabled", info.enabled}, {"success-response", info.success_response}});
                    }
                    return Json{{"version", agent_version()}, {"supported_commands", commands}};
                  }});
}

Agent::Agent(AgentConfig config) : state_(std::make_unique<State>(std::move(config))) {
  qmp::Dispatcher& dispatcher = state_->dispatcher;
  const AgentConfig& cfg = state_->config;
  register_basic_commands(dispatcher, cfg);
  register_system_commands(dispatcher, cfg);
  register_storage_commands(dispatcher, cfg, state_->freeze);
  register_file_commands(dispatcher, state_->files);
  register_exec_commands(dispatcher, state_->execs);
  register_user_commands(dispatcher, cfg);

  auto disable = [&](const std::string& name) {
    if (std::find(kAlwaysEnabled.begin(), kAlwaysEnabled.end(), name) != kAlwaysEnabled.end()) return;
    dispatcher.disable(name, std::string(qmp::kGenericError),
                       fmt::format("The command {} has been disabled for this instance", name));
  };
  if (!cfg.allow_rpcs.empty()) {
    for (const auto& info : dispatcher.list()) {
      if (std::find(cfg.allow_rpcs.begin(), cfg.allow_rpcs.end(), info.name) == cfg.allow_rpcs.end()) disable(info.name);
    }
  }
  for (const auto& name : cfg.block_rpcs) disable(name);

  FreezeState& freeze = state_->freeze;
  dispatcher.set_gate([&freeze](std::string_view name) -> std::optional<CommandError> {
    if (!freeze.frozen()) return std::nullopt;
    if (std::find(kAllowedWhileFrozen.begin(), kAllowedWhileFrozen.end(), name) != kAllowedWhileFrozen.end()) {
      return std::nullopt;
    }
    return CommandError(fmt::format("Command {} has been disabled: the agent is in frozen state", name));
  });
}

Agent::~Agent() = default;

qmp::Dispatcher& Agent::dispatcher() { return state_->dispatcher; }

std::string Agent::handle(std::string_view text) { return state_->dispatcher.dispatch(text); }

void Agent::shutdown_cleanup() {
  state_->freeze.thaw_all_quietly();
  state_->files.close_all();
}

}  // namespace kiln::ga
