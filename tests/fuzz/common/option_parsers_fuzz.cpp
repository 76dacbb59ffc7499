// Fuzzes the parsers of command-line text: sizes and key=value option lists.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "kiln/common/error.h"
#include "kiln/common/key_value.h"
#include "kiln/common/size.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  if (auto parsed = kiln::parse_size(text)) {
    (void)kiln::format_size_iec(*parsed);
  }
  try {
    for (const auto& [key, value] : kiln::parse_key_value_list(text)) {
      (void)kiln::escape_option_value(value);
      if (key.empty()) __builtin_trap();  // the parser never yields an empty key
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
