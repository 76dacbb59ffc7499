// VDI (VirtualBox Disk Image) on-disk structures: the pre-header and the v1.1
// header in the first sector, and the block map values. All fields are
// little-endian. Layout facts: /work/shared/reference/vdi-notes.md.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "kiln/common/error.h"

namespace kiln::block::vdi {

inline constexpr uint32_t kSignature = 0xBEDA107F;
inline constexpr uint32_t kVersion1_1 = 0x00010001;
inline constexpr uint32_t kSignatureOffset = 0x40;
inline constexpr uint32_t kHeaderStart = 0x48;        // cbHeader counts from here
inline constexpr uint32_t kHeaderSizeV1 = 0x180;      // plain v1.1 header (what QEMU and kiln write)
inline constexpr uint32_t kHeaderSizeV1Plus = 0x190;  // with LCHS geometry (what VirtualBox writes)
inline constexpr uint32_t kHeaderSectorBytes = 512;   // header sector (pre-header + header + padding)
inline constexpr uint32_t kSectorSize = 512;
inline constexpr uint32_t kDefaultBlockSize = 1u << 20;
// Smallest file that holds every v1.1 field kiln reads.
inline constexpr uint32_t kMinHeaderBytes = kHeaderStart + kHeaderSizeV1;

// Block map entry values; anything below kBlockZero is a data block index.
inline constexpr uint32_t kBlockFree = 0xFFFFFFFF;
inline constexpr uint32_t kBlockZero = 0xFFFFFFFE;
inline constexpr bool is_allocated(uint32_t entry) { return entry < kBlockZero; }

// QEMU's limit: the block map (4 bytes per block) must stay below 2 GiB.
inline constexpr uint32_t kMaxBlocks = 0x1fffff80;

enum ImageType : uint32_t { kTypeNormal = 1, kTypeFixed = 2, kTypeUndo = 3, kTypeDiff = 4 };

// A UUID as stored in the file (Microsoft GUID layout: first three fields little-endian).
using Uuid = std::array<std::byte, 16>;
inline bool is_null(const Uuid& uuid) {
  for (std::byte b : uuid) {
    if (b != std::byte{0}) return false;
  }
  return true;
}
// A random (version 4) UUID in the stored layout.
Uuid random_uuid();
// RFC 4122 text of a stored UUID.
std::string uuid_text(const Uuid& uuid);

inline uint32_t load_le32(const std::byte* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 | static_cast<uint32_t>(p[2]) << 16 |
         static_cast<uint32_t>(p[3]) << 24;
}
inline uint64_t load_le64(const std::byte* p) { return load_le32(p) | static_cast<uint64_t>(load_le32(p + 4)) << 32; }
inline void store_le32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
inline void store_le64(std::byte* p, uint64_t v) {
  store_le32(p, static_cast<uint32_t>(v));
  store_le32(p + 4, static_cast<uint32_t>(v >> 32));
}

struct Header {
  // The first sector as read (or as created): encode() patches the fields
  // below into it so the text, comment, flags and LCHS geometry survive.
  std::array<std::byte, kHeaderSectorBytes> sector{};
  uint32_t signature = kSignature;
  uint32_t version = kVersion1_1;
  uint32_t header_size = kHeaderSizeV1;
  uint32_t image_type = kTypeNormal;
  uint32_t image_flags = 0;
  uint32_t offset_bmap = 0;
  uint32_t offset_data = 0;
  uint32_t sector_size = kSectorSize;
  uint64_t disk_size = 0;
  uint32_t block_size = kDefaultBlockSize;
  uint32_t block_extra = 0;
  uint32_t blocks_in_image = 0;
  uint32_t blocks_allocated = 0;
  Uuid uuid_image{};
  Uuid uuid_last_snap{};
  Uuid uuid_link{};
  Uuid uuid_parent{};

  // Bytes from one data block's start to the next.
  uint64_t block_stride() const { return uint64_t{block_extra} + block_size; }
  uint64_t block_map_bytes() const { return uint64_t{blocks_in_image} * 4; }
  // File offset of the data of data block `index`.
  uint64_t data_block_offset(uint32_t index) const { return offset_data + index * block_stride() + block_extra; }
  bool fixed() const { return image_type == kTypeFixed; }
};

// Decodes the first sector (`sector` may be shorter than 512 bytes; the rest
// reads as zero). Does not validate beyond reading.
Header decode_header(std::span<const std::byte> sector);
// The header sector with the fields stored.
std::array<std::byte, kHeaderSectorBytes> encode_header(const Header& header);

// "Unsupported VDI image size ..." for a size beyond kMaxBlocks blocks of 1 MiB.
Error unsupported_size(uint64_t size);

// Throws the one-line reason (without the file name) why kiln cannot open an
// image with this header whose file is `file_size` bytes long; also rejects
// headers whose block map lies past the end of the file.
void validate_header(const Header& header, uint64_t file_size);

// The header of a new image of `size` bytes (rounded up to a sector), in
// QEMU's layout: block map at 512, data right after the sector-rounded map.
Header new_header(uint64_t size, bool fixed);

inline uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

}  // namespace kiln::block::vdi
