// The vmdk format node: a disk made of extents (flat, zero, hosted sparse,
// stream-optimized, ESX sparse) laid end to end, with an optional parent
// (delta link). See README.md for the locking and write ordering.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kiln/block/driver.h"
#include "kiln/block/node.h"
#include "vmdk/descriptor.h"
#include "vmdk/format.h"

namespace kiln::block::vmdk {

enum class ExtentKind { Flat, Zero, Sparse, Cowd };

struct Extent {
  ExtentKind kind = ExtentKind::Flat;
  std::string type_name;  // the descriptor's TYPE word; "" for an embedded-descriptor file
  std::string path;       // file path as opened
  std::unique_ptr<Node> owned_file;
  Node* file = nullptr;
  bool read_only = false;
  uint64_t start = 0;   // guest byte offset
  uint64_t length = 0;  // guest bytes
  uint64_t flat_offset = 0;  // Flat: bytes into the file

  // Sparse and Cowd.
  uint64_t grain_bytes = 0;
  uint32_t gtes_per_gt = 0;
  bool compressed = false;
  bool markers = false;
  bool zeroed_grain = false;
  bool gd_at_end = false;  // stream written by VMware: tables at the end, not writable here
  uint64_t file_size = 0;
  uint64_t next_free = 0;  // where the next grain goes (bytes)
  std::vector<uint32_t> gd;   // primary directory (sector numbers)
  std::vector<uint32_t> rgd;  // redundant directory, empty when absent
  uint64_t gd_offset = 0;     // sectors
  uint64_t rgd_offset = 0;    // sectors, 0 when absent
  std::vector<std::unique_ptr<uint32_t[]>> gts;  // primary tables, loaded on first use
  uint64_t loaded_tables = 0;
  SparseHeader header;

  // Stream-optimized writer: the grain being filled, compressed once complete.
  std::optional<uint64_t> pending_grain;
  std::vector<std::byte> pending;
};

class VmdkNode final : public Node {
 public:
  // Opens a VMDK on `file` (a sparse extent with embedded descriptor, a COWD
  // extent, or a descriptor file).
  VmdkNode(std::unique_ptr<Node> file, const OpenContext& context);
  ~VmdkNode() override;

  std::string_view driver_name() const override { return "vmdk"; }
  const std::string& filename() const override { return file_->filename(); }
  uint64_t size() const override { return size_; }
  bool read_only() const override { return read_only_; }
  uint32_t cluster_size() const override;
  Node* file_child() const override { return file_.get(); }
  Node* backing_child() const override { return backing_.get(); }
  std::string backing_filename() const override { return descriptor_.parent_file_name_hint; }
  std::string backing_format() const override { return descriptor_.parent_file_name_hint.empty() ? "" : "vmdk"; }
  int64_t allocated_size() const override;
  nlohmann::json format_specific_info() const override;
  std::vector<std::string> format_specific_info_order() const override {
    return {"cid", "parent-cid", "create-type", "extents", "compressed", "virtual-size", "filename", "cluster-size", "format"};
  }

  void read(uint64_t offset, std::span<std::byte> buffer) override;
  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override;
  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) override;
  void flush() override;
  BlockStatus block_status(uint64_t offset, uint64_t length) override;
  std::optional<HostExtent> host_extent(uint64_t offset, uint64_t length) override;
  CheckResult check(CheckRepair repair) override;
  bool supports_compressed_writes() const override;
  void write_compressed(uint64_t offset, std::span<const std::byte> data) override;

  const Descriptor& descriptor() const { return descriptor_; }
  const std::vector<Extent>& extents() const { return extents_; }

 private:
  enum class GrainKind { Unallocated, Zero, Data, Compressed };
  struct Mapping {
    GrainKind kind = GrainKind::Unallocated;
    uint64_t host = 0;   // Data: host byte of the queried offset; Compressed: host byte of the grain
    uint64_t bytes = 0;  // from the queried offset
  };

  void open_sparse_file(Extent& extent, std::span<const std::byte> first_sector);
  void open_cowd_file(Extent& extent, std::span<const std::byte> first_sector);
  void load_directory(Extent& extent, uint64_t gd_offset, uint64_t entries, std::vector<uint32_t>& out, const char* what);
  void open_extents(const OpenContext& context);
  void open_parent(const OpenContext& context);
  size_t extent_index(uint64_t offset) const;

  // With meta_ held.
  uint32_t* grain_table(Extent& extent, uint64_t gd_index, bool allocate);
  Mapping map(Extent& extent, uint64_t offset, uint64_t length);
  bool in_flight(const Extent& extent, uint64_t grain) const;
  void store_entries(Extent& extent, uint64_t first_grain, uint64_t count);

  void read_extent(Extent& extent, uint64_t offset, std::span<std::byte> buffer);
  void read_backing(uint64_t guest, std::span<std::byte> buffer);
  void read_compressed(Extent& extent, uint64_t grain, uint64_t host, uint64_t within, std::span<std::byte> buffer);
  void write_extent(Extent& extent, uint64_t offset, std::span<const std::byte> data);
  void write_sparse(Extent& extent, uint64_t offset, std::span<const std::byte> data);
  void write_stream(Extent& extent, uint64_t offset, std::span<const std::byte> data);
  void commit_pending(Extent& extent);
  void fill_grain(Extent& extent, uint64_t grain, uint32_t entry, std::span<std::byte> out);
  void zero_extent(Extent& extent, uint64_t offset, uint64_t length, ZeroFlags flags);
  void check_writable(const Extent& extent) const;
  void update_cid();

  std::unique_ptr<Node> file_;
  std::unique_ptr<Node> backing_;
  Descriptor descriptor_;
  std::string descriptor_text_;
  uint64_t descriptor_area_ = 0;   // embedded: byte offset of the descriptor, 0 for a descriptor file
  uint64_t descriptor_capacity_ = 0;  // embedded: bytes reserved for it
  std::vector<Extent> extents_;
  uint64_t size_ = 0;
  bool read_only_ = false;
  bool extent_paths_anywhere_ = false;  // open option extent-paths=any
  std::atomic<bool> cid_updated_{false};
  std::mutex cid_mutex_;

  mutable std::mutex meta_;
  std::condition_variable allocated_;
  struct InFlight {
    const Extent* extent;
    uint64_t first, end;  // grain indexes
  };
  std::vector<InFlight> in_flight_;
};

}  // namespace kiln::block::vmdk
