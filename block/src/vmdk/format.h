// VMDK on-disk structures: the hosted sparse extent header ("KDMV"), the
// stream-optimized markers and the ESX sparse ("COWD") header. Layouts are in
// /work/shared/reference/vmdk-notes.md; everything is little-endian and
// counted in 512-byte sectors.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

namespace kiln::block::vmdk {

inline constexpr uint64_t kSector = 512;
inline constexpr uint32_t kSparseMagic = 0x564D444B;  // "KDMV"
inline constexpr uint32_t kCowdMagic = 0x44574F43;    // "COWD"
inline constexpr uint64_t kGdAtEnd = ~uint64_t{0};

inline constexpr uint32_t kFlagNewlineTest = 1u << 0;
inline constexpr uint32_t kFlagRedundantGd = 1u << 1;
inline constexpr uint32_t kFlagZeroedGrain = 1u << 2;
inline constexpr uint32_t kFlagCompressed = 1u << 16;
inline constexpr uint32_t kFlagMarkers = 1u << 17;

inline constexpr uint16_t kCompressDeflate = 1;

// Grain table entry meaning "reads as zeroes" (with kFlagZeroedGrain).
inline constexpr uint32_t kGteZeroed = 1;

// Stream-optimized metadata marker types.
inline constexpr uint32_t kMarkerEndOfStream = 0;
inline constexpr uint32_t kMarkerGrainTable = 1;
inline constexpr uint32_t kMarkerGrainDirectory = 2;
inline constexpr uint32_t kMarkerFooter = 3;
// Grain marker: u64 lba + u32 compressed size, data follows.
inline constexpr size_t kGrainMarkerBytes = 12;

// What QEMU writes and accepts.
inline constexpr uint32_t kMaxGtesPerGt = 512;
inline constexpr uint64_t kMaxGrainSectors = 0x200000;
inline constexpr uint64_t kMaxGdEntries = 32u << 20;
inline constexpr uint64_t kDefaultGrainSectors = 128;
// Compressed grains are inflated whole into memory: kiln's bound (8 MiB).
inline constexpr uint64_t kMaxCompressedGrainSectors = 16384;
// Grain table cache allowance beyond the extent file's size (see grain_table).
inline constexpr uint64_t kTableCacheSlack = 1 << 20;
inline constexpr uint64_t kDescriptorOffsetSectors = 1;
inline constexpr uint64_t kDescriptorSectors = 20;
// Extents of the twoGbMaxExtent* subformats.
inline constexpr uint64_t kSplitExtentBytes = 0x80000000ull;
// COWD grain tables have a fixed size.
inline constexpr uint32_t kCowdGtes = 4096;

inline uint16_t load_le16(const std::byte* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t load_le32(const std::byte* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t load_le64(const std::byte* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline void store_le16(std::byte* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void store_le32(std::byte* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void store_le64(std::byte* p, uint64_t v) { std::memcpy(p, &v, 8); }
static_assert(std::endian::native == std::endian::little, "VMDK fields are read with host-order memcpy");

// The first sector of a hosted sparse extent (also its stream-optimized footer).
struct SparseHeader {
  uint32_t version = 1;
  uint32_t flags = kFlagNewlineTest | kFlagRedundantGd;
  uint64_t capacity = 0;  // sectors
  uint64_t grain_sectors = kDefaultGrainSectors;
  uint64_t descriptor_offset = 0;
  uint64_t descriptor_sectors = 0;
  uint32_t gtes_per_gt = kMaxGtesPerGt;
  uint64_t rgd_offset = 0;
  uint64_t gd_offset = 0;
  uint64_t overhead = 0;
  uint8_t unclean_shutdown = 0;
  uint16_t compress_algorithm = 0;

  static SparseHeader decode(std::span<const std::byte> sector) {
    SparseHeader h;
    const std::byte* p = sector.data();
    h.version = load_le32(p + 4);
    h.flags = load_le32(p + 8);
    h.capacity = load_le64(p + 12);
    h.grain_sectors = load_le64(p + 20);
    h.descriptor_offset = load_le64(p + 28);
    h.descriptor_sectors = load_le64(p + 36);
    h.gtes_per_gt = load_le32(p + 44);
    h.rgd_offset = load_le64(p + 48);
    h.gd_offset = load_le64(p + 56);
    h.overhead = load_le64(p + 64);
    h.unclean_shutdown = static_cast<uint8_t>(p[72]);
    h.compress_algorithm = load_le16(p + 77);
    return h;
  }

  void encode(std::span<std::byte> sector) const {
    std::byte* p = sector.data();
    std::memset(p, 0, kSector);
    store_le32(p, kSparseMagic);
    store_le32(p + 4, version);
    store_le32(p + 8, flags);
    store_le64(p + 12, capacity);
    store_le64(p + 20, grain_sectors);
    store_le64(p + 28, descriptor_offset);
    store_le64(p + 36, descriptor_sectors);
    store_le32(p + 44, gtes_per_gt);
    store_le64(p + 48, rgd_offset);
    store_le64(p + 56, gd_offset);
    store_le64(p + 64, overhead);
    p[72] = std::byte{unclean_shutdown};
    p[73] = std::byte{'\n'};
    p[74] = std::byte{' '};
    p[75] = std::byte{'\r'};
    p[76] = std::byte{'\n'};
    store_le16(p + 77, compress_algorithm);
  }
};

// The leading fields of an ESX sparse ("COWD") extent header.
struct CowdHeader {
  uint32_t version = 0;
  uint32_t flags = 0;
  uint32_t capacity = 0;       // sectors
  uint32_t grain_sectors = 0;
  uint32_t gd_offset = 0;      // sectors
  uint32_t gd_entries = 0;

  static CowdHeader decode(std::span<const std::byte> sector) {
    CowdHeader h;
    const std::byte* p = sector.data();
    h.version = load_le32(p + 4);
    h.flags = load_le32(p + 8);
    h.capacity = load_le32(p + 12);
    h.grain_sectors = load_le32(p + 16);
    h.gd_offset = load_le32(p + 20);
    h.gd_entries = load_le32(p + 24);
    return h;
  }
};

// Where QEMU puts the metadata of a new sparse extent of `capacity` sectors:
// header, descriptor area, redundant GD + GTs, primary GD + GTs, then grains.
struct SparseLayout {
  uint64_t gt_count = 0;
  uint64_t gd_sectors = 0;
  uint64_t gt_sectors = 0;  // one table
  uint64_t rgd_offset = 0;
  uint64_t gd_offset = 0;
  uint64_t overhead = 0;

  static SparseLayout compute(uint64_t capacity) {
    SparseLayout l;
    const uint64_t sectors_per_gt = kMaxGtesPerGt * kDefaultGrainSectors;
    l.gt_count = (capacity + sectors_per_gt - 1) / sectors_per_gt;
    l.gt_sectors = (kMaxGtesPerGt * 4 + kSector - 1) / kSector;
    l.gd_sectors = (l.gt_count * 4 + kSector - 1) / kSector;
    l.rgd_offset = kDescriptorOffsetSectors + kDescriptorSectors;
    l.gd_offset = l.rgd_offset + l.gd_sectors + l.gt_sectors * l.gt_count;
    const uint64_t end = l.gd_offset + l.gd_sectors + l.gt_sectors * l.gt_count;
    l.overhead = (end + kDefaultGrainSectors - 1) / kDefaultGrainSectors * kDefaultGrainSectors;
    return l;
  }
};

}  // namespace kiln::block::vmdk
