#include "qcow2/format.h"

#include <algorithm>

#include "kiln/common/error.h"

namespace kiln::block::qcow2 {
namespace {

uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }
uint64_t div_round_up(uint64_t value, uint64_t divisor) { return (value + divisor - 1) / divisor; }

[[noreturn]] void fail(const std::string& filename, const std::string& what) {
  throw Error(EINVAL, fmt::format("Could not open '{}': {}", filename, what));
}

// A table [offset, offset+bytes) must be cluster aligned and inside the file.
void check_table(const std::string& filename, const char* name, uint64_t offset, uint64_t bytes, uint64_t cluster_size,
                 uint64_t file_size) {
  if (offset % cluster_size != 0) fail(filename, fmt::format("Invalid {} offset 0x{:x}: not cluster aligned", name, offset));
  if (bytes == 0) return;
  if (offset == 0) fail(filename, fmt::format("Invalid {} offset 0: the table overlaps the header", name));
  if (offset > file_size || bytes > file_size - offset) {
    fail(filename, fmt::format("Invalid {}: offset 0x{:x} length {} lies past the end of the file ({} bytes)", name, offset, bytes,
                               file_size));
  }
}

bool ranges_overlap(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len) {
  return a_len != 0 && b_len != 0 && a < b + b_len && b < a + a_len;
}

}  // namespace

