// Consistency check and repair, following qemu-img check's counts and
// message texts: every reference reachable from the header, L1/L2 tables
// (active and snapshots), refcount structures, snapshot table and bitmaps is
// counted and compared with the stored refcounts.
#include <algorithm>
#include <cstring>

#include "kiln/common/error.h"
#include "qcow2/node.h"

namespace kiln::block::qcow2 {
namespace {
uint64_t div_round_up(uint64_t value, uint64_t divisor) { return (value + divisor - 1) / divisor; }
}  // namespace

CheckResult Qcow2Node::check(CheckRepair repair) {
  std::unique_lock drain(drain_);
  std::lock_guard lock(meta_);
  if (repair != CheckRepair::None && read_only_) {
    throw Error(EACCES, fmt::format("'{}': cannot repair an image opened read-only", filename()));
  }
  // Tables still only in the caches would look like references past the end of the file.
  flush_metadata();
  CheckResult first = check_locked(repair);
  if (repair == CheckRepair::None) return first;
  // As qemu-img: repair, then report what a fresh check still finds.
  flush_metadata();
  file_->flush();
  if (repair == CheckRepair::All && corrupt_ && first.corruptions == first.corruptions_fixed) {
    corrupt_ = false;
    header_.incompatible_features &= ~kIncompatCorrupt;
    write_incompatible_bits();
  }
  CheckResult second = check_locked(CheckRepair::None);
  second.leaks_fixed = first.leaks_fixed;
  second.corruptions_fixed = first.corruptions_fixed;
  first.messages.insert(first.messages.end(), second.messages.begin(), second.messages.end());
  second.messages = std::move(first.messages);
  return second;
}

CheckResult Qcow2Node::check_locked(CheckRepair repair) {
  CheckResult result;
  const uint64_t file_size = file_->size();
  const uint64_t file_clusters = div_round_up(file_size, cluster_size_);
  // References beyond this many clusters are reported, not counted.
  const uint64_t limit_clusters = file_clusters + 1024;
  std::vector<uint32_t> refs(file_clusters);
  uint64_t highest = 0;

  auto reference = [&](uint64_t offset, uint64_t bytes) {
    if (bytes == 0) return true;
    const uint64_t first = offset / cluster_size_, last = (offset + bytes - 1) / cluster_size_;
    if (offset + bytes > file_size && offset + bytes - file_size >= cluster_size_) {
      result.corruptions++;
      result.messages.push_back(fmt::format(
          "ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x{:x} size 0x{:x}", offset, bytes));
      return false;
    }
    if (last >= limit_clusters) return false;
    if (last >= refs.size()) refs.resize(last + 1);
    for (uint64_t c = first; c <= last; ++c) refs[c]++;
    return true;
  };

  const uint32_t x = 62 - (cluster_bits_ - 8);
  std::vector<std::byte> l2(cluster_size_);
  auto walk_l1 = [&](const std::vector<uint64_t>& l1, bool active) {
    uint64_t previous_host = 0;
    for (uint64_t i = 0; i < l1.size(); ++i) {
      const uint64_t l2_off = l1[i] & kOffsetMask;
      if (l2_off == 0) continue;
      if ((l1[i] & kL1Reserved) || l2_off % cluster_size_ != 0 || l2_off >= file_size) {
        result.corruptions++;
        result.messages.push_back(fmt::format("ERROR l2_offset={:x}: Table is not cluster aligned or lies outside the image; L1 entry corrupted", l2_off));
        continue;
      }
      reference(l2_off, cluster_size_);
      std::memcpy(l2.data(), load_table(l2_cache_, l2_off, true), cluster_size_);
      for (uint64_t j = 0; j < l2_entries_; ++j) {
        const uint64_t entry = l2_entry(l2.data(), j);
        const uint64_t bitmap = l2_bitmap(l2.data(), j);
        if (entry & kCompressed) {
          const uint64_t host = entry & ((1ull << x) - 1);
          const uint64_t sectors = ((entry & ~(kCompressed | kCopied)) >> x) + 1;
          if (entry & kCopied) {
            result.corruptions++;
            result.messages.push_back(fmt::format("ERROR: coffset=0x{:x}: copied flag must never be set for compressed clusters", host));
          }
          reference(host & ~511ull, sectors * 512);
          if (active) {
            result.allocated_clusters++;
            result.compressed_clusters++;
            result.fragmented_clusters++;
          }
          continue;
        }
        const uint64_t host = entry & kOffsetMask;
        if ((entry & l2_reserved_mask()) || host % cluster_size_ != 0) {
          result.corruptions++;
          result.messages.push_back(fmt::format("ERROR offset={:x}: Cluster is not properly aligned; L2 entry corrupted", host));
          continue;
        }
        if (extended_ && ((bitmap & 0xffffffffull) & (bitmap >> 32))) {
          result.corruptions++;
          result.messages.push_back(fmt::format("ERROR: L2 entry {:x}: subclusters both allocated and zero (bitmap {:x})", entry, bitmap));
        }
        if (extended_ && host == 0 && (bitmap & 0xffffffffull)) {
          result.corruptions++;
          result.messages.push_back(fmt::format("ERROR: L2 entry {:x}: allocated subclusters without a host cluster", entry));
          continue;
        }
        if (host == 0 && !(has_data_file_ && (entry & kCopied))) continue;
        if (active) {
          result.allocated_clusters++;
          if (previous_host != 0 && host != previous_host + cluster_size_) result.fragmented_clusters++;
          previous_host = host;
        }
        if (!has_data_file_) reference(host, cluster_size_);  // data file clusters are not refcounted
      }
    }
  };

  reference(0, cluster_size_);
  reference(header_.l1_table_offset, uint64_t(header_.l1_size) * 8);
  walk_l1(l1_, true);
  for (const Snapshot& s : snapshots_) {
    reference(s.l1_table_offset, uint64_t(s.l1_size) * 8);
    walk_l1(read_l1(s.l1_table_offset, s.l1_size), false);
  }
  if (header_.nb_snapshots > 0) reference(header_.snapshots_offset, encode_snapshot_table(snapshots_).size());
  reference(header_.refcount_table_offset, uint64_t(header_.refcount_table_clusters) * cluster_size_);
  for (uint64_t i = 0; i < reftable_.size(); ++i) {
    if (reftable_[i] == 0) continue;
    if (reftable_[i] >= file_size) {
      result.corruptions++;
      result.messages.push_back(fmt::format("ERROR refcount block {} is outside image", i));
      continue;
    }
    reference(reftable_[i], cluster_size_);
    // A refcount block is referenced by the table only.
    if (const uint64_t c = reftable_[i] / cluster_size_; c < refs.size() && refs[c] != 1) {
      result.corruptions++;
      result.messages.push_back(fmt::format("ERROR refcount block {} refcount={}", i, refs[c]));
    }
  }
  if (const HeaderExtension* ext = find_extension(header_, kExtCrypto); ext && ext->data.size() >= 16) {
    reference(load_be64(ext->data.data()), load_be64(ext->data.data() + 8));
  }
  if (const HeaderExtension* ext = find_extension(header_, kExtBitmaps); ext && ext->data.size() >= 24) {
    const uint64_t dir_size = load_be64(ext->data.data() + 8);
    const uint64_t dir_offset = load_be64(ext->data.data() + 16);
    if (dir_size <= (64ull << 20) && dir_offset < file_size && dir_size <= file_size - dir_offset) {
      reference(dir_offset, dir_size);
      std::vector<std::byte> dir(dir_size);
      file_->read(dir_offset, dir);
      size_t pos = 0;
      while (pos + 24 <= dir.size()) {
        const uint64_t table = load_be64(dir.data() + pos);
        const uint32_t entries = load_be32(dir.data() + pos + 8);
        const uint16_t name_size = load_be16(dir.data() + pos + 18);
        const uint32_t extra = load_be32(dir.data() + pos + 20);
        if (table < file_size && uint64_t(entries) * 8 <= file_size - table) {
          reference(table, uint64_t(entries) * 8);
          std::vector<std::byte> raw(uint64_t(entries) * 8);
          file_->read(table, raw);
          for (uint32_t k = 0; k < entries; ++k) {
            const uint64_t data = load_be64(raw.data() + uint64_t(k) * 8) & kOffsetMask;
            if (data != 0) reference(data, cluster_size_);
          }
        }
        pos += (24 + uint64_t(name_size) + extra + 7) / 8 * 8;
      }
    }
  }

  // Compare with the stored refcounts, like qemu over the clusters of the file
  // and those referenced (refcounts of clusters past the end are not looked at).
  const uint64_t end = refs.size();
  struct RepairScope {
    std::vector<uint32_t>*& slot;
    ~RepairScope() { slot = nullptr; }
  } scope{repair_refs_};
  if (repair == CheckRepair::All) {
    for (uint64_t i = 0; i < reftable_.size(); ++i) {
      if (reftable_[i] >= file_size) reftable_[i] = 0, reftable_dirty_ = true;  // reported above; replaced below
    }
    repair_refs_ = &refs;
    create_missing_refblocks();
  }
  for (uint64_t c = 0; c < end; ++c) {
    const uint64_t block = c / refblock_entries_;
    if (c >= refs.size() && (block >= reftable_.size() || reftable_[block] == 0)) {
      c = (block + 1) * refblock_entries_ - 1;
      continue;
    }
    const uint64_t expected = c < refs.size() ? refs[c] : 0;
    const uint64_t stored = (block < reftable_.size() && reftable_[block] != 0 && reftable_[block] < file_size) ? get_refcount(c) : 0;
    if (expected != 0) highest = c;
    if (stored == expected) continue;
    const bool leak = stored > expected;
    result.messages.push_back(fmt::format("{} cluster {} refcount={} reference={}", leak ? "Leaked" : "ERROR", c, stored, expected));
    (leak ? result.leaks : result.corruptions)++;
    const bool fix = repair == CheckRepair::All || (leak && repair == CheckRepair::Leaks);
    if (fix && expected <= refcount_max_) {
      set_refcount(c, expected);
      result.messages.push_back(fmt::format("Repairing cluster {} refcount={} reference={}", c, stored, expected));
      (leak ? result.leaks_fixed : result.corruptions_fixed)++;
    }
  }

  // COPIED flags of the active tables must say "refcount is exactly one".
  for (uint64_t i = 0; i < l1_.size(); ++i) {
    const uint64_t l2_off = l1_[i] & kOffsetMask;
    if (l2_off == 0 || (l1_[i] & kL1Reserved) || l2_off % cluster_size_ != 0 || l2_off >= file_size) continue;
    const bool one = get_refcount(l2_off / cluster_size_) == 1;
    if (one != ((l1_[i] & kCopied) != 0)) {
      result.corruptions++;
      result.messages.push_back(fmt::format("ERROR OFLAG_COPIED L2 cluster: l1_index={} l1_entry={:x} refcount={}", i, l1_[i],
                                            get_refcount(l2_off / cluster_size_)));
      if (repair == CheckRepair::All) {
        l1_[i] = one ? (l1_[i] | kCopied) : (l1_[i] & ~kCopied);
        l1_dirty_ = true;
        result.corruptions_fixed++;
      }
    }
    for (uint64_t j = 0; j < l2_entries_; ++j) {
      std::byte* table = load_table(l2_cache_, l2_off, true);
      const uint64_t entry = l2_entry(table, j);
      const uint64_t host = entry & kOffsetMask;
      if ((entry & kCompressed) || host == 0 || host % cluster_size_ != 0 || (entry & kL2Reserved) || has_data_file_) continue;
      const uint64_t refcount = get_refcount(host / cluster_size_);
      if ((refcount == 1) == ((entry & kCopied) != 0)) continue;
      result.corruptions++;
      result.messages.push_back(fmt::format("ERROR OFLAG_COPIED data cluster: l2_entry={:x} refcount={}", entry, refcount));
      if (repair == CheckRepair::All) {
        table = load_table(l2_cache_, l2_off, true);
        store_l2(table, j, refcount == 1 ? (entry | kCopied) : (entry & ~kCopied));
        l2_cache_.find(l2_off)->dirty = true;
        result.corruptions_fixed++;
      }
    }
  }

  result.image_end_offset = (highest + 1) * cluster_size_;
  result.total_clusters = div_round_up(header_.size, cluster_size_);
  if (repair != CheckRepair::None) {
    flush_metadata();
    // Freed clusters may now be reused.
    free_hint_ = 1;
  }
  return result;
}

std::vector<Qcow2Node::BitmapEntry> Qcow2Node::persistent_bitmaps() const {
  std::lock_guard lock(meta_);
  std::vector<BitmapEntry> list;
  const HeaderExtension* ext = find_extension(header_, kExtBitmaps);
  if (ext == nullptr || ext->data.size() < 24 || !(header_.autoclear_features & kAutoclearBitmaps)) return list;
  const uint32_t count = load_be32(ext->data.data());
  const uint64_t dir_size = load_be64(ext->data.data() + 8);
  const uint64_t dir_offset = load_be64(ext->data.data() + 16);
  const uint64_t file_size = file_->size();
  if (dir_size > (64ull << 20) || dir_offset > file_size || dir_size > file_size - dir_offset) {
    throw Error(EINVAL, fmt::format("'{}': the bitmap directory lies outside the image", filename()));
  }
  std::vector<std::byte> dir(dir_size);
  file_->read(dir_offset, dir);
  size_t pos = 0;
  for (uint32_t i = 0; i < count && pos + 24 <= dir.size(); ++i) {
    const uint16_t name_size = load_be16(dir.data() + pos + 18);
    const uint32_t extra = load_be32(dir.data() + pos + 20);
    if (pos + 24 + uint64_t(extra) + name_size > dir.size()) break;
    BitmapEntry entry;
    entry.granularity_bits = std::to_integer<uint8_t>(dir[pos + 17]);
    entry.name.assign(reinterpret_cast<const char*>(dir.data() + pos + 24 + extra), name_size);
    list.push_back(std::move(entry));
    pos += (24 + uint64_t(name_size) + extra + 7) / 8 * 8;
  }
  return list;
}

}  // namespace kiln::block::qcow2
