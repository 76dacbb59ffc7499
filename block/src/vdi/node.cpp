#include "vdi/node.h"

#include <algorithm>
#include <cstring>

#include "kiln/common/buffer.h"
#include "kiln/common/error.h"

namespace kiln::block::vdi {
namespace {

constexpr uint32_t kEntriesPerSector = kSectorSize / 4;

}  // namespace

VdiNode::VdiNode(std::unique_ptr<Node> file, const Header& header, std::vector<uint32_t> block_map, bool read_only)
    : file_(std::move(file)),
      read_only_(read_only),
      block_size_(header.block_size),
      size_(round_up(header.disk_size, kSectorSize)),
      header_(header),
      bmap_(std::move(block_map)) {
  rebuild_allocation_state();
}

Header VdiNode::header() const {
  std::lock_guard lock(meta_);
  return header_;
}

void VdiNode::rebuild_allocation_state() {
  const uint32_t blocks = header_.blocks_in_image;
  map_corrupt_ = header_.blocks_allocated > blocks;
  uint64_t end = std::min(header_.blocks_allocated, blocks);
  for (uint32_t entry : bmap_) {
    if (is_allocated(entry) && entry < blocks) end = std::max<uint64_t>(end, uint64_t{entry} + 1);
  }
  owners_.assign(end, kBlockFree);
  for (uint32_t block = 0; block < bmap_.size(); ++block) {
    const uint32_t entry = bmap_[block];
    if (!is_allocated(entry)) continue;
    if (entry >= blocks || owners_[entry] != kBlockFree) {
      map_corrupt_ = true;
    } else {
      owners_[entry] = block;
    }
  }
  next_index_ = static_cast<uint32_t>(end);
}

// ---------------------------------------------------------------- lookups

VdiNode::Run VdiNode::lookup(uint64_t offset, uint64_t max_bytes) const {
  const uint64_t block = offset / block_size_;
  const uint64_t in_block = offset % block_size_;
  Run run;
  run.entry = bmap_[block];
  run.bytes = std::min<uint64_t>(max_bytes, block_size_ - in_block);
  const bool allocated = is_allocated(run.entry);
  if (allocated) run.host = header_.data_block_offset(run.entry) + in_block;
  // Extend over following blocks with the same kind of mapping (contiguous on the host for data).
  for (uint64_t next = block + 1; run.bytes < max_bytes && next < bmap_.size(); ++next) {
    const uint32_t entry = bmap_[next];
    if (allocated) {
      if (header_.block_extra != 0 || !is_allocated(entry) || uint64_t{entry} != uint64_t{run.entry} + (next - block)) break;
    } else if (is_allocated(entry)) {
      break;
    }
    run.bytes += std::min<uint64_t>(block_size_, max_bytes - run.bytes);
  }
  return run;
}

void VdiNode::check_writable() {
  if (read_only_) throw Error(EACCES, fmt::format("'{}' is opened read-only", filename()));
  std::lock_guard lock(meta_);
  if (map_corrupt_) {
    throw Error(EIO, fmt::format("'{}': the VDI block map is inconsistent; writes are refused (run check -r all)", filename()));
  }
}

void VdiNode::note_modification() {
  if (modified_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(meta_);
  if (modified_.load(std::memory_order_relaxed)) return;
  header_.uuid_last_snap = random_uuid();
  write_header();
  modified_.store(true, std::memory_order_release);
}

// ---------------------------------------------------------------- data path

void VdiNode::read(uint64_t offset, std::span<std::byte> buffer) {
  std::shared_lock layout(layout_);
  for (uint64_t done = 0; done < buffer.size();) {
    Run run;
    {
      std::lock_guard lock(meta_);
      run = lookup(offset + done, buffer.size() - done);
    }
    std::span<std::byte> part = buffer.subspan(done, run.bytes);
    if (is_allocated(run.entry)) {
      file_->read(run.host, part);
    } else {
      std::memset(part.data(), 0, part.size());
    }
    done += run.bytes;
  }
}

void VdiNode::write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) {
  check_writable();
  note_modification();
  std::shared_lock layout(layout_);
  for (uint64_t done = 0; done < data.size();) {
    Run run;
    {
      std::lock_guard lock(meta_);
      run = lookup(offset + done, data.size() - done);
    }
    if (is_allocated(run.entry)) {
      file_->write(run.host, data.subspan(done, run.bytes), flags);
      done += run.bytes;
      continue;
    }
    const uint64_t guest = offset + done;
    const uint64_t in_block = guest % block_size_;
    const uint64_t bytes = std::min<uint64_t>(data.size() - done, block_size_ - in_block);
    write_new_block(static_cast<uint32_t>(guest / block_size_), in_block, data.subspan(done, bytes), flags);
    done += bytes;
  }
}

void VdiNode::write_new_block(uint32_t block, uint64_t in_block, std::span<const std::byte> data, WriteFlags flags) {
  // An unallocated block already reads as zeroes.
  if (is_zero(data)) return;
  std::unique_lock lock(meta_);
  while (true) {
    const uint32_t entry = bmap_[block];
    if (is_allocated(entry)) {  // another writer allocated it meanwhile
      const uint64_t host = header_.data_block_offset(entry) + in_block;
      lock.unlock();
      file_->write(host, data, flags);
      return;
    }
    if (!allocating_.contains(block)) break;
    allocated_.wait(lock);
  }
  if (next_index_ >= header_.blocks_in_image) {
    throw Error(ENOSPC, fmt::format("'{}': no free data block left in the VDI image (run check -r leaks)", filename()));
  }
  const uint32_t index = next_index_++;
  if (owners_.size() < next_index_) owners_.resize(next_index_, kBlockFree);
  allocating_.insert(block);
  const uint64_t data_start = header_.data_block_offset(index);
  const uint64_t block_start = data_start - header_.block_extra;
  lock.unlock();
  const uint64_t head = data_start + in_block - block_start;

  try {
    // The whole block is written: data, and zeroes around it (the space may
    // hold stale bytes of a block leaked by a crash).
    const uint64_t tail_start = data_start + in_block + data.size();
    const uint64_t tail = data_start + block_size_ - tail_start;
    if (tail > 0) file_->write_zeroes(tail_start, tail, {});
    if (head > 0) file_->write_zeroes(block_start, head, {});
    file_->write(data_start + in_block, data, {});
  } catch (...) {
    lock.lock();
    allocating_.erase(block);
    if (next_index_ == index + 1) next_index_ = index;
    allocated_.notify_all();
    throw;
  }

  lock.lock();
  bmap_[block] = index;
  owners_[index] = block;
  allocating_.erase(block);
  allocated_.notify_all();
  header_.blocks_allocated = next_index_;
  write_map_sector(block);
  write_header();
  lock.unlock();
  if (flags.fua) file_->flush();
}

void VdiNode::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) {
  check_writable();
  note_modification();
  zero_or_discard(offset, length, false, flags);
}

