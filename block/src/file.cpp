// The file protocol: a regular file or block device accessed with
// pread/pwrite. Requests are independent system calls, so any number of
// threads may use one node at once. With cache=none (O_DIRECT) requests that
// are not aligned go through an aligned bounce buffer, with read-modify-write
// serialised per aligned range so concurrent writers never clobber each other.
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "kiln/block/protocol.h"
#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "nbd/nbd_client.h"

namespace kiln::block {
namespace {

// qemu's image locking: one byte per permission at 100 + bit ("I use it")
// and at 200 + bit ("I do not share it"), held as shared OFD locks.
constexpr off_t kLockPermBase = 100;
constexpr off_t kLockSharedBase = 200;
constexpr unsigned kPermissionCount = 4;
constexpr const char* kPermissionNames[kPermissionCount] = {"consistent read", "write", "write unchanged", "resize"};


int lock_byte(int fd, off_t offset, short type, int command) {
  struct flock lock {};
  lock.l_type = type;
  lock.l_whence = SEEK_SET;
  lock.l_start = offset;
  lock.l_len = 1;
  lock.l_pid = 0;
  if (fcntl(fd, command, &lock) == -1) return -errno;
  if (command == F_OFD_GETLK) return lock.l_type == F_UNLCK ? 0 : -EAGAIN;
  return 0;
}

// Takes the lock bytes for (perm, shared) and checks nobody conflicts, as qemu does.
void apply_image_lock(int fd, const std::string& filename, unsigned perm, unsigned shared) {
  for (unsigned i = 0; i < kPermissionCount; ++i) {
    if (perm & (1u << i)) {
      if (int r = lock_byte(fd, kLockPermBase + i, F_RDLCK, F_OFD_SETLK); r < 0) {
        throw Error(-r, fmt::format("Could not open '{}': Failed to lock byte {}", filename, kLockPermBase + i));
      }
    }
    if (!(shared & (1u << i))) {
      if (int r = lock_byte(fd, kLockSharedBase + i, F_RDLCK, F_OFD_SETLK); r < 0) {
        throw Error(-r, fmt::format("Could not open '{}': Failed to lock byte {}", filename, kLockSharedBase + i));
      }
    }
  }
  for (unsigned i = 0; i < kPermissionCount; ++i) {
    if ((perm & (1u << i)) && lock_byte(fd, kLockSharedBase + i, F_WRLCK, F_OFD_GETLK) < 0) {
      throw Error(EAGAIN, fmt::format("Could not open '{}': Failed to get \"{}\" lock (is another process using the image?)",
                                      filename, kPermissionNames[i]));
    }
    if (!(shared & (1u << i)) && lock_byte(fd, kLockPermBase + i, F_WRLCK, F_OFD_GETLK) < 0) {
      throw Error(EAGAIN, fmt::format("Could not open '{}': Failed to get shared \"{}\" lock (is another process using the image?)",
                                      filename, kPermissionNames[i]));
    }
  }
}

// Serialises read-modify-write cycles on overlapping aligned ranges.
class RangeLocks {
 public:
  void lock(uint64_t begin, uint64_t end) {
    std::unique_lock guard(mutex_);
    released_.wait(guard, [&] { return !overlaps(begin, end); });
    held_.push_back({begin, end});
  }
  void unlock(uint64_t begin, uint64_t end) {
    {
      std::lock_guard guard(mutex_);
      auto it = std::find(held_.begin(), held_.end(), std::pair{begin, end});
      held_.erase(it);
    }
    released_.notify_all();
  }

 private:
  bool overlaps(uint64_t begin, uint64_t end) const {
    return std::any_of(held_.begin(), held_.end(), [&](auto& range) { return range.first < end && begin < range.second; });
  }
  std::mutex mutex_;
  std::condition_variable released_;
  std::vector<std::pair<uint64_t, uint64_t>> held_;
};

class FileNode final : public Node {
 public:
  FileNode(std::string filename, UniqueFd fd, const ProtocolOptions& options)
      : filename_(std::move(filename)), fd_(std::move(fd)), options_(options) {
    struct stat st {};
    if (fstat(fd_.get(), &st) == -1) throw system_error(errno, "Could not open '{}'", filename_);
    is_block_device_ = S_ISBLK(st.st_mode);
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (is_block_device_ && ioctl(fd_.get(), BLKGETSIZE64, &size) == -1) {
      throw system_error(errno, "Could not open '{}'", filename_);
    }
    size_ = size;
    direct_ = options.cache == CacheMode::None || options.cache == CacheMode::Directsync;
    if (direct_) alignment_ = probe_alignment();
  }

