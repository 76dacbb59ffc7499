// Copy-on-write overlay for snapshot mode. The temporary file mirrors the
// guest address space 1:1 (cluster i lives at i * cluster_size), so no
// mapping table is needed: a bitmap says which clusters the overlay owns and
// the sparse file holds their bytes. Writes to overlapping cluster ranges are
// serialised so a partial-cluster copy-up never races another writer; reads
// take no range lock because the base never changes.
#include "kiln/block/snapshot_overlay.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"

namespace kiln::block {
namespace {

// Exclusive locks on byte ranges; waiters sleep until no held range overlaps.
class RangeLocks {
 public:
  void lock(uint64_t begin, uint64_t end) {
    std::unique_lock guard(mutex_);
    released_.wait(guard, [&] { return !overlaps(begin, end); });
    held_.emplace_back(begin, end);
  }
  void unlock(uint64_t begin, uint64_t end) {
    {
      std::lock_guard guard(mutex_);
      held_.erase(std::find(held_.begin(), held_.end(), std::pair{begin, end}));
    }
    released_.notify_all();
  }

 private:
  bool overlaps(uint64_t begin, uint64_t end) const {
    return std::any_of(held_.begin(), held_.end(), [&](const auto& r) { return r.first < end && begin < r.second; });
  }
  std::mutex mutex_;
  std::condition_variable released_;
  std::vector<std::pair<uint64_t, uint64_t>> held_;
};

class RangeGuard {
 public:
  RangeGuard(RangeLocks& locks, uint64_t begin, uint64_t end) : locks_(locks), begin_(begin), end_(end) { locks_.lock(begin, end); }
  ~RangeGuard() { locks_.unlock(begin_, end_); }
  RangeGuard(const RangeGuard&) = delete;
  RangeGuard& operator=(const RangeGuard&) = delete;

 private:
  RangeLocks& locks_;
  uint64_t begin_, end_;
};

UniqueFd create_temp_file(const std::string& requested_dir) {
  std::string dir = requested_dir;
  if (dir.empty()) {
    const char* tmpdir = std::getenv("TMPDIR");
    dir = tmpdir != nullptr && *tmpdir != '\0' ? tmpdir : "/var/tmp";
  }
  UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (fd.valid()) return fd;
  // File systems without O_TMPFILE: create a named file and unlink it at once.
  std::string pattern = dir + "/kiln-snapshot.XXXXXX";
  fd.reset(::mkostemp(pattern.data(), O_CLOEXEC));
  if (!fd.valid()) throw system_error(errno, "Could not create temporary overlay in '{}'", dir);
  ::unlink(pattern.c_str());
  return fd;
}

class SnapshotOverlay final : public Node {
 public:
  SnapshotOverlay(Node& base, std::unique_ptr<Image> owned_base, const SnapshotOverlayOptions& options)
      : owned_base_(std::move(owned_base)), base_(base), cluster_size_(options.cluster_size), read_only_(options.read_only) {
    if (cluster_size_ < 512 || (cluster_size_ & (cluster_size_ - 1)) != 0) {
      throw invalid_argument("Snapshot overlay cluster size {} is not a power of two of at least 512", cluster_size_);
    }
    temp_ = create_temp_file(options.temp_dir);
    size_ = base_.size();
    resize_bitmap(size_);
    if (ftruncate(temp_.get(), static_cast<off_t>(round_up(size_))) == -1) {
      throw system_error(errno, "Could not size the temporary overlay of '{}'", filename());
    }
  }

  std::string_view driver_name() const override { return "snapshot"; }
  const std::string& filename() const override { return base_.filename(); }
  uint64_t size() const override {
    std::shared_lock guard(bitmap_mutex_);
    return size_;
  }
  bool read_only() const override { return read_only_; }
  uint32_t cluster_size() const override { return cluster_size_; }
  Node* backing_child() const override { return &base_; }
  std::string backing_filename() const override { return base_.filename(); }
  std::string backing_format() const override { return std::string(base_.driver_name()); }

  int64_t allocated_size() const override {
    struct stat st {};
    if (fstat(temp_.get(), &st) == -1) return -1;
    return static_cast<int64_t>(st.st_blocks) * 512;
  }

  void read(uint64_t offset, std::span<std::byte> buffer) override {
    uint64_t done = 0;
    while (done < buffer.size()) {
      const uint64_t position = offset + done;
      auto [allocated, run] = allocation_run(position, buffer.size() - done);
      auto piece = buffer.subspan(done, run);
      if (allocated) {
        pread_full(position, piece);
      } else {
        read_base(position, piece);
      }
      done += run;
    }
  }

  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags) override {
    check_writable();
    if (data.empty()) return;
    const uint64_t end = offset + data.size();
    RangeGuard guard(range_locks_, round_down(offset), round_up(end));
    copy_up_partial_edges(offset, end);
    pwrite_full(offset, data);
    mark_allocated(offset, end);
  }

  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags) override {
    check_writable();
    if (length == 0) return;
    const uint64_t end = offset + length;
    RangeGuard guard(range_locks_, round_down(offset), round_up(end));
    copy_up_partial_edges(offset, end);
    zero_temp(offset, length);
    mark_allocated(offset, end);
  }

