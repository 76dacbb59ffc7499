#include "kiln/common/key_value.h"

#include "kiln/common/error.h"

namespace kiln {

KeyValueList parse_key_value_list(std::string_view text) {
  KeyValueList result;
  size_t position = 0;
  while (position <= text.size()) {
    std::string key;
    std::string value;
    bool has_value = false;
    // Key runs to '=' or ','.
    while (position < text.size() && text[position] != '=' && text[position] != ',') {
      key += text[position++];
    }
    if (position < text.size() && text[position] == '=') {
      has_value = true;
      ++position;
      while (position < text.size()) {
        if (text[position] == ',') {
          if (position + 1 < text.size() && text[position + 1] == ',') {
            value += ',';
            position += 2;
            continue;
          }
          break;
        }
        value += text[position++];
      }
    }
    if (key.empty()) {
      if (has_value || position < text.size()) throw invalid_argument("Invalid option string '{}': empty parameter name", text);
    } else {
      result.emplace_back(std::move(key), std::move(value));
    }
    ++position;  // skip the separating comma (or step past the end)
  }
  return result;
}

std::string escape_option_value(std::string_view value) {
  std::string escaped;
  for (char c : value) {
    escaped += c;
    if (c == ',') escaped += ',';
  }
  return escaped;
}

}  // namespace kiln
