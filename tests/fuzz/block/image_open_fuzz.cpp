// Fuzzes image probing and opening with every format driver: the input is an
// image file's bytes. Opens it (format probed), then walks block status and
// reads a few ranges. Backing files are refused so the fuzzer stays inside
// its input.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kiln/block/image.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kiln::UniqueFd fd(memfd_create("kiln-fuzz-image", MFD_CLOEXEC));
  if (!fd.valid()) return 0;
  if (size > 0 && write(fd.get(), data, size) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  try {
    kiln::block::OpenOptions options;
    options.read_only = true;
    options.no_backing = true;
    options.locking = false;
    auto image = kiln::block::Image::open(path, options);
    const uint64_t image_size = image->size();
    std::vector<std::byte> buffer(65536);
    uint64_t offset = 0;
    for (int steps = 0; offset < image_size && steps < 64; ++steps) {
      auto status = image->block_status(offset, image_size - offset);
      if (status.length == 0) __builtin_trap();  // block status must always make progress
      const uint64_t length = std::min<uint64_t>(status.length, buffer.size());
      image->read(offset, std::span(buffer).first(length));
      offset += status.length;
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
