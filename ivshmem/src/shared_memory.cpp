#include "kiln/ivshmem/shared_memory.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <utility>

#include "kiln/common/error.h"

namespace kiln::ivshmem {
namespace {

void resize(int fd, uint64_t size, const std::string& what) {
  struct stat info {};
  if (::fstat(fd, &info) < 0) throw system_error(errno, "cannot stat shared memory '{}'", what);
  if (static_cast<uint64_t>(info.st_size) == size) return;
  if (::ftruncate(fd, static_cast<off_t>(size)) < 0) {
    throw system_error(errno, "cannot resize shared memory '{}' to {} bytes", what, size);
  }
}

}  // namespace

SharedMemoryObject SharedMemoryObject::create_posix(const std::string& name, uint64_t size) {
  if (name.empty()) throw invalid_argument("empty shared memory name");
  int fd = ::shm_open(name.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, S_IRWXU);
  if (fd < 0) throw system_error(errno, "cannot open shared memory '{}'", name);
  SharedMemoryObject object(UniqueFd(fd), size, name, true);
  resize(fd, size, name);  // on failure the destructor unlinks the name again
  return object;
}

SharedMemoryObject SharedMemoryObject::create_in_directory(const std::string& directory, uint64_t size) {
  std::string pattern = directory + "/ivshmem.XXXXXX";
  int fd = ::mkostemp(pattern.data(), O_CLOEXEC);
  if (fd < 0) throw system_error(errno, "cannot create shared memory in '{}'", directory);
  UniqueFd owned(fd);
  ::unlink(pattern.c_str());  // the memory lives as long as a descriptor or mapping does
  struct statfs fs {};
  if (::fstatfs(fd, &fs) == 0 && fs.f_type == HUGETLBFS_MAGIC && fs.f_bsize > 0) {
    auto page = static_cast<uint64_t>(fs.f_bsize);
    size = (size + page - 1) / page * page;
  }
  resize(fd, size, pattern);
  return SharedMemoryObject(std::move(owned), size, pattern, false);
}

SharedMemoryObject::SharedMemoryObject(SharedMemoryObject&& other) noexcept
    : fd_(std::move(other.fd_)),
      size_(other.size_),
      name_(std::move(other.name_)),
      posix_(std::exchange(other.posix_, false)) {}

SharedMemoryObject::~SharedMemoryObject() { unlink(); }

void SharedMemoryObject::unlink() {
  if (posix_) ::shm_unlink(name_.c_str());
  posix_ = false;
}

SharedMapping::SharedMapping(int fd) {
  struct stat info {};
  if (::fstat(fd, &info) < 0) throw system_error(errno, "cannot stat the shared memory");
  if (info.st_size <= 0) throw Error(EINVAL, "the shared memory is empty");
  void* base = ::mmap(nullptr, static_cast<size_t>(info.st_size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) throw system_error(errno, "cannot map {} bytes of shared memory", info.st_size);
  base_ = static_cast<std::byte*>(base);
  size_ = static_cast<size_t>(info.st_size);
}

SharedMapping::SharedMapping(SharedMapping&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SharedMapping& SharedMapping::operator=(SharedMapping&& other) noexcept {
  if (this != &other) {
    reset();
    base_ = std::exchange(other.base_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedMapping::~SharedMapping() { reset(); }

void SharedMapping::reset() {
  if (base_ != nullptr) ::munmap(base_, size_);
  base_ = nullptr;
  size_ = 0;
}

}  // namespace kiln::ivshmem