  // Whole clusters inside the range become zero clusters of the overlay;
  // partial clusters are left alone (discard is advisory).
  void discard(uint64_t offset, uint64_t length) override {
    check_writable();
    const uint64_t begin = round_up(offset);
    const uint64_t end = round_down(offset + length);
    if (begin >= end) return;
    RangeGuard guard(range_locks_, begin, end);
    zero_temp(begin, end - begin);
    mark_allocated(begin, end);
  }

  // The overlay is thrown away on close, so there is nothing to make durable.
  void flush() override {}

  void truncate(uint64_t new_size, Preallocation, bool allow_shrink) override {
    check_writable();
    RangeGuard guard(range_locks_, 0, UINT64_MAX);
    const uint64_t old_size = size();
    if (new_size < old_size && !allow_shrink) {
      throw Error(EINVAL, fmt::format("Could not resize '{}': shrinking needs --shrink", filename()));
    }
    if (new_size > old_size) {
      // The grown range must read as zeroes, not as whatever the base or an
      // earlier, larger overlay held there.
      if (ftruncate(temp_.get(), static_cast<off_t>(round_up(new_size))) == -1) {
        throw system_error(errno, "Could not resize the temporary overlay of '{}'", filename());
      }
      {
        std::unique_lock lock(bitmap_mutex_);
        resize_bitmap(new_size);
      }
      if (old_size % cluster_size_ != 0 && !is_allocated(old_size / cluster_size_)) copy_up_cluster(old_size / cluster_size_);
      zero_temp(old_size, round_up(new_size) - old_size);
      std::unique_lock lock(bitmap_mutex_);
      set_bits(old_size / cluster_size_, (new_size + cluster_size_ - 1) / cluster_size_);
      size_ = new_size;
      return;
    }
    std::unique_lock lock(bitmap_mutex_);
    size_ = new_size;
    resize_bitmap(new_size);
    if (ftruncate(temp_.get(), static_cast<off_t>(round_up(new_size))) == -1) {
      throw system_error(errno, "Could not resize the temporary overlay of '{}'", filename());
    }
  }

  BlockStatus block_status(uint64_t offset, uint64_t length) override {
    auto [allocated, run] = allocation_run(offset, length);
    BlockStatus status;
    if (!allocated) {
      const uint64_t base_size = base_.size();
      if (offset >= base_size) {
        status.length = run;
        status.flags = kStatusZero;
        return status;
      }
      status = base_.block_status(offset, std::min(run, base_size - offset));
      status.flags &= ~static_cast<uint32_t>(kStatusAllocated);
      return status;
    }
    status.flags = kStatusAllocated;
    status.length = run;
    const off_t data = lseek(temp_.get(), static_cast<off_t>(offset), SEEK_DATA);
    if (data == -1 && errno != ENXIO) {  // no SEEK_DATA: call it all data
      status.flags |= kStatusData;
      return status;
    }
    if (data == -1 || static_cast<uint64_t>(data) >= offset + run) {
      status.flags |= kStatusZero;
      return status;
    }
    if (static_cast<uint64_t>(data) > offset) {
      status.flags |= kStatusZero;
      status.length = static_cast<uint64_t>(data) - offset;
      return status;
    }
    const off_t hole = lseek(temp_.get(), static_cast<off_t>(offset), SEEK_HOLE);
    status.flags |= kStatusData;
    if (hole != -1 && static_cast<uint64_t>(hole) > offset) status.length = std::min<uint64_t>(run, static_cast<uint64_t>(hole) - offset);
    return status;
  }

 private:
  uint64_t round_down(uint64_t value) const { return value / cluster_size_ * cluster_size_; }
  uint64_t round_up(uint64_t value) const {
    return value > UINT64_MAX - cluster_size_ ? UINT64_MAX / cluster_size_ * cluster_size_ : (value + cluster_size_ - 1) / cluster_size_ * cluster_size_;
  }

  void check_writable() const {
    if (read_only_) throw Error(EACCES, fmt::format("Cannot write '{}': the snapshot overlay is read-only", filename()));
  }

  // Caller holds bitmap_mutex_ exclusively (or is the constructor).
  void resize_bitmap(uint64_t size) {
    const uint64_t clusters = (size + cluster_size_ - 1) / cluster_size_;
    const uint64_t old_clusters = clusters_;
    bitmap_.resize((clusters + 63) / 64, 0);
    // Bits past a shrunk end must not survive into a later growth.
    if (clusters < old_clusters && clusters % 64 != 0) bitmap_[clusters / 64] &= (uint64_t{1} << (clusters % 64)) - 1;
    clusters_ = clusters;
  }

  bool bit(uint64_t cluster) const { return (bitmap_[cluster / 64] >> (cluster % 64)) & 1; }
  void set_bits(uint64_t first, uint64_t last) {
    for (uint64_t c = first; c < last && c < clusters_; ++c) bitmap_[c / 64] |= uint64_t{1} << (c % 64);
  }

