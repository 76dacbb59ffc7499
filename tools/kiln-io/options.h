// Option values shared by the program options and the `open` command.
#pragma once

#include "commands.h"
#include "device.h"

namespace kiln::io {

// qemu-io opens images with cache=writethrough unless told otherwise.
inline constexpr block::CacheMode kDefaultCacheMode = block::CacheMode::Writethrough;

// Each prints qemu-io's error and returns false for an unknown value.
bool apply_cache_option(DeviceOptions& options, const char* value);
bool apply_discard_option(DeviceOptions& options, const char* value);
bool apply_aio_option(DeviceOptions& options, const char* value);

// Opens the image into `state` or prints "can't open device ..." (negative errno).
int open_device(IoState& state, const DeviceOptions& options);

}  // namespace kiln::io
