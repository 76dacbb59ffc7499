#include "vdi/format.h"

#include <algorithm>
#include <cstring>
#include <random>

#include <fmt/format.h>

#include "kiln/common/error.h"

namespace kiln::block::vdi {
namespace {

// Field offsets from the start of the file.
constexpr size_t kOffVersion = 0x44;
constexpr size_t kOffHeaderSize = 0x48;
constexpr size_t kOffImageType = 0x4C;
constexpr size_t kOffImageFlags = 0x50;
constexpr size_t kOffOffsetBmap = 0x154;
constexpr size_t kOffOffsetData = 0x158;
constexpr size_t kOffSectorSize = 0x168;
constexpr size_t kOffDiskSize = 0x170;
constexpr size_t kOffBlockSize = 0x178;
constexpr size_t kOffBlockExtra = 0x17C;
constexpr size_t kOffBlocksInImage = 0x180;
constexpr size_t kOffBlocksAllocated = 0x184;
constexpr size_t kOffUuidImage = 0x188;
constexpr size_t kOffUuidLastSnap = 0x198;
constexpr size_t kOffUuidLink = 0x1A8;
constexpr size_t kOffUuidParent = 0x1B8;

// The largest header that still fits in the first sector.
constexpr uint32_t kMaxHeaderSize = kHeaderSectorBytes - kHeaderStart;

constexpr char kFileInfo[] = "<<< Kiln VM Virtual Disk Image >>>\n";

Uuid load_uuid(const std::byte* p) {
  Uuid uuid;
  std::memcpy(uuid.data(), p, uuid.size());
  return uuid;
}

}  // namespace

Uuid random_uuid() {
  static thread_local std::mt19937_64 generator{std::random_device{}()};
  std::array<std::byte, 16> rfc;  // RFC 4122 byte order
  for (size_t i = 0; i < rfc.size(); i += 8) {
    const uint64_t bits = generator();
    for (size_t j = 0; j < 8; ++j) rfc[i + j] = static_cast<std::byte>(bits >> (8 * j));
  }
  rfc[6] = (rfc[6] & std::byte{0x0F}) | std::byte{0x40};  // version 4
  rfc[8] = (rfc[8] & std::byte{0x3F}) | std::byte{0x80};  // RFC 4122 variant
  // Stored as VirtualBox does: time_low, time_mid and time_hi little-endian.
  Uuid stored = rfc;
  std::reverse(stored.begin(), stored.begin() + 4);
  std::reverse(stored.begin() + 4, stored.begin() + 6);
  std::reverse(stored.begin() + 6, stored.begin() + 8);
  return stored;
}

std::string uuid_text(const Uuid& uuid) {
  auto byte = [&](size_t i) { return std::to_integer<unsigned>(uuid[i]); };
  return fmt::format("{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}", byte(3),
                     byte(2), byte(1), byte(0), byte(5), byte(4), byte(7), byte(6), byte(8), byte(9), byte(10), byte(11), byte(12),
                     byte(13), byte(14), byte(15));
}

Header decode_header(std::span<const std::byte> sector) {
  Header h;
  std::copy_n(sector.begin(), std::min<size_t>(sector.size(), h.sector.size()), h.sector.begin());
  const std::byte* p = h.sector.data();
  h.signature = load_le32(p + kSignatureOffset);
  h.version = load_le32(p + kOffVersion);
  h.header_size = load_le32(p + kOffHeaderSize);
  h.image_type = load_le32(p + kOffImageType);
  h.image_flags = load_le32(p + kOffImageFlags);
  h.offset_bmap = load_le32(p + kOffOffsetBmap);
  h.offset_data = load_le32(p + kOffOffsetData);
  h.sector_size = load_le32(p + kOffSectorSize);
  h.disk_size = load_le64(p + kOffDiskSize);
  h.block_size = load_le32(p + kOffBlockSize);
  h.block_extra = load_le32(p + kOffBlockExtra);
  h.blocks_in_image = load_le32(p + kOffBlocksInImage);
  h.blocks_allocated = load_le32(p + kOffBlocksAllocated);
  h.uuid_image = load_uuid(p + kOffUuidImage);
  h.uuid_last_snap = load_uuid(p + kOffUuidLastSnap);
  h.uuid_link = load_uuid(p + kOffUuidLink);
  h.uuid_parent = load_uuid(p + kOffUuidParent);
  return h;
}

std::array<std::byte, kHeaderSectorBytes> encode_header(const Header& h) {
  std::array<std::byte, kHeaderSectorBytes> out = h.sector;
  std::byte* p = out.data();
  store_le32(p + kSignatureOffset, h.signature);
  store_le32(p + kOffVersion, h.version);
  store_le32(p + kOffHeaderSize, h.header_size);
  store_le32(p + kOffImageType, h.image_type);
  store_le32(p + kOffImageFlags, h.image_flags);
  store_le32(p + kOffOffsetBmap, h.offset_bmap);
  store_le32(p + kOffOffsetData, h.offset_data);
  store_le32(p + kOffSectorSize, h.sector_size);
  store_le64(p + kOffDiskSize, h.disk_size);
  store_le32(p + kOffBlockSize, h.block_size);
  store_le32(p + kOffBlockExtra, h.block_extra);
  store_le32(p + kOffBlocksInImage, h.blocks_in_image);
  store_le32(p + kOffBlocksAllocated, h.blocks_allocated);
  std::memcpy(p + kOffUuidImage, h.uuid_image.data(), 16);
  std::memcpy(p + kOffUuidLastSnap, h.uuid_last_snap.data(), 16);
  std::memcpy(p + kOffUuidLink, h.uuid_link.data(), 16);
  std::memcpy(p + kOffUuidParent, h.uuid_parent.data(), 16);
  return out;
}

Error unsupported_size(uint64_t size) {
  return Error(ENOTSUP, fmt::format("Unsupported VDI image size (size is 0x{:x}, max supported is 0x{:x})", size,
                                    uint64_t{kMaxBlocks} * kDefaultBlockSize));
}

void validate_header(const Header& h, uint64_t file_size) {
  auto unsupported = [](std::string reason) { return Error(ENOTSUP, "unsupported VDI image (" + reason + ")"); };
  auto invalid = [](std::string reason) { return Error(EINVAL, "invalid VDI image (" + reason + ")"); };
  // The checks QEMU makes, in its order and with its wording.
  const uint64_t max_size = uint64_t{kMaxBlocks} * kDefaultBlockSize;
  if (h.disk_size > max_size) throw unsupported_size(h.disk_size);
  if (h.signature != kSignature) throw Error(EINVAL, fmt::format("Image not in VDI format (bad signature {:08x})", h.signature));
  if (h.version != kVersion1_1) throw unsupported(fmt::format("version {}.{}", h.version >> 16, h.version & 0xFFFF));
  if (h.offset_bmap % kSectorSize != 0) throw unsupported(fmt::format("unaligned block map offset 0x{:x}", h.offset_bmap));
  if (h.offset_data % kSectorSize != 0) throw unsupported(fmt::format("unaligned data offset 0x{:x}", h.offset_data));
  if (h.sector_size != kSectorSize) throw unsupported(fmt::format("sector size {} is not {}", h.sector_size, kSectorSize));
  if (h.block_size != kDefaultBlockSize) throw unsupported(fmt::format("block size {} is not {}", h.block_size, kDefaultBlockSize));
  const uint64_t room = uint64_t{h.blocks_in_image} * h.block_size;
  // QEMU rounds the size up to a sector first (VBoxManage convertfromraw writes unrounded sizes).
  const uint64_t disk_size = round_up(h.disk_size, kSectorSize);
  if (disk_size > room) throw unsupported(fmt::format("disk size {}, image bitmap has room for {}", disk_size, room));
  if (!is_null(h.uuid_link)) throw unsupported("non-NULL link UUID");
  if (!is_null(h.uuid_parent)) throw unsupported("non-NULL parent UUID");
  if (h.blocks_in_image > kMaxBlocks) throw unsupported(fmt::format("too many blocks {}, max is {}", h.blocks_in_image, kMaxBlocks));

  // Kiln's own checks: everything later code relies on.
  if (h.header_size < kHeaderSizeV1 || h.header_size > kMaxHeaderSize) {
    throw invalid(fmt::format("header size {} is not between {} and {}", h.header_size, kHeaderSizeV1, kMaxHeaderSize));
  }
  if (h.image_type == kTypeDiff) throw unsupported("differencing images are not supported");
  if (h.image_type != kTypeNormal && h.image_type != kTypeFixed && h.image_type != kTypeUndo) {
    throw unsupported(fmt::format("image type {}", h.image_type));
  }
  if (h.block_extra % kSectorSize != 0 || h.block_extra > h.block_size) {
    throw unsupported(fmt::format("block extra size {} is not a multiple of {} up to the block size", h.block_extra, kSectorSize));
  }
  if (h.offset_bmap < kHeaderSectorBytes) {
    throw invalid(fmt::format("block map offset 0x{:x} overlaps the header", h.offset_bmap));
  }
  const uint64_t map_end = h.offset_bmap + h.block_map_bytes();
  if (map_end > file_size) {
    throw invalid(fmt::format("block map of {} entries at 0x{:x} lies past the end of the file ({} bytes)", h.blocks_in_image,
                              h.offset_bmap, file_size));
  }
  if (h.offset_data < map_end) {
    throw invalid(fmt::format("data offset 0x{:x} overlaps the block map (which ends at 0x{:x})", h.offset_data, map_end));
  }
}

Header new_header(uint64_t size, bool fixed) {
  Header h;
  std::memcpy(h.sector.data(), kFileInfo, sizeof kFileInfo - 1);
  h.image_type = fixed ? kTypeFixed : kTypeNormal;
  h.disk_size = round_up(size, kSectorSize);
  h.blocks_in_image = static_cast<uint32_t>((h.disk_size + h.block_size - 1) / h.block_size);
  h.offset_bmap = kHeaderSectorBytes;
  h.offset_data = static_cast<uint32_t>(h.offset_bmap + round_up(h.block_map_bytes(), kSectorSize));
  h.blocks_allocated = fixed ? h.blocks_in_image : 0;
  h.uuid_image = random_uuid();
  h.uuid_last_snap = random_uuid();
  return h;
}

}  // namespace kiln::block::vdi
