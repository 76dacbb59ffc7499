#include "kiln/qmp/dispatcher.h"

#include <cstdint>
#include <limits>

#include <fmt/format.h>

#include "kiln/common/error.h"

namespace kiln::qmp {

std::string_view type_name(ParamType type) {
  switch (type) {
    case ParamType::Int:
    case ParamType::Uint: return "integer";
    case ParamType::Number: return "number";
    case ParamType::Str: return "string";
    case ParamType::Bool: return "boolean";
    case ParamType::Array: return "array";
    case ParamType::Object: return "object";
    case ParamType::Any: return "any";
  }
  return "any";
}

bool matches_type(const Json& value, ParamType type) {
  switch (type) {
    case ParamType::Int:
      return value.is_number_integer() &&
             (!value.is_number_unsigned() ||
              value.get<std::uint64_t>() <= std::uint64_t(std::numeric_limits<std::int64_t>::max()));
    case ParamType::Uint:
      return value.is_number_unsigned() || (value.is_number_integer() && value.get<std::int64_t>() >= 0);
    case ParamType::Number: return value.is_number();
    case ParamType::Str: return value.is_string();
    case ParamType::Bool: return value.is_boolean();
    case ParamType::Array: return value.is_array();
    case ParamType::Object: return value.is_object();
    case ParamType::Any: return true;
  }
  return false;
}

void throw_bad_type(std::string_view path, ParamType expected) {
  throw CommandError(fmt::format("Invalid parameter type for '{}', expected: {}", path, type_name(expected)));
}

std::string json_parse_error_text(std::string_view detail) {
  return fmt::format("JSON parse error, {}", detail);
}

void Dispatcher::add(Command command) {
  std::string name = command.name;
  commands_[name] = Entry{.command = std::move(command)};
}

bool Dispatcher::has(std::string_view name) const { return commands_.find(name) != commands_.end(); }

void Dispatcher::disable(std::string_view name, std::string error_class, std::string message) {
  auto it = commands_.find(name);
  if (it == commands_.end()) return;
  it->second.enabled = false;
  it->second.disabled_class = std::move(error_class);
  it->second.disabled_message = std::move(message);
}

void Dispatcher::enable(std::string_view name) {
  auto it = commands_.find(name);
  if (it != commands_.end()) it->second.enabled = true;
}

bool Dispatcher::enabled(std::string_view name) const {
  auto it = commands_.find(name);
  return it != commands_.end() && it->second.enabled;
}

std::vector<Dispatcher::Info> Dispatcher::list() const {
  std::vector<Info> infos;
  infos.reserve(commands_.size());
  for (const auto& [name, entry] : commands_) {
    infos.push_back({name, entry.enabled, entry.command.success_response});
  }
  return infos;
}

namespace {

std::string short_parse_error(const Json::exception& error) {
  // nlohmann texts look like "[json.exception.parse_error.101] parse error at
  // line 1, column 2: syntax error while parsing value - invalid literal; last read: 'x'".
  std::string_view text = error.what();
  if (auto pos = text.find(" - "); pos != std::string_view::npos) text.remove_prefix(pos + 3);
  else if (auto bracket = text.find("] "); bracket != std::string_view::npos) text.remove_prefix(bracket + 2);
  return json_parse_error_text(text);
}

void check_arguments(const Command& command, const Json& arguments) {
  for (const Param& param : command.params) {
    auto it = arguments.find(param.name);
    if (it == arguments.end()) {
      if (param.optional) continue;
      throw CommandError(fmt::format("Parameter '{}' is missing", param.name));
    }
    if (!matches_type(*it, param.type)) throw_bad_type(param.name, param.type);
  }
  for (const auto& [key, value] : arguments.items()) {
    bool known = false;
    for (const Param& param : command.params) known = known || param.name == key;
    if (!known) throw CommandError(fmt::format("Parameter '{}' is unexpected", key));
  }
}

}  // namespace

std::string Dispatcher::dispatch(std::string_view text) {
  Json value;
  try {
    value = Json::parse(text.begin(), text.end());
  } catch (const Json::exception& error) {
    return format_error(kGenericError, short_parse_error(error), std::nullopt);
  }
  return dispatch_value(value);
}

std::string Dispatcher::dispatch_value(const Json& value) {
  std::optional<Json> id;
  try {
    Request request = parse_request(value, id);
    auto it = commands_.find(request.execute);
    if (it == commands_.end()) {
      throw CommandError(fmt::format("The command {} has not been found", request.execute), kCommandNotFound);
    }
    const Entry& entry = it->second;
    if (!entry.enabled) throw CommandError(entry.disabled_message, entry.disabled_class);
    if (request.out_of_band) {
      throw CommandError(fmt::format("The command {} does not support OOB", request.execute));
    }
    if (gate_) {
      if (auto refusal = gate_(request.execute)) throw *refusal;
    }
    check_arguments(entry.command, request.arguments);
    Json result = entry.command.handler(request.arguments);
    if (!entry.command.success_response) return {};
    return entry.command.reply_prefix + format_return(result, id);
  } catch (const CommandError& error) {
    return format_error(error.error_class(), error.what(), id);
  } catch (const kiln::Error& error) {
    return format_error(kGenericError, error.what(), id);
  } catch (const Json::exception& error) {
    return format_error(kGenericError, error.what(), id);
  }
}

}  // namespace kiln::qmp
