#include "vmdk/node.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "kiln/block/image.h"
#include "kiln/block/protocol.h"
#include "kiln/common/error.h"
#include "vmdk/compress.h"

namespace kiln::block::vmdk {
namespace {

uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

constexpr size_t kZeroChunk = 1 << 20;
const std::byte* zero_chunk() {
  static const std::vector<std::byte> zeroes(kZeroChunk);
  return zeroes.data();
}

// Scratch buffers reused by a worker thread across requests.
std::vector<std::byte>& scratch(int which, size_t bytes) {
  thread_local std::array<std::vector<std::byte>, 3> buffers;
  auto& buffer = buffers[static_cast<size_t>(which)];
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer;
}

bool all_zero(std::span<const std::byte> data) {
  size_t i = 0;
  for (; i + 8 <= data.size(); i += 8) {
    uint64_t word;
    std::memcpy(&word, data.data() + i, 8);
    if (word != 0) return false;
  }
  for (; i < data.size(); ++i) {
    if (data[i] != std::byte{0}) return false;
  }
  return true;
}

// createType values QEMU opens from a separate descriptor file.
bool descriptor_file_type_supported(std::string_view type) {
  return type == "monolithicFlat" || type == "vmfs" || type == "vmfsSparse" || type == "twoGbMaxExtentSparse" ||
         type == "twoGbMaxExtentFlat";
}

}  // namespace

VmdkNode::VmdkNode(std::unique_ptr<Node> file, const OpenContext& context) : file_(std::move(file)) {
  read_only_ = context.options.read_only || file_->read_only();
  for (const auto& [key, value] : context.options.driver_options) {
    if (key.rfind("file.", 0) == 0) continue;
    if (key == "extent-paths") {
      if (value != "any" && value != "inside") {
        throw invalid_argument("Could not open '{}': extent-paths must be 'inside' or 'any', not '{}'", filename(), value);
      }
      extent_paths_anywhere_ = value == "any";
      continue;
    }
    throw invalid_argument("Could not open '{}': Invalid parameter '{}' for format vmdk", filename(), key);
  }
  const uint64_t file_size = file_->size();
  std::array<std::byte, kSector> first{};
  file_->read(0, std::span(first).first(std::min<uint64_t>(file_size, kSector)));
  const uint32_t magic = load_le32(first.data());
  if (magic == kSparseMagic || magic == kCowdMagic) {
    if (file_size < kSector) throw invalid_argument("Could not open '{}': VMDK extent header is truncated", filename());
    Extent extent;
    extent.path = filename();
    extent.file = file_.get();
    extent.read_only = read_only_;
    if (magic == kSparseMagic) {
      open_sparse_file(extent, first);
      extent.length = extent.header.capacity * kSector;
      const SparseHeader& h = extent.header;
      if (h.descriptor_offset != 0 && h.descriptor_sectors != 0) {
        if (h.descriptor_sectors > kMaxDescriptorBytes / kSector || h.descriptor_offset > file_size / kSector ||
            h.descriptor_sectors * kSector > file_size - h.descriptor_offset * kSector) {
          throw invalid_argument("Could not open '{}': embedded VMDK descriptor lies outside the file", filename());
        }
        std::vector<std::byte> area(h.descriptor_sectors * kSector);
        file_->read(h.descriptor_offset * kSector, area);
        std::string_view text(reinterpret_cast<const char*>(area.data()), area.size());
        text = text.substr(0, text.find('\0'));
        descriptor_text_ = std::string(text);
        descriptor_area_ = h.descriptor_offset * kSector;
        descriptor_capacity_ = area.size();
        descriptor_ = parse_descriptor(descriptor_text_, filename());
      } else {
        descriptor_.create_type = extent.compressed ? "streamOptimized" : "monolithicSparse";
      }
    } else {
      open_cowd_file(extent, first);
      descriptor_.create_type = "vmfsSparse";
    }
    extents_.push_back(std::move(extent));
  } else {
    if (file_size > kMaxDescriptorBytes) {
      throw invalid_argument("Could not open '{}': not a VMDK image (no sparse header, and too large for a descriptor)", filename());
    }
    std::vector<std::byte> bytes(file_size);
    file_->read(0, bytes);
    if (!looks_like_descriptor(bytes)) {
      throw invalid_argument("Could not open '{}': not a VMDK image (no sparse header, and no \"version=\" descriptor line)", filename());
    }
    descriptor_text_.assign(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    descriptor_ = parse_descriptor(descriptor_text_, filename());
    if (!descriptor_file_type_supported(descriptor_.create_type)) {
      throw Error(ENOTSUP, fmt::format("Could not open '{}': Unsupported image type '{}'", filename(), descriptor_.create_type));
    }
    open_extents(context);
  }
  for (const Extent& extent : extents_) size_ += extent.length;
  if (extents_.empty()) throw invalid_argument("Could not open '{}': the VMDK descriptor lists no extents", filename());
  open_parent(context);
}

VmdkNode::~VmdkNode() {
  try {
    std::lock_guard lock(meta_);
    for (Extent& extent : extents_) {
      if (extent.pending_grain) commit_pending(extent);
    }
  } catch (...) {
    // Errors were reported by the last flush; nothing more to do while closing.
  }
}

void VmdkNode::load_directory(Extent& extent, uint64_t gd_offset, uint64_t entries, std::vector<uint32_t>& out, const char* what) {
  const uint64_t bytes = entries * 4;
  if (gd_offset > extent.file_size / kSector || bytes > extent.file_size - gd_offset * kSector) {
    throw invalid_argument("Could not open '{}': the {} (sector {}, {} entries) lies beyond the end of the file", extent.path, what, gd_offset,
                           entries);
  }
  out.resize(entries);
  extent.file->read(gd_offset * kSector, std::as_writable_bytes(std::span(out)));
}

void VmdkNode::open_sparse_file(Extent& extent, std::span<const std::byte> first_sector) {
  extent.kind = ExtentKind::Sparse;
  extent.file_size = extent.file->size();
  SparseHeader h = SparseHeader::decode(first_sector);
  const std::string& name = extent.path;
  auto bad = [&](std::string_view why) { return invalid_argument("Could not open '{}': invalid VMDK sparse header: {}", name, why); };
  if (h.gd_offset == kGdAtEnd) {
    // The real header is the footer: footer marker, footer, end-of-stream marker.
    if (extent.file_size < 4 * kSector) throw bad("grain directory at end, but the file has no footer");
    std::array<std::byte, 3 * kSector> tail{};
    const uint64_t tail_offset = extent.file_size / kSector * kSector - 3 * kSector;
    extent.file->read(tail_offset, tail);
    const std::byte* marker = tail.data();
    const std::byte* footer = tail.data() + kSector;
    const std::byte* eos = tail.data() + 2 * kSector;
    if (load_le32(footer) != kSparseMagic || load_le32(marker + 8) != 0 || load_le32(marker + 12) != kMarkerFooter ||
        load_le64(eos) != 0 || load_le32(eos + 8) != 0 || load_le32(eos + 12) != kMarkerEndOfStream) {
      throw bad("grain directory at end, but no valid footer");
    }
    h = SparseHeader::decode(std::span(footer, kSector));
    if (h.gd_offset == kGdAtEnd) throw bad("the footer has no grain directory either");
    extent.gd_at_end = true;
  }
  if (h.version < 1 || h.version > 3) {
    throw Error(ENOTSUP, fmt::format("Could not open '{}': Unsupported VMDK version {}", name, h.version));
  }
  if (h.gtes_per_gt == 0 || h.gtes_per_gt > kMaxGtesPerGt) throw bad(fmt::format("{} grain table entries", h.gtes_per_gt));
  if (h.grain_sectors == 0 || h.grain_sectors > kMaxGrainSectors) throw bad(fmt::format("grain size {} sectors", h.grain_sectors));
  if (h.capacity > kMaxTotalSectors) throw bad(fmt::format("capacity {} sectors", h.capacity));
  extent.compressed = (h.flags & kFlagCompressed) != 0;
  extent.markers = (h.flags & kFlagMarkers) != 0;
  extent.zeroed_grain = (h.flags & kFlagZeroedGrain) != 0 && h.version >= 2;
  if (extent.compressed && h.grain_sectors > kMaxCompressedGrainSectors) {
    throw Error(ENOTSUP, fmt::format("Could not open '{}': compressed grains of {} sectors are not supported (at most {})", name,
                                     h.grain_sectors, kMaxCompressedGrainSectors));
  }
  if (extent.compressed && h.compress_algorithm != kCompressDeflate) {
    throw Error(ENOTSUP, fmt::format("Could not open '{}': unsupported VMDK compression algorithm {}", name, h.compress_algorithm));
  }
  // Version 3 without compression only adds change tracking: read-only, as qemu.
  if (h.version == 3 && !extent.compressed) extent.read_only = true;
  if (extent.gd_at_end) extent.read_only = true;
  if (h.overhead > extent.file_size / kSector) {
    throw invalid_argument("Could not open '{}': File truncated, expecting at least {} bytes", name, h.overhead * kSector);
  }
  const uint64_t sectors_per_gt = uint64_t{h.gtes_per_gt} * h.grain_sectors;
  const uint64_t gd_entries = h.capacity / sectors_per_gt + (h.capacity % sectors_per_gt != 0);
  if (gd_entries > kMaxGdEntries) throw bad("grain directory too large");
  extent.header = h;
  extent.grain_bytes = h.grain_sectors * kSector;
  extent.gtes_per_gt = h.gtes_per_gt;
  extent.gd_offset = h.gd_offset;
  load_directory(extent, h.gd_offset, gd_entries, extent.gd, "grain directory");
  if ((h.flags & kFlagRedundantGd) && h.rgd_offset != 0 && !extent.gd_at_end) {
    extent.rgd_offset = h.rgd_offset;
    load_directory(extent, h.rgd_offset, gd_entries, extent.rgd, "redundant grain directory");
  }
  extent.gts.resize(gd_entries);
  extent.next_free = std::max(round_up(extent.file_size, kSector), h.overhead * kSector);
}

void VmdkNode::open_cowd_file(Extent& extent, std::span<const std::byte> first_sector) {
  extent.kind = ExtentKind::Cowd;
  extent.read_only = true;
  extent.file_size = extent.file->size();
  const CowdHeader h = CowdHeader::decode(first_sector);
  const std::string& name = extent.path;
  if (h.grain_sectors == 0 || h.grain_sectors > kMaxGrainSectors) {
    throw invalid_argument("Could not open '{}': invalid COWD header: grain size {} sectors", name, h.grain_sectors);
  }
  const uint64_t sectors_per_gt = uint64_t{kCowdGtes} * h.grain_sectors;
  const uint64_t needed = h.capacity / sectors_per_gt + (h.capacity % sectors_per_gt != 0);
  if (h.gd_entries < needed) throw invalid_argument("Could not open '{}': invalid COWD header: grain directory too small", name);
  extent.grain_bytes = uint64_t{h.grain_sectors} * kSector;
  extent.gtes_per_gt = kCowdGtes;
  extent.length = uint64_t{h.capacity} * kSector;
  extent.gd_offset = h.gd_offset;
  load_directory(extent, h.gd_offset, needed, extent.gd, "grain directory");
  extent.gts.resize(needed);
}

void VmdkNode::open_extents(const OpenContext& context) {
  uint64_t start = 0;
  for (const ExtentLine& line : descriptor_.extents) {
    Extent extent;
    extent.type_name = line.type_name;
    extent.start = start;
    extent.length = line.sectors * kSector;
    extent.read_only = read_only_ || line.access == ExtentAccess::ReadOnly;
    if (line.access == ExtentAccess::NoAccess) {
      throw Error(ENOTSUP, fmt::format("Could not open '{}': NOACCESS extents are not supported", filename()));
    }
    switch (line.type) {
      case ExtentType::Zero: extent.kind = ExtentKind::Zero; break;
      case ExtentType::Flat:
      case ExtentType::Vmfs:
      case ExtentType::Sparse:
      case ExtentType::VmfsSparse: break;
      default:
        throw Error(ENOTSUP, fmt::format("Could not open '{}': extent type '{}' is not supported", filename(), line.type_name));
    }
    if (extent.kind != ExtentKind::Zero) {
      extent.path = resolve_extent_path(filename(), line.filename, extent_paths_anywhere_);
      ProtocolOptions options{.read_only = extent.read_only, .cache = context.options.cache, .force_share = context.options.force_share,
                              .locking = false, .create = false};
      try {
        extent.owned_file = open_protocol(extent.path, options);
      } catch (const Error& error) {
        throw with_context(error, fmt::format("Could not open '{}'", filename()));
      }
      extent.file = extent.owned_file.get();
      if (context.options.locking) {
        extent.file->lock(default_lock_permissions(extent.read_only, false, context.options.force_share));
      }
      if (line.type == ExtentType::Flat || line.type == ExtentType::Vmfs) {
        extent.kind = ExtentKind::Flat;
        extent.flat_offset = line.offset * kSector;
      } else {
        std::array<std::byte, kSector> first{};
        const uint64_t size = extent.file->size();
        if (size < kSector) throw invalid_argument("Could not open '{}': extent '{}' is too short for a sparse header", filename(), extent.path);
        extent.file->read(0, first);
        const uint32_t magic = load_le32(first.data());
        if (line.type == ExtentType::Sparse) {
          if (magic != kSparseMagic) throw invalid_argument("Could not open '{}': extent '{}' is not a VMDK sparse file", filename(), extent.path);
          open_sparse_file(extent, first);
        } else {
          if (magic != kCowdMagic) throw invalid_argument("Could not open '{}': extent '{}' is not a COWD sparse file", filename(), extent.path);
          open_cowd_file(extent, first);
        }
        extent.length = line.sectors * kSector;
      }
    }
    start += extent.length;
    extents_.push_back(std::move(extent));
  }
}

void VmdkNode::open_parent(const OpenContext& context) {
  const std::string& hint = descriptor_.parent_file_name_hint;
  if (hint.empty() || context.options.no_backing || !context.open_image) return;
  std::string name = hint;
  if (hint.front() != '/') {
    std::filesystem::path parent = std::filesystem::path(filename()).parent_path();
    if (!parent.empty()) name = (parent / hint).string();
  }
  backing_ = context.open_image(name, "vmdk", true);
}

size_t VmdkNode::extent_index(uint64_t offset) const {
  auto it = std::upper_bound(extents_.begin(), extents_.end(), offset, [](uint64_t value, const Extent& e) { return value < e.start; });
  return static_cast<size_t>(it - extents_.begin()) - 1;
}

uint32_t VmdkNode::cluster_size() const {
  const Extent& first = extents_.front();
  return first.kind == ExtentKind::Sparse || first.kind == ExtentKind::Cowd ? static_cast<uint32_t>(first.grain_bytes) : 0;
}

int64_t VmdkNode::allocated_size() const {
  int64_t total = file_->allocated_size();
  if (total < 0) return total;
  for (const Extent& extent : extents_) {
    if (extent.owned_file) {
      int64_t bytes = extent.owned_file->allocated_size();
      if (bytes > 0) total += bytes;
    }
  }
  return total;
}

nlohmann::json VmdkNode::format_specific_info() const {
  nlohmann::json extents = nlohmann::json::array();
  for (const Extent& extent : extents_) {
    nlohmann::json info;
    if (extent.compressed) info["compressed"] = true;
    info["virtual-size"] = extent.length;
    info["filename"] = extent.kind == ExtentKind::Zero ? std::string() : extent.path;
    if (extent.kind == ExtentKind::Sparse || extent.kind == ExtentKind::Cowd) info["cluster-size"] = extent.grain_bytes;
    info["format"] = extent.type_name;
    extents.push_back(std::move(info));
  }
  nlohmann::json data;
  data["cid"] = descriptor_.cid;
  data["parent-cid"] = descriptor_.parent_cid;
  data["create-type"] = descriptor_.create_type;
  data["extents"] = std::move(extents);
  return {{"type", "vmdk"}, {"data", std::move(data)}};
}

// ---------------------------------------------------------------- metadata

uint32_t* VmdkNode::grain_table(Extent& extent, uint64_t gd_index, bool allocate) {
  if (gd_index >= extent.gd.size()) {
    if (allocate) throw Error(EIO, fmt::format("Could not write '{}': offset beyond the extent's grain directory", extent.path));
    return nullptr;
  }
  if (extent.gts[gd_index]) return extent.gts[gd_index].get();
  const uint64_t table_bytes = uint64_t{extent.gtes_per_gt} * 4;
  uint32_t sector = extent.gd[gd_index];
  if (sector == 0) {
    if (!allocate) return nullptr;
    // A directory entry without a table (not written by qemu-img, which
    // preallocates them): append zeroed tables and point both directories at them.
    const uint64_t table_span = round_up(table_bytes, kSector);
    const bool redundant = !extent.rgd.empty();
    const uint64_t needed = extent.next_free + table_span * (redundant ? 2 : 1);
    if (needed / kSector > UINT32_MAX) throw Error(ENOSPC, fmt::format("Could not write '{}': sparse extent full", extent.path));
    std::vector<std::byte> zeroes(table_span);
    const uint64_t primary = extent.next_free;
    extent.file->write(primary, zeroes);
    extent.next_free += table_span;
    if (redundant) {
      const uint64_t backup = extent.next_free;
      extent.file->write(backup, zeroes);
      extent.next_free += table_span;
      extent.rgd[gd_index] = static_cast<uint32_t>(backup / kSector);
      extent.file->write(extent.rgd_offset * kSector + gd_index * 4, std::as_bytes(std::span(&extent.rgd[gd_index], 1)));
    }
    extent.gd[gd_index] = static_cast<uint32_t>(primary / kSector);
    extent.file->write(extent.gd_offset * kSector + gd_index * 4, std::as_bytes(std::span(&extent.gd[gd_index], 1)));
    extent.file_size = std::max(extent.file_size, extent.next_free);
    extent.gts[gd_index] = std::make_unique<uint32_t[]>(extent.gtes_per_gt);
    ++extent.loaded_tables;
    return extent.gts[gd_index].get();
  }
  const uint64_t limit = std::max(extent.file_size, extent.next_free);
  if (sector > limit / kSector || table_bytes > limit - uint64_t{sector} * kSector) {
    throw Error(EIO, fmt::format("Could not read '{}': grain table {} at sector {} lies beyond the end of the file", extent.path, gd_index,
                                 sector));
  }
  // Distinct tables occupy distinct file bytes, so a valid image never caches
  // more than its file size; a directory pointing many times at one table
  // (malformed) must not make the cache grow past that. Cached tables are
  // clean (entries are written through), so dropping them is safe.
  if ((extent.loaded_tables + 1) * table_bytes > limit + kTableCacheSlack) {
    for (auto& cached : extent.gts) cached.reset();
    extent.loaded_tables = 0;
  }
  auto table = std::make_unique<uint32_t[]>(extent.gtes_per_gt);
  extent.file->read(uint64_t{sector} * kSector, std::as_writable_bytes(std::span(table.get(), extent.gtes_per_gt)));
  extent.gts[gd_index] = std::move(table);
  ++extent.loaded_tables;
  return extent.gts[gd_index].get();
}

VmdkNode::Mapping VmdkNode::map(Extent& extent, uint64_t offset, uint64_t length) {
  const uint64_t gb = extent.grain_bytes;
  const uint64_t grains_per_gt = extent.gtes_per_gt;
  auto classify = [&](uint32_t entry) {
    if (entry == 0) return GrainKind::Unallocated;
    if (entry == kGteZeroed && extent.zeroed_grain) return GrainKind::Zero;
    return extent.compressed ? GrainKind::Compressed : GrainKind::Data;
  };
  uint64_t grain = offset / gb;
  const uint64_t within = offset % gb;
  const uint32_t* table = grain_table(extent, grain / grains_per_gt, false);
  uint32_t entry = table ? table[grain % grains_per_gt] : 0;
  Mapping m;
  m.kind = classify(entry);
  m.bytes = gb - within;
  if (m.kind == GrainKind::Data) m.host = uint64_t{entry} * kSector + within;
  if (m.kind == GrainKind::Compressed) {
    m.host = uint64_t{entry} * kSector;
    m.bytes = std::min(m.bytes, length);
    return m;
  }
  while (m.bytes < length) {
    ++grain;
    const uint64_t gd_index = grain / grains_per_gt;
    if (gd_index >= extent.gd.size()) {
      // Past the directory (an extent longer than its header's capacity): nothing is stored there.
      if (m.kind == GrainKind::Unallocated) m.bytes = length;
      break;
    }
    table = grain_table(extent, gd_index, false);
    if (table == nullptr) {
      if (m.kind != GrainKind::Unallocated) break;
      m.bytes += ((gd_index + 1) * grains_per_gt - grain) * gb;  // the whole missing table
      grain = (gd_index + 1) * grains_per_gt - 1;
      continue;
    }
    const uint32_t next = table[grain % grains_per_gt];
    if (classify(next) != m.kind) break;
    if (m.kind == GrainKind::Data && next != entry + extent.header.grain_sectors) break;
    entry = next;
    m.bytes += gb;
  }
  m.bytes = std::min(m.bytes, length);
  return m;
}

bool VmdkNode::in_flight(const Extent& extent, uint64_t grain) const {
  for (const InFlight& f : in_flight_) {
    if (f.extent == &extent && grain >= f.first && grain < f.end) return true;
  }
  return false;
}

void VmdkNode::store_entries(Extent& extent, uint64_t first_grain, uint64_t count) {
  const uint64_t gd_index = first_grain / extent.gtes_per_gt;
  const uint64_t index = first_grain % extent.gtes_per_gt;
  const uint32_t* table = extent.gts[gd_index].get();
  auto bytes = std::as_bytes(std::span(table + index, count));
  extent.file->write(uint64_t{extent.gd[gd_index]} * kSector + index * 4, bytes);
  if (!extent.rgd.empty() && extent.rgd[gd_index] != 0) {
    extent.file->write(uint64_t{extent.rgd[gd_index]} * kSector + index * 4, bytes);
  }
}

// ---------------------------------------------------------------- reads

void VmdkNode::read(uint64_t offset, std::span<std::byte> buffer) {
  while (!buffer.empty()) {
    Extent& extent = extents_[extent_index(offset)];
    const uint64_t local = offset - extent.start;
    const size_t piece = static_cast<size_t>(std::min<uint64_t>(buffer.size(), extent.length - local));
    read_extent(extent, local, buffer.first(piece));
    buffer = buffer.subspan(piece);
    offset += piece;
  }
}

void VmdkNode::read_backing(uint64_t guest, std::span<std::byte> buffer) {
  size_t available = 0;
  if (backing_ && guest < backing_->size()) {
    available = static_cast<size_t>(std::min<uint64_t>(buffer.size(), backing_->size() - guest));
    backing_->read(guest, buffer.first(available));
  }
  std::memset(buffer.data() + available, 0, buffer.size() - available);
}

void VmdkNode::read_extent(Extent& extent, uint64_t offset, std::span<std::byte> buffer) {
  if (extent.kind == ExtentKind::Flat) return extent.file->read(extent.flat_offset + offset, buffer);
  if (extent.kind == ExtentKind::Zero) {
    std::memset(buffer.data(), 0, buffer.size());
    return;
  }
  while (!buffer.empty()) {
    Mapping m;
    const uint64_t grain = offset / extent.grain_bytes;
    {
      std::lock_guard lock(meta_);
      if (extent.pending_grain && *extent.pending_grain == grain) {
        const uint64_t within = offset % extent.grain_bytes;
        const size_t piece = static_cast<size_t>(std::min<uint64_t>(buffer.size(), extent.grain_bytes - within));
        std::memcpy(buffer.data(), extent.pending.data() + within, piece);
        buffer = buffer.subspan(piece);
        offset += piece;
        continue;
      }
      m = map(extent, offset, buffer.size());
    }
    auto piece = buffer.first(static_cast<size_t>(m.bytes));
    switch (m.kind) {
      case GrainKind::Unallocated: read_backing(extent.start + offset, piece); break;
      case GrainKind::Zero: std::memset(piece.data(), 0, piece.size()); break;
      case GrainKind::Data: extent.file->read(m.host, piece); break;
      case GrainKind::Compressed: read_compressed(extent, grain, m.host, offset % extent.grain_bytes, piece); break;
    }
    buffer = buffer.subspan(piece.size());
    offset += piece.size();
  }
}

void VmdkNode::read_compressed(Extent& extent, uint64_t grain, uint64_t host, uint64_t within, std::span<std::byte> buffer) {
  const uint64_t gb = extent.grain_bytes;
  // Compressed data of one grain never needs more than this (deflate's worst case).
  const uint64_t max_stored = gb + gb / 8 + 1024;
  uint64_t file_size = 0;
  {
    std::lock_guard lock(meta_);  // a stream writer may be appending
    file_size = std::max(extent.file_size, extent.next_free);
  }
  auto corrupt = [&](std::string_view why) {
    return Error(EIO, fmt::format("Could not read '{}': compressed grain {} at offset {}: {}", extent.path, grain, host, why));
  };
  if (host >= file_size) throw corrupt("beyond the end of the file");
  uint64_t data_offset = host;
  uint64_t stored = std::min(max_stored, file_size - host);
  if (extent.markers) {
    std::array<std::byte, kGrainMarkerBytes> marker{};
    if (file_size - host < kGrainMarkerBytes) throw corrupt("truncated grain marker");
    extent.file->read(host, marker);
    stored = load_le32(marker.data() + 8);
    if (stored == 0 || stored > max_stored) throw corrupt(fmt::format("invalid compressed size {}", stored));
    data_offset = host + kGrainMarkerBytes;
    if (stored > file_size - data_offset) throw corrupt("data beyond the end of the file");
  }
  std::vector<std::byte>& in = scratch(0, static_cast<size_t>(stored));
  extent.file->read(data_offset, std::span(in.data(), static_cast<size_t>(stored)));
  std::vector<std::byte>& out = scratch(1, static_cast<size_t>(gb));
  auto produced = zlib_decompress(std::span(in.data(), static_cast<size_t>(stored)), std::span(out.data(), static_cast<size_t>(gb)));
  if (!produced) throw corrupt("invalid deflate data");
  std::memset(out.data() + *produced, 0, static_cast<size_t>(gb - *produced));
  std::memcpy(buffer.data(), out.data() + within, buffer.size());
}

// ---------------------------------------------------------------- writes

void VmdkNode::check_writable(const Extent& extent) const {
  if (read_only_) throw Error(EACCES, fmt::format("Cannot write '{}': the image is opened read-only", filename()));
  if (extent.kind == ExtentKind::Zero) {
    throw Error(EACCES, fmt::format("Cannot write '{}': the range lies in a ZERO extent", filename()));
  }
  if (extent.read_only) {
    throw Error(EACCES, fmt::format("Cannot write '{}': extent '{}' is read-only", filename(), extent.path));
  }
}

void VmdkNode::update_cid() {
  if (cid_updated_.load(std::memory_order_acquire)) return;
  std::lock_guard lock(cid_mutex_);
  if (cid_updated_.load(std::memory_order_relaxed)) return;
  // As qemu: the content ID changes on the first write after opening.
  std::random_device random;
  const uint32_t cid = random();
  std::string text = replace_cid(descriptor_text_, cid);
  if (descriptor_area_ != 0) {
    if (text.size() <= descriptor_capacity_) {
      std::vector<std::byte> area(std::max(text.size(), descriptor_text_.size()));
      std::memcpy(area.data(), text.data(), text.size());
      file_->write(descriptor_area_, area);
    }
  } else if (!descriptor_text_.empty()) {
    file_->write(0, std::as_bytes(std::span(text.data(), text.size())));
    if (text.size() < descriptor_text_.size()) file_->truncate(text.size(), Preallocation::Off, true);
  }
  descriptor_text_ = std::move(text);
  descriptor_.cid = cid;
  cid_updated_.store(true, std::memory_order_release);
}

void VmdkNode::write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) {
  if (read_only_) throw Error(EACCES, fmt::format("Cannot write '{}': the image is opened read-only", filename()));
  update_cid();
  while (!data.empty()) {
    Extent& extent = extents_[extent_index(offset)];
    const uint64_t local = offset - extent.start;
    const size_t piece = static_cast<size_t>(std::min<uint64_t>(data.size(), extent.length - local));
    write_extent(extent, local, data.first(piece));
    data = data.subspan(piece);
    offset += piece;
  }
  if (flags.fua) flush();
}

void VmdkNode::write_extent(Extent& extent, uint64_t offset, std::span<const std::byte> data) {
  check_writable(extent);
  switch (extent.kind) {
    case ExtentKind::Flat: return extent.file->write(extent.flat_offset + offset, data);
    case ExtentKind::Sparse: return extent.compressed ? write_stream(extent, offset, data) : write_sparse(extent, offset, data);
    default: throw Error(ENOTSUP, fmt::format("Cannot write '{}': extent '{}' is read-only", filename(), extent.path));
  }
}

void VmdkNode::fill_grain(Extent& extent, uint64_t grain, uint32_t entry, std::span<std::byte> out) {
  const uint64_t begin = grain * extent.grain_bytes;
  const uint64_t inside = std::min<uint64_t>(out.size(), extent.length > begin ? extent.length - begin : 0);
  if (entry == kGteZeroed && extent.zeroed_grain) {
    std::memset(out.data(), 0, out.size());
    return;
  }
  read_backing(extent.start + begin, out.first(static_cast<size_t>(inside)));
  std::memset(out.data() + inside, 0, out.size() - inside);
}

void VmdkNode::write_sparse(Extent& extent, uint64_t offset, std::span<const std::byte> data) {
  const uint64_t gb = extent.grain_bytes;
  const uint64_t gtes = extent.gtes_per_gt;
  while (!data.empty()) {
    const uint64_t grain = offset / gb;
    const uint64_t within = offset % gb;
    std::unique_lock lock(meta_);
    allocated_.wait(lock, [&] { return !in_flight(extent, grain); });
    const uint64_t gd_index = grain / gtes;
    uint32_t* table = grain_table(extent, gd_index, true);
    const uint32_t entry = table[grain % gtes];
    const bool allocated = entry > 1 || (entry == kGteZeroed && !extent.zeroed_grain);
    if (allocated) {
      // Rewrite in place, as far as the grains stay contiguous on the host.
      const uint64_t host = uint64_t{entry} * kSector + within;
      uint64_t bytes = std::min<uint64_t>(gb - within, data.size());
      uint32_t previous = entry;
      for (uint64_t next = grain + 1; bytes < data.size() && next / gtes == gd_index; ++next) {
        const uint32_t e = table[next % gtes];
        if (e != previous + extent.header.grain_sectors) break;
        previous = e;
        bytes += std::min<uint64_t>(gb, data.size() - bytes);
      }
      lock.unlock();
      extent.file->write(host, data.first(static_cast<size_t>(bytes)));
      data = data.subspan(static_cast<size_t>(bytes));
      offset += bytes;
      continue;
    }
    // Allocate a run of unallocated (or zeroed) grains inside this table.
    const uint64_t last_grain = (offset + data.size() - 1) / gb;
    const uint64_t table_end = (gd_index + 1) * gtes;
    uint64_t count = 1;
    while (grain + count <= last_grain && grain + count < table_end) {
      const uint32_t e = table[(grain + count) % gtes];
      const bool unallocated = e == 0 || (e == kGteZeroed && extent.zeroed_grain);
      if (!unallocated || in_flight(extent, grain + count)) break;
      ++count;
    }
    const uint64_t host = extent.next_free;
    if ((host + count * gb) / kSector > UINT32_MAX) {
      throw Error(ENOSPC, fmt::format("Could not write '{}': the sparse extent is full (grain offsets are 32-bit)", extent.path));
    }
    extent.next_free += count * gb;
    const uint32_t head_entry = entry;
    const uint32_t tail_entry = table[(grain + count - 1) % gtes];
    in_flight_.push_back({&extent, grain, grain + count});
    lock.unlock();
    const uint64_t run_end = (grain + count) * gb;
    const uint64_t bytes = std::min<uint64_t>(run_end - offset, data.size());
    try {
      uint64_t done = 0;  // bytes of `data` written
      uint64_t host_pos = host;
      uint64_t grain_index = grain;
      while (done < bytes) {
        const uint64_t grain_start = grain_index * gb;
        const uint64_t from = offset + done - grain_start;  // offset within this grain
        const uint64_t take = std::min(gb - from, bytes - done);
        if (from == 0 && take == gb) {
          // Whole grains go straight from the caller's buffer.
          uint64_t whole = (bytes - done) / gb * gb;
          extent.file->write(host_pos, data.subspan(static_cast<size_t>(done), static_cast<size_t>(whole)));
          done += whole;
          host_pos += whole;
          grain_index += whole / gb;
          continue;
        }
        std::vector<std::byte>& buffer = scratch(2, static_cast<size_t>(gb));
        std::span<std::byte> grain_buffer(buffer.data(), static_cast<size_t>(gb));
        fill_grain(extent, grain_index, grain_index == grain ? head_entry : tail_entry, grain_buffer);
        std::memcpy(grain_buffer.data() + from, data.data() + done, static_cast<size_t>(take));
        extent.file->write(host_pos, grain_buffer);
        done += take;
        host_pos += gb;
        ++grain_index;
      }
    } catch (...) {
      std::lock_guard relock(meta_);
      std::erase_if(in_flight_, [&](const InFlight& f) { return f.extent == &extent && f.first == grain; });
      allocated_.notify_all();
      throw;
    }
    lock.lock();
    // Data first, then the tables that point at it (both copies). The table
    // may have left the cache meanwhile: fetch it again.
    extent.file_size = std::max(extent.file_size, host + count * gb);
    std::exception_ptr failure;
    try {
      table = grain_table(extent, gd_index, true);
      for (uint64_t i = 0; i < count; ++i) table[(grain + i) % gtes] = static_cast<uint32_t>(host / kSector + i * extent.header.grain_sectors);
      store_entries(extent, grain, count);
    } catch (...) {
      failure = std::current_exception();
    }
    std::erase_if(in_flight_, [&](const InFlight& f) { return f.extent == &extent && f.first == grain; });
    allocated_.notify_all();
    lock.unlock();
    if (failure) std::rethrow_exception(failure);
    data = data.subspan(static_cast<size_t>(bytes));
    offset += bytes;
  }
}

void VmdkNode::write_stream(Extent& extent, uint64_t offset, std::span<const std::byte> data) {
  const uint64_t gb = extent.grain_bytes;
  std::lock_guard lock(meta_);
  while (!data.empty()) {
    const uint64_t grain = offset / gb;
    const uint64_t within = offset % gb;
    const size_t piece = static_cast<size_t>(std::min<uint64_t>(gb - within, data.size()));
    if (extent.pending_grain && *extent.pending_grain != grain) commit_pending(extent);
    if (!extent.pending_grain) {
      uint32_t* table = grain_table(extent, grain / extent.gtes_per_gt, true);
      const uint32_t entry = table[grain % extent.gtes_per_gt];
      if (entry != 0 && !(entry == kGteZeroed && extent.zeroed_grain)) {
        throw Error(ENOTSUP, fmt::format("Could not write '{}' at offset {}: stream-optimized grains are written once, in order, and this "
                                         "one is already stored",
                                         filename(), extent.start + offset));
      }
      extent.pending.assign(static_cast<size_t>(gb), std::byte{0});
      extent.pending_grain = grain;
    }
    std::memcpy(extent.pending.data() + within, data.data(), piece);
    data = data.subspan(piece);
    offset += piece;
    if (offset == std::min((grain + 1) * gb, extent.length)) commit_pending(extent);
  }
}

void VmdkNode::commit_pending(Extent& extent) {
  const uint64_t grain = *extent.pending_grain;
  const uint64_t gb = extent.grain_bytes;
  const uint64_t grain_start = grain * gb;
  const size_t length = static_cast<size_t>(std::min(gb, extent.length - grain_start));
  std::span<const std::byte> content(extent.pending.data(), length);
  extent.pending_grain.reset();
  if (all_zero(content) && !backing_) return;  // reads as zeroes unallocated
  std::vector<std::byte>& out = scratch(0, kGrainMarkerBytes + zlib_compress_bound(length) + kSector);
  const size_t stored = zlib_compress(content, std::span(out.data() + kGrainMarkerBytes, out.size() - kGrainMarkerBytes - kSector));
  store_le64(out.data(), grain_start / kSector);
  store_le32(out.data() + 8, static_cast<uint32_t>(stored));
  const size_t padded = static_cast<size_t>(round_up(kGrainMarkerBytes + stored, kSector));
  std::memset(out.data() + kGrainMarkerBytes + stored, 0, padded - kGrainMarkerBytes - stored);
  const uint64_t host = extent.next_free;
  if ((host + padded) / kSector > UINT32_MAX) {
    throw Error(ENOSPC, fmt::format("Could not write '{}': the sparse extent is full (grain offsets are 32-bit)", extent.path));
  }
  extent.file->write(host, std::span(out.data(), padded));
  extent.next_free += padded;
  extent.file_size = std::max(extent.file_size, extent.next_free);
  uint32_t* table = grain_table(extent, grain / extent.gtes_per_gt, true);
  table[grain % extent.gtes_per_gt] = static_cast<uint32_t>(host / kSector);
  store_entries(extent, grain, 1);
}

bool VmdkNode::supports_compressed_writes() const {
  return std::any_of(extents_.begin(), extents_.end(), [](const Extent& e) { return e.compressed && !e.read_only; });
}

void VmdkNode::write_compressed(uint64_t offset, std::span<const std::byte> data) {
  if (!supports_compressed_writes()) return Node::write_compressed(offset, data);  // throws "does not support compression"
  write(offset, data, {});  // stream grains are always compressed
}

void VmdkNode::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) {
  if (read_only_) throw Error(EACCES, fmt::format("Cannot write '{}': the image is opened read-only", filename()));
  update_cid();
  while (length > 0) {
    Extent& extent = extents_[extent_index(offset)];
    const uint64_t local = offset - extent.start;
    const uint64_t piece = std::min(length, extent.length - local);
    if (extent.kind == ExtentKind::Flat) {
      check_writable(extent);
      extent.file->write_zeroes(extent.flat_offset + local, piece, flags);
    } else if (extent.kind != ExtentKind::Zero) {
      check_writable(extent);
      zero_extent(extent, local, piece, flags);
    }
    offset += piece;
    length -= piece;
  }
}