  std::string_view driver_name() const override { return "file"; }
  const std::string& filename() const override { return filename_; }
  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  bool read_only() const override { return options_.read_only; }
  uint32_t request_alignment() const override { return alignment_; }

  void read(uint64_t offset, std::span<std::byte> buffer) override {
    if (direct_ && !aligned(offset, buffer.data(), buffer.size())) return bounce_read(offset, buffer);
    pread_full(offset, buffer);
  }

  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override {
    check_writable();
    if (direct_ && !aligned(offset, data.data(), data.size())) {
      bounce_write(offset, data);
    } else {
      pwrite_full(offset, data);
    }
    grow_size(offset + data.size());
    if (flags.fua) flush();
  }

  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) override {
    check_writable();
    if (length == 0) return;
    ForgetDataRunAfter forget{*this};
    const bool inside = offset + length <= size();
    if (flags.may_unmap && inside && !is_block_device_ &&
        fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(length)) == 0) {
      return;
    }
    if (!is_block_device_ && fallocate(fd_.get(), FALLOC_FL_ZERO_RANGE, static_cast<off_t>(offset), static_cast<off_t>(length)) == 0) {
      grow_size(offset + length);
      return;
    }
    if (is_block_device_) {
      uint64_t range[2] = {offset, length};
      if (ioctl(fd_.get(), BLKZEROOUT, range) == 0) return;
    }
    Node::write_zeroes(offset, length, flags);
  }

  void discard(uint64_t offset, uint64_t length) override {
    check_writable();
    if (length == 0) return;
    ForgetDataRunAfter forget{*this};
    if (is_block_device_) {
      uint64_t range[2] = {offset, length};
      ioctl(fd_.get(), BLKDISCARD, range);  // advisory: failure is not an error
      return;
    }
    fallocate(fd_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(length));
  }

  void flush() override {
    if (options_.cache == CacheMode::Unsafe || options_.read_only) return;
    if (fdatasync(fd_.get()) == -1) throw system_error(errno, "Could not flush '{}'", filename_);
  }

