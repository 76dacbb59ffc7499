// Internal snapshots and option amendment. A snapshot is a copy of the active
// L1 table; every L2 table and data cluster reachable through it gains one
// reference, so later writes copy-on-write (their COPIED flag is cleared).
#include <algorithm>
#include <chrono>
#include <cstring>

#include "kiln/common/error.h"
#include "kiln/common/size.h"
#include "qcow2/node.h"

namespace kiln::block::qcow2 {
namespace {
uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }
uint64_t div_round_up(uint64_t value, uint64_t divisor) { return (value + divisor - 1) / divisor; }
}  // namespace

std::vector<SnapshotInfo> Qcow2Node::list_snapshots() {
  std::shared_lock drain(drain_);
  std::lock_guard lock(meta_);
  std::vector<SnapshotInfo> list;
  for (const Snapshot& s : snapshots_) {
    list.push_back({.id = s.id,
                    .name = s.name,
                    .vm_state_size = s.vm_state_size,
                    .date_sec = s.date_sec,
                    .date_nsec = s.date_nsec,
                    .vm_clock_nsec = s.vm_clock_nsec,
                    .icount = s.icount});
  }
  return list;
}

void Qcow2Node::update_l1_refcounts(const std::vector<uint64_t>& l1, int64_t delta) {
  const uint32_t x = 62 - (cluster_bits_ - 8);
  std::vector<std::byte> l2(cluster_size_);
  for (uint64_t i = 0; i < l1.size(); ++i) {
    const uint64_t l2_off = l1[i] & kOffsetMask;
    if (l2_off == 0) continue;
    if (l2_off % cluster_size_ != 0 || l2_off >= file_->size()) corruption(fmt::format("L1 entry {} is invalid (0x{:x})", i, l1[i]));
    std::memcpy(l2.data(), load_table(l2_cache_, l2_off, true), cluster_size_);
    for (uint64_t j = 0; j < l2_entries_; ++j) {
      const uint64_t entry = l2_entry(l2.data(), j);
      if (entry & kCompressed) {
        const uint64_t host = entry & ((1ull << x) - 1);
        const uint64_t sectors = ((entry & ~(kCompressed | kCopied)) >> x) + 1;
        update_refcount_range(host & ~511ull, sectors * 512, delta);
      } else if (uint64_t host = entry & kOffsetMask; host != 0) {
        update_refcount(host / cluster_size_, delta);
      }
    }
    update_refcount(l2_off / cluster_size_, delta);
  }
}

// Refuses (before changing anything) when one more reference through `l1`
// would overflow a refcount.
void Qcow2Node::check_refcount_headroom(const std::vector<uint64_t>& l1) {
  const uint32_t x = 62 - (cluster_bits_ - 8);
  auto room = [&](uint64_t cluster) {
    if (get_refcount(cluster) >= refcount_max_) {
      throw Error(ERANGE, fmt::format("'{}': cluster 0x{:x} cannot take another reference with {}-bit refcounts", filename(),
                                      cluster * cluster_size_, refcount_bits_));
    }
  };
  std::vector<std::byte> l2(cluster_size_);
  for (uint64_t entry : l1) {
    const uint64_t l2_off = entry & kOffsetMask;
    if (l2_off == 0) continue;
    room(l2_off / cluster_size_);
    std::memcpy(l2.data(), load_table(l2_cache_, l2_off, true), cluster_size_);
    for (uint64_t j = 0; j < l2_entries_; ++j) {
      const uint64_t e = l2_entry(l2.data(), j);
      if (e & kCompressed) {
        const uint64_t host = e & ((1ull << x) - 1);
        room(host / cluster_size_);
      } else if (e & kOffsetMask) {
        room((e & kOffsetMask) / cluster_size_);
      }
    }
  }
}

