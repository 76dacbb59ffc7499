#include "kiln/common/size.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>

namespace kiln {

std::optional<uint64_t> parse_size(std::string_view text, uint64_t default_unit) {
  if (text.empty() || text.front() == '-' || text.front() == '+' || std::isspace(static_cast<unsigned char>(text.front()))) {
    return std::nullopt;
  }
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0) return std::nullopt;
  const std::string integer_part(text.substr(0, digits));
  size_t position = digits;
  std::string fraction_part;
  if (position < text.size() && text[position] == '.') {
    ++position;
    size_t fraction_start = position;
    while (position < text.size() && std::isdigit(static_cast<unsigned char>(text[position]))) ++position;
    fraction_part = std::string(text.substr(fraction_start, position - fraction_start));
    if (fraction_part.empty()) return std::nullopt;
  }
  uint64_t unit = default_unit;
  bool suffixed = false;
  if (position < text.size()) {
    switch (text[position]) {
      case 'b': case 'B': unit = 1; break;
      case 'k': case 'K': unit = 1ULL << 10; break;
      case 'm': case 'M': unit = 1ULL << 20; break;
      case 'g': case 'G': unit = 1ULL << 30; break;
      case 't': case 'T': unit = 1ULL << 40; break;
      case 'p': case 'P': unit = 1ULL << 50; break;
      case 'e': case 'E': unit = 1ULL << 60; break;
      default: return std::nullopt;
    }
    suffixed = true;
    ++position;
  }
  if (position != text.size()) return std::nullopt;
  // A fraction only makes sense with a unit larger than a byte.
  if (!fraction_part.empty() && (!suffixed || unit == 1) && default_unit == 1) return std::nullopt;

  errno = 0;
  char* end = nullptr;
  unsigned long long integer = std::strtoull(integer_part.c_str(), &end, 10);
  if (errno == ERANGE) return std::nullopt;
  if (integer > std::numeric_limits<uint64_t>::max() / unit) return std::nullopt;
  uint64_t result = integer * unit;
  if (!fraction_part.empty()) {
    double fraction = std::strtod(("0." + fraction_part).c_str(), nullptr);
    double extra = std::floor(fraction * static_cast<double>(unit));
    if (static_cast<double>(std::numeric_limits<uint64_t>::max() - result) < extra) return std::nullopt;
    result += static_cast<uint64_t>(extra);
  }
  return result;
}

std::string format_size_iec(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
  // Pick the largest unit that leaves a value below 1000 (so 1000 KiB prints
  // as 0.977 MiB), exactly as qemu-img does.
  int unit = 0;
  double scaled = static_cast<double>(bytes);
  while (unit < 6 && scaled >= 1000.0) {
    scaled /= 1024.0;
    ++unit;
  }
  return fmt::format("{} {}B", fmt::format("{:.3g}", scaled), kUnits[unit]);
}

}  // namespace kiln