  void truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink) override {
    check_writable();
    ForgetDataRunAfter forget{*this};
    const uint64_t old_size = size();
    if (new_size < old_size && !allow_shrink) {
      throw Error(EINVAL, fmt::format("Could not resize '{}': shrinking needs --shrink", filename_));
    }
    if (is_block_device_) {
      if (new_size > old_size) throw Error(EINVAL, fmt::format("Cannot grow device files ('{}')", filename_));
      return;
    }
    if (prealloc == Preallocation::Metadata) {
      throw Error(ENOTSUP, fmt::format("Unsupported preallocation mode '{}'", to_string(prealloc)));
    }
    if (ftruncate(fd_.get(), static_cast<off_t>(new_size)) == -1) {
      throw system_error(errno, "Could not resize file '{}'", filename_);
    }
    size_ = new_size;
    if (new_size <= old_size) return;
    if (prealloc == Preallocation::Falloc) {
      if (int r = posix_fallocate(fd_.get(), static_cast<off_t>(old_size), static_cast<off_t>(new_size - old_size)); r != 0) {
        throw system_error(r, "Could not preallocate new data in '{}'", filename_);
      }
    } else if (prealloc == Preallocation::Full) {
      Node::write_zeroes(old_size, new_size - old_size, {});
    }
  }

  BlockStatus block_status(uint64_t offset, uint64_t length) override {
    BlockStatus status;
    status.flags = kStatusAllocated | kStatusOffsetValid;
    status.host_offset = offset;
    status.host_file = filename_;
    const uint64_t end = offset + length;
    if (is_block_device_) {
      status.flags |= kStatusData;
      status.length = length;
      return status;
    }
    const auto [run_end, generation] = known_data_end(offset);
    if (run_end > offset) {
      status.flags |= kStatusData;
      status.length = std::min(run_end, end) - offset;
      return status;
    }
    off_t data = lseek(fd_.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (data == -1) {
      if (errno == ENXIO) {  // no data after offset: a hole to the end
        status.flags |= kStatusZero;
        status.length = length;
        return status;
      }
      // SEEK_DATA unsupported: everything is data.
      status.flags |= kStatusData;
      status.length = length;
      return status;
    }
    if (static_cast<uint64_t>(data) > offset) {
      status.flags |= kStatusZero;
      status.length = std::min<uint64_t>(static_cast<uint64_t>(data), end) - offset;
      return status;
    }
    off_t hole = lseek(fd_.get(), static_cast<off_t>(offset), SEEK_HOLE);
    uint64_t data_end = hole == -1 ? end : std::min<uint64_t>(static_cast<uint64_t>(hole), end);
    if (hole != -1) remember_data_run(generation, offset, static_cast<uint64_t>(hole));
    status.flags |= kStatusData;
    status.length = data_end > offset ? data_end - offset : length;
    return status;
  }

  std::optional<HostExtent> host_extent(uint64_t offset, uint64_t length) override {
    // O_DIRECT files cannot be spliced at arbitrary offsets.
    const uint64_t size = size_.load(std::memory_order_relaxed);
    if (direct_ || offset >= size || length == 0) return std::nullopt;
    return HostExtent{.fd = fd_.get(), .offset = offset, .length = std::min(length, size - offset)};
  }

  void lock(const LockPermissions& permissions) override {
    apply_image_lock(fd_.get(), filename_, permissions.take, permissions.share);
  }

  int64_t allocated_size() const override {
    struct stat st {};
    if (fstat(fd_.get(), &st) == -1) return -1;
    return static_cast<int64_t>(st.st_blocks) * 512;
  }

 private:
  // The last data run SEEK_DATA/SEEK_HOLE found. Writes never turn data into
  // a hole, so it stays true until a zeroing, discard or truncation through
  // this node, which forget it (changes by other processes are not seen, as
  // with any status answer). Readers walking a data region, such as NBD
  // reads and conversions, save two lseek calls per query.
  struct ForgetDataRunAfter {
    FileNode& node;
    ~ForgetDataRunAfter() {
      std::lock_guard lock(node.data_run_mutex_);
      ++node.data_run_generation_;
      node.data_run_begin_ = node.data_run_end_ = 0;
    }
  };
  // The end of the remembered run holding `offset` (0: none), and the
  // generation to hand remember_data_run() after asking the file instead.
  std::pair<uint64_t, uint64_t> known_data_end(uint64_t offset) {
    std::lock_guard lock(data_run_mutex_);
    return {offset >= data_run_begin_ && offset < data_run_end_ ? data_run_end_ : 0, data_run_generation_};
  }
  // Only if nothing was forgotten since `generation`, read before the lseek calls.
  void remember_data_run(uint64_t generation, uint64_t begin, uint64_t end) {
    std::lock_guard lock(data_run_mutex_);
    if (generation != data_run_generation_) return;
    data_run_begin_ = begin;
    data_run_end_ = end;
  }

  void check_writable() const {
    if (options_.read_only) throw Error(EACCES, fmt::format("'{}' is opened read-only", filename_));
  }

  void grow_size(uint64_t end) {
    uint64_t current = size_.load(std::memory_order_relaxed);
    while (end > current && !size_.compare_exchange_weak(current, end, std::memory_order_relaxed)) {
    }
  }

  bool aligned(uint64_t offset, const void* pointer, size_t length) const {
    return offset % alignment_ == 0 && length % alignment_ == 0 && reinterpret_cast<uintptr_t>(pointer) % alignment_ == 0;
  }

  uint32_t probe_alignment() {
    AlignedBuffer probe(AlignedBuffer::kAlignment);
    for (uint32_t candidate : {512u, 4096u}) {
      if (pread(fd_.get(), probe.data(), candidate, 0) >= 0) return candidate;
    }
    return 4096;
  }

  void pread_full(uint64_t offset, std::span<std::byte> buffer) {
    size_t done = 0;
    while (done < buffer.size()) {
      ssize_t n = pread(fd_.get(), buffer.data() + done, buffer.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "Could not read '{}' at offset {}", filename_, offset + done);
      }
      if (n == 0) {  // past end of file reads as zeroes
        std::memset(buffer.data() + done, 0, buffer.size() - done);
        return;
      }
      done += static_cast<size_t>(n);
    }
  }

  void pwrite_full(uint64_t offset, std::span<const std::byte> data) {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = pwrite(fd_.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "Could not write '{}' at offset {}", filename_, offset + done);
      }
      done += static_cast<size_t>(n);
    }
  }

  void bounce_read(uint64_t offset, std::span<std::byte> buffer) {
    const uint64_t begin = offset / alignment_ * alignment_;
    const uint64_t end = (offset + buffer.size() + alignment_ - 1) / alignment_ * alignment_;
    AlignedBuffer bounce(end - begin);
    pread_full(begin, bounce.span());
    std::memcpy(buffer.data(), bounce.data() + (offset - begin), buffer.size());
  }

  void bounce_write(uint64_t offset, std::span<const std::byte> data) {
    const uint64_t begin = offset / alignment_ * alignment_;
    const uint64_t end = (offset + data.size() + alignment_ - 1) / alignment_ * alignment_;
    AlignedBuffer bounce(end - begin);
    range_locks_.lock(begin, end);
    try {
      // Only the partial head and tail blocks need their old contents.
      if (begin != offset) pread_full(begin, bounce.span().first(alignment_));
      if (end != offset + data.size()) pread_full(end - alignment_, bounce.span().last(alignment_));
      std::memcpy(bounce.data() + (offset - begin), data.data(), data.size());
      pwrite_full(begin, bounce.span());
    } catch (...) {
      range_locks_.unlock(begin, end);
      throw;
    }
    range_locks_.unlock(begin, end);
  }

  std::string filename_;
  UniqueFd fd_;
  ProtocolOptions options_;
  std::atomic<uint64_t> size_{0};
  bool is_block_device_ = false;
  bool direct_ = false;
  uint32_t alignment_ = 1;
  RangeLocks range_locks_;
  std::mutex data_run_mutex_;
  uint64_t data_run_generation_ = 0;
  uint64_t data_run_begin_ = 0;
  uint64_t data_run_end_ = 0;
};

