#include "kiln/qmp/protocol.h"

#include <fmt/format.h>

namespace kiln::qmp {

namespace {

std::string leaf_text(const Json& value) {
  // ASCII-only output with \u escapes, as QEMU prints; invalid UTF-8 coming
  // from guest data (file names, host names) is replaced, never thrown on.
  return value.dump(-1, ' ', true, Json::error_handler_t::replace);
}

void append_text(const Json& value, std::string& out) {
  if (value.is_object()) {
    if (value.empty()) {
      out += "{}";
      return;
    }
    out += '{';
    bool first = true;
    for (const auto& [key, member] : value.items()) {
      if (!first) out += ", ";
      first = false;
      out += leaf_text(Json(key));
      out += ": ";
      append_text(member, out);
    }
    out += '}';
  } else if (value.is_array()) {
    if (value.empty()) {
      out += "[]";
      return;
    }
    out += '[';
    bool first = true;
    for (const auto& element : value) {
      if (!first) out += ", ";
      first = false;
      append_text(element, out);
    }
    out += ']';
  } else {
    out += leaf_text(value);
  }
}

}  // namespace

std::string to_qmp_text(const Json& value) {
  std::string out;
  append_text(value, out);
  return out;
}

Request parse_request(const Json& value, std::optional<Json>& id) {
  if (!value.is_object()) throw CommandError("QMP input must be a JSON object");
  if (auto it = value.find("id"); it != value.end()) id = *it;
  Request request;
  bool have_execute = false;
  for (const auto& [key, member] : value.items()) {
    if (key == "execute" || key == "exec-oob") {
      if (!member.is_string()) throw CommandError(fmt::format("QMP input member '{}' must be a string", key));
      if (have_execute) throw CommandError("QMP input must not have both 'execute' and 'exec-oob'");
      have_execute = true;
      request.execute = member.get<std::string>();
      request.out_of_band = key == "exec-oob";
    } else if (key == "arguments") {
      if (!member.is_object()) throw CommandError("QMP input member 'arguments' must be an object");
      request.arguments = member;
    } else if (key == "id") {
      request.id = member;
    } else {
      throw CommandError(fmt::format("QMP input member '{}' is unexpected", key));
    }
  }
  if (!have_execute) throw CommandError("QMP input lacks member 'execute'");
  return request;
}

namespace {
// QEMU puts "id" after "return"/"error"; Json objects are sorted, so it is appended by hand.
std::string with_id(std::string text, const std::optional<Json>& id) {
  if (id) {
    text.pop_back();  // the closing brace
    text += ", \"id\": " + to_qmp_text(*id) + "}";
  }
  return text + "\n";
}
}  // namespace

std::string format_return(const Json& value, const std::optional<Json>& id) {
  return with_id(to_qmp_text(Json{{"return", value}}), id);
}

std::string format_error(std::string_view error_class, std::string_view desc,
                         const std::optional<Json>& id) {
  return with_id(to_qmp_text(Json{{"error", {{"class", error_class}, {"desc", desc}}}}), id);
}

std::string format_event(std::string_view name, const Json& data, std::int64_t seconds,
                         std::int64_t microseconds) {
  Json event = {{"event", name}, {"timestamp", {{"seconds", seconds}, {"microseconds", microseconds}}}};
  if (!data.is_null()) event["data"] = data;
  return to_qmp_text(event) + "\n";
}

std::string format_greeting(const Json& version, const Json& capabilities) {
  return to_qmp_text(Json{{"QMP", {{"version", version}, {"capabilities", capabilities}}}}) + "\n";
}

}  // namespace kiln::qmp