void VmdkNode::zero_extent(Extent& extent, uint64_t offset, uint64_t length, ZeroFlags flags) {
  const uint64_t gb = extent.grain_bytes;
  const uint64_t gtes = extent.gtes_per_gt;
  const uint64_t end = offset + length;
  auto write_zero_data = [&](uint64_t from, uint64_t bytes) {
    while (bytes > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(bytes, kZeroChunk));
      write_extent(extent, from, std::span(zero_chunk(), chunk));
      from += chunk;
      bytes -= chunk;
    }
  };
  while (offset < end) {
    const uint64_t grain = offset / gb;
    const uint64_t grain_end = std::min((grain + 1) * gb, extent.length);
    const uint64_t piece_end = std::min(grain_end, end);
    const bool whole = offset == grain * gb && piece_end == grain_end;
    bool needs_data = false;
    {
      std::unique_lock lock(meta_);
      allocated_.wait(lock, [&] { return !in_flight(extent, grain); });
      if (extent.pending_grain && *extent.pending_grain == grain) {
        needs_data = true;
      } else {
        if (grain / gtes >= extent.gd.size() && !backing_) {
          offset = end;  // past the directory: already reads as zeroes
          continue;
        }
        uint32_t* table = grain_table(extent, grain / gtes, false);
        if (table == nullptr && !backing_) {
          // No table: the rest of its range already reads as zeroes.
          const uint64_t skip_to = std::min(end, (grain / gtes + 1) * gtes * gb);
          offset = skip_to;
          continue;
        }
        const uint32_t entry = table ? table[grain % gtes] : 0;
        const bool zero = (entry == 0 && !backing_) || (entry == kGteZeroed && extent.zeroed_grain);
        if (zero) {
          // already reads as zeroes
        } else if (whole && extent.zeroed_grain && !extent.compressed) {
          // Mark the grains zeroed (a whole run inside this table at once).
          table = grain_table(extent, grain / gtes, true);
          uint64_t count = 1;
          while ((grain + count) * gb + gb <= end && (grain + count) % gtes != 0 && !in_flight(extent, grain + count)) ++count;
          for (uint64_t i = 0; i < count; ++i) table[(grain + i) % gtes] = kGteZeroed;
          store_entries(extent, grain, count);
          offset = std::min(end, (grain + count) * gb);
          continue;
        } else {
          needs_data = true;
        }
      }
    }
    if (needs_data) {
      if (flags.no_fallback) throw Error(ENOTSUP, fmt::format("'{}': fast zeroing is not supported here", filename()));
      write_zero_data(offset, piece_end - offset);
    }
    offset = piece_end;
  }
}

