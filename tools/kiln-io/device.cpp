#include "device.h"

#include <cstdio>

#include "kiln/block/snapshot_overlay.h"
#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "output.h"

namespace kiln::io {
namespace {

// Runs `operation`, turning a kiln::Error into its negative errno.
template <typename Operation>
int errno_of(Operation&& operation) {
  try {
    operation();
    return 0;
  } catch (const Error& error) {
    return error.errno_value() != 0 ? -error.errno_value() : -EIO;
  }
}

// --image-opts strings: driver=..., file.filename=... (or filename=...).
void apply_image_opts(DeviceOptions& options) {
  std::string filename;
  KeyValueList rest;
  for (auto& [key, value] : parse_key_value_list(options.filename)) {
    if (key == "driver") {
      options.open.format = value;
    } else if (key == "file.filename" || key == "filename") {
      filename = value;
    } else if (key == "file.driver") {
      if (value != "file") throw invalid_argument("Unknown protocol driver '{}'", value);
    } else if (key == "read-only") {
      options.open.read_only = value == "on" || value == "true";
    } else if (key == "force-share") {
      options.open.force_share = value == "on" || value == "true";
    } else if (key == "cache.direct") {
      if (value == "on" || value == "true") options.open.cache = block::CacheMode::None;
    } else if (key == "file.locking") {
      options.open.locking = !(value == "off" || value == "false");
    } else {
      rest.emplace_back(key, value);
    }
  }
  if (filename.empty()) throw invalid_argument("A block device must be specified for \"file\"");
  options.filename = filename;
  options.open.driver_options = std::move(rest);
}

}  // namespace

Device::Device(DeviceOptions options, std::unique_ptr<block::Image> image, std::unique_ptr<block::Node> overlay)
    : options_(std::move(options)), image_(std::move(image)), overlay_(std::move(overlay)) {
  top_ = overlay_ ? overlay_.get() : &image_->top();
}

std::unique_ptr<Device> Device::open(const DeviceOptions& requested) {
  DeviceOptions options = requested;
  if (options.image_opts) apply_image_opts(options);
  if (!options.open.format.empty() && block::find_format(options.open.format) == nullptr) {
    throw invalid_argument("Unknown driver '{}'", options.open.format);
  }
  if (options.native_aio && options.open.cache != block::CacheMode::None && options.open.cache != block::CacheMode::Directsync) {
    throw invalid_argument("aio=native was specified, but it requires cache.direct=on, which was not specified.");
  }
  // The base of a snapshot overlay is only read, as qemu opens it.
  const bool writable_base = !options.open.read_only && !options.snapshot;
  if (options.open.force_share && writable_base) {
    throw invalid_argument("force-share=on can only be used with read-only images");
  }
  block::OpenOptions open = options.open;
  open.read_only = !writable_base;
  // The block layer's own probing warning is replaced by qemu-io's wording below.
  const auto saved_level = log::level();
  if (open.format.empty() && saved_level < log::Level::Error) log::set_level(log::Level::Error);
  std::unique_ptr<block::Image> image;
  try {
    image = block::Image::open(options.filename, open);
  } catch (...) {
    log::set_level(saved_level);
    throw;
  }
  log::set_level(saved_level);
  if (options.open.format.empty() && writable_base && image->format() == "raw") {
    err(fmt::format("WARNING: Image format was not specified for '{}' and probing guessed raw.\n"
                    "         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be "
                    "restricted.\n"
                    "         Specify the 'raw' format explicitly to remove the restrictions.\n",
                    options.filename));
  }
  if (options.copy_on_read && image->top().backing_child() != nullptr) {
    throw Error(ENOTSUP, "copy-on-read (-C) of images with a backing file is not supported yet");
  }
  std::unique_ptr<block::Node> overlay;
  if (options.snapshot) {
    block::SnapshotOverlayOptions overlay_options;
    overlay_options.read_only = options.open.read_only;
    overlay = block::create_snapshot_overlay(image->top(), overlay_options);
  }
  return std::unique_ptr<Device>(new Device(std::move(options), std::move(image), std::move(overlay)));
}

std::string Device::format() const { return std::string(image_->format()); }

int Device::check_range(uint64_t offset, uint64_t length) const {
  const uint64_t size = top_->size();
  if (offset > size || length > size - offset) return -EIO;
  return 0;
}

int Device::read(uint64_t offset, std::span<std::byte> buffer) {
  if (int r = check_range(offset, buffer.size()); r < 0) return r;
  if (buffer.empty()) return 0;
  return errno_of([&] { top_->read(offset, buffer); });
}

int Device::write(uint64_t offset, std::span<const std::byte> data, bool fua) {
  if (int r = check_range(offset, data.size()); r < 0) return r;
  if (read_only()) return -EPERM;
  if (data.empty()) return 0;
  return errno_of([&] { top_->write(offset, data, {.fua = fua}); });
}

int Device::write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, bool no_fallback, bool fua) {
  if (int r = check_range(offset, length); r < 0) return r;
  if (read_only()) return -EPERM;
  if (length == 0) return 0;
  return errno_of([&] {
    top_->write_zeroes(offset, length, {.may_unmap = may_unmap, .no_fallback = no_fallback});
    if (fua) top_->flush();
  });
}

int Device::write_compressed(uint64_t offset, std::span<const std::byte> data) {
  if (int r = check_range(offset, data.size()); r < 0) return r;
  if (read_only()) return -EPERM;
  if (!top_->supports_compressed_writes()) return -ENOTSUP;
  return errno_of([&] { top_->write_compressed(offset, data); });
}

int Device::discard(uint64_t offset, uint64_t length) {
  if (int r = check_range(offset, length); r < 0) return r;
  if (read_only()) return -EPERM;
  if (length == 0 || options_.discard_ignore) return 0;
  return errno_of([&] { top_->discard(offset, length); });
}

int Device::flush() {
  return errno_of([&] { top_->flush(); });
}

void Device::truncate(uint64_t size, block::Preallocation prealloc) {
  if (read_only()) throw Error(EPERM, "Block node is read-only");
  top_->truncate(size, prealloc, true);
}

}  // namespace kiln::io
