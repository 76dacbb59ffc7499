// qcow2 on-disk layout: constants, big-endian helpers, header parsing and
// encoding. Everything here is pure (no I/O) so it can be tested and fuzzed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace kiln::block::qcow2 {

inline constexpr uint32_t kMagic = 0x514649fb;
inline constexpr uint32_t kMinClusterBits = 9;
inline constexpr uint32_t kMaxClusterBits = 21;
inline constexpr uint32_t kV2HeaderLength = 72;
inline constexpr uint32_t kV3HeaderLength = 104;
inline constexpr uint64_t kMaxL1Bytes = 32ull << 20;        // qemu's implementation limit
inline constexpr uint64_t kMaxRefTableBytes = 8ull << 20;   // qemu's implementation limit
inline constexpr uint32_t kMaxSnapshots = 65536;
inline constexpr uint32_t kMaxBackingNameLength = 1023;

// L1/L2/refcount table entry bits.
inline constexpr uint64_t kOffsetMask = 0x00fffffffffffe00ull;  // bits 9-55
inline constexpr uint64_t kCopied = 1ull << 63;
inline constexpr uint64_t kCompressed = 1ull << 62;
inline constexpr uint64_t kZeroFlag = 1ull;
inline constexpr uint64_t kL1Reserved = 0x7f000000000001ffull;
inline constexpr uint64_t kL2Reserved = 0x3f000000000001feull;
inline constexpr uint64_t kRefTableReserved = 0x1ffull;

// Feature bits.
inline constexpr uint64_t kIncompatDirty = 1ull << 0;
inline constexpr uint64_t kIncompatCorrupt = 1ull << 1;
inline constexpr uint64_t kIncompatDataFile = 1ull << 2;
inline constexpr uint64_t kIncompatCompression = 1ull << 3;
inline constexpr uint64_t kIncompatExtendedL2 = 1ull << 4;
inline constexpr uint64_t kIncompatKnown = 0x1f;
inline constexpr uint64_t kCompatLazyRefcounts = 1ull << 0;
inline constexpr uint64_t kAutoclearBitmaps = 1ull << 0;
inline constexpr uint64_t kAutoclearDataFileRaw = 1ull << 1;

// Header extension types.
inline constexpr uint32_t kExtEnd = 0;
inline constexpr uint32_t kExtBackingFormat = 0xe2792aca;
inline constexpr uint32_t kExtFeatureTable = 0x6803f857;
inline constexpr uint32_t kExtBitmaps = 0x23852875;
inline constexpr uint32_t kExtCrypto = 0x0537be77;
inline constexpr uint32_t kExtDataFile = 0x44415441;

enum class CompressionType : uint8_t { Deflate = 0, Zstd = 1 };

inline uint16_t load_be16(const std::byte* p) {
  return static_cast<uint16_t>((std::to_integer<uint16_t>(p[0]) << 8) | std::to_integer<uint16_t>(p[1]));
}
inline uint32_t load_be32(const std::byte* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline uint64_t load_be64(const std::byte* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
inline void store_be16(std::byte* p, uint16_t v) {
  p[0] = std::byte(v >> 8);
  p[1] = std::byte(v & 0xff);
}
inline void store_be32(std::byte* p, uint32_t v) {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline void store_be64(std::byte* p, uint64_t v) {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}

struct HeaderExtension {
  uint32_t type = 0;
  std::vector<std::byte> data;
};

struct FeatureName {
  uint8_t type = 0;  // 0 incompatible, 1 compatible, 2 autoclear
  uint8_t bit = 0;
  std::string name;
};

struct Header {
  uint32_t version = 3;
  uint64_t backing_file_offset = 0;
  uint32_t backing_file_size = 0;
  uint32_t cluster_bits = 16;
  uint64_t size = 0;
  uint32_t crypt_method = 0;
  uint32_t l1_size = 0;
  uint64_t l1_table_offset = 0;
  uint64_t refcount_table_offset = 0;
  uint32_t refcount_table_clusters = 0;
  uint32_t nb_snapshots = 0;
  uint64_t snapshots_offset = 0;
  uint64_t incompatible_features = 0;
  uint64_t compatible_features = 0;
  uint64_t autoclear_features = 0;
  uint32_t refcount_order = 4;
  uint32_t header_length = kV3HeaderLength;
  uint8_t compression_type = 0;
  // Bytes 105..header_length, kept as found so rewriting the header preserves them.
  std::vector<std::byte> extra_fields;

  // Everything in cluster 0 besides the fixed fields.
  std::vector<HeaderExtension> extensions;  // in file order, unknown ones included
  std::string backing_file;

  uint64_t cluster_size() const { return 1ull << cluster_bits; }
};

// Parses and validates cluster 0 (`head` holds at least the whole first
// cluster or the whole file if smaller). `file_size` bounds every table.
// Throws kiln::Error naming `filename` on any inconsistency.
Header parse_header(std::span<const std::byte> head, uint64_t file_size, const std::string& filename);

// Encodes the header, its extensions and backing file name into one cluster.
// Throws when they do not fit. Sets backing_file_offset/size accordingly.
std::vector<std::byte> encode_header(Header& header);

// The feature name table qemu writes into new v3 images.
HeaderExtension default_feature_table();
std::vector<FeatureName> parse_feature_table(const Header& header);

const HeaderExtension* find_extension(const Header& header, uint32_t type);
void set_extension(Header& header, uint32_t type, std::vector<std::byte> data);
void remove_extension(Header& header, uint32_t type);

// Snapshot table entry (in memory).
struct Snapshot {
  uint64_t l1_table_offset = 0;
  uint32_t l1_size = 0;
  std::string id;
  std::string name;
  uint32_t date_sec = 0;
  uint32_t date_nsec = 0;
  uint64_t vm_clock_nsec = 0;
  uint64_t vm_state_size = 0;
  uint64_t disk_size = 0;
  uint64_t icount = UINT64_MAX;
  std::vector<std::byte> extra;  // extra data as found (at least 16 or 24 bytes when written)
};

std::vector<Snapshot> parse_snapshot_table(std::span<const std::byte> table, uint32_t count, const std::string& filename);
std::vector<std::byte> encode_snapshot_table(const std::vector<Snapshot>& snapshots);

// Size in bytes of refcount table + blocks needed to cover `clusters` clusters
// (the blocks and table covering themselves too).
uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size, uint32_t refcount_order);
// Host bytes of a fully allocated image of `virtual_size`.
uint64_t fully_allocated_size(uint64_t virtual_size, uint64_t cluster_size, uint32_t refcount_order, bool extended_l2);

}  // namespace kiln::block::qcow2