// COPIED flags of the active tables from the refcounts (exactly one reference).
void Qcow2Node::refresh_copied_flags() {
  for (uint64_t i = 0; i < l1_.size(); ++i) {
    const uint64_t l2_off = l1_[i] & kOffsetMask;
    if (l2_off == 0) continue;
    const uint64_t l1_entry = get_refcount(l2_off / cluster_size_) == 1 ? (l1_[i] | kCopied) : (l1_[i] & ~kCopied);
    if (l1_entry != l1_[i]) {
      l1_[i] = l1_entry;
      l1_dirty_ = true;
    }
    for (uint64_t j = 0; j < l2_entries_; ++j) {
      std::byte* table = load_table(l2_cache_, l2_off, true);
      const uint64_t entry = l2_entry(table, j);
      const uint64_t host = entry & kOffsetMask;
      if ((entry & kCompressed) || host == 0) continue;
      const uint64_t refcount = get_refcount(host / cluster_size_);
      const uint64_t fixed = refcount == 1 ? (entry | kCopied) : (entry & ~kCopied);
      if (fixed == entry) continue;
      table = load_table(l2_cache_, l2_off, true);
      store_l2(table, j, fixed);
      l2_cache_.find(l2_off)->dirty = true;
    }
  }
}

void Qcow2Node::write_snapshot_table(const std::vector<Snapshot>& table) {
  std::vector<std::byte> raw = encode_snapshot_table(table);
  const uint64_t old_offset = header_.snapshots_offset;
  const uint64_t old_bytes = header_.nb_snapshots ? encode_snapshot_table(snapshots_).size() : 0;
  uint64_t offset = 0;
  if (!raw.empty()) {
    offset = alloc_clusters(div_round_up(raw.size(), cluster_size_));
    flush_metadata();
    file_->write(offset, raw);
    file_->flush();
  }
  header_.nb_snapshots = static_cast<uint32_t>(table.size());
  header_.snapshots_offset = offset;
  std::byte fields[12];
  store_be32(fields, header_.nb_snapshots);
  store_be64(fields + 4, header_.snapshots_offset);
  file_->write(60, fields);
  file_->flush();
  snapshots_ = table;
  overlap_index_valid_ = false;
  if (old_bytes != 0) update_refcount_range(old_offset, round_up(old_bytes, cluster_size_), -1);
}

void Qcow2Node::create_snapshot(const std::string& name) {
  std::unique_lock drain(drain_);
  check_writable();
  std::lock_guard lock(meta_);
  if (has_data_file_) throw Error(ENOTSUP, fmt::format("Could not create snapshot '{}': -95 (Operation not supported)", name));
  if (snapshots_.size() >= kMaxSnapshots) throw Error(EFBIG, fmt::format("Could not create snapshot '{}': too many snapshots", name));
  if (name.size() > 65535) throw Error(EINVAL, fmt::format("Could not create snapshot '{}': name too long", name));
  flush_metadata();
  check_refcount_headroom(l1_);
  // Take the references first, so nothing can be freed under the copy.
  update_l1_refcounts(l1_, 1);
  const uint64_t bytes = round_up(l1_.size() * 8, cluster_size_);
  uint64_t l1_copy = 0;
  if (!l1_.empty()) {
    l1_copy = alloc_clusters(bytes / cluster_size_);
    std::vector<std::byte> raw(bytes);
    for (uint64_t i = 0; i < l1_.size(); ++i) store_be64(raw.data() + i * 8, l1_[i] & ~kCopied);
    file_->write(l1_copy, raw);
  }
  refresh_copied_flags();
  flush_metadata();
  file_->flush();

  uint64_t next_id = 1;
  for (const Snapshot& s : snapshots_) next_id = std::max<uint64_t>(next_id, std::strtoull(s.id.c_str(), nullptr, 10) + 1);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  Snapshot snapshot;
  snapshot.l1_table_offset = l1_copy;
  snapshot.l1_size = static_cast<uint32_t>(l1_.size());
  snapshot.id = std::to_string(next_id);
  snapshot.name = name;
  snapshot.date_sec = static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::seconds>(now).count());
  snapshot.date_nsec = static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now).count() % 1000000000);
  snapshot.disk_size = size();
  std::vector<Snapshot> table = snapshots_;
  table.push_back(std::move(snapshot));
  write_snapshot_table(table);
}

namespace {
size_t find_snapshot(const std::vector<Snapshot>& list, const std::string& name_or_id) {
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].id == name_or_id) return i;
  }
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i].name == name_or_id) return i;
  }
  return list.size();
}
}  // namespace

