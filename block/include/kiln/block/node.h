// A node of the block graph: a protocol (file, nbd) or a format (raw, qcow2,
// ...) stacked on one. Every method is thread-safe: tools keep many requests
// in flight from worker threads. Failures throw kiln::Error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kiln/block/types.h"
#include "kiln/common/key_value.h"

namespace kiln::block {
struct LockPermissions;
}

namespace kiln::block {

class Node {
 public:
  virtual ~Node() = default;
  Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  virtual std::string_view driver_name() const = 0;
  // The name the user gave (file name or URI).
  virtual const std::string& filename() const = 0;
  // Guest-visible size in bytes.
  virtual uint64_t size() const = 0;
  virtual bool read_only() const = 0;

  // Data path. Ranges must lie inside [0, size()); Image checks that.
  virtual void read(uint64_t offset, std::span<std::byte> buffer) = 0;
  virtual void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags = {}) = 0;
  // Default: writes zero buffers (or ENOTSUP with no_fallback).
  virtual void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags = {});
  // Advisory: the range's contents become unspecified. Default: nothing.
  virtual void discard(uint64_t offset, uint64_t length);
  virtual void flush() = 0;
  // Default: ENOTSUP.
  virtual void truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink);

  // Status of a prefix of [offset, offset+length): never zero-length for a range inside the image.
  virtual BlockStatus block_status(uint64_t offset, uint64_t length) = 0;

  // For zero-copy reads (splice/sendfile): where the bytes at `offset` lie
  // verbatim in an open host file, and how many of them (at most `length`)
  // continue contiguously there. nullopt when they do not (holes, zero or
  // compressed clusters, encryption, O_DIRECT, remote protocols). The answer
  // holds while the range is not written; formats that may move data to
  // other host offsets answer only while read-only, so it cannot go stale.
  virtual std::optional<HostExtent> host_extent(uint64_t offset, uint64_t length) {
    (void)offset, (void)length;
    return std::nullopt;
  }

  // Host bytes used by this node and its file children (qemu-img's "disk size"), or -1.
  virtual int64_t allocated_size() const;
  // Smallest request alignment the node handles without bouncing (1 = any).
  virtual uint32_t request_alignment() const { return 1; }
  // Allocation granularity for conversions (0 = none).
  virtual uint32_t cluster_size() const { return 0; }

  // Graph.
  virtual Node* file_child() const { return nullptr; }
  virtual Node* backing_child() const { return nullptr; }
  // The backing file name as stored in the image, and its format ("" when none).
  virtual std::string backing_filename() const { return {}; }
  virtual std::string backing_format() const { return {}; }
  // True when the image was left open without a clean close (qcow2 dirty bit).
  virtual bool dirty() const { return false; }

  // qemu-img info's "Format specific information" (null when none).
  virtual nlohmann::json format_specific_info() const { return nullptr; }
  // Key names used in format_specific_info()["data"] and the objects nested in
  // it, in the order qemu-img prints them (nlohmann::json objects sort their
  // keys): a printer orders each object's keys by their position in this list,
  // unlisted keys last. Empty: no particular order.
  virtual std::vector<std::string> format_specific_info_order() const { return {}; }
  // True for encrypted images (qemu-img info's "encrypted: yes").
  virtual bool encrypted() const { return false; }

  // Optional features; defaults throw the error qemu-img prints for them.
  virtual CheckResult check(CheckRepair repair);
  virtual bool supports_compressed_writes() const { return false; }
  virtual void write_compressed(uint64_t offset, std::span<const std::byte> data);
  // Compressed writes in two steps, so a caller can compress on all its
  // threads and still store in order: compress_for_write does the CPU work
  // only (thread-safe, no metadata touched; `out` keeps its capacity across
  // calls), write_compressed_prepared stores the result exactly as
  // write_compressed(offset, data) would. Defaults: nothing is done ahead.
  struct PreparedCompressed {
    std::vector<std::byte> bytes;   // the compressed units back to back
    std::vector<uint32_t> lengths;  // per unit: compressed length, 0 = stored plainly
    bool ready = false;             // false: compress when writing
  };
  virtual void compress_for_write(uint64_t offset, std::span<const std::byte> data, PreparedCompressed& out);
  virtual void write_compressed_prepared(uint64_t offset, std::span<const std::byte> data, const PreparedCompressed& prepared);
  virtual std::vector<SnapshotInfo> list_snapshots();
  virtual void create_snapshot(const std::string& name);
  virtual void apply_snapshot(const std::string& name_or_id);
  virtual void delete_snapshot(const std::string& name_or_id);
  virtual void amend(const KeyValueList& options);
  virtual void change_backing_file(const std::string& filename, const std::string& format);
  // Drops every allocation so the image reads through to its backing file
  // (qemu-img commit empties the committed image this way). Default: ENOTSUP.
  virtual void make_empty();

  // Persistent dirty bitmaps (qcow2). `consistent` is false for bitmaps left
  // in use by a crashed writer or otherwise unusable (qemu: "inconsistent").
  struct DirtyBitmapInfo {
    std::string name;
    uint64_t granularity = 0;
    bool enabled = false;  // the "auto" flag: tracks writes
    bool consistent = true;
  };
  virtual std::vector<DirtyBitmapInfo> dirty_bitmaps() { return {}; }
  // The state of bitmap `name` at `offset`: whether that granule is dirty and
  // how many bytes from `offset` (at most `length`) share the state. Throws
  // kiln::Error (ENOENT: "Bitmap 'NAME' is not found"; EINVAL when inconsistent).
  struct DirtyRun {
    uint64_t length = 0;
    bool dirty = false;
  };
  virtual DirtyRun dirty_bitmap_status(const std::string& name, uint64_t offset, uint64_t length);

  // Takes qemu-compatible image locks on protocol nodes (a no-op elsewhere);
  // throws when another process holds a conflicting lock.
  virtual void lock(const LockPermissions&) {}
};

}  // namespace kiln::block
