// Vocabulary types of the block layer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::block {

// Host cache modes, as qemu's -t/-T/--cache.
enum class CacheMode {
  Writeback,     // page cache, flush on request (default)
  None,          // O_DIRECT, flush on request
  Unsafe,        // page cache, flushes ignored
  Directsync,    // O_DIRECT | O_DSYNC
  Writethrough,  // O_DSYNC
};
std::optional<CacheMode> parse_cache_mode(std::string_view name);
std::string_view to_string(CacheMode mode);

enum class Preallocation { Off, Metadata, Falloc, Full };
std::optional<Preallocation> parse_preallocation(std::string_view name);
std::string_view to_string(Preallocation mode);

// Block status bits (cf. qemu's BDRV_BLOCK_*). Reported for a range starting at
// the queried offset.
enum StatusFlags : uint32_t {
  kStatusData = 1u << 0,         // contents are stored data
  kStatusZero = 1u << 1,         // reads return zeroes
  kStatusAllocated = 1u << 2,    // this layer defines the contents (not its backing file)
  kStatusOffsetValid = 1u << 3,  // host_offset is meaningful
};

// Reads as zeroes without stored data: nothing to read or copy.
inline constexpr bool reads_as_hole(uint32_t flags) { return (flags & kStatusZero) && !(flags & kStatusData); }

struct BlockStatus {
  uint64_t length = 0;  // bytes from the queried offset sharing this status
  uint32_t flags = 0;
  uint64_t host_offset = 0;         // offset in host_file, with kStatusOffsetValid
  std::string host_file;            // file holding the data, with kStatusOffsetValid
};

// Bytes stored verbatim in an open host file (Node::host_extent).
struct HostExtent {
  int fd = -1;           // owned by the node
  uint64_t offset = 0;   // in that file
  uint64_t length = 0;   // contiguous bytes there, at least 1
};

struct WriteFlags {
  bool fua = false;  // force unit access: durable when the call returns
};

struct ZeroFlags {
  bool may_unmap = false;    // the range may become a hole
  bool no_fallback = false;  // fail with ENOTSUP rather than write zero buffers
};

struct SnapshotInfo {
  std::string id;
  std::string name;
  uint64_t vm_state_size = 0;
  int64_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t icount = UINT64_MAX;  // UINT64_MAX when not recorded
};

// What `check` found and repaired; field meanings follow qemu-img check.
struct CheckResult {
  uint64_t corruptions = 0;
  uint64_t leaks = 0;
  uint64_t check_errors = 0;
  uint64_t corruptions_fixed = 0;
  uint64_t leaks_fixed = 0;
  uint64_t image_end_offset = 0;
  uint64_t total_clusters = 0;
  uint64_t allocated_clusters = 0;
  uint64_t fragmented_clusters = 0;
  uint64_t compressed_clusters = 0;
  std::vector<std::string> messages;  // one line per finding, printed by the tool
};

enum class CheckRepair { None, Leaks, All };

// Result of `measure`: host bytes needed for a new image.
struct MeasureResult {
  uint64_t required = 0;
  uint64_t fully_allocated = 0;
  std::optional<uint64_t> bitmaps;
};

}  // namespace kiln::block