void VdiNode::discard(uint64_t offset, uint64_t length) {
  check_writable();
  zero_or_discard(offset, length, true, {});
}

void VdiNode::zero_or_discard(uint64_t offset, uint64_t length, bool discard, ZeroFlags flags) {
  if (length == 0) return;
  const uint64_t end = offset + length;
  // Whole blocks in the range (the last block counts as whole when the range reaches the end of the disk).
  const uint64_t first_full = (offset + block_size_ - 1) / block_size_;
  const uint64_t end_full = end == size() ? (end + block_size_ - 1) / block_size_ : end / block_size_;
  bool fixed;
  {
    std::lock_guard lock(meta_);
    fixed = header_.fixed();
  }
  // Dynamic images drop whole blocks (discard, or zeroing that may unmap); fixed images keep every block.
  const bool frees = !fixed && (discard || flags.may_unmap) && first_full < end_full;
  if (!discard) {
    // Zero what stays allocated: partial blocks, or everything when nothing is freed.
    std::shared_lock layout(layout_);
    for (uint64_t pos = offset; pos < end;) {
      if (frees && pos == first_full * block_size_) {
        pos = std::min(end, end_full * block_size_);
        continue;
      }
      const uint64_t limit = frees && pos < first_full * block_size_ ? first_full * block_size_ : end;
      Run run;
      {
        std::lock_guard lock(meta_);
        run = lookup(pos, limit - pos);
      }
      if (is_allocated(run.entry)) file_->write_zeroes(run.host, run.bytes, flags);
      pos += run.bytes;
    }
  }
  if (frees) {
    std::unique_lock layout(layout_);
    free_blocks(static_cast<uint32_t>(first_full), static_cast<uint32_t>(end_full - first_full), discard ? kBlockFree : kBlockZero);
  }
}

void VdiNode::flush() { file_->flush(); }

// ---------------------------------------------------------------- freeing and moving blocks

void VdiNode::copy_data_block(uint32_t from, uint32_t to, std::span<std::byte> buffer) {
  const uint64_t stride = header_.block_stride();
  file_->read(header_.offset_data + from * stride, buffer.first(stride));
  file_->write(header_.offset_data + to * stride, buffer.first(stride));
}