void Qcow2Node::apply_snapshot(const std::string& name_or_id) {
  std::unique_lock drain(drain_);
  check_writable();
  std::lock_guard lock(meta_);
  const size_t index = find_snapshot(snapshots_, name_or_id);
  if (index == snapshots_.size()) {
    throw Error(ENOENT, fmt::format("Could not apply snapshot '{}': -2 (No such file or directory)", name_or_id));
  }
  if (bitmaps_tracking_.load()) {
    throw Error(EBUSY, fmt::format("Could not apply snapshot '{}': Device has active dirty bitmaps", name_or_id));
  }
  const Snapshot snapshot = snapshots_[index];
  flush_metadata();
  std::vector<uint64_t> target = read_l1(snapshot.l1_table_offset, snapshot.l1_size);
  check_refcount_headroom(target);
  update_l1_refcounts(target, 1);
  const std::vector<uint64_t> old = l1_;
  if (target.size() > l1_.size()) grow_l1(target.size());
  for (uint64_t i = 0; i < l1_.size(); ++i) l1_[i] = i < target.size() ? target[i] : 0;
  l1_dirty_ = true;
  overlap_index_valid_ = false;
  flush_metadata();
  file_->flush();
  update_l1_refcounts(old, -1);
  refresh_copied_flags();
  if (snapshot.disk_size != 0 && snapshot.disk_size != size()) {
    header_.size = snapshot.disk_size;
    std::byte field[8];
    store_be64(field, header_.size);
    file_->write(24, field);
    size_ = header_.size;
  }
  flush_metadata();
  file_->flush();
}

void Qcow2Node::delete_snapshot(const std::string& name_or_id) {
  std::unique_lock drain(drain_);
  check_writable();
  std::lock_guard lock(meta_);
  const size_t index = find_snapshot(snapshots_, name_or_id);
  if (index == snapshots_.size()) {
    throw Error(ENOENT, fmt::format("Could not delete snapshot '{}': snapshot not found", name_or_id));
  }
  const Snapshot snapshot = snapshots_[index];
  flush_metadata();
  std::vector<Snapshot> table = snapshots_;
  table.erase(table.begin() + static_cast<std::ptrdiff_t>(index));
  write_snapshot_table(table);
  update_l1_refcounts(read_l1(snapshot.l1_table_offset, snapshot.l1_size), -1);
  if (snapshot.l1_size != 0) update_refcount_range(snapshot.l1_table_offset, round_up(uint64_t(snapshot.l1_size) * 8, cluster_size_), -1);
  refresh_copied_flags();
  flush_metadata();
  file_->flush();
}

