// zlib-format (RFC 1950) deflate of stream-optimized grains, via libdeflate
// with one (de)compressor per thread.
#pragma once

#include <cstddef>
#include <optional>
#include <span>

namespace kiln::block::vmdk {

size_t zlib_compress_bound(size_t input_bytes);
// Compresses `in` into `out` (at least zlib_compress_bound bytes); returns the size.
size_t zlib_compress(std::span<const std::byte> in, std::span<std::byte> out);
// Decompresses one zlib stream (trailing padding ignored) into `out`; returns
// the bytes produced, or nothing when the data is invalid or does not fit.
std::optional<size_t> zlib_decompress(std::span<const std::byte> in, std::span<std::byte> out);

}  // namespace kiln::block::vmdk