void VdiNode::free_blocks(uint32_t first, uint32_t count, uint32_t marker) {
  std::lock_guard lock(meta_);
  if (map_corrupt_) return;  // writers refuse such images; nothing is moved on a map we cannot trust
  std::vector<uint32_t> freed;
  for (uint32_t block = first; block < first + count; ++block) {
    const uint32_t entry = bmap_[block];
    if (is_allocated(entry)) {
      freed.push_back(entry);
      owners_[entry] = kBlockFree;
      bmap_[block] = marker;
    }
  }
  if (freed.empty()) return;
  // The freed entries go to disk first: a crash later leaves leaked blocks, never shared ones.
  write_map_range(first, first + count);
  header_.uuid_last_snap = modified_.exchange(true) ? header_.uuid_last_snap : random_uuid();

  // Fill the holes with the blocks at the end of the data area, then cut the file.
  auto trim = [&] {
    while (next_index_ > 0 && owners_[next_index_ - 1] == kBlockFree) --next_index_;
  };
  trim();
  std::sort(freed.begin(), freed.end());
  AlignedBuffer buffer;
  for (uint32_t hole : freed) {
    if (hole >= next_index_) break;
    if (buffer.size() == 0) buffer = AlignedBuffer(header_.block_stride());
    const uint32_t last = next_index_ - 1;
    const uint32_t owner = owners_[last];
    copy_data_block(last, hole, buffer.span());
    bmap_[owner] = hole;
    owners_[hole] = owner;
    owners_[last] = kBlockFree;
    write_map_sector(owner);
    trim();
  }
  owners_.resize(next_index_);
  header_.blocks_allocated = next_index_;
  write_header();
  if (file_->size() > data_end()) file_->truncate(data_end(), Preallocation::Off, true);
}

// ---------------------------------------------------------------- metadata writes

void VdiNode::write_header() {
  const auto sector = encode_header(header_);
  file_->write(0, sector);
}

void VdiNode::write_map_sector(uint32_t entry_index) {
  const uint32_t first = entry_index / kEntriesPerSector * kEntriesPerSector;
  write_map_range(first, std::min<uint32_t>(first + kEntriesPerSector, header_.blocks_in_image));
}

void VdiNode::write_map_range(uint32_t first, uint32_t end) {
  // Whole sectors, entries past the map as zero padding; at most 64 KiB per write.
  constexpr uint32_t kChunkEntries = 16384;
  std::array<std::byte, kChunkEntries * 4> chunk;
  uint32_t pos = first / kEntriesPerSector * kEntriesPerSector;
  while (pos < end) {
    const uint32_t count = std::min<uint32_t>(kChunkEntries, static_cast<uint32_t>(round_up(end - pos, kEntriesPerSector)));
    for (uint32_t i = 0; i < count; ++i) {
      const uint64_t index = uint64_t{pos} + i;
      store_le32(chunk.data() + i * 4, index < bmap_.size() ? bmap_[index] : 0);
    }
    file_->write(header_.offset_bmap + uint64_t{pos} * 4, std::span(chunk).first(count * 4));
    pos += count;
  }
}

// ---------------------------------------------------------------- block status

// Only while read-only: a writable image may move blocks (check -r, shrink).
std::optional<HostExtent> VdiNode::host_extent(uint64_t offset, uint64_t length) {
  if (!read_only_) return std::nullopt;
  std::shared_lock layout(layout_);
  Run run;
  {
    std::lock_guard lock(meta_);
    run = lookup(offset, length);
  }
  if (!is_allocated(run.entry)) return std::nullopt;
  return file_->host_extent(run.host, run.bytes);
}

BlockStatus VdiNode::block_status(uint64_t offset, uint64_t length) {
  std::shared_lock layout(layout_);
  Run run;
  bool fixed;
  {
    std::lock_guard lock(meta_);
    run = lookup(offset, length);
    fixed = header_.fixed();
  }
  BlockStatus status;
  status.length = run.bytes;
  if (!is_allocated(run.entry)) {
    // Defined by this image (there is no backing file): zeroes, as qemu reports them.
    status.flags = kStatusZero | kStatusAllocated;
    return status;
  }
  status.flags = kStatusData | kStatusAllocated | kStatusOffsetValid;
  status.host_offset = run.host;
  status.host_file = file_->filename();
  if (fixed) {
    // As qemu does for static images: holes of the file read as zeroes.
    const BlockStatus file_status = file_->block_status(run.host, run.bytes);
    if (file_status.flags & kStatusZero) status.flags |= kStatusZero;
    if (file_status.length > 0 && file_status.length < run.bytes) status.length = file_status.length;
  }
  return status;
}

