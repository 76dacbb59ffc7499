// QMP messages (reference: qmp-spec.txt): the greeting, command requests,
// success and error responses and events, formatted as QEMU prints them.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kiln::qmp {

using Json = nlohmann::json;

// QMP error classes used on the wire.
inline constexpr std::string_view kGenericError = "GenericError";
inline constexpr std::string_view kCommandNotFound = "CommandNotFound";

// An error to report to the client as {"error": {"class": ..., "desc": ...}}.
class CommandError : public std::runtime_error {
 public:
  explicit CommandError(std::string desc, std::string_view error_class = kGenericError)
      : std::runtime_error(std::move(desc)), error_class_(error_class) {}
  const std::string& error_class() const { return error_class_; }

 private:
  std::string error_class_;
};

struct Request {
  std::string execute;
  Json arguments = Json::object();
  std::optional<Json> id;  // echoed back in the response when present
  bool out_of_band = false;
};

// Validates a parsed JSON value as a QMP request. Throws CommandError with
// QEMU's texts ("QMP input must be a JSON object", ...); `id` is still
// filled in when the value has one so the error can carry it.
Request parse_request(const Json& value, std::optional<Json>& id);

// Serialises JSON with QEMU's separators ("key": value, ...), one line.
std::string to_qmp_text(const Json& value);

// Response lines, each ending in "\n".
std::string format_return(const Json& value, const std::optional<Json>& id);
std::string format_error(std::string_view error_class, std::string_view desc,
                         const std::optional<Json>& id);
std::string format_event(std::string_view name, const Json& data, std::int64_t seconds,
                         std::int64_t microseconds);
std::string format_greeting(const Json& version, const Json& capabilities);

}  // namespace kiln::qmp