// Rewrites every refcount with a new width: new table and blocks are built
// past the end of everything in use, then the header switches to them and the
// old structures become free clusters.
void Qcow2Node::change_refcount_order(uint32_t order) {
  flush_metadata();
  file_->flush();
  const uint32_t bits = 1u << order;
  const uint64_t max_value = bits == 64 ? UINT64_MAX : (1ull << bits) - 1;
  const uint64_t entries_per_block = cluster_size_ * 8 / bits;
  uint64_t used_end = div_round_up(std::max(file_->size(), host_end_), cluster_size_);
  for (uint64_t i = 0; i < reftable_.size(); ++i) {
    if (reftable_[i] == 0) continue;
    for (uint64_t c = i * refblock_entries_; c < (i + 1) * refblock_entries_; ++c) {
      if (c >= used_end && get_refcount(c) != 0) used_end = c + 1;
    }
  }
  // Blocks and table cover themselves too: iterate to the fixed point.
  uint64_t blocks = 0, table_clusters = 0;
  while (true) {
    const uint64_t total = used_end + blocks + table_clusters;
    const uint64_t need_blocks = div_round_up(total, entries_per_block);
    const uint64_t need_table = div_round_up(need_blocks * 8, cluster_size_);
    if (need_blocks == blocks && need_table == table_clusters) break;
    blocks = need_blocks;
    table_clusters = need_table;
  }
  if (table_clusters * cluster_size_ > kMaxRefTableBytes) throw Error(EFBIG, fmt::format("'{}': the refcount table would be too large", filename()));
  const uint64_t table_start = used_end;
  const uint64_t blocks_start = used_end + table_clusters;
  const uint64_t new_end = blocks_start + blocks;
  std::vector<uint64_t> old_blocks(reftable_.begin(), reftable_.end());
  std::erase(old_blocks, 0);
  std::sort(old_blocks.begin(), old_blocks.end());
  std::vector<std::byte> table(table_clusters * cluster_size_);
  std::vector<std::byte> block(cluster_size_);
  for (uint64_t b = 0; b < blocks; ++b) {
    std::fill(block.begin(), block.end(), std::byte{0});
    for (uint64_t i = 0; i < entries_per_block; ++i) {
      const uint64_t c = b * entries_per_block + i;
      uint64_t value = 0;
      if (c >= table_start && c < new_end) {
        value = 1;
      } else if (c < used_end) {
        const uint64_t offset = c * cluster_size_;
        const bool old_table = offset >= header_.refcount_table_offset &&
                               offset < header_.refcount_table_offset + uint64_t(header_.refcount_table_clusters) * cluster_size_;
        value = (old_table || std::binary_search(old_blocks.begin(), old_blocks.end(), offset)) ? 0 : get_refcount(c);
      }
      if (value > max_value) {
        throw Error(EINVAL, fmt::format("'{}': cluster {} has refcount {}, too large for {}-bit refcounts", filename(), c, value, bits));
      }
      if (value == 0) continue;
      if (bits < 8) {
        const uint64_t bit = i * bits;
        block[bit / 8] |= std::byte(static_cast<uint8_t>(value << (bit % 8)));
      } else {
        std::byte* p = block.data() + i * (bits / 8);
        switch (bits / 8) {
          case 1: *p = std::byte(value); break;
          case 2: store_be16(p, static_cast<uint16_t>(value)); break;
          case 4: store_be32(p, static_cast<uint32_t>(value)); break;
          default: store_be64(p, value); break;
        }
      }
    }
    file_->write((blocks_start + b) * cluster_size_, block);
    store_be64(table.data() + b * 8, (blocks_start + b) * cluster_size_);
  }
  file_->write(table_start * cluster_size_, table);
  file_->flush();
  const uint64_t old_table_offset = header_.refcount_table_offset;
  const uint64_t old_table_bytes = uint64_t(header_.refcount_table_clusters) * cluster_size_;
  header_.refcount_order = order;
  header_.refcount_table_offset = table_start * cluster_size_;
  header_.refcount_table_clusters = static_cast<uint32_t>(table_clusters);
  write_header();
  file_->flush();
  // Switch the in-memory state; the old structures are now free space.
  refcount_bits_ = bits;
  refcount_max_ = max_value;
  refblock_entries_ = entries_per_block;
  reftable_.assign(table_clusters * cluster_size_ / 8, 0);
  for (uint64_t b = 0; b < blocks; ++b) reftable_[b] = (blocks_start + b) * cluster_size_;
  refblock_cache_.init(refblock_cache_.slots().size(), cluster_size_);
  reftable_dirty_ = false;
  overlap_index_valid_ = false;
  free_hint_ = 1;
  host_end_ = std::max(host_end_, new_end * cluster_size_);
  file_->discard(old_table_offset, old_table_bytes);
  for (uint64_t offset : old_blocks) {
    if (offset != 0) file_->discard(offset, cluster_size_);
  }
}

