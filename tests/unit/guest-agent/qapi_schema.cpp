#include "qapi_schema.h"

#include <algorithm>
#include <fstream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include "kiln/qmp/stream.h"

namespace kiln::test {

namespace {

// QAPI text to JSON text: drop '#' comments (outside strings) and turn the
// single-quoted strings into double-quoted ones (QAPI strings never contain quotes).
std::string qapi_to_json(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (!in_string && c == '#') {
      while (i < text.size() && text[i] != '\n') ++i;
      out += '\n';
      continue;
    }
    if (c == '\'') {
      in_string = !in_string;
      out += '"';
      continue;
    }
    out += c;
  }
  return out;
}

struct Collector : qmp::StreamSink {
  std::vector<nlohmann::json> expressions;
  void on_message(std::string_view text) override { expressions.push_back(nlohmann::json::parse(text)); }
  void on_stream_error(std::string_view desc) override { throw std::runtime_error(std::string(desc)); }
};

// A member's type: 'T', ['T'] or {'type': 'T', 'if': ...}.
const nlohmann::json& member_type(const nlohmann::json& member) {
  if (member.is_object() && member.contains("type")) return member["type"];
  return member;
}

std::string json_kind(const nlohmann::json& value) { return value.type_name(); }

}  // namespace

QapiSchema QapiSchema::load(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open QAPI schema " + path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  Collector collector;
  qmp::JsonStreamSplitter splitter(qmp::StreamLimits{.max_message_bytes = 1u << 24});
  splitter.feed(qapi_to_json(buffer.str()), collector);
  if (!splitter.idle()) throw std::runtime_error("QAPI schema " + path + " ends inside an expression");
  QapiSchema schema;
  for (auto& expression : collector.expressions) {
    if (expression.contains("command")) {
      schema.commands_[expression["command"].get<std::string>()] = expression;
    } else {
      for (const char* kind : {"struct", "enum", "alternate", "union"}) {
        if (expression.contains(kind)) schema.types_[expression[kind].get<std::string>()] = expression;
      }
    }
  }
  if (schema.commands_.empty()) throw std::runtime_error("QAPI schema " + path + " declares no commands");
  return schema;
}

std::vector<std::string> QapiSchema::command_names() const {
  std::vector<std::string> names;
  for (const auto& [name, expression] : commands_) names.push_back(name);
  return names;
}

std::vector<std::string> QapiSchema::check_return(const std::string& command, const nlohmann::json& value) const {
  std::vector<std::string> problems;
  const nlohmann::json& expression = commands_.at(command);
  if (!expression.contains("returns")) {
    if (value != nlohmann::json::object()) problems.push_back(command + ": expected {} but got " + value.dump());
    return problems;
  }
  check_type(expression["returns"], value, command, problems);
  return problems;
}

void QapiSchema::check_members(const nlohmann::json& members, const nlohmann::json& value, const std::string& where,
                               std::vector<std::string>& problems, std::vector<std::string>& known) const {
  for (const auto& [raw_name, member] : members.items()) {
    bool optional = raw_name.front() == '*';
    std::string name = optional ? raw_name.substr(1) : raw_name;
    known.push_back(name);
    auto it = value.find(name);
    if (it == value.end()) {
      if (!optional) problems.push_back(where + ": missing member '" + name + "'");
      continue;
    }
    check_type(member_type(member), *it, where + "." + name, problems);
  }
}

void QapiSchema::check_type(const nlohmann::json& type, const nlohmann::json& value, const std::string& where,
                            std::vector<std::string>& problems) const {
  auto bad = [&](const std::string& expected) {
    problems.push_back(where + ": expected " + expected + " but got " + json_kind(value) + " " + value.dump());
  };
  if (type.is_array()) {
    if (!value.is_array()) return bad("array");
    for (size_t i = 0; i < value.size(); ++i) check_type(type[0], value[i], where + "[" + std::to_string(i) + "]", problems);
    return;
  }
  const std::string name = type.get<std::string>();
  if (name == "str") {
    if (!value.is_string()) bad("str");
    return;
  }
  if (name == "bool") {
    if (!value.is_boolean()) bad("bool");
    return;
  }
  if (name == "number") {
    if (!value.is_number()) bad("number");
    return;
  }
  if (name == "any") return;
  if (name == "int" || name == "int64" || name == "int32" || name == "int16" || name == "int8") {
    if (!value.is_number_integer()) return bad(name);
    if (value.is_number_unsigned() && value.get<std::uint64_t>() > std::uint64_t(std::numeric_limits<std::int64_t>::max())) bad(name);
    return;
  }
  if (name == "uint64" || name == "uint32" || name == "uint16" || name == "uint8" || name == "size") {
    if (!value.is_number_integer() || (!value.is_number_unsigned() && value.get<std::int64_t>() < 0)) return bad(name);
    std::uint64_t max = name == "uint16" ? 0xffff : name == "uint8" ? 0xff : name == "uint32" ? 0xffffffffu : ~0ull;
    if (value.get<std::uint64_t>() > max) bad(name);
    return;
  }
  auto it = types_.find(name);
  if (it == types_.end()) {
    problems.push_back(where + ": schema type '" + name + "' is unknown");
    return;
  }
  const nlohmann::json& definition = it->second;
  if (definition.contains("enum")) {
    if (!value.is_string()) return bad("enum " + name);
    for (const auto& entry : definition["data"]) {
      const auto& label = entry.is_object() ? entry["name"] : entry;
      if (label == value) return;
    }
    return bad("one of enum " + name);
  }
  if (definition.contains("alternate")) {
    for (const auto& [branch, branch_type] : definition["data"].items()) {
      std::vector<std::string> branch_problems;
      check_type(member_type(branch_type), value, where, branch_problems);
      if (branch_problems.empty()) return;
    }
    return bad("alternate " + name);
  }
  if (!value.is_object()) return bad("object " + name);
  std::vector<std::string> known;
  if (definition.contains("union")) {
    const auto& base = definition["base"];
    const auto& base_members = base.is_string() ? types_.at(base.get<std::string>())["data"] : base;
    check_members(base_members, value, where, problems, known);
    std::string discriminator = definition["discriminator"].get<std::string>();
    auto tag = value.find(discriminator);
    if (tag != value.end() && tag->is_string()) {
      auto branch = definition["data"].find(tag->get<std::string>());
      if (branch != definition["data"].end()) {
        const auto& branch_def = types_.at(member_type(*branch).get<std::string>());
        check_members(branch_def["data"], value, where, problems, known);
      }
    }
  } else {
    if (definition.contains("base")) {
      const auto& base_def = types_.at(definition["base"].get<std::string>());
      check_members(base_def["data"], value, where, problems, known);
    }
    check_members(definition["data"], value, where, problems, known);
  }
  for (const auto& [member, member_value] : value.items()) {
    if (std::find(known.begin(), known.end(), member) == known.end()) {
      problems.push_back(where + ": member '" + member + "' is not in " + name);
    }
  }
}

}  // namespace kiln::test