Header parse_header(std::span<const std::byte> head, uint64_t file_size, const std::string& filename) {
  if (head.size() < kV2HeaderLength) fail(filename, "Image is not in qcow2 format (file too short)");
  const std::byte* p = head.data();
  if (load_be32(p) != kMagic) fail(filename, "Image is not in qcow2 format");
  Header h;
  h.version = load_be32(p + 4);
  if (h.version < 2 || h.version > 3) {
    throw Error(ENOTSUP, fmt::format("Could not open '{}': Unsupported qcow2 version {}", filename, h.version));
  }
  h.backing_file_offset = load_be64(p + 8);
  h.backing_file_size = load_be32(p + 16);
  h.cluster_bits = load_be32(p + 20);
  h.size = load_be64(p + 24);
  h.crypt_method = load_be32(p + 32);
  h.l1_size = load_be32(p + 36);
  h.l1_table_offset = load_be64(p + 40);
  h.refcount_table_offset = load_be64(p + 48);
  h.refcount_table_clusters = load_be32(p + 56);
  h.nb_snapshots = load_be32(p + 60);
  h.snapshots_offset = load_be64(p + 64);

  if (h.cluster_bits < kMinClusterBits || h.cluster_bits > kMaxClusterBits) {
    fail(filename, fmt::format("Unsupported cluster size: 2^{}", h.cluster_bits));
  }
  const uint64_t cluster_size = h.cluster_size();

  if (h.version == 2) {
    h.header_length = kV2HeaderLength;
    h.refcount_order = 4;
  } else {
    if (head.size() < kV3HeaderLength) fail(filename, "qcow2 header truncated");
    h.incompatible_features = load_be64(p + 72);
    h.compatible_features = load_be64(p + 80);
    h.autoclear_features = load_be64(p + 88);
    h.refcount_order = load_be32(p + 96);
    h.header_length = load_be32(p + 100);
    if (h.header_length < kV3HeaderLength || h.header_length % 8 != 0) {
      fail(filename, fmt::format("qcow2 header length {} is invalid", h.header_length));
    }
    if (h.header_length > cluster_size || h.header_length > head.size()) fail(filename, "qcow2 header exceeds cluster size");
    if (h.header_length > 104) {
      h.compression_type = std::to_integer<uint8_t>(p[104]);
      h.extra_fields.assign(p + 105, p + h.header_length);
    }
  }
  if (h.refcount_order > 6) fail(filename, fmt::format("Reference count entry width too large; may not exceed 64 bits"));

  // Header extensions: after the header, up to the backing name or the end of cluster 0.
  const uint64_t ext_end = std::min<uint64_t>(
      {cluster_size, head.size(), h.backing_file_offset != 0 ? h.backing_file_offset : UINT64_MAX});
  uint64_t pos = h.header_length;
  while (pos + 8 <= ext_end) {
    uint32_t type = load_be32(p + pos);
    uint32_t length = load_be32(p + pos + 4);
    pos += 8;
    if (type == kExtEnd) break;
    if (length > ext_end - pos) fail(filename, fmt::format("Invalid header extension 0x{:08x}: length {} exceeds the header area", type, length));
    h.extensions.push_back({type, std::vector<std::byte>(p + pos, p + pos + length)});
    pos += round_up(length, 8);
  }

  // Feature bits, named from the image's own feature table when unknown.
  if (uint64_t unknown = h.incompatible_features & ~kIncompatKnown; unknown != 0) {
    std::vector<FeatureName> names = parse_feature_table(h);
    std::string list;
    for (int bit = 0; bit < 64; ++bit) {
      if (!(unknown & (1ull << bit))) continue;
      auto it = std::find_if(names.begin(), names.end(), [&](const FeatureName& f) { return f.type == 0 && f.bit == bit; });
      if (!list.empty()) list += ", ";
      list += it != names.end() ? it->name : fmt::format("Unknown incompatible feature: {:x}", 1ull << bit);
    }
    throw Error(ENOTSUP, fmt::format("Could not open '{}': Unsupported qcow2 feature(s): {}", filename, list));
  }
  if (h.incompatible_features & kIncompatCompression) {
    if (h.header_length <= 104) fail(filename, "compression type header field is missing");
    if (h.compression_type != static_cast<uint8_t>(CompressionType::Zstd)) {
      fail(filename, fmt::format("Unknown compression type {}", h.compression_type));
    }
  } else if (h.compression_type != 0) {
    fail(filename, fmt::format("Invalid compression type {}: the compression type bit is not set", h.compression_type));
  }
  if ((h.incompatible_features & kIncompatExtendedL2) && h.cluster_bits < 14) {
    fail(filename, "Extended L2 entries need a cluster size of at least 16 KiB");
  }
  if (h.autoclear_features & kAutoclearDataFileRaw && !(h.incompatible_features & kIncompatDataFile)) {
    fail(filename, "data-file-raw requires a data file");
  }

  // Backing file name.
  if (h.backing_file_offset != 0) {
    if (h.backing_file_size > kMaxBackingNameLength) fail(filename, "Backing file name too long");
    if (h.backing_file_offset > cluster_size || h.backing_file_size > cluster_size - h.backing_file_offset ||
        h.backing_file_offset + h.backing_file_size > head.size()) {
      fail(filename, "Invalid backing file offset: the name lies outside the header cluster");
    }
    h.backing_file.assign(reinterpret_cast<const char*>(p + h.backing_file_offset), h.backing_file_size);
  }

  // Tables: alignment, size limits, inside the file, no overlap with each other.
  if (uint64_t(h.l1_size) * 8 > kMaxL1Bytes) fail(filename, fmt::format("Active L1 table too large ({} entries)", h.l1_size));
  if (uint64_t(h.refcount_table_clusters) * cluster_size > kMaxRefTableBytes) {
    fail(filename, fmt::format("Reference count table too large ({} clusters)", h.refcount_table_clusters));
  }
  if (h.refcount_table_clusters == 0) fail(filename, "Image has no refcount table");
  if (h.nb_snapshots > kMaxSnapshots) fail(filename, fmt::format("Too many snapshots ({})", h.nb_snapshots));
  const uint64_t l2_entries = cluster_size / ((h.incompatible_features & kIncompatExtendedL2) ? 16 : 8);
  // Virtual clusters must be addressable through the L1 table.
  if (h.size > (1ull << 62)) fail(filename, fmt::format("Image size {} is too large", h.size));
  const uint64_t needed_l1 = div_round_up(div_round_up(h.size, cluster_size), l2_entries);
  if (needed_l1 > h.l1_size) fail(filename, fmt::format("L1 table is too small ({} entries for {} bytes)", h.l1_size, h.size));
  check_table(filename, "L1 table", h.l1_table_offset, uint64_t(h.l1_size) * 8, cluster_size, file_size);
  check_table(filename, "reference count table", h.refcount_table_offset, uint64_t(h.refcount_table_clusters) * cluster_size,
              cluster_size, file_size);
  if (h.nb_snapshots > 0) check_table(filename, "snapshot table", h.snapshots_offset, 40ull * h.nb_snapshots, cluster_size, file_size);
  if (ranges_overlap(h.l1_table_offset, uint64_t(h.l1_size) * 8, h.refcount_table_offset,
                     uint64_t(h.refcount_table_clusters) * cluster_size)) {
    fail(filename, "The L1 table overlaps the reference count table");
  }
  if (h.crypt_method > 2) fail(filename, fmt::format("Unsupported encryption method: {}", h.crypt_method));
  return h;
}

std::vector<FeatureName> parse_feature_table(const Header& header) {
  std::vector<FeatureName> names;
  const HeaderExtension* ext = find_extension(header, kExtFeatureTable);
  if (ext == nullptr) return names;
  for (size_t pos = 0; pos + 48 <= ext->data.size(); pos += 48) {
    FeatureName f;
    f.type = std::to_integer<uint8_t>(ext->data[pos]);
    f.bit = std::to_integer<uint8_t>(ext->data[pos + 1]);
    const char* text = reinterpret_cast<const char*>(ext->data.data() + pos + 2);
    f.name.assign(text, strnlen(text, 46));
    names.push_back(std::move(f));
  }
  return names;
}