std::unique_ptr<Node> open_file(const std::string& filename, const ProtocolOptions& options) {
  int flags = O_CLOEXEC | (options.read_only ? O_RDONLY : O_RDWR);
  if (options.cache == CacheMode::None || options.cache == CacheMode::Directsync) flags |= O_DIRECT;
  if (options.cache == CacheMode::Directsync || options.cache == CacheMode::Writethrough) flags |= O_DSYNC;
  if (options.create) flags |= O_CREAT | O_TRUNC;
  UniqueFd fd(::open(filename.c_str(), flags, 0644));
  if (!fd.valid()) {
    int err = errno;
    if (err == EINVAL && (flags & O_DIRECT)) {
      throw Error(err, fmt::format("Could not open '{}': cache=none needs O_DIRECT, which the file system refuses", filename));
    }
    throw system_error(err, "Could not open '{}'", filename);
  }
  struct stat st {};
  if (fstat(fd.get(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw Error(EISDIR, fmt::format("Could not open '{}': Is a directory", filename));
  }
  auto node = std::make_unique<FileNode>(filename, std::move(fd), options);
  if (options.locking) node->lock(default_lock_permissions(options.read_only, false, options.force_share));
  return node;
}

}  // namespace

LockPermissions default_lock_permissions(bool read_only, bool share_writes, bool force_share) {
  LockPermissions permissions;
  permissions.take = permission_bit(Permission::ConsistentRead);
  if (!read_only) permissions.take |= permission_bit(Permission::Write) | permission_bit(Permission::Resize);
  permissions.share = permission_bit(Permission::ConsistentRead) | permission_bit(Permission::WriteUnchanged);
  if (read_only && share_writes) permissions.share |= permission_bit(Permission::Write) | permission_bit(Permission::Resize);
  if (force_share) permissions.share = kAllPermissions;
  return permissions;
}

std::unique_ptr<Node> open_protocol(const std::string& filename, const ProtocolOptions& options) {
  if (is_nbd_filename(filename)) {
    if (options.create) throw Error(ENOTSUP, fmt::format("Could not create '{}': the nbd protocol cannot create images", filename));
    return open_nbd(filename, options);
  }
  return open_file(filename, options);
}

}  // namespace kiln::block
