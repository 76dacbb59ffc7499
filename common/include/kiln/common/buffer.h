// Aligned I/O buffers (O_DIRECT needs them) and fast zero detection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>

namespace kiln {

// Page-aligned heap buffer, sized once; reused across requests on hot paths.
class AlignedBuffer {
 public:
  static constexpr size_t kAlignment = 4096;

  AlignedBuffer() = default;
  explicit AlignedBuffer(size_t size);

  std::byte* data() { return storage_.get(); }
  const std::byte* data() const { return storage_.get(); }
  size_t size() const { return size_; }
  std::span<std::byte> span() { return {storage_.get(), size_}; }
  std::span<const std::byte> span() const { return {storage_.get(), size_}; }

 private:
  struct FreeDeleter {
    void operator()(std::byte* pointer) const { std::free(pointer); }
  };
  std::unique_ptr<std::byte[], FreeDeleter> storage_;
  size_t size_ = 0;
};

// True when every byte is zero. Word-at-a-time; the compiler vectorises it.
bool is_zero(std::span<const std::byte> data);

}  // namespace kiln
