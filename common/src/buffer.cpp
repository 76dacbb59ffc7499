#include "kiln/common/buffer.h"

#include <cstring>
#include <new>

namespace kiln {

AlignedBuffer::AlignedBuffer(size_t size) : size_(size) {
  size_t rounded = (size + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded == 0) rounded = kAlignment;
  void* memory = std::aligned_alloc(kAlignment, rounded);
  if (memory == nullptr) throw std::bad_alloc();
  storage_.reset(static_cast<std::byte*>(memory));
}

bool is_zero(std::span<const std::byte> data) {
  const std::byte* p = data.data();
  size_t n = data.size();
  // Check the head byte-wise up to 8-byte alignment, then 64 bytes per step
  // with OR-reduction (vectorised), then the tail.
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0) {
    if (*p != std::byte{0}) return false;
    ++p;
    --n;
  }
  while (n >= 64) {
    uint64_t words[8];
    std::memcpy(words, p, 64);
    uint64_t accumulated = 0;
    for (uint64_t word : words) accumulated |= word;
    if (accumulated != 0) return false;
    p += 64;
    n -= 64;
  }
  while (n > 0) {
    if (*p != std::byte{0}) return false;
    ++p;
    --n;
  }
  return true;
}

}  // namespace kiln