HeaderExtension default_feature_table() {
  static const std::pair<uint16_t, const char*> entries[] = {
      {0x0000, "dirty bit"},        {0x0001, "corrupt bit"},     {0x0002, "external data file"}, {0x0003, "compression type"},
      {0x0004, "extended L2 entries"}, {0x0100, "lazy refcounts"}, {0x0200, "bitmaps"},           {0x0201, "raw external data"},
  };
  HeaderExtension ext{kExtFeatureTable, std::vector<std::byte>(48 * std::size(entries))};
  for (size_t i = 0; i < std::size(entries); ++i) {
    std::byte* entry = ext.data.data() + 48 * i;
    entry[0] = std::byte(entries[i].first >> 8);
    entry[1] = std::byte(entries[i].first & 0xff);
    std::memcpy(entry + 2, entries[i].second, std::strlen(entries[i].second));
  }
  return ext;
}

const HeaderExtension* find_extension(const Header& header, uint32_t type) {
  for (const HeaderExtension& ext : header.extensions) {
    if (ext.type == type) return &ext;
  }
  return nullptr;
}

void set_extension(Header& header, uint32_t type, std::vector<std::byte> data) {
  for (HeaderExtension& ext : header.extensions) {
    if (ext.type == type) {
      ext.data = std::move(data);
      return;
    }
  }
  // qemu's order: backing format first, then the feature table and the rest.
  auto position = type == kExtBackingFormat ? header.extensions.begin() : header.extensions.end();
  header.extensions.insert(position, {type, std::move(data)});
}

void remove_extension(Header& header, uint32_t type) {
  std::erase_if(header.extensions, [&](const HeaderExtension& ext) { return ext.type == type; });
}

std::vector<std::byte> encode_header(Header& h) {
  const uint64_t cluster_size = h.cluster_size();
  std::vector<std::byte> out(h.version == 2 ? kV2HeaderLength : h.header_length);
  std::byte* p = out.data();
  store_be32(p, kMagic);
  store_be32(p + 4, h.version);
  store_be32(p + 20, h.cluster_bits);
  store_be64(p + 24, h.size);
  store_be32(p + 32, h.crypt_method);
  store_be32(p + 36, h.l1_size);
  store_be64(p + 40, h.l1_table_offset);
  store_be64(p + 48, h.refcount_table_offset);
  store_be32(p + 56, h.refcount_table_clusters);
  store_be32(p + 60, h.nb_snapshots);
  store_be64(p + 64, h.snapshots_offset);
  if (h.version >= 3) {
    store_be64(p + 72, h.incompatible_features);
    store_be64(p + 80, h.compatible_features);
    store_be64(p + 88, h.autoclear_features);
    store_be32(p + 96, h.refcount_order);
    store_be32(p + 100, h.header_length);
    if (h.header_length > 104) {
      p[104] = std::byte(h.compression_type);
      std::copy_n(h.extra_fields.begin(), std::min<size_t>(h.extra_fields.size(), h.header_length - 105), p + 105);
    }
  }
  auto append = [&](uint32_t type, std::span<const std::byte> data) {
    size_t at = out.size();
    out.resize(at + 8 + round_up(data.size(), 8));
    store_be32(out.data() + at, type);
    store_be32(out.data() + at + 4, static_cast<uint32_t>(data.size()));
    std::copy(data.begin(), data.end(), out.begin() + at + 8);
  };
  // v2 images carry extensions too (qemu writes the backing format there).
  for (const HeaderExtension& ext : h.extensions) append(ext.type, ext.data);
  if (h.version >= 3 || !h.extensions.empty()) append(kExtEnd, {});
  if (!h.backing_file.empty()) {
    h.backing_file_offset = out.size();
    h.backing_file_size = static_cast<uint32_t>(h.backing_file.size());
    out.insert(out.end(), reinterpret_cast<const std::byte*>(h.backing_file.data()),
               reinterpret_cast<const std::byte*>(h.backing_file.data()) + h.backing_file.size());
  } else {
    h.backing_file_offset = 0;
    h.backing_file_size = 0;
  }
  store_be64(out.data() + 8, h.backing_file_offset);
  store_be32(out.data() + 16, h.backing_file_size);
  if (out.size() > cluster_size) {
    throw Error(EINVAL, fmt::format("qcow2 header, extensions and backing file name ({} bytes) do not fit in one cluster", out.size()));
  }
  return out;
}

