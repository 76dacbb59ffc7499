// A small reader for QAPI schema files (JSON with '#' comments and single
// quotes) and a checker that validates a QMP reply against a command's
// declared return type. Used to test kiln-ga against qga-qapi-schema.json.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace kiln::test {

class QapiSchema {
 public:
  // Throws std::runtime_error when the file cannot be read or parsed.
  static QapiSchema load(const std::string& path);

  std::vector<std::string> command_names() const;
  bool has_command(const std::string& name) const { return commands_.count(name) != 0; }
  const nlohmann::json& command(const std::string& name) const { return commands_.at(name); }

  // Empty when `reply_value` (the "return" member) matches the command's
  // 'returns' type (or {} for commands without one); otherwise the problems.
  std::vector<std::string> check_return(const std::string& command, const nlohmann::json& reply_value) const;
  // Same for any type expression ("int", ["T"], "GuestOSInfo").
  void check_type(const nlohmann::json& type, const nlohmann::json& value, const std::string& where,
                  std::vector<std::string>& problems) const;

 private:
  void check_members(const nlohmann::json& members, const nlohmann::json& value, const std::string& where,
                     std::vector<std::string>& problems, std::vector<std::string>& known) const;

  std::map<std::string, nlohmann::json> commands_;
  std::map<std::string, nlohmann::json> types_;  // struct, enum, alternate, union definitions
};

}  // namespace kiln::test
