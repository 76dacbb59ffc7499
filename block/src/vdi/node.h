// The VDI format node. Guest block i lives in data block bmap[i] of the data
// area; unallocated blocks read as zeroes.
//
// Concurrency: `layout_` is held shared by every data-path call and
// exclusively by operations that move data blocks (freeing a block compacts
// the data area, growing may relocate blocks, repair). `meta_` guards the
// header, the block map and the allocation state; it is never held across
// data I/O. A new block gets its data index reserved under `meta_`, its data
// written without it, then its map entry published; concurrent writers of the
// same block wait for the publication instead of allocating twice.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_set>
#include <vector>

#include "kiln/block/node.h"
#include "vdi/format.h"

namespace kiln::block::vdi {

class VdiNode final : public Node {
 public:
  // `header` must have passed validate_header(); `block_map` has blocks_in_image entries.
  VdiNode(std::unique_ptr<Node> file, const Header& header, std::vector<uint32_t> block_map, bool read_only);

  std::string_view driver_name() const override { return "vdi"; }
  const std::string& filename() const override { return file_->filename(); }
  uint64_t size() const override { return size_.load(std::memory_order_relaxed); }
  bool read_only() const override { return read_only_; }
  uint32_t cluster_size() const override { return block_size_; }
  Node* file_child() const override { return file_.get(); }

  void read(uint64_t offset, std::span<std::byte> buffer) override;
  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override;
  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) override;
  void discard(uint64_t offset, uint64_t length) override;
  void flush() override;
  void truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink) override;
  BlockStatus block_status(uint64_t offset, uint64_t length) override;
  std::optional<HostExtent> host_extent(uint64_t offset, uint64_t length) override;
  CheckResult check(CheckRepair repair) override;

  // For tests and tools: a copy of the current header.
  Header header() const;

 private:
  // A run of guest blocks from the queried offset that share one mapping.
  struct Run {
    uint32_t entry = kBlockFree;  // map entry of the first block
    uint64_t host = 0;            // file offset of the first byte (allocated runs)
    uint64_t bytes = 0;
  };
  // Under meta_: the run at `offset`, at most `max_bytes` long.
  Run lookup(uint64_t offset, uint64_t max_bytes) const;

  void check_writable();
  // Refreshes the modification UUID on the first change after opening (as VirtualBox does).
  void note_modification();
  // Writes into guest block `block` (unallocated when looked up): allocates it unless the data is all zero.
  void write_new_block(uint32_t block, uint64_t in_block, std::span<const std::byte> data, WriteFlags flags);
  // Frees allocated guest blocks [first, first+count) with layout_ held exclusively.
  void free_blocks(uint32_t first, uint32_t count, uint32_t marker);
  void zero_or_discard(uint64_t offset, uint64_t length, bool discard, ZeroFlags flags);
  // Moves data block `from` to index `to` (file copy). Layout and meta held.
  void copy_data_block(uint32_t from, uint32_t to, std::span<std::byte> buffer);
  // Makes room for a block map of `entries` entries, moving the first data blocks to the end.
  void grow_block_map(uint32_t entries);

  // Metadata writes (meta_ held).
  void write_header();
  void write_map_sector(uint32_t entry_index);
  void write_map_range(uint32_t first, uint32_t end);
  // Recomputes owners_, next_index_ and map_corrupt_ from the block map.
  void rebuild_allocation_state();
  uint64_t data_end() const { return header_.offset_data + uint64_t{next_index_} * header_.block_stride(); }

  struct Scan {
    std::vector<std::string> messages;
    uint64_t corruptions = 0;
    std::vector<uint32_t> out_of_range;  // guest blocks whose entry is too large
    std::vector<uint32_t> duplicates;    // guest blocks sharing a data block with an earlier one
    uint32_t counted = 0;
  };
  Scan scan_block_map() const;
  void compact_data_area(std::span<std::byte> buffer);

  std::unique_ptr<Node> file_;
  const bool read_only_;
  const uint32_t block_size_;
  std::atomic<uint64_t> size_;

  mutable std::mutex meta_;
  Header header_;
  std::vector<uint32_t> bmap_;
  std::vector<uint32_t> owners_;  // data index -> guest block (kBlockFree: none)
  uint32_t next_index_ = 0;       // data index the next new block gets
  bool map_corrupt_ = false;      // duplicate or out-of-range entries: writes refused until repaired
  std::unordered_set<uint32_t> allocating_;  // guest blocks whose data is being written
  std::condition_variable allocated_;
  std::atomic<bool> modified_{false};

  std::shared_mutex layout_;
};

}  // namespace kiln::block::vdi