void Qcow2Node::amend(const KeyValueList& options) {
  std::unique_lock drain(drain_);
  check_writable();
  std::optional<uint64_t> new_size;
  std::optional<uint32_t> new_refcount_order;
  {
    std::lock_guard lock(meta_);
    flush_metadata();
    Header h = header_;
    std::optional<std::string> backing_file, backing_fmt;
    for (const auto& [key, value] : options) {
      if (key == "compat") {
        if (value == "1.1" || value == "v3") {
          if (h.version < 3) {
            h.version = 3;
            h.header_length = 112;
            h.extra_fields.assign(7, std::byte{0});
            if (!find_extension(h, kExtFeatureTable)) h.extensions.push_back(default_feature_table());
          }
        } else if (value == "0.10" || value == "v2") {
          if (h.version >= 3) {
            if (refcount_bits_ != 16) throw Error(ENOTSUP, "Cannot downgrade an image with refcount_bits != 16 to compat=0.10");
            if (h.compression_type != 0) throw Error(ENOTSUP, "Cannot downgrade an image with a non-zlib compression type to compat=0.10");
            if (h.incompatible_features & ~kIncompatDirty) throw Error(ENOTSUP, "Cannot downgrade an image with incompatible features to compat=0.10");
            // Zero clusters have no v2 encoding.
            for (uint64_t i = 0; i < l1_.size(); ++i) {
              const uint64_t l2_off = l1_[i] & kOffsetMask;
              if (l2_off == 0) continue;
              std::byte* table = load_table(l2_cache_, l2_off, true);
              for (uint64_t j = 0; j < l2_entries_; ++j) {
                const uint64_t e = l2_entry(table, j);
                if (!(e & kCompressed) && (e & kZeroFlag)) {
                  throw Error(ENOTSUP, fmt::format("'{}': cannot downgrade to compat=0.10: the image has zero clusters", filename()));
                }
              }
            }
            h.version = 2;
            h.header_length = kV2HeaderLength;
            h.compatible_features = 0;
            h.autoclear_features = 0;
            h.extra_fields.clear();
            remove_extension(h, kExtFeatureTable);
          }
        } else {
          throw invalid_argument("Invalid parameter value for 'compat': '{}'", value);
        }
      } else if (key == "lazy_refcounts") {
        const bool on = value == "on" || value == "true";
        if (on) h.compatible_features |= kCompatLazyRefcounts;
        else h.compatible_features &= ~kCompatLazyRefcounts;
      } else if (key == "backing_file") {
        backing_file = value;
      } else if (key == "backing_fmt") {
        backing_fmt = value;
      } else if (key == "size") {
        new_size = parse_size(value);
        if (!new_size) throw invalid_argument("Parameter 'size' expects a size");
      } else if (key == "refcount_bits") {
        char* end = nullptr;
        const unsigned long bits = std::strtoul(value.c_str(), &end, 10);
        if (value.empty() || *end != '\0' || bits == 0 || bits > 64 || (bits & (bits - 1)) != 0) {
          throw invalid_argument("Refcount width must be a power of two and may not exceed 64 bits");
        }
        new_refcount_order = static_cast<uint32_t>(__builtin_ctzl(bits));
      } else if (key == "cluster_size") {
        if (parse_size(value) != cluster_size_) throw Error(ENOTSUP, "Changing the cluster size is not supported");
      } else {
        throw Error(ENOTSUP, fmt::format("Changing the option '{}' is not supported", key));
      }
    }
    if ((h.compatible_features & kCompatLazyRefcounts) && h.version < 3) {
      throw invalid_argument("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)");
    }
    if (!(h.compatible_features & kCompatLazyRefcounts) && dirty_on_disk_) {
      file_->flush();
      h.incompatible_features &= ~kIncompatDirty;
      dirty_on_disk_ = false;
    }
    if (backing_file) {
      h.backing_file = *backing_file;
      if (h.backing_file.empty()) remove_extension(h, kExtBackingFormat);
    }
    if (backing_fmt && !h.backing_file.empty()) {
      set_extension(h, kExtBackingFormat, std::vector<std::byte>(reinterpret_cast<const std::byte*>(backing_fmt->data()),
                                                                 reinterpret_cast<const std::byte*>(backing_fmt->data()) + backing_fmt->size()));
    }
    if (new_refcount_order && *new_refcount_order != h.refcount_order) {
      if (h.version < 3) {
        throw invalid_argument("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)");
      }
    }
    Header saved = header_;
    header_ = h;
    try {
      write_header();
      file_->flush();
    } catch (...) {
      header_ = saved;
      throw;
    }
  }
  if (new_refcount_order && *new_refcount_order != header_.refcount_order) {
    std::lock_guard lock(meta_);
    change_refcount_order(*new_refcount_order);
  }
  if (new_size && *new_size != size()) {
    drain.unlock();
    truncate(*new_size, Preallocation::Off, false);
  }
}

}  // namespace kiln::block::qcow2
