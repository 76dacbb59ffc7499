// libFuzzer target: the input is a qcow2 image file. Opening, reading,
// block status and check must either work or throw kiln::Error — never
// crash, hang or allocate without bound.
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
  static const std::string path = "/tmp/kiln-fuzz-qcow2-" + std::to_string(::getpid()) + ".img";
  return path;
}

void write_file(const uint8_t* data, size_t size) {
  std::FILE* f = std::fopen(image_path().c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    kiln::log::set_level(kiln::log::Level::Off);
    return true;
  }();
  (void)quiet;
  write_file(data, size);
  kiln::block::OpenOptions options;
  options.format = "qcow2";
  options.read_only = true;
  options.no_backing = true;  // hermetic: never open files named by the input
  options.locking = false;
  try {
    auto image = kiln::block::Image::open(image_path(), options);
    const uint64_t size_bytes = image->size();
    std::vector<std::byte> buffer(4096);
    for (uint64_t offset : {uint64_t{0}, size_bytes / 2, size_bytes > 4096 ? size_bytes - 4096 : 0}) {
      if (offset >= size_bytes) continue;
      const uint64_t length = std::min<uint64_t>(buffer.size(), size_bytes - offset);
      try {
        image->read(offset, std::span(buffer).first(length));
      } catch (const kiln::Error&) {
      }
    }
    for (const auto& bitmap : image->top().dirty_bitmaps()) {
      try {
        for (uint64_t at = 0, i = 0; i < 16 && at < size_bytes; ++i) {
          const auto run = image->top().dirty_bitmap_status(bitmap.name, at, size_bytes - at);
          if (run.length == 0) std::abort();  // must always make progress
          at += run.length;
        }
      } catch (const kiln::Error&) {
      }
    }
    uint64_t offset = 0;
    for (int i = 0; i < 64 && offset < size_bytes; ++i) {
      auto status = image->block_status(offset, size_bytes - offset);
      if (status.length == 0) std::abort();  // must always make progress
      offset += status.length;
    }
    image->top().check(kiln::block::CheckRepair::None);
    image->top().list_snapshots();
    image->top().format_specific_info();
  } catch (const kiln::Error&) {
  }
  return 0;
}
