// The shared memory object: created by the server (POSIX shm or a file in a
// directory such as a hugetlbfs mount) and mapped by clients.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "kiln/common/fd.h"

namespace kiln::ivshmem {

// Server-side owner of the memory object. A POSIX object is unlinked when the
// owner is destroyed; a file in a directory is unlinked right after creation.
class SharedMemoryObject {
 public:
  // shm_open(name) creating it if needed, sized to `size` bytes.
  static SharedMemoryObject create_posix(const std::string& name, uint64_t size);
  // An anonymous file under `directory` (rounded up to the huge page size on hugetlbfs).
  static SharedMemoryObject create_in_directory(const std::string& directory, uint64_t size);

  SharedMemoryObject(SharedMemoryObject&& other) noexcept;
  SharedMemoryObject& operator=(SharedMemoryObject&&) = delete;
  ~SharedMemoryObject();

  int fd() const { return fd_.get(); }
  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  // Removes the POSIX name now (idempotent); the memory lives while mapped or open.
  void unlink();

 private:
  SharedMemoryObject(UniqueFd fd, uint64_t size, std::string name, bool posix)
      : fd_(std::move(fd)), size_(size), name_(std::move(name)), posix_(posix) {}

  UniqueFd fd_;
  uint64_t size_ = 0;
  std::string name_;
  bool posix_ = false;
};

// A read-write MAP_SHARED mapping of a whole memory object.
class SharedMapping {
 public:
  SharedMapping() = default;
  // Maps the object behind `fd`, sized by fstat. Throws kiln::Error.
  explicit SharedMapping(int fd);
  SharedMapping(SharedMapping&& other) noexcept;
  SharedMapping& operator=(SharedMapping&& other) noexcept;
  ~SharedMapping();

  std::span<std::byte> bytes() const { return {base_, size_}; }
  size_t size() const { return size_; }

 private:
  void reset();
  std::byte* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace kiln::ivshmem