void VmdkNode::flush() {
  {
    std::lock_guard lock(meta_);
    for (Extent& extent : extents_) {
      if (extent.pending_grain) commit_pending(extent);
    }
  }
  for (Extent& extent : extents_) {
    if (extent.owned_file) extent.owned_file->flush();
  }
  file_->flush();
}

// ---------------------------------------------------------------- status, check

BlockStatus VmdkNode::block_status(uint64_t offset, uint64_t length) {
  Extent& extent = extents_[extent_index(offset)];
  const uint64_t local = offset - extent.start;
  length = std::min(length, extent.length - local);
  BlockStatus status;
  switch (extent.kind) {
    case ExtentKind::Zero:
      status.length = length;
      status.flags = kStatusZero | kStatusAllocated;
      return status;
    case ExtentKind::Flat: {
      const uint64_t file_size = extent.file->size();
      const uint64_t host = extent.flat_offset + local;
      status.flags = kStatusAllocated | kStatusOffsetValid;
      status.host_offset = host;
      status.host_file = extent.path;
      if (host >= file_size) {
        status.length = length;
        status.flags |= kStatusData | kStatusZero;
        return status;
      }
      // As qemu: flat data is always "data"; holes of the file add "zero".
      BlockStatus below = extent.file->block_status(host, std::min(length, file_size - host));
      status.length = below.length;
      status.flags |= kStatusData | (below.flags & kStatusZero);
      return status;
    }
    default: break;
  }
  std::lock_guard lock(meta_);
  const uint64_t grain = local / extent.grain_bytes;
  if (extent.pending_grain && *extent.pending_grain == grain) {
    status.length = std::min(length, extent.grain_bytes - local % extent.grain_bytes);
    status.flags = kStatusData | kStatusAllocated;
    return status;
  }
  Mapping m = map(extent, local, length);
  status.length = m.bytes;
  switch (m.kind) {
    case GrainKind::Unallocated: status.flags = 0; break;
    case GrainKind::Zero: status.flags = kStatusZero | kStatusAllocated; break;
    case GrainKind::Data:
      status.flags = kStatusData | kStatusAllocated | kStatusOffsetValid;
      status.host_offset = m.host;
      status.host_file = extent.path;
      break;
    case GrainKind::Compressed: status.flags = kStatusData | kStatusAllocated; break;
  }
  return status;
}

