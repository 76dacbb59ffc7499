#include "vmdk/compress.h"

#include <libdeflate.h>

#include <memory>

#include "kiln/common/error.h"

namespace kiln::block::vmdk {
namespace {

// The level qemu's compress() uses by default.
constexpr int kLevel = 6;

struct Codecs {
  std::unique_ptr<libdeflate_compressor, decltype(&libdeflate_free_compressor)> compressor{libdeflate_alloc_compressor(kLevel),
                                                                                          &libdeflate_free_compressor};
  std::unique_ptr<libdeflate_decompressor, decltype(&libdeflate_free_decompressor)> decompressor{libdeflate_alloc_decompressor(),
                                                                                                &libdeflate_free_decompressor};
};

Codecs& codecs() {
  thread_local Codecs instance;
  if (!instance.compressor || !instance.decompressor) throw Error(ENOMEM, "Could not allocate a deflate context");
  return instance;
}

}  // namespace

size_t zlib_compress_bound(size_t input_bytes) { return libdeflate_zlib_compress_bound(nullptr, input_bytes); }

size_t zlib_compress(std::span<const std::byte> in, std::span<std::byte> out) {
  size_t written = libdeflate_zlib_compress(codecs().compressor.get(), in.data(), in.size(), out.data(), out.size());
  if (written == 0) throw Error(EIO, "deflate output does not fit its buffer");
  return written;
}

std::optional<size_t> zlib_decompress(std::span<const std::byte> in, std::span<std::byte> out) {
  size_t consumed = 0, produced = 0;
  libdeflate_result result =
      libdeflate_zlib_decompress_ex(codecs().decompressor.get(), in.data(), in.size(), out.data(), out.size(), &consumed, &produced);
  if (result != LIBDEFLATE_SUCCESS) return std::nullopt;
  return produced;
}

}  // namespace kiln::block::vmdk