// ---------------------------------------------------------------- resize

void VdiNode::truncate(uint64_t new_size, Preallocation prealloc, bool) {
  check_writable();
  std::unique_lock layout(layout_);
  std::lock_guard lock(meta_);
  const uint64_t old_size = size();
  if (new_size % kSectorSize != 0) throw invalid_argument("'{}': The new size must be a multiple of {}", filename(), kSectorSize);
  if (new_size < old_size) throw Error(ENOTSUP, fmt::format("'{}': VDI images cannot be shrunk", filename()));
  if (new_size == old_size) return;
  if (new_size > uint64_t{kMaxBlocks} * block_size_) throw with_context(unsupported_size(new_size), filename());
  const bool fixed = header_.fixed();
  if (prealloc == Preallocation::Metadata || (!fixed && prealloc != Preallocation::Off)) {
    throw Error(ENOTSUP, fmt::format("'{}': Unsupported preallocation mode '{}' for {} VDI images", filename(), to_string(prealloc),
                                     fixed ? "static" : "dynamic"));
  }
  if (!modified_.exchange(true)) header_.uuid_last_snap = random_uuid();

  const uint32_t old_blocks = header_.blocks_in_image;
  const auto new_blocks = static_cast<uint32_t>((new_size + block_size_ - 1) / block_size_);
  if (new_blocks > old_blocks) {
    const uint64_t map_end = header_.offset_bmap + round_up(uint64_t{new_blocks} * 4, kSectorSize);
    const bool relocate = map_end > header_.offset_data;
    if (relocate) grow_block_map(new_blocks);
    bmap_.resize(new_blocks, kBlockFree);
    header_.blocks_in_image = new_blocks;
    if (fixed) {
      // Static images keep every block allocated: the new ones follow the data area.
      const uint64_t old_end = data_end();
      owners_.resize(next_index_ + (new_blocks - old_blocks), kBlockFree);
      for (uint32_t block = old_blocks; block < new_blocks; ++block) {
        bmap_[block] = next_index_;
        owners_[next_index_++] = block;
      }
      header_.blocks_allocated = next_index_;
      const uint64_t file_size = file_->size();
      if (file_size > old_end) file_->write_zeroes(old_end, std::min(file_size, data_end()) - old_end, {});
      if (file_size < data_end()) file_->truncate(data_end(), prealloc, false);
    }
    write_map_range(relocate ? 0 : old_blocks, new_blocks);
  }
  header_.disk_size = new_size;
  write_header();
  file_->flush();
  size_.store(new_size, std::memory_order_relaxed);
}

void VdiNode::grow_block_map(uint32_t entries) {
  const uint64_t stride = header_.block_stride();
  const uint64_t map_end = header_.offset_bmap + round_up(uint64_t{entries} * 4, kSectorSize);
  const uint64_t shift = (map_end - header_.offset_data + stride - 1) / stride;  // data blocks to move out of the way
  const uint64_t new_offset_data = header_.offset_data + shift * stride;
  if (new_offset_data > UINT32_MAX) {
    throw Error(EFBIG, fmt::format("'{}': the VDI block map cannot grow that far (the data offset would exceed 4 GiB)", filename()));
  }
  // Data blocks [0, shift) move behind the last one; the others keep their
  // place, which is `shift` blocks earlier relative to the new data offset.
  const uint32_t count = next_index_;
  const uint32_t moved = static_cast<uint32_t>(std::min<uint64_t>(shift, count));
  const uint32_t staying = count - moved;
  AlignedBuffer buffer(stride);
  for (uint32_t index = 0; index < moved; ++index) {
    if (owners_[index] != kBlockFree) copy_data_block(index, static_cast<uint32_t>(shift + staying + index), buffer.span());
  }
  file_->flush();
  for (uint32_t& entry : bmap_) {
    if (!is_allocated(entry) || entry >= count) continue;
    entry = entry < shift ? staying + entry : static_cast<uint32_t>(entry - shift);
  }
  header_.offset_data = static_cast<uint32_t>(new_offset_data);
  rebuild_allocation_state();
  next_index_ = count;
  if (owners_.size() < count) owners_.resize(count, kBlockFree);
  // Old data bytes between the grown map and the new data area become zero padding.
  if (new_offset_data > map_end) file_->write_zeroes(map_end, new_offset_data - map_end, {});
}

}  // namespace kiln::block::vdi