// Flat extents map fixed ranges of their files; sparse grains only while
// read-only (a writable image may replace a grain under a reader).
std::optional<HostExtent> VmdkNode::host_extent(uint64_t offset, uint64_t length) {
  Extent& extent = extents_[extent_index(offset)];
  const uint64_t local = offset - extent.start;
  length = std::min(length, extent.length - local);
  if (extent.kind == ExtentKind::Flat) return extent.file->host_extent(extent.flat_offset + local, length);
  if (extent.kind == ExtentKind::Zero || !read_only_) return std::nullopt;
  Mapping m;
  {
    std::lock_guard lock(meta_);
    m = map(extent, local, length);
  }
  if (m.kind != GrainKind::Data) return std::nullopt;
  return extent.file->host_extent(m.host, m.bytes);
}

// As qemu-img check for vmdk: walks every grain in guest order; the first
// grain starting past the end of its file (or an unreadable grain table) is
// printed as qemu prints it and fails the check with EINVAL, which qemu-img
// then reports as "Check failed: Invalid argument". The finding is printed
// here because a failed check has no result to carry it.
CheckResult VmdkNode::check(CheckRepair) {
  auto fail = [](const std::string& finding) -> Error {
    fmt::print(stderr, "{}\n", finding);
    std::fflush(stderr);
    return Error(EINVAL, errno_text(EINVAL));
  };
  std::lock_guard lock(meta_);
  for (Extent& extent : extents_) {
    if (extent.kind == ExtentKind::Zero) continue;
    const uint64_t file_size = extent.file->size();
    if (extent.kind == ExtentKind::Flat) {
      if (extent.flat_offset >= file_size && extent.length > 0) {
        throw fail(fmt::format("ERROR: cluster offset for sector {} points after EOF", extent.start / kSector));
      }
      continue;
    }
    const uint64_t grains = std::min((extent.length + extent.grain_bytes - 1) / extent.grain_bytes, extent.gd.size() * extent.gtes_per_gt);
    for (uint64_t grain = 0; grain < grains; ++grain) {
      const uint64_t sector = (extent.start + grain * extent.grain_bytes) / kSector;
      const uint32_t* table = nullptr;
      try {
        table = grain_table(extent, grain / extent.gtes_per_gt, false);
      } catch (const Error&) {
        throw fail(fmt::format("ERROR: could not get cluster_offset for sector {}", sector));
      }
      if (table == nullptr) {
        grain = (grain / extent.gtes_per_gt + 1) * extent.gtes_per_gt - 1;
        continue;
      }
      const uint32_t entry = table[grain % extent.gtes_per_gt];
      if (entry == 0 || (entry == kGteZeroed && extent.zeroed_grain)) continue;
      if (uint64_t{entry} * kSector >= file_size) {
        throw fail(fmt::format("ERROR: cluster offset for sector {} points after EOF", sector));
      }
    }
  }
  return {};
}

}  // namespace kiln::block::vmdk
