// Persistent dirty bitmaps (qcow2 spec, "Bitmaps"): the directory, the
// one-level bitmap tables and the bitmap data clusters.
//
// Read-only opens load a bitmap's bits when first asked (kiln-nbd -B).
// Read-write opens load every consistent bitmap, mark it in_use on disk before
// the first write (so a crash leaves it recognisably stale, as the spec asks),
// set the bits of enabled ("auto") bitmaps on every guest write, zero write and
// discard, and store them at close: data clusters rewritten in place or newly
// allocated, a new table when the image size changed, then the directory entry
// with in_use cleared, and only then the clusters no longer referenced freed.
#include <algorithm>
#include <cstring>

#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "qcow2/node.h"

namespace kiln::block::qcow2 {
namespace {

constexpr uint32_t kBitmapInUse = 1u << 0;
constexpr uint32_t kBitmapAuto = 1u << 1;
constexpr uint32_t kBitmapExtraDataCompatible = 1u << 2;
constexpr uint64_t kMaxDirectoryBytes = 64ull << 20;
constexpr uint64_t kTableEntryReserved = ~kOffsetMask & ~1ull;
constexpr uint64_t kMaxBitmapBytes = 512ull << 20;  // in memory, per bitmap (qemu's limit too)

uint64_t round_up_to(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

// Sets granules [first, last] of `bits`.
void set_range(std::vector<uint8_t>& bits, uint64_t first, uint64_t last) {
  while (first <= last && first % 8 != 0) {
    bits[first / 8] |= static_cast<uint8_t>(1u << (first % 8));
    ++first;
  }
  if (first > last) return;
  const uint64_t whole_end = (last + 1) / 8;  // bytes [first/8, whole_end) are covered entirely
  if (first / 8 < whole_end) std::memset(bits.data() + first / 8, 0xff, whole_end - first / 8);
  for (uint64_t g = std::max(first, whole_end * 8); g <= last; ++g) bits[g / 8] |= static_cast<uint8_t>(1u << (g % 8));
}

bool bit(const std::vector<uint8_t>& bits, uint64_t granule) { return (bits[granule / 8] >> (granule % 8)) & 1; }

}  // namespace

uint64_t Qcow2Node::bitmap_bytes(const DirtyBitmap& bitmap) const {
  const uint64_t granules = (size() + (1ull << bitmap.granularity_bits) - 1) >> bitmap.granularity_bits;
  return (granules + 7) / 8;
}

void Qcow2Node::load_bitmap_directory() {
  bitmaps_.clear();
  bitmap_directory_.clear();
  bitmap_directory_offset_ = 0;
  const HeaderExtension* ext = find_extension(header_, kExtBitmaps);
  if (header_.version < 3 || !(header_.autoclear_features & kAutoclearBitmaps) || ext == nullptr || ext->data.size() < 24) return;
  const uint32_t count = load_be32(ext->data.data());
  const uint64_t dir_size = load_be64(ext->data.data() + 8);
  const uint64_t dir_offset = load_be64(ext->data.data() + 16);
  const uint64_t file_size = file_->size();
  if (count == 0 || count > 65535 || dir_size > kMaxDirectoryBytes || dir_offset % cluster_size_ != 0 || dir_offset > file_size ||
      dir_size > file_size - dir_offset) {
    log::warn("'{}': ignoring an invalid bitmap directory", filename());
    return;
  }
  std::vector<std::byte> dir(dir_size);
  file_->read(dir_offset, dir);
  std::vector<DirtyBitmap> list;
  size_t pos = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (dir.size() - pos < 24) {
      log::warn("'{}': ignoring a truncated bitmap directory", filename());
      return;
    }
    const std::byte* e = dir.data() + pos;
    const uint16_t name_size = load_be16(e + 18);
    const uint32_t extra = load_be32(e + 20);
    const uint64_t entry_size = round_up_to(24 + uint64_t(extra) + name_size, 8);
    if (name_size == 0 || entry_size > dir.size() - pos) {
      log::warn("'{}': ignoring a malformed bitmap directory entry", filename());
      return;
    }
    DirtyBitmap b;
    b.table_offset = load_be64(e);
    b.table_size = load_be32(e + 8);
    b.flags = load_be32(e + 12);
    const uint8_t type = std::to_integer<uint8_t>(e[16]);
    b.granularity_bits = std::to_integer<uint8_t>(e[17]);
    b.name.assign(reinterpret_cast<const char*>(e + 24 + extra), name_size);
    b.directory_position = pos;
    const bool shape_ok = type == 1 && b.granularity_bits >= 9 && b.granularity_bits <= 31 && (b.flags >> 3) == 0 &&
                          (extra == 0 || (b.flags & kBitmapExtraDataCompatible)) && b.table_offset % cluster_size_ == 0 &&
                          b.table_offset < file_size && uint64_t(b.table_size) * 8 <= file_size - b.table_offset;
    b.usable = shape_ok && !(b.flags & kBitmapInUse) && bitmap_bytes(b) <= kMaxBitmapBytes &&
               b.table_size == (bitmap_bytes(b) + cluster_size_ - 1) / cluster_size_;
    list.push_back(std::move(b));
    pos += entry_size;
  }
  bitmaps_ = std::move(list);
  bitmap_directory_ = std::move(dir);
  bitmap_directory_offset_ = dir_offset;
}

void Qcow2Node::load_bitmap_bits(DirtyBitmap& b) {
  if (b.loaded) return;
  const uint64_t bytes = bitmap_bytes(b);
  std::vector<uint8_t> bits(bytes, 0);
  std::vector<std::byte> raw(uint64_t(b.table_size) * 8);
  if (!raw.empty()) file_->read(b.table_offset, raw);
  const uint64_t file_size = file_->size();
  for (uint32_t i = 0; i < b.table_size; ++i) {
    const uint64_t entry = load_be64(raw.data() + uint64_t(i) * 8);
    const uint64_t host = entry & kOffsetMask;
    const uint64_t begin = uint64_t(i) * cluster_size_;
    const uint64_t length = std::min<uint64_t>(cluster_size_, bytes - begin);
    if ((entry & kTableEntryReserved) || (host != 0 && (entry & 1)) || host % cluster_size_ != 0 || host >= file_size) {
      throw Error(EINVAL, fmt::format("Bitmap '{}' has an invalid bitmap table entry {:#x}", b.name, entry));
    }
    if (host == 0) {
      if (entry & 1) std::memset(bits.data() + begin, 0xff, length);
      continue;
    }
    file_->read(host, std::as_writable_bytes(std::span(bits.data() + begin, length)));
  }
  // Tail bits past the last granule must be zero; never trust them.
  const uint64_t granules = (size() + (1ull << b.granularity_bits) - 1) >> b.granularity_bits;
  if (granules % 8 != 0 && !bits.empty()) bits.back() &= static_cast<uint8_t>((1u << (granules % 8)) - 1);
  b.bits = std::move(bits);
  b.loaded = true;
}

void Qcow2Node::write_bitmap_directory() {
  file_->write(bitmap_directory_offset_, bitmap_directory_);
}

void Qcow2Node::hold_bitmaps() {
  std::lock_guard lock(bitmap_mutex_);
  bool any = false, tracking = false;
  for (DirtyBitmap& b : bitmaps_) {
    if (!b.usable) continue;
    try {
      load_bitmap_bits(b);
    } catch (const Error& e) {
      log::warn("'{}': {}; the bitmap is left as it is", filename(), e.what());
      b.usable = false;
      continue;
    }
    b.held = true;
    b.flags |= kBitmapInUse;
    store_be32(bitmap_directory_.data() + b.directory_position + 12, b.flags);
    any = true;
    tracking = tracking || (b.flags & kBitmapAuto);
  }
  if (!any) return;
  write_bitmap_directory();
  file_->flush();
  bitmaps_tracking_.store(tracking, std::memory_order_release);
}

void Qcow2Node::mark_bitmaps_dirty(uint64_t offset, uint64_t length) {
  if (!bitmaps_tracking_.load(std::memory_order_acquire) || length == 0) return;
  std::lock_guard lock(bitmap_mutex_);
  for (DirtyBitmap& b : bitmaps_) {
    if (!b.held || !(b.flags & kBitmapAuto)) continue;
    const uint64_t granules = uint64_t(b.bits.size()) * 8;
    const uint64_t first = offset >> b.granularity_bits;
    if (first >= granules) continue;
    const uint64_t last = std::min((offset + length - 1) >> b.granularity_bits, granules - 1);
    set_range(b.bits, first, last);
    b.modified = true;
  }
}

void Qcow2Node::resize_bitmaps(uint64_t new_size) {
  std::lock_guard lock(bitmap_mutex_);
  for (DirtyBitmap& b : bitmaps_) {
    if (!b.held) continue;
    const uint64_t granules = (new_size + (1ull << b.granularity_bits) - 1) >> b.granularity_bits;
    b.bits.resize((granules + 7) / 8, 0);  // grown areas start clean, as in qemu
    if (granules % 8 != 0 && !b.bits.empty()) b.bits.back() &= static_cast<uint8_t>((1u << (granules % 8)) - 1);
    b.modified = true;
  }
}

// Called with meta_ held, at close.
void Qcow2Node::store_bitmaps() {
  std::lock_guard lock(bitmap_mutex_);
  if (std::none_of(bitmaps_.begin(), bitmaps_.end(), [](const DirtyBitmap& b) { return b.held; })) return;
  std::vector<std::pair<uint64_t, uint64_t>> frees;  // byte ranges no longer referenced once the directory is written
  std::vector<std::byte> chunk(cluster_size_);
  for (DirtyBitmap& b : bitmaps_) {
    if (!b.held) continue;
    const uint64_t bytes = b.bits.size();
    const uint32_t entries = static_cast<uint32_t>((bytes + cluster_size_ - 1) / cluster_size_);
    if (b.modified || entries != b.table_size) {
      std::vector<std::byte> old_raw(uint64_t(b.table_size) * 8);
      if (!old_raw.empty()) file_->read(b.table_offset, old_raw);
      std::vector<std::byte> table(round_up_to(std::max<uint64_t>(uint64_t(entries) * 8, 1), cluster_size_));
      for (uint32_t i = 0; i < entries; ++i) {
        const uint64_t old = i < b.table_size ? load_be64(old_raw.data() + uint64_t(i) * 8) : 0;
        uint64_t host = old & kOffsetMask;
        const uint64_t begin = uint64_t(i) * cluster_size_;
        const uint64_t length = std::min<uint64_t>(cluster_size_, bytes - begin);
        const uint8_t* data = b.bits.data() + begin;
        const bool zero = std::all_of(data, data + length, [](uint8_t v) { return v == 0; });
        uint64_t entry = 0;
        if (zero) {
          if (host != 0) frees.emplace_back(host, cluster_size_);
        } else {
          if (host == 0) host = alloc_clusters(1);
          std::memset(chunk.data(), 0, chunk.size());
          std::memcpy(chunk.data(), data, length);
          file_->write(host, chunk);
          entry = host;
        }
        store_be64(table.data() + uint64_t(i) * 8, entry);
      }
      for (uint32_t i = entries; i < b.table_size; ++i) {
        const uint64_t host = load_be64(old_raw.data() + uint64_t(i) * 8) & kOffsetMask;
        if (host != 0) frees.emplace_back(host, cluster_size_);
      }
      uint64_t table_offset = b.table_offset;
      if (entries != b.table_size) {
        // A table of another size goes to new clusters; the old one is freed afterwards.
        table_offset = alloc_clusters(table.size() / cluster_size_);
        if (b.table_size != 0) frees.emplace_back(b.table_offset, round_up_to(uint64_t(b.table_size) * 8, cluster_size_));
        file_->write(table_offset, table);
      } else {
        file_->write(table_offset, std::span(table).first(uint64_t(entries) * 8));
      }
      b.table_offset = table_offset;
      b.table_size = entries;
    }
    b.flags &= ~kBitmapInUse;
    std::byte* e = bitmap_directory_.data() + b.directory_position;
    store_be64(e, b.table_offset);
    store_be32(e + 8, b.table_size);
    store_be32(e + 12, b.flags);
    b.held = false;
    b.modified = false;
  }
  bitmaps_tracking_.store(false, std::memory_order_release);
  // Data and tables (and the refcounts of new clusters) before the directory that makes them valid.
  flush_metadata();
  file_->flush();
  write_bitmap_directory();
  file_->flush();
  for (auto [offset, length] : frees) update_refcount_range(offset, length, -1);
}

std::vector<Node::DirtyBitmapInfo> Qcow2Node::dirty_bitmaps() {
  std::lock_guard lock(bitmap_mutex_);
  std::vector<DirtyBitmapInfo> list;
  for (const DirtyBitmap& b : bitmaps_) {
    list.push_back({.name = b.name,
                    .granularity = 1ull << std::min<uint8_t>(b.granularity_bits, 63),
                    .enabled = (b.flags & kBitmapAuto) != 0,
                    .consistent = b.usable});
  }
  return list;
}

Node::DirtyRun Qcow2Node::dirty_bitmap_status(const std::string& name, uint64_t offset, uint64_t length) {
  std::lock_guard lock(bitmap_mutex_);
  auto it = std::find_if(bitmaps_.begin(), bitmaps_.end(), [&](const DirtyBitmap& b) { return b.name == name; });
  if (it == bitmaps_.end()) throw Error(ENOENT, fmt::format("Bitmap '{}' is not found", name));
  DirtyBitmap& b = *it;
  if (!b.usable) throw Error(EINVAL, fmt::format("Bitmap '{}' is inconsistent and cannot be used", name));
  load_bitmap_bits(b);
  const uint64_t end = std::min(offset + length, size());
  if (offset >= end) return {length, false};
  const uint64_t granules = uint64_t(b.bits.size()) * 8;
  const uint64_t first = offset >> b.granularity_bits;
  const bool dirty = first < granules && bit(b.bits, first);
  // Scan granule by granule, a 64-granule word at a time where it is uniform.
  uint64_t g = first + 1;
  const uint64_t last_granule = (end - 1) >> b.granularity_bits;
  while (g <= last_granule) {
    if (g % 64 == 0 && g + 64 <= granules && g + 63 <= last_granule) {
      uint64_t word;
      std::memcpy(&word, b.bits.data() + g / 8, 8);
      if (word == (dirty ? ~0ull : 0ull)) {
        g += 64;
        continue;
      }
    }
    if (bit(b.bits, g) != dirty) break;
    ++g;
  }
  const uint64_t run_end = std::min(end, g << b.granularity_bits);
  return {run_end - offset, dirty};
}

}  // namespace kiln::block::qcow2
