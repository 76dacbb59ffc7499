// Command table and dispatch for a QMP server: argument checking against each
// command's declared parameters with QEMU's error texts, enable/disable, and
// the JSON-text-to-response-line path used by the guest agent and the monitor.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/qmp/protocol.h"

namespace kiln::qmp {

enum class ParamType { Int, Uint, Number, Str, Bool, Array, Object, Any };

struct Param {
  std::string name;
  ParamType type;
  bool optional = false;
};

using Handler = std::function<Json(const Json& arguments)>;

struct Command {
  std::string name;
  std::vector<Param> params;
  Handler handler;
  bool success_response = true;  // false: no reply on success (guest-shutdown)
  std::string reply_prefix;      // bytes sent before the reply (0xFF for guest-sync-delimited)
};

// Throws CommandError "Invalid parameter type for 'PATH', expected: TYPE".
[[noreturn]] void throw_bad_type(std::string_view path, ParamType expected);
bool matches_type(const Json& value, ParamType type);
std::string_view type_name(ParamType type);

class Dispatcher {
 public:
  void add(Command command);
  bool has(std::string_view name) const;

  // Disabled commands answer with `message` (a full error) instead of running.
  void disable(std::string_view name, std::string error_class, std::string message);
  void enable(std::string_view name);
  bool enabled(std::string_view name) const;

  // Checked before every command; returns an error to refuse it (e.g. frozen state).
  using Gate = std::function<std::optional<CommandError>(std::string_view name)>;
  void set_gate(Gate gate) { gate_ = std::move(gate); }

  // Handles one JSON text; returns the bytes to send (empty for no reply).
  std::string dispatch(std::string_view text);
  // Same for a request already parsed.
  std::string dispatch_value(const Json& value);

  struct Info {
    std::string name;
    bool enabled;
    bool success_response;
  };
  std::vector<Info> list() const;

 private:
  struct Entry {
    Command command;
    bool enabled = true;
    std::string disabled_class;
    std::string disabled_message;
  };
  std::map<std::string, Entry, std::less<>> commands_;
  Gate gate_;
};

// Text for a parse failure as QEMU reports it ("JSON parse error, ...").
std::string json_parse_error_text(std::string_view detail);

}  // namespace kiln::qmp
