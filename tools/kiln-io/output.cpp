#include "output.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <mutex>

#include <fmt/format.h>

namespace kiln::io {
namespace {
std::mutex output_mutex;
}  // namespace

void out(std::string_view text) {
  std::lock_guard guard(output_mutex);
  std::fwrite(text.data(), 1, text.size(), stdout);
}

void err(std::string_view text) {
  // stdout keeps its stdio buffering, as qemu-io's does, so output captured
  // with 2>&1 interleaves the same way.
  std::lock_guard guard(output_mutex);
  std::fwrite(text.data(), 1, text.size(), stderr);
}

std::string format_bytes(double value) {
  static constexpr struct {
    double scale;
    const char* suffix;
  } kUnits[] = {
      {1152921504606846976.0, " EiB"}, {1125899906842624.0, " PiB"}, {1099511627776.0, " TiB"},
      {1073741824.0, " GiB"},          {1048576.0, " MiB"},          {1024.0, " KiB"},
  };
  std::string text;
  const char* suffix = " bytes";
  bool scaled = false;
  for (const auto& unit : kUnits) {
    if (value >= unit.scale) {
      text = fmt::format("{:.3f}", value / unit.scale);
      suffix = unit.suffix;
      scaled = true;
      break;
    }
  }
  if (!scaled) text = fmt::format("{:f}", value);
  // Whole values drop their decimals: "4.000" -> "4".
  if (auto trim = text.find(".000"); trim != std::string::npos) text.resize(trim);
  return text + suffix;
}

std::string format_elapsed(std::chrono::nanoseconds elapsed, bool fixed) {
  const uint64_t nanoseconds = static_cast<uint64_t>(std::max<int64_t>(elapsed.count(), 0));
  const uint64_t seconds = nanoseconds / 1000000000;
  const unsigned hundredths = static_cast<unsigned>((nanoseconds % 1000000000) / 10000000);
  if (fixed || seconds > 0) {
    return fmt::format("{}:{:02}:{:02}.{:02}", seconds / 3600, (seconds / 60) % 60, seconds % 60, hundredths);
  }
  return fmt::format("{:02}.{:02} sec", seconds % 60, hundredths);
}

std::string format_report(std::string_view operation, std::chrono::nanoseconds elapsed, uint64_t offset, uint64_t count,
                          uint64_t total, int ops, bool machine_readable) {
  double seconds = std::chrono::duration<double>(elapsed).count();
  if (seconds <= 0) seconds = 1e-9;  // a clock that did not tick still gives finite rates
  const double bytes_per_second = static_cast<double>(total) / seconds;
  const double ops_per_second = ops / seconds;
  if (machine_readable) {
    return fmt::format("{},{},{},{:.3f},{:.3f}\n", total, ops, format_elapsed(elapsed, true), bytes_per_second, ops_per_second);
  }
  return fmt::format("{} {}/{} bytes at offset {}\n{}, {} ops; {} ({}/sec and {:.4f} ops/sec)\n", operation, total, count, offset,
                     format_bytes(static_cast<double>(total)), ops, format_elapsed(elapsed, false), format_bytes(bytes_per_second),
                     ops_per_second);
}

std::string format_dump(std::span<const std::byte> data, uint64_t offset) {
  std::string text;
  text.reserve(data.size() / 16 * 80 + 80);
  for (size_t line = 0; line < data.size(); line += 16) {
    const size_t n = std::min<size_t>(16, data.size() - line);
    fmt::format_to(std::back_inserter(text), "{:08x}:  ", offset + line);
    for (size_t i = 0; i < n; ++i) fmt::format_to(std::back_inserter(text), "{:02x} ", static_cast<unsigned>(data[line + i]));
    text += ' ';
    for (size_t i = 0; i < n; ++i) {
      const auto c = static_cast<unsigned char>(data[line + i]);
      text += std::isalnum(c) ? static_cast<char>(c) : '.';
    }
    text += '\n';
  }
  return text;
}

namespace {

int suffix_shift(char c) {
  switch (std::tolower(static_cast<unsigned char>(c))) {
    case 'b': return 0;
    case 'k': return 10;
    case 'm': return 20;
    case 'g': return 30;
    case 't': return 40;
    case 'p': return 50;
    case 'e': return 60;
    default: return -1;
  }
}

}  // namespace

int64_t parse_number(std::string_view text) {
  size_t position = 0;
  const bool hex = text.size() >= 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  uint64_t value = 0;
  bool overflow = false;
  size_t digits = 0;
  if (hex) {
    position = 2;
    while (position < text.size() && std::isxdigit(static_cast<unsigned char>(text[position]))) {
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[position])));
      const unsigned digit = c <= '9' ? static_cast<unsigned>(c - '0') : static_cast<unsigned>(c - 'a' + 10);
      if (value > (std::numeric_limits<uint64_t>::max() >> 4)) overflow = true;
      value = value * 16 + digit;
      ++position;
      ++digits;
    }
  } else {
    while (position < text.size() && std::isdigit(static_cast<unsigned char>(text[position]))) {
      const unsigned digit = static_cast<unsigned>(text[position] - '0');
      if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) overflow = true;
      value = value * 10 + digit;
      ++position;
      ++digits;
    }
  }
  if (digits == 0) return -EINVAL;
  double fraction = 0;
  bool has_fraction = false;
  if (!hex && position < text.size() && text[position] == '.') {
    size_t start = position;
    ++position;
    while (position < text.size() && std::isdigit(static_cast<unsigned char>(text[position]))) ++position;
    fraction = std::strtod(std::string(text.substr(start, position - start)).c_str(), nullptr);
    has_fraction = true;
  } else if (hex && position < text.size() && text[position] == '.') {
    return -EINVAL;
  }
  int shift = 0;
  if (position < text.size()) {
    shift = suffix_shift(text[position]);
    if (shift < 0) return -EINVAL;
    ++position;
    if (hex && shift > 0) {
      err(fmt::format("{}: warning: Using a multiplier suffix on hex numbers is deprecated: {}\n", program_invocation_short_name, text));
    }
  }
  if (position != text.size()) return -EINVAL;
  if (has_fraction && fraction != 0 && shift == 0) return -EINVAL;
  if (overflow) return -ERANGE;
  const uint64_t multiplier = uint64_t{1} << shift;
  const uint64_t fraction_bytes = static_cast<uint64_t>(fraction * static_cast<double>(multiplier));
  if (value > (std::numeric_limits<uint64_t>::max() - fraction_bytes) / multiplier) return -ERANGE;
  const uint64_t result = value * multiplier + fraction_bytes;
  if (result > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return -ERANGE;
  return static_cast<int64_t>(result);
}

void print_number_error(int64_t error, std::string_view text) {
  if (error == -EINVAL) {
    out(fmt::format("Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- {}\n", text));
  } else if (error == -ERANGE) {
    out(fmt::format("Parsing error: argument too large -- {}\n", text));
  } else {
    out(fmt::format("Parsing error: {}\n", text));
  }
}

int parse_pattern(const char* text) {
  char* end = nullptr;
  errno = 0;
  long pattern = std::strtol(text, &end, 0);
  if (pattern < 0 || pattern > 255 || *end != '\0' || errno == ERANGE) {
    out(fmt::format("{} is not a valid pattern byte\n", text));
    return -1;
  }
  return static_cast<int>(pattern);
}

}  // namespace kiln::io