std::vector<Snapshot> parse_snapshot_table(std::span<const std::byte> table, uint32_t count, const std::string& filename) {
  std::vector<Snapshot> snapshots;
  size_t pos = 0;
  for (uint32_t i = 0; i < count; ++i) {
    if (table.size() - pos < 40) fail(filename, "Snapshot table entry past the end of the table");
    const std::byte* p = table.data() + pos;
    Snapshot s;
    s.l1_table_offset = load_be64(p);
    s.l1_size = load_be32(p + 8);
    uint16_t id_len = load_be16(p + 12);
    uint16_t name_len = load_be16(p + 14);
    s.date_sec = load_be32(p + 16);
    s.date_nsec = load_be32(p + 20);
    s.vm_clock_nsec = load_be64(p + 24);
    s.vm_state_size = load_be32(p + 32);
    uint32_t extra_len = load_be32(p + 36);
    if (extra_len > 1024) fail(filename, fmt::format("Snapshot {} has too much extra data ({} bytes)", i, extra_len));
    uint64_t entry_len = 40ull + extra_len + id_len + name_len;
    if (entry_len > table.size() - pos) fail(filename, "Snapshot table entry past the end of the table");
    s.extra.assign(p + 40, p + 40 + extra_len);
    if (extra_len >= 8) s.vm_state_size = load_be64(p + 40);
    if (extra_len >= 16) s.disk_size = load_be64(p + 48);
    if (extra_len >= 24) s.icount = load_be64(p + 56);
    s.id.assign(reinterpret_cast<const char*>(p + 40 + extra_len), id_len);
    s.name.assign(reinterpret_cast<const char*>(p + 40 + extra_len + id_len), name_len);
    if (uint64_t(s.l1_size) * 8 > kMaxL1Bytes) fail(filename, fmt::format("Snapshot L1 table of '{}' too large", s.name));
    pos += round_up(entry_len, 8);
    if (pos > table.size()) pos = table.size();
    snapshots.push_back(std::move(s));
  }
  return snapshots;
}

std::vector<std::byte> encode_snapshot_table(const std::vector<Snapshot>& snapshots) {
  std::vector<std::byte> out;
  for (const Snapshot& s : snapshots) {
    std::vector<std::byte> extra = s.extra;
    if (extra.size() < 24) extra.resize(24);
    store_be64(extra.data(), s.vm_state_size);
    store_be64(extra.data() + 8, s.disk_size);
    store_be64(extra.data() + 16, s.icount);
    size_t at = out.size();
    size_t entry_len = 40 + extra.size() + s.id.size() + s.name.size();
    out.resize(at + round_up(entry_len, 8));
    std::byte* p = out.data() + at;
    store_be64(p, s.l1_table_offset);
    store_be32(p + 8, s.l1_size);
    store_be16(p + 12, static_cast<uint16_t>(s.id.size()));
    store_be16(p + 14, static_cast<uint16_t>(s.name.size()));
    store_be32(p + 16, s.date_sec);
    store_be32(p + 20, s.date_nsec);
    store_be64(p + 24, s.vm_clock_nsec);
    store_be32(p + 32, s.vm_state_size > UINT32_MAX ? 0 : static_cast<uint32_t>(s.vm_state_size));
    store_be32(p + 36, static_cast<uint32_t>(extra.size()));
    std::copy(extra.begin(), extra.end(), p + 40);
    std::memcpy(p + 40 + extra.size(), s.id.data(), s.id.size());
    std::memcpy(p + 40 + extra.size() + s.id.size(), s.name.data(), s.name.size());
  }
  return out;
}

uint64_t refcount_metadata_size(uint64_t clusters, uint64_t cluster_size, uint32_t refcount_order) {
  const uint64_t entries_per_table_cluster = cluster_size / 8;
  const uint64_t refcounts_per_block = cluster_size * 8 / (1ull << refcount_order);
  uint64_t table = 0, blocks = 0, total = 0, last = 0;
  // Blocks and table cover themselves: iterate to the fixed point.
  do {
    last = total;
    blocks = div_round_up(clusters + table + blocks, refcounts_per_block);
    table = div_round_up(blocks, entries_per_table_cluster);
    total = clusters + blocks + table;
  } while (total != last);
  return (blocks + table) * cluster_size;
}

uint64_t fully_allocated_size(uint64_t virtual_size, uint64_t cluster_size, uint32_t refcount_order, bool extended_l2) {
  const uint64_t aligned = round_up(virtual_size, cluster_size);
  const uint64_t l2_entry_size = extended_l2 ? 16 : 8;
  uint64_t meta = cluster_size;  // header
  uint64_t l2_entries = round_up(aligned / cluster_size, cluster_size / l2_entry_size);
  meta += l2_entries * l2_entry_size;
  uint64_t l1_entries = round_up(l2_entries * l2_entry_size / cluster_size, cluster_size / 8);
  meta += l1_entries * 8;
  meta += refcount_metadata_size((meta + aligned) / cluster_size, cluster_size, refcount_order);
  return meta + aligned;
}

}  // namespace kiln::block::qcow2
