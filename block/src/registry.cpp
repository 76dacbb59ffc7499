// The list of format drivers: one line per format.
#include <algorithm>
#include <array>

#include "kiln/block/driver.h"
#include "kiln/common/error.h"

namespace kiln::block {

const FormatDriver& raw_driver();
const FormatDriver& qcow2_driver();
const FormatDriver& vmdk_driver();
const FormatDriver& vdi_driver();

std::span<const FormatDriver* const> formats() {
  static const std::array<const FormatDriver*, 4> all = {
      &raw_driver(),
      &qcow2_driver(),
      &vmdk_driver(),
      &vdi_driver(),
  };
  return all;
}

const FormatDriver* find_format(std::string_view name) {
  for (const FormatDriver* driver : formats()) {
    if (driver->name() == name) return driver;
  }
  return nullptr;
}

const FormatDriver& probe_format(std::span<const std::byte> header) {
  const FormatDriver* best = &raw_driver();
  int best_score = 0;
  for (const FormatDriver* driver : formats()) {
    int score = driver->probe(header);
    if (score > best_score) {
      best_score = score;
      best = driver;
    }
  }
  return *best;
}

const std::string* CreateOptions::find(std::string_view key) const {
  for (const auto& [name, value] : values) {
    if (name == key) return &value;
  }
  return nullptr;
}

std::string CreateOptions::get(std::string_view key, std::string_view fallback) const {
  const std::string* value = find(key);
  return value ? *value : std::string(fallback);
}

bool CreateOptions::get_bool(std::string_view key, bool fallback) const {
  const std::string* value = find(key);
  if (!value) return fallback;
  if (*value == "on" || *value == "true" || *value == "yes") return true;
  if (*value == "off" || *value == "false" || *value == "no") return false;
  throw invalid_argument("Parameter '{}' expects 'on' or 'off'", key);
}

std::string FormatDriver::creation_summary(const CreateOptions& options) const {
  std::string summary = fmt::format("fmt={} size={}", name(), options.size);
  for (const CreateOptionSpec& spec : create_options()) {
    if (spec.name == "size") continue;
    if (const std::string* value = options.find(spec.name)) summary += fmt::format(" {}={}", spec.name, *value);
  }
  return summary;
}

}  // namespace kiln::block
