// libFuzzer target: the input is a VDI image file. Opening, reading, block
// status and check must either work or throw kiln::Error — never crash, hang
// or allocate without bound. Small images are also repaired, after which a
// second check must come out clean and writes must read back.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kiln/block/image.h"
#include "kiln/common/error.h"
#include "kiln/common/log.h"

namespace {

const std::string& image_path() {
  static const std::string path = "/tmp/kiln-fuzz-vdi-" + std::to_string(::getpid()) + ".vdi";
  return path;
}

void write_file(const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(image_path().c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

kiln::block::OpenOptions options(bool read_only) {
  kiln::block::OpenOptions o;
  o.format = "vdi";
  o.read_only = read_only;
  o.locking = false;
  return o;
}

// Blocks in the image per its header (0 when too short to say).
uint32_t blocks_in_image(const uint8_t* data, size_t size) {
  if (size < 0x184) return 0;
  return static_cast<uint32_t>(data[0x180]) | static_cast<uint32_t>(data[0x181]) << 8 | static_cast<uint32_t>(data[0x182]) << 16 |
         static_cast<uint32_t>(data[0x183]) << 24;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    kiln::log::set_level(kiln::log::Level::Off);
    return true;
  }();
  (void)quiet;
  write_file(data, size);
  try {
    auto image = kiln::block::Image::open(image_path(), options(true));
    const uint64_t size_bytes = image->size();
    std::vector<std::byte> buffer(4096);
    for (uint64_t offset : {uint64_t{0}, size_bytes / 2, size_bytes > 4096 ? size_bytes - 4096 : 0}) {
      if (offset >= size_bytes) continue;
      const uint64_t length = std::min<uint64_t>(buffer.size(), size_bytes - offset);
      image->read(offset, std::span(buffer).first(length));
    }
    uint64_t offset = 0;
    for (int i = 0; i < 64 && offset < size_bytes; ++i) {
      auto status = image->block_status(offset, size_bytes - offset);
      if (status.length == 0) std::abort();  // must always make progress
      offset += status.length;
    }
    image->top().check(kiln::block::CheckRepair::None);
  } catch (const kiln::Error&) {
    return 0;
  }
  // Repairing copies whole 1 MiB blocks: only for small images.
  if (blocks_in_image(data, size) > 16) return 0;
  try {
    auto image = kiln::block::Image::open(image_path(), options(false));
    image->top().check(kiln::block::CheckRepair::All);
    if (image->top().check(kiln::block::CheckRepair::None).corruptions != 0) std::abort();
    if (image->size() >= 4096) {
      std::vector<std::byte> written(4096, std::byte{0x5a}), read_back(4096);
      image->write(image->size() - 4096, written);
      image->read(image->size() - 4096, read_back);
      if (read_back != written) std::abort();
      if (image->top().check(kiln::block::CheckRepair::None).corruptions != 0) std::abort();
    }
  } catch (const kiln::Error&) {
  }
  return 0;
}
