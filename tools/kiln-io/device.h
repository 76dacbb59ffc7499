// The image kiln-io works on: an opened kiln::block::Image, optionally under
// a temporary snapshot overlay (-s). Data-path calls return 0 or a negative
// errno like qemu's block layer, because qemu-io's messages are built from
// strerror() of that value.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kiln/block/image.h"
#include "kiln/block/node.h"

namespace kiln::io {

struct DeviceOptions {
  std::string filename;
  block::OpenOptions open;
  bool snapshot = false;
  bool image_opts = false;  // filename is a key=value option string
  bool native_aio = false;  // -i native / -k: needs cache.direct, as in qemu
  bool discard_ignore = false;  // -d ignore|off: discard requests do nothing
  // -C: copy-on-read. Without a backing file reads already come from the image
  // itself, so it changes nothing; with one it is refused (not implemented yet).
  bool copy_on_read = false;
};

class Device {
 public:
  // Throws kiln::Error with the message qemu-io shows after "can't open device X: ".
  static std::unique_ptr<Device> open(const DeviceOptions& options);

  block::Node& node() { return *top_; }
  const DeviceOptions& options() const { return options_; }
  uint64_t size() const { return top_->size(); }
  bool read_only() const { return top_->read_only(); }
  std::string format() const;

  int read(uint64_t offset, std::span<std::byte> buffer);
  int write(uint64_t offset, std::span<const std::byte> data, bool fua);
  int write_zeroes(uint64_t offset, uint64_t length, bool may_unmap, bool no_fallback, bool fua);
  int write_compressed(uint64_t offset, std::span<const std::byte> data);
  int discard(uint64_t offset, uint64_t length);
  int flush();
  // Throws kiln::Error (qemu-io prints truncate failures as error reports).
  void truncate(uint64_t size, block::Preallocation prealloc);

 private:
  Device(DeviceOptions options, std::unique_ptr<block::Image> image, std::unique_ptr<block::Node> overlay);
  // qemu's request check: -EIO for ranges beyond the end.
  int check_range(uint64_t offset, uint64_t length) const;

  DeviceOptions options_;
  std::unique_ptr<block::Image> image_;
  std::unique_ptr<block::Node> overlay_;
  block::Node* top_;
};

}  // namespace kiln::io
