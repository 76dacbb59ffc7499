#include "options.h"

#include <cstring>

#include <fmt/format.h>

#include "output.h"

namespace kiln::io {

bool apply_cache_option(DeviceOptions& options, const char* value) {
  auto mode = block::parse_cache_mode(value);
  if (!mode) {
    err(fmt::format("{}: Invalid cache option: {}\n", program_invocation_short_name, value));
    return false;
  }
  options.open.cache = *mode;
  return true;
}

bool apply_discard_option(DeviceOptions& options, const char* value) {
  if (std::strcmp(value, "ignore") == 0 || std::strcmp(value, "off") == 0) {
    options.discard_ignore = true;
  } else if (std::strcmp(value, "unmap") == 0 || std::strcmp(value, "on") == 0) {
    options.discard_ignore = false;
  } else {
    err(fmt::format("{}: Invalid discard option: {}\n", program_invocation_short_name, value));
    return false;
  }
  return true;
}

// Requests always run on worker threads; the modes are accepted for
// compatibility, and native keeps qemu's cache.direct requirement.
bool apply_aio_option(DeviceOptions& options, const char* value) {
  if (std::strcmp(value, "native") == 0) {
    options.native_aio = true;
  } else if (std::strcmp(value, "threads") == 0 || std::strcmp(value, "io_uring") == 0) {
    options.native_aio = false;
  } else {
    err(fmt::format("{}: Invalid aio option: {}\n", program_invocation_short_name, value));
    return false;
  }
  return true;
}

}  // namespace kiln::io
