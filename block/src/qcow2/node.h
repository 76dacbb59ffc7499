// The qcow2 format node. See README.md for the structure (caches, locking,
// metadata ordering).
#pragma once

#include <atomic>
#include <optional>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/block/driver.h"
#include "kiln/block/node.h"
#include "qcow2/format.h"
#include "qcow2/luks.h"

namespace kiln::block::qcow2 {

// Cache of cluster-sized tables (L2 tables or refcount blocks) keyed by host
// offset, kept in on-disk byte order, evicting the least recently used.
// Not synchronised: the node's metadata mutex guards it.
class TableCache {
 public:
  struct Slot {
    uint64_t offset = 0;  // 0: empty
    bool dirty = false;
    uint64_t last_use = 0;
    std::vector<std::byte> data;
  };
  void init(size_t capacity, size_t table_bytes);
  Slot* find(uint64_t offset);
  // The least recently used slot, to be reused by install().
  Slot* victim();
  void install(Slot* slot, uint64_t offset);
  void forget(uint64_t offset);
  std::vector<Slot>& slots() { return slots_; }

 private:
  std::vector<Slot> slots_;
  std::unordered_map<uint64_t, size_t> index_;
  size_t table_bytes_ = 0;
  uint64_t clock_ = 0;
};

// Shared/exclusive locks over guest byte ranges: writers of the same clusters
// serialise, everything else runs in parallel.
class RangeLocks {
 public:
  void lock(uint64_t begin, uint64_t end, bool exclusive);
  void unlock(uint64_t begin, uint64_t end, bool exclusive);

 private:
  struct Held {
    uint64_t begin, end;
    bool exclusive;
  };
  std::mutex mutex_;
  std::condition_variable released_;
  std::vector<Held> held_;
};

struct RangeGuard {
  RangeLocks& locks;
  uint64_t begin, end;
  bool exclusive;
  RangeGuard(RangeLocks& l, uint64_t b, uint64_t e, bool x) : locks(l), begin(b), end(e), exclusive(x) { locks.lock(b, e, x); }
  ~RangeGuard() { locks.unlock(begin, end, exclusive); }
  RangeGuard(const RangeGuard&) = delete;
  RangeGuard& operator=(const RangeGuard&) = delete;
};

struct OpenSettings {
  uint64_t l2_cache_bytes = 0;        // 0: default
  uint64_t refcount_cache_bytes = 0;  // 0: default
  bool read_only = false;
  bool no_backing = false;
  bool repair_dirty = true;           // run a repair when opening a dirty image read-write
  Node* data_file = nullptr;          // external data file when opened without a context (create)
  std::optional<std::string> passphrase;  // LUKS passphrase (from encrypt.key-secret)
};

class Qcow2Node final : public Node {
 public:
  // Opens the image on `file`. `owned` may be null when the caller keeps the file (create).
  Qcow2Node(std::unique_ptr<Node> owned, Node& file, const OpenSettings& settings, const OpenContext* context);
  ~Qcow2Node() override;

  std::string_view driver_name() const override { return "qcow2"; }
  const std::string& filename() const override { return file_->filename(); }
  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  bool read_only() const override { return read_only_; }
  uint32_t cluster_size() const override { return static_cast<uint32_t>(cluster_size_); }
  uint32_t request_alignment() const override { return encrypted_ ? 512 : 1; }
  Node* file_child() const override { return file_; }
  Node* backing_child() const override { return backing_.get(); }
  std::string backing_filename() const override;
  std::string backing_format() const override;
  bool dirty() const override;
  nlohmann::json format_specific_info() const override;
  std::vector<std::string> format_specific_info_order() const override {
    return {"compat", "compression-type", "lazy-refcounts", "bitmaps", "flags", "name", "granularity", "refcount-bits", "encrypt",
            // inside "encrypt" (LUKS) and its "slots"
            "ivgen-alg", "hash-alg", "cipher-alg", "uuid", "format", "cipher-mode", "slots", "active", "iters", "key-offset", "stripes",
            "payload-offset", "master-key-iters",
            "data-file", "data-file-raw", "corrupt", "extended-l2"};
  }
  bool encrypted() const override { return encrypted_; }

