// QEMU-style option strings: "key=value,key2=value2", where ",," stands for a
// literal comma inside a value. Used for -o, --image-opts and driver options.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln {

using KeyValueList = std::vector<std::pair<std::string, std::string>>;

// Parses an option string. A bare word without '=' becomes {word, ""} so that
// callers can treat "help" and "?" specially. Throws kiln::Error on empty keys.
KeyValueList parse_key_value_list(std::string_view text);

// Quotes a value for printing back in key=value form (commas doubled).
std::string escape_option_value(std::string_view value);

}  // namespace kiln