  bool is_allocated(uint64_t cluster) const {
    std::shared_lock guard(bitmap_mutex_);
    return cluster < clusters_ && bit(cluster);
  }

  // Whether `offset` is in an overlay cluster, and how many bytes (at most
  // `length`) from it share that state.
  std::pair<bool, uint64_t> allocation_run(uint64_t offset, uint64_t length) const {
    std::shared_lock guard(bitmap_mutex_);
    uint64_t cluster = offset / cluster_size_;
    const bool allocated = cluster < clusters_ && bit(cluster);
    const uint64_t end = offset + length;
    uint64_t run_end = (cluster + 1) * cluster_size_;
    while (run_end < end) {
      ++cluster;
      const bool next = cluster < clusters_ && bit(cluster);
      if (next != allocated) break;
      // Skip whole words of identical bits quickly.
      if (cluster % 64 == 0 && cluster / 64 < bitmap_.size() && bitmap_[cluster / 64] == (allocated ? ~uint64_t{0} : 0)) {
        run_end += 64ull * cluster_size_;
        cluster += 63;
        continue;
      }
      run_end += cluster_size_;
    }
    return {allocated, std::min(run_end, end) - offset};
  }

  void mark_allocated(uint64_t begin, uint64_t end) {
    std::unique_lock guard(bitmap_mutex_);
    set_bits(begin / cluster_size_, (end + cluster_size_ - 1) / cluster_size_);
  }

  // Copies the base's clusters at the ends of [begin, end) into the overlay
  // when the range covers them only partly. Caller holds the range lock.
  void copy_up_partial_edges(uint64_t begin, uint64_t end) {
    const uint64_t first = begin / cluster_size_;
    const uint64_t last = (end - 1) / cluster_size_;
    if (begin % cluster_size_ != 0 && !is_allocated(first)) copy_up_cluster(first);
    if (end % cluster_size_ != 0 && (last != first || begin % cluster_size_ == 0) && !is_allocated(last)) copy_up_cluster(last);
  }

  void copy_up_cluster(uint64_t cluster) {
    const uint64_t start = cluster * cluster_size_;
    thread_local AlignedBuffer buffer;
    if (buffer.size() < cluster_size_) buffer = AlignedBuffer(cluster_size_);
    auto span = buffer.span().first(cluster_size_);
    read_base(start, span);
    pwrite_full(start, span);
  }

  // Base bytes; anything past the base's end reads as zeroes.
  void read_base(uint64_t offset, std::span<std::byte> buffer) {
    const uint64_t base_size = base_.size();
    const uint64_t inside = offset >= base_size ? 0 : std::min<uint64_t>(buffer.size(), base_size - offset);
    if (inside > 0) base_.read(offset, buffer.first(inside));
    if (inside < buffer.size()) std::memset(buffer.data() + inside, 0, buffer.size() - inside);
  }

  void zero_temp(uint64_t offset, uint64_t length) {
    if (fallocate(temp_.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(length)) == 0) {
      return;
    }
    static const std::vector<std::byte> zeroes(1 << 20);
    while (length > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, zeroes.size()));
      pwrite_full(offset, std::span(zeroes.data(), chunk));
      offset += chunk;
      length -= chunk;
    }
  }

  void pread_full(uint64_t offset, std::span<std::byte> buffer) {
    size_t done = 0;
    while (done < buffer.size()) {
      ssize_t n = pread(temp_.get(), buffer.data() + done, buffer.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "Could not read the temporary overlay of '{}' at offset {}", filename(), offset + done);
      }
      if (n == 0) {
        std::memset(buffer.data() + done, 0, buffer.size() - done);
        return;
      }
      done += static_cast<size_t>(n);
    }
  }

  void pwrite_full(uint64_t offset, std::span<const std::byte> data) {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = pwrite(temp_.get(), data.data() + done, data.size() - done, static_cast<off_t>(offset + done));
      if (n < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "Could not write the temporary overlay of '{}' at offset {}", filename(), offset + done);
      }
      done += static_cast<size_t>(n);
    }
  }

  std::unique_ptr<Image> owned_base_;  // declared first: outlives everything that uses base_
  Node& base_;
  const uint32_t cluster_size_;
  const bool read_only_;
  UniqueFd temp_;
  mutable std::shared_mutex bitmap_mutex_;
  std::vector<uint64_t> bitmap_;  // one bit per cluster: set = the overlay owns it
  uint64_t clusters_ = 0;
  uint64_t size_ = 0;
  RangeLocks range_locks_;
};

}  // namespace

std::unique_ptr<Node> create_snapshot_overlay(Node& base, const SnapshotOverlayOptions& options) {
  return std::make_unique<SnapshotOverlay>(base, nullptr, options);
}

std::unique_ptr<Node> create_snapshot_overlay(std::unique_ptr<Image> base, const SnapshotOverlayOptions& options) {
  Node& top = base->top();
  return std::make_unique<SnapshotOverlay>(top, std::move(base), options);
}

}  // namespace kiln::block