  void read(uint64_t offset, std::span<std::byte> buffer) override;
  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override;
  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) override;
  void discard(uint64_t offset, uint64_t length) override;
  void flush() override;
  void truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink) override;
  BlockStatus block_status(uint64_t offset, uint64_t length) override;
  std::optional<HostExtent> host_extent(uint64_t offset, uint64_t length) override;

  CheckResult check(CheckRepair repair) override;
  bool supports_compressed_writes() const override { return true; }
  void write_compressed(uint64_t offset, std::span<const std::byte> data) override;
  void compress_for_write(uint64_t offset, std::span<const std::byte> data, PreparedCompressed& out) override;
  void write_compressed_prepared(uint64_t offset, std::span<const std::byte> data, const PreparedCompressed& prepared) override;
  std::vector<SnapshotInfo> list_snapshots() override;
  void create_snapshot(const std::string& name) override;
  void apply_snapshot(const std::string& name_or_id) override;
  void delete_snapshot(const std::string& name_or_id) override;
  void amend(const KeyValueList& options) override;
  void change_backing_file(const std::string& filename, const std::string& format) override;

  struct BitmapEntry {
    std::string name;
    uint32_t granularity_bits = 0;
  };
  // The persistent dirty bitmaps qemu would load (consistent directory only).
  std::vector<BitmapEntry> persistent_bitmaps() const;
  std::vector<DirtyBitmapInfo> dirty_bitmaps() override;
  DirtyRun dirty_bitmap_status(const std::string& name, uint64_t offset, uint64_t length) override;
  uint32_t version() const { return header_.version; }

  // Creation helpers (used by the driver on a freshly initialised image).
  void preallocate(uint64_t begin, uint64_t end, Preallocation mode);
  void set_backing(const std::string& filename, const std::string& format);
  // Turns a fresh image into a LUKS-encrypted one.
  void setup_luks(const LuksCreateParams& params);

 private:
  enum class Kind { Unallocated, Zero, Normal, Compressed };
  struct Mapping {
    Kind kind = Kind::Unallocated;
    uint64_t host = 0;   // Normal: host offset of the first byte; Compressed: descriptor
    uint64_t bytes = 0;  // guest bytes from the queried offset with this mapping
  };

  // --- metadata (all with meta_ held)
  uint64_t l1_index(uint64_t guest) const { return guest >> (cluster_bits_ + l2_bits_); }
  uint64_t l2_index(uint64_t guest) const { return (guest >> cluster_bits_) & (l2_entries_ - 1); }
  std::byte* load_table(TableCache& cache, uint64_t offset, bool is_l2, bool zero_fill = false);
  void write_back(TableCache::Slot& slot, bool is_l2);
  uint64_t l2_entry(const std::byte* table, uint64_t index) const { return load_be64(table + index * l2_entry_size_); }
  // Subcluster bitmap of an extended L2 entry (0 without extended L2).
  uint64_t l2_bitmap(const std::byte* table, uint64_t index) const { return extended_ ? load_be64(table + index * 16 + 8) : 0; }
  void store_l2(std::byte* table, uint64_t index, uint64_t entry) { store_be64(table + index * l2_entry_size_, entry); }
  void store_l2(std::byte* table, uint64_t index, uint64_t entry, uint64_t bitmap) {
    store_be64(table + index * l2_entry_size_, entry);
    if (extended_) store_be64(table + index * 16 + 8, bitmap);
  }
  // L2 entry bits that must be zero (bit 0 is the zero flag only in plain v3).
  uint64_t l2_reserved_mask() const { return header_.version >= 3 && !extended_ ? kL2Reserved : (kL2Reserved | kZeroFlag); }
  Mapping lookup_extended(uint64_t guest, uint64_t max_bytes);
  void write_extended_cluster(uint64_t guest, std::span<const std::byte> data);
  Kind classify(uint64_t entry, uint64_t l2_offset, uint64_t index);
  uint64_t l2_offset_of(uint64_t l1_index);
  Mapping lookup(uint64_t guest, uint64_t max_bytes);
  uint64_t writable_l2(uint64_t l1_index);
  void release_entry(uint64_t entry);
  // Drops one reference once the tables no longer holding it are on disk.
  void defer_free(uint64_t cluster) {
    deferred_frees_.push_back(cluster);
    if (get_refcount(cluster) <= 1) ++deferred_reclaimable_;
  }
  void apply_deferred_frees();

  uint64_t get_refcount(uint64_t cluster);
  void set_refcount(uint64_t cluster, uint64_t value);
  void update_refcount(uint64_t cluster, int64_t delta);
  void update_refcount_range(uint64_t offset, uint64_t bytes, int64_t delta);
  bool cluster_free(uint64_t cluster);
  uint64_t find_free_run(uint64_t count);
  uint64_t alloc_clusters(uint64_t count);
  void create_refblock(uint64_t index);
  void grow_reftable(uint64_t min_entries);
  // During a repair the stored refcounts cannot be trusted to say which
  // clusters are free: allocation consults the counted references instead.
  bool referenced_in_repair(uint64_t cluster) const {
    return repair_refs_ != nullptr && cluster < repair_refs_->size() && (*repair_refs_)[cluster] != 0;
  }
  void count_in_repair(uint64_t cluster, int delta);
  void create_missing_refblocks();
  void grow_l1(uint64_t min_entries);
  uint64_t alloc_compressed_bytes(uint64_t length);

  void flush_metadata();
  void write_header();
  void write_incompatible_bits();
  void mark_dirty_for_write();
  [[noreturn]] void corruption(const std::string& what);
  void check_metadata_overlap(uint64_t offset, uint64_t bytes, const char* what);
  void rebuild_overlap_index();
  void check_writable();

  // --- data (without meta_)
  void read_mapping(const Mapping& mapping, uint64_t guest, std::span<std::byte> buffer);
  void read_backing(uint64_t guest, std::span<std::byte> buffer);
  void read_unlocked(uint64_t offset, std::span<std::byte> buffer);
  // Guest data at a host offset, through the LUKS cipher when encrypted (sector aligned then).
  void read_data(uint64_t host, std::span<std::byte> buffer);
  void write_data(uint64_t host, std::span<const std::byte> data);
  void load_luks();
  void decompress_cluster(uint64_t descriptor, std::span<std::byte> out);
  void check_compressed_write(uint64_t offset, uint64_t length) const;
  void write_run(uint64_t guest, std::span<const std::byte> data);
  bool zero_or_discard(uint64_t offset, uint64_t length, bool discard, bool may_unmap, bool full_unmap, bool only_unmapped = false);
  bool reads_zero_by_status(uint64_t offset, uint64_t length);
  void zero_partial_unit(uint64_t begin, uint64_t end, ZeroFlags flags);
  void zero_aligned(uint64_t begin, uint64_t end, ZeroFlags flags);
  bool zero_subclusters(uint64_t begin, uint64_t end, bool only_unmapped = false);

  // --- snapshots / check helpers (drain_ held exclusively)
  void write_snapshot_table(const std::vector<Snapshot>& table);
  void update_l1_refcounts(const std::vector<uint64_t>& l1, int64_t delta);
  void refresh_copied_flags();
  void check_refcount_headroom(const std::vector<uint64_t>& l1);
  std::vector<uint64_t> read_l1(uint64_t offset, uint32_t entries);
  CheckResult check_locked(CheckRepair repair);
  void change_refcount_order(uint32_t order);

  void load(const OpenContext* context);
  void open_backing(const OpenContext& context);
  void open_data_file(const OpenContext* context);
  // Data clusters of an external data file sit at their guest offset, unrefcounted.
  void check_data_overlap(uint64_t offset, uint64_t bytes, const char* what) {
    if (!has_data_file_) check_metadata_overlap(offset, bytes, what);
  }
  std::string resolve_relative(const std::string& name) const;

  std::unique_ptr<Node> owned_file_;
  Node* file_;
  std::unique_ptr<Node> backing_;
  std::unique_ptr<Node> data_file_;  // owned external data file
  Node* data_ = nullptr;             // where guest clusters live: the image file or the data file
  bool has_data_file_ = false;
  bool data_raw_ = false;            // data_file_raw: the data file stays a valid raw image
  bool encrypted_ = false;           // LUKS: data encrypted per sector, host offset as tweak
  std::optional<LuksHeader> luks_;
  SectorCipher cipher_;              // invalid when opened without the passphrase (read-only info)
  OpenSettings settings_;
  bool read_only_;

  Header header_;
  uint32_t cluster_bits_ = 16;
  uint64_t cluster_size_ = 65536;
  uint32_t l2_bits_ = 13;
  uint32_t l2_entry_size_ = 8;
  bool extended_ = false;  // extended L2 entries: 32 subclusters per cluster
  uint64_t l2_entries_ = 8192;
  uint32_t refcount_bits_ = 16;
  uint64_t refcount_max_ = 0xffff;
  uint64_t refblock_entries_ = 0;
  std::atomic<uint64_t> size_{0};

  std::vector<uint64_t> l1_;
  bool l1_dirty_ = false;
  std::vector<uint64_t> reftable_;
  bool reftable_dirty_ = false;
  std::vector<Snapshot> snapshots_;
  TableCache l2_cache_;
  TableCache refblock_cache_;

  // Persistent dirty bitmaps (bitmaps.cpp). Opened read-write, every
  // consistent bitmap is loaded and marked in_use on disk; enabled ones track
  // the guest writes in memory and all are stored back at close.
  struct DirtyBitmap {
    std::string name;
    uint32_t flags = 0;
    uint8_t granularity_bits = 0;
    uint64_t table_offset = 0;
    uint32_t table_size = 0;
    size_t directory_position = 0;  // of its entry in bitmap_directory_
    bool usable = false;             // well-formed, type 1, not in_use when opened
    bool held = false;               // loaded and marked in_use by this node (read-write)
    bool modified = false;
    bool loaded = false;
    std::vector<uint8_t> bits;       // granule i is bit i % 8 of byte i / 8
  };
  void load_bitmap_directory();
  void load_bitmap_bits(DirtyBitmap& bitmap);
  void hold_bitmaps();
  void mark_bitmaps_dirty(uint64_t offset, uint64_t length);
  void resize_bitmaps(uint64_t new_size);
  void store_bitmaps();
  void write_bitmap_directory();
  uint64_t bitmap_bytes(const DirtyBitmap& bitmap) const;
  std::vector<DirtyBitmap> bitmaps_;
  std::vector<std::byte> bitmap_directory_;
  uint64_t bitmap_directory_offset_ = 0;
  std::atomic<bool> bitmaps_tracking_{false};
  mutable std::mutex bitmap_mutex_;  // bits of every bitmap (lock order: after meta_)

  uint64_t free_hint_ = 0;
  std::vector<uint32_t>* repair_refs_ = nullptr;  // references counted by a running repair
  uint64_t host_end_ = 0;  // end of the highest cluster allocated since opening
  std::vector<std::pair<uint64_t, uint64_t>> pending_;  // cluster ranges being allocated
  uint64_t compressed_tail_ = 0;                         // next free byte in the compressed cluster, 0: none
  // References dropped by L2/L1 changes still only in the caches. Their
  // refcounts fall (and the clusters become reusable) after flush_metadata has
  // written those tables: a refcount decrement or a reused cluster reaching the
  // disk before them would leave an on-disk L2 entry pointing at a free or
  // foreign cluster after a crash.
  std::vector<uint64_t> deferred_frees_;
  uint64_t deferred_reclaimable_ = 0;  // of those, clusters likely to become free
  // Sorted metadata extents for overlap checks, rebuilt after table moves.
  struct Extent {
    uint64_t begin, end;
    const char* what;
    uint64_t reach = 0;  // largest end among this and earlier extents
  };
  std::vector<Extent> overlap_index_;
  bool overlap_index_valid_ = false;
  std::atomic<bool> corrupt_{false};
  bool dirty_on_disk_ = false;

  mutable std::mutex meta_;
  std::shared_mutex drain_;
  RangeLocks ranges_;
};

}  // namespace kiln::block::qcow2
