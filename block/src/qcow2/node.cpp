// qcow2 node: opening, metadata caches, cluster allocation, data path.
#include "qcow2/node.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "kiln/block/image.h"
#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "kiln/common/size.h"

namespace kiln::block::qcow2 {
namespace {

uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }
uint64_t div_round_up(uint64_t value, uint64_t divisor) { return (value + divisor - 1) / divisor; }

// Per-thread scratch buffer so hot paths do not allocate per request.
std::byte* scratch(size_t bytes) {
  thread_local std::vector<std::byte> buffer;
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

constexpr uint64_t kMaxRun = 256;  // clusters allocated per step of a write
constexpr size_t kMaxDeferredFrees = 65536;  // a large discard flushes metadata after this many freed clusters

// Backing files being opened by this thread, to refuse loops before opening them twice.
thread_local std::vector<std::string> opening_chain;

std::string canonical_name(const std::string& name) {
  std::error_code ec;
  auto path = std::filesystem::weakly_canonical(name, ec);
  return ec ? name : path.string();
}

}  // namespace

// ---------------------------------------------------------------- TableCache

void TableCache::init(size_t capacity, size_t table_bytes) {
  // Slot memory is allocated on first use: a large cache costs nothing until filled.
  slots_.assign(std::max<size_t>(capacity, 2), Slot{});
  table_bytes_ = table_bytes;
  index_.clear();
}

TableCache::Slot* TableCache::find(uint64_t offset) {
  auto it = index_.find(offset);
  if (it == index_.end()) return nullptr;
  Slot* slot = &slots_[it->second];
  slot->last_use = ++clock_;
  return slot;
}

TableCache::Slot* TableCache::victim() {
  Slot* best = &slots_[0];
  for (Slot& slot : slots_) {
    if (slot.offset == 0) return &slot;
    if (slot.last_use < best->last_use) best = &slot;
  }
  return best;
}

void TableCache::install(Slot* slot, uint64_t offset) {
  if (slot->data.size() != table_bytes_) slot->data.resize(table_bytes_);
  if (slot->offset != 0) index_.erase(slot->offset);
  slot->offset = offset;
  slot->dirty = false;
  slot->last_use = ++clock_;
  index_[offset] = static_cast<size_t>(slot - slots_.data());
}

void TableCache::forget(uint64_t offset) {
  auto it = index_.find(offset);
  if (it == index_.end()) return;
  Slot& slot = slots_[it->second];
  slot.offset = 0;
  slot.dirty = false;
  slot.last_use = 0;
  index_.erase(it);
}

// ---------------------------------------------------------------- RangeLocks

void RangeLocks::lock(uint64_t begin, uint64_t end, bool exclusive) {
  std::unique_lock guard(mutex_);
  released_.wait(guard, [&] {
    return std::none_of(held_.begin(), held_.end(), [&](const Held& h) {
      return (exclusive || h.exclusive) && h.begin < end && begin < h.end;
    });
  });
  held_.push_back({begin, end, exclusive});
}

void RangeLocks::unlock(uint64_t begin, uint64_t end, bool exclusive) {
  {
    std::lock_guard guard(mutex_);
    auto it = std::find_if(held_.begin(), held_.end(),
                           [&](const Held& h) { return h.begin == begin && h.end == end && h.exclusive == exclusive; });
    if (it != held_.end()) held_.erase(it);
  }
  released_.notify_all();
}


// ---------------------------------------------------------------- open / close

Qcow2Node::Qcow2Node(std::unique_ptr<Node> owned, Node& file, const OpenSettings& settings, const OpenContext* context)
    : owned_file_(std::move(owned)), file_(&file), settings_(settings), read_only_(settings.read_only || file.read_only()) {
  load(context);
}

Qcow2Node::~Qcow2Node() {
  if (read_only_) return;
  try {
    std::lock_guard lock(meta_);
    store_bitmaps();
    flush_metadata();
    if (dirty_on_disk_) {
      file_->flush();
      header_.incompatible_features &= ~kIncompatDirty;
      write_incompatible_bits();
      dirty_on_disk_ = false;
    }
    file_->flush();
  } catch (const Error& e) {
    log::error("{}", e.what());
  }
}

void Qcow2Node::load(const OpenContext* context) {
  const std::string& name = file_->filename();
  const uint64_t file_size = file_->size();
  std::vector<std::byte> head(std::min<uint64_t>(file_size, 1u << kMaxClusterBits));
  file_->read(0, head);
  header_ = parse_header(head, file_size, name);

  if (header_.crypt_method == 1) {
    throw Error(ENOTSUP, fmt::format("Could not open '{}': legacy AES-encrypted qcow2 images are not supported by kiln (use LUKS)", name));
  }
  if ((header_.incompatible_features & kIncompatCorrupt) && !read_only_) {
    throw Error(EACCES, fmt::format("Could not open '{}': qcow2: Image is corrupt; cannot be opened read/write", name));
  }
  corrupt_ = (header_.incompatible_features & kIncompatCorrupt) != 0;

  cluster_bits_ = header_.cluster_bits;
  cluster_size_ = header_.cluster_size();
  extended_ = (header_.incompatible_features & kIncompatExtendedL2) != 0;
  l2_entry_size_ = extended_ ? 16 : 8;
  l2_bits_ = cluster_bits_ - (extended_ ? 4 : 3);
  l2_entries_ = cluster_size_ / l2_entry_size_;
  refcount_bits_ = 1u << header_.refcount_order;
  refcount_max_ = refcount_bits_ == 64 ? UINT64_MAX : (1ull << refcount_bits_) - 1;
  refblock_entries_ = cluster_size_ * 8 / refcount_bits_;
  size_ = header_.size;

  l1_ = read_l1(header_.l1_table_offset, header_.l1_size);
  {
    const uint64_t entries = header_.refcount_table_clusters * cluster_size_ / 8;
    std::vector<std::byte> raw(entries * 8);
    file_->read(header_.refcount_table_offset, raw);
    reftable_.resize(entries);
    for (uint64_t i = 0; i < entries; ++i) {
      uint64_t e = load_be64(raw.data() + i * 8);
      if (e & kRefTableReserved) {
        throw Error(EINVAL, fmt::format("Could not open '{}': Reference count table entry {} is invalid (0x{:x})", name, i, e));
      }
      if (e != 0 && (e >= file_size || e % cluster_size_ != 0)) {
        throw Error(EINVAL, fmt::format("Could not open '{}': Reference count block {} at 0x{:x} lies outside the file", name, i, e));
      }
      reftable_[i] = e;
    }
  }
  if (header_.nb_snapshots > 0) {
    // Entries are variable-sized: start with a typical size and grow while
    // the table runs on (bounded by the file and qemu's 64 MiB limit).
    const uint64_t limit = std::min<uint64_t>(file_size - header_.snapshots_offset, 64ull << 20);
    uint64_t bytes = std::min<uint64_t>(limit, uint64_t(header_.nb_snapshots) * 1024 + 4096);
    while (true) {
      std::vector<std::byte> raw(bytes);
      file_->read(header_.snapshots_offset, raw);
      try {
        snapshots_ = parse_snapshot_table(raw, header_.nb_snapshots, name);
        break;
      } catch (const Error&) {
        if (bytes >= limit) throw;
        bytes = std::min(limit, bytes * 4);
      }
    }
    for (const Snapshot& s : snapshots_) {
      if (s.l1_table_offset % cluster_size_ != 0 || s.l1_table_offset > file_size || uint64_t(s.l1_size) * 8 > file_size - s.l1_table_offset) {
        throw Error(EINVAL, fmt::format("Could not open '{}': Snapshot L1 table of '{}' lies outside the file", name, s.name));
      }
    }
  }

  // Cache sizes: enough L2 tables to cover the whole image up to 32 MiB, as qemu.
  uint64_t l2_bytes = settings_.l2_cache_bytes;
  if (l2_bytes == 0) l2_bytes = std::min<uint64_t>(32ull << 20, div_round_up(header_.size, cluster_size_) * 8);
  uint64_t ref_bytes = settings_.refcount_cache_bytes ? settings_.refcount_cache_bytes : std::max<uint64_t>(4 * cluster_size_, l2_bytes / 4);
  ref_bytes = std::min<uint64_t>(ref_bytes, 8ull << 20);
  l2_cache_.init(std::max<uint64_t>(2, l2_bytes / cluster_size_), cluster_size_);
  refblock_cache_.init(std::max<uint64_t>(4, ref_bytes / cluster_size_), cluster_size_);

  data_ = file_;
  if (header_.crypt_method == 2) load_luks();
  if (header_.incompatible_features & kIncompatDataFile) open_data_file(context);
  if (context != nullptr && !settings_.no_backing && !header_.backing_file.empty()) open_backing(*context);

  if ((header_.incompatible_features & kIncompatDirty) && !read_only_ && settings_.repair_dirty) {
    // Refcounts may be stale (lazy refcounts): rebuild them before writing.
    std::unique_lock drain(drain_);
    std::lock_guard lock(meta_);
    check_locked(CheckRepair::All);
    flush_metadata();
    header_.incompatible_features &= ~kIncompatDirty;
    write_incompatible_bits();
    file_->flush();
  }
  load_bitmap_directory();
  const uint64_t maintained = kAutoclearDataFileRaw | (bitmap_directory_offset_ != 0 ? kAutoclearBitmaps : 0);
  if (!read_only_ && header_.version >= 3 && (header_.autoclear_features & ~maintained) != 0) {
    // Unknown or unmaintained autoclear features (e.g. an invalid bitmap directory) become inconsistent once we write.
    header_.autoclear_features &= maintained;
    write_header();
  }
  if (!read_only_) hold_bitmaps();
}

std::vector<uint64_t> Qcow2Node::read_l1(uint64_t offset, uint32_t entries) {
  std::vector<std::byte> raw(uint64_t(entries) * 8);
  if (!raw.empty()) file_->read(offset, raw);
  std::vector<uint64_t> l1(entries);
  for (uint32_t i = 0; i < entries; ++i) l1[i] = load_be64(raw.data() + uint64_t(i) * 8);
  return l1;
}

void Qcow2Node::load_luks() {
  const HeaderExtension* ext = find_extension(header_, kExtCrypto);
  if (ext == nullptr || ext->data.size() < 16) {
    throw Error(EINVAL, fmt::format("Could not open '{}': LUKS encryption without a full disk encryption header extension", filename()));
  }
  const uint64_t offset = load_be64(ext->data.data());
  const uint64_t length = load_be64(ext->data.data() + 8);
  if (offset % cluster_size_ != 0 || offset == 0 || length < kLuksHeaderBytes || offset > file_->size() || length > file_->size() - offset) {
    throw Error(EINVAL, fmt::format("Could not open '{}': invalid encryption header offset 0x{:x} length {}", filename(), offset, length));
  }
  std::vector<std::byte> raw(kLuksHeaderBytes);
  file_->read(offset, raw);
  luks_ = LuksHeader::parse(raw, filename());
  for (const LuksKeySlot& slot : luks_->slots) {
    if (slot.active == kLuksSlotActive && (uint64_t(slot.key_offset) * 512 + uint64_t(slot.stripes) * luks_->key_bytes > length)) {
      throw Error(EINVAL, fmt::format("Could not open '{}': LUKS key material lies outside the encryption header", filename()));
    }
  }
  encrypted_ = true;
  if (!settings_.passphrase) {
    if (!read_only_) throw Error(EINVAL, fmt::format("Could not open '{}': Parameter 'encrypt.key-secret' is required for cipher", filename()));
    return;  // metadata only (info, check, map)
  }
  auto read = [&](uint64_t at, std::span<std::byte> out) { file_->read(offset + at, out); };
  cipher_ = SectorCipher(luks_unlock(*luks_, *settings_.passphrase, read, filename()));
}

void Qcow2Node::read_data(uint64_t host, std::span<std::byte> buffer) {
  data_->read(host, buffer);
  if (!encrypted_) return;
  if (!cipher_.valid()) throw Error(EACCES, fmt::format("'{}': the image is encrypted; its key (encrypt.key-secret) was not given", filename()));
  cipher_.decrypt(host / 512, buffer);
}

void Qcow2Node::write_data(uint64_t host, std::span<const std::byte> data) {
  if (!encrypted_) {
    data_->write(host, data);
    return;
  }
  if (!cipher_.valid()) throw Error(EACCES, fmt::format("'{}': the image is encrypted; its key (encrypt.key-secret) was not given", filename()));
  thread_local std::vector<std::byte> sealed;
  if (sealed.size() < data.size()) sealed.resize(data.size());
  std::memcpy(sealed.data(), data.data(), data.size());
  cipher_.encrypt(host / 512, {sealed.data(), data.size()});
  data_->write(host, {sealed.data(), data.size()});
}

void Qcow2Node::setup_luks(const LuksCreateParams& params) {
  std::unique_lock drain(drain_);
  std::lock_guard lock(meta_);
  LuksRegion region = luks_create(params);
  const uint64_t clusters = div_round_up(region.bytes.size(), cluster_size_);
  const uint64_t offset = alloc_clusters(clusters);
  flush_metadata();
  file_->write(offset, region.bytes);
  std::vector<std::byte> ext(16);
  store_be64(ext.data(), offset);
  store_be64(ext.data() + 8, region.bytes.size());
  header_.extensions.insert(header_.extensions.begin(), {kExtCrypto, std::move(ext)});
  header_.crypt_method = 2;
  file_->flush();
  write_header();
  file_->flush();
  luks_ = LuksHeader::parse(region.bytes, filename());
  encrypted_ = true;
  cipher_ = SectorCipher(region.master_key);
  overlap_index_valid_ = false;
}

// A relative name is relative to the image's folder, not the working directory.
std::string Qcow2Node::resolve_relative(const std::string& name) const {
  if (!name.empty() && name[0] != '/' && name.find("://") == std::string::npos && name.find(':') == std::string::npos) {
    std::filesystem::path parent = std::filesystem::path(filename()).parent_path();
    if (!parent.empty()) return (parent / name).string();
  }
  return name;
}

void Qcow2Node::open_data_file(const OpenContext* context) {
  has_data_file_ = true;
  data_raw_ = (header_.autoclear_features & kAutoclearDataFileRaw) != 0;
  if (settings_.data_file != nullptr) {
    data_ = settings_.data_file;
    return;
  }
  const HeaderExtension* ext = find_extension(header_, kExtDataFile);
  if (ext == nullptr || ext->data.empty()) {
    throw Error(EINVAL, fmt::format("Could not open '{}': 'data-file' is required for this image", filename()));
  }
  if (context == nullptr) throw Error(EINVAL, fmt::format("Could not open '{}': the external data file cannot be opened here", filename()));
  // Like qemu, the name is used as stored (relative to the working directory, unlike backing files).
  const std::string name(reinterpret_cast<const char*>(ext->data.data()), ext->data.size());
  try {
    data_file_ = context->open_image(name, "raw", read_only_);
  } catch (const Error& e) {
    throw Error(e.errno_value(), fmt::format("Could not open data file of '{}': {}", filename(), e.what()));
  }
  data_ = data_file_.get();
}

void Qcow2Node::open_backing(const OpenContext& context) {
  const std::string name = resolve_relative(header_.backing_file);
  std::string format;
  if (const HeaderExtension* ext = find_extension(header_, kExtBackingFormat)) {
    format.assign(reinterpret_cast<const char*>(ext->data.data()), ext->data.size());
  }
  const std::string self = canonical_name(filename());
  const std::string target = canonical_name(name);
  bool pushed_self = false;
  if (opening_chain.empty() || opening_chain.back() != self) {
    opening_chain.push_back(self);
    pushed_self = true;
  }
  struct Pop {
    bool active;
    ~Pop() {
      if (active) opening_chain.pop_back();
    }
  } pop{pushed_self};
  if (std::find(opening_chain.begin(), opening_chain.end(), target) != opening_chain.end()) {
    throw Error(ELOOP, fmt::format("Could not open backing file '{}' of '{}': the backing chain contains a loop", name, filename()));
  }
  opening_chain.push_back(target);
  struct PopTarget {
    ~PopTarget() { opening_chain.pop_back(); }
  } pop_target;
  try {
    backing_ = context.open_image(name, format, true);
  } catch (const Error& e) {
    std::string what = e.what();
    if (what.find("Could not open backing file") == 0) throw;
    throw Error(e.errno_value(), fmt::format("Could not open backing file: {}", what));
  }
}

// ---------------------------------------------------------------- info

std::string Qcow2Node::backing_filename() const {
  std::lock_guard lock(meta_);
  return header_.backing_file;
}

std::string Qcow2Node::backing_format() const {
  std::lock_guard lock(meta_);
  const HeaderExtension* ext = find_extension(header_, kExtBackingFormat);
  return ext ? std::string(reinterpret_cast<const char*>(ext->data.data()), ext->data.size()) : std::string();
}

bool Qcow2Node::dirty() const {
  std::lock_guard lock(meta_);
  return (header_.incompatible_features & kIncompatDirty) != 0;
}

nlohmann::json Qcow2Node::format_specific_info() const {
  std::lock_guard lock(meta_);
  nlohmann::json data = nlohmann::json::object();
  if (const HeaderExtension* ext = find_extension(header_, kExtDataFile); ext && (header_.incompatible_features & kIncompatDataFile)) {
    data["data-file"] = std::string(reinterpret_cast<const char*>(ext->data.data()), ext->data.size());
    data["data-file-raw"] = data_raw_;
  }
  data["compat"] = header_.version >= 3 ? "1.1" : "0.10";
  data["compression-type"] = header_.compression_type == 1 ? "zstd" : "zlib";
  if (luks_) data["encrypt"] = luks_->info();
  if (header_.version >= 3) {
    data["lazy-refcounts"] = (header_.compatible_features & kCompatLazyRefcounts) != 0;
    std::lock_guard bitmap_lock(bitmap_mutex_);
    if (!bitmaps_.empty()) {
      nlohmann::json list = nlohmann::json::array();
      for (const DirtyBitmap& b : bitmaps_) {
        nlohmann::json flags = nlohmann::json::array();
        if (b.flags & 1) flags.push_back("in-use");
        if (b.flags & 2) flags.push_back("auto");
        list.push_back({{"flags", flags}, {"name", b.name}, {"granularity", 1ull << std::min<uint8_t>(b.granularity_bits, 63)}});
      }
      data["bitmaps"] = list;
    }
    data["refcount-bits"] = refcount_bits_;
    data["corrupt"] = (header_.incompatible_features & kIncompatCorrupt) != 0;
    data["extended-l2"] = (header_.incompatible_features & kIncompatExtendedL2) != 0;
  } else {
    data["refcount-bits"] = refcount_bits_;
  }
  return {{"type", "qcow2"}, {"data", data}};
}

// ---------------------------------------------------------------- metadata helpers

[[noreturn]] void Qcow2Node::corruption(const std::string& what) {
  if (!read_only_ && !corrupt_) {
    corrupt_ = true;
    header_.incompatible_features |= kIncompatCorrupt;
    try {
      write_incompatible_bits();
      file_->flush();
    } catch (const Error&) {
    }
    log::error("qcow2: Marking image as corrupt: {}; further corruption events will be suppressed", what);
  }
  throw Error(EIO, fmt::format("'{}': qcow2 image is corrupt: {}", filename(), what));
}

void Qcow2Node::check_writable() {
  if (read_only_) throw Error(EACCES, fmt::format("'{}' is opened read-only", filename()));
  if (corrupt_) throw Error(EIO, fmt::format("'{}': the image is marked corrupt; writes are refused (run check -r all)", filename()));
}

void Qcow2Node::write_incompatible_bits() {
  if (header_.version < 3) return;
  std::byte raw[8];
  store_be64(raw, header_.incompatible_features);
  file_->write(72, raw);
}

void Qcow2Node::write_header() {
  std::vector<std::byte> encoded = encode_header(header_);
  // The rest of the cluster is cleared so no stale extension survives.
  encoded.resize(std::min<uint64_t>(cluster_size_, std::max<uint64_t>(encoded.size(), 4096)));
  file_->write(0, encoded);
}

void Qcow2Node::mark_dirty_for_write() {
  if (dirty_on_disk_ || !(header_.compatible_features & kCompatLazyRefcounts) || header_.version < 3) return;
  header_.incompatible_features |= kIncompatDirty;
  write_incompatible_bits();
  file_->flush();
  dirty_on_disk_ = true;
}

void Qcow2Node::rebuild_overlap_index() {
  overlap_index_.clear();
  auto add = [&](uint64_t begin, uint64_t bytes, const char* what) {
    if (bytes != 0) overlap_index_.push_back({begin, begin + bytes, what});
  };
  add(0, cluster_size_, "the header");
  add(header_.l1_table_offset, uint64_t(header_.l1_size) * 8, "the active L1 table");
  add(header_.refcount_table_offset, uint64_t(header_.refcount_table_clusters) * cluster_size_, "the refcount table");
  if (header_.nb_snapshots) add(header_.snapshots_offset, encode_snapshot_table(snapshots_).size(), "the snapshot table");
  for (const Snapshot& s : snapshots_) add(s.l1_table_offset, uint64_t(s.l1_size) * 8, "a snapshot L1 table");
  for (uint64_t e : reftable_) {
    if (e) add(e, cluster_size_, "a refcount block");
  }
  for (uint64_t e : l1_) {
    if (e & kOffsetMask) add(e & kOffsetMask, cluster_size_, "an active L2 table");
  }
  std::sort(overlap_index_.begin(), overlap_index_.end(), [](const Extent& a, const Extent& b) { return a.begin < b.begin; });
  // Running maximum of ends, so one binary search answers "does anything before X reach past Y".
  uint64_t reach = 0;
  for (Extent& e : overlap_index_) {
    reach = std::max(reach, e.end);
    e.reach = reach;
  }
  overlap_index_valid_ = true;
}

void Qcow2Node::check_metadata_overlap(uint64_t offset, uint64_t bytes, const char* what) {
  if (bytes == 0) return;
  if (!overlap_index_valid_) rebuild_overlap_index();
  auto it = std::lower_bound(overlap_index_.begin(), overlap_index_.end(), offset + bytes,
                             [](const Extent& e, uint64_t end) { return e.begin < end; });
  if (it == overlap_index_.begin()) return;
  --it;
  if (it->reach <= offset) return;
  // Something overlaps: find which, for the message.
  while (it->end <= offset) --it;
  corruption(fmt::format("Preventing invalid write on metadata (overlaps with {}): {} at 0x{:x}", it->what, what, offset));
}

void Qcow2Node::write_back(TableCache::Slot& slot, bool is_l2) {
  if (!slot.dirty) return;
  if (is_l2) {
    // An L2 table may only reach the disk after the refcounts and the data
    // (copy-on-write parts included) of what it references. Refcount blocks
    // may have been evicted unflushed, so the flush is unconditional.
    for (TableCache::Slot& r : refblock_cache_.slots()) write_back(r, false);
    file_->flush();
  }
  file_->write(slot.offset, slot.data);
  slot.dirty = false;
}

std::byte* Qcow2Node::load_table(TableCache& cache, uint64_t offset, bool is_l2, bool zero_fill) {
  if (TableCache::Slot* slot = cache.find(offset)) return slot->data.data();
  TableCache::Slot* slot = cache.victim();
  write_back(*slot, is_l2);
  cache.install(slot, offset);
  if (zero_fill) {
    std::fill(slot->data.begin(), slot->data.end(), std::byte{0});
  } else {
    try {
      file_->read(offset, slot->data);
    } catch (...) {
      cache.forget(offset);
      throw;
    }
  }
  return slot->data.data();
}

uint64_t Qcow2Node::l2_offset_of(uint64_t l1_index) {
  if (l1_index >= l1_.size()) return 0;
  const uint64_t entry = l1_[l1_index];
  const uint64_t offset = entry & kOffsetMask;
  if ((entry & kL1Reserved) || (offset % cluster_size_) != 0) {
    corruption(fmt::format("L1 entry {} is invalid (0x{:x})", l1_index, entry));
  }
  if (offset != 0 && (offset < cluster_size_ || offset >= std::max(file_->size(), host_end_))) {
    corruption(fmt::format("L2 table offset 0x{:x} (L1 index {}) lies outside the image file", offset, l1_index));
  }
  return offset;
}

Qcow2Node::Kind Qcow2Node::classify(uint64_t entry, uint64_t l2_offset, uint64_t index) {
  if (entry & kCompressed) return Kind::Compressed;
  if ((entry & kZeroFlag) && header_.version >= 3 && !extended_) return Kind::Zero;
  if (entry & l2_reserved_mask()) {
    corruption(fmt::format("L2 entry 0x{:x} has reserved bits set (L2 offset: 0x{:x}, L2 index: 0x{:x})", entry, l2_offset, index));
  }
  const uint64_t host = entry & kOffsetMask;
  if (host == 0 && !(has_data_file_ && (entry & kCopied))) return Kind::Unallocated;
  if (host % cluster_size_ != 0) {
    corruption(fmt::format("Cluster allocation offset 0x{:x} unaligned (L2 offset: 0x{:x}, L2 index: 0x{:x})", host, l2_offset, index));
  }
  return Kind::Normal;
}

Qcow2Node::Mapping Qcow2Node::lookup(uint64_t guest, uint64_t max_bytes) {
  if (extended_) return lookup_extended(guest, max_bytes);
  const uint64_t in_cluster = guest & (cluster_size_ - 1);
  const uint64_t l2_off = l2_offset_of(l1_index(guest));
  const uint64_t first = l2_index(guest);
  const uint64_t table_left = (l2_entries_ - first) * cluster_size_ - in_cluster;
  Mapping m;
  if (l2_off == 0) {
    m.bytes = std::min(max_bytes, table_left);
    return m;
  }
  std::byte* table = load_table(l2_cache_, l2_off, true);
  const uint64_t entry = l2_entry(table, first);
  m.kind = classify(entry, l2_off, first);
  if (m.kind == Kind::Compressed) {
    m.host = entry;
    m.bytes = std::min(max_bytes, cluster_size_ - in_cluster);
    return m;
  }
  if (m.kind == Kind::Normal) m.host = (entry & kOffsetMask) + in_cluster;
  uint64_t bytes = cluster_size_ - in_cluster;
  uint64_t expected_host = (entry & kOffsetMask) + cluster_size_;
  for (uint64_t i = first + 1; i < l2_entries_ && bytes < max_bytes; ++i) {
    const uint64_t next = l2_entry(table, i);
    Kind kind = classify(next, l2_off, i);
    if (kind != m.kind) break;
    if (kind == Kind::Compressed) break;
    if (kind == Kind::Normal) {
      if ((next & kOffsetMask) != expected_host) break;
      expected_host += cluster_size_;
    }
    bytes += cluster_size_;
  }
  m.bytes = std::min(bytes, max_bytes);
  return m;
}

// Extended L2: status per subcluster (cluster_size / 32), merged into runs.
Qcow2Node::Mapping Qcow2Node::lookup_extended(uint64_t guest, uint64_t max_bytes) {
  const uint64_t sub = cluster_size_ / 32;
  const uint64_t in_cluster = guest & (cluster_size_ - 1);
  const uint64_t l2_off = l2_offset_of(l1_index(guest));
  uint64_t index = l2_index(guest);
  Mapping m;
  if (l2_off == 0) {
    m.bytes = std::min(max_bytes, (l2_entries_ - index) * cluster_size_ - in_cluster);
    return m;
  }
  std::byte* table = load_table(l2_cache_, l2_off, true);
  auto kind_of = [&](uint64_t entry, uint64_t bitmap, uint64_t s) {
    if (entry & kCompressed) return Kind::Compressed;
    if ((bitmap >> s) & 1) {
      if ((entry & kOffsetMask) == 0) {
        corruption(fmt::format("Subcluster {} allocated without a host cluster (L2 offset: 0x{:x}, L2 index: 0x{:x})", s, l2_off, index));
      }
      return Kind::Normal;
    }
    if ((bitmap >> (32 + s)) & 1) return Kind::Zero;
    return Kind::Unallocated;
  };
  uint64_t entry = l2_entry(table, index);
  uint64_t bitmap = l2_bitmap(table, index);
  classify(entry, l2_off, index);
  uint64_t s = in_cluster / sub;
  m.kind = kind_of(entry, bitmap, s);
  if (m.kind == Kind::Compressed) {
    m.host = entry;
    m.bytes = std::min(max_bytes, cluster_size_ - in_cluster);
    return m;
  }
  if (m.kind == Kind::Normal) m.host = (entry & kOffsetMask) + in_cluster;
  uint64_t bytes = (s + 1) * sub - in_cluster;
  uint64_t expected = (entry & kOffsetMask) + (s + 1) * sub;
  while (bytes < max_bytes) {
    if (++s == 32) {
      s = 0;
      if (++index == l2_entries_) break;
      entry = l2_entry(table, index);
      bitmap = l2_bitmap(table, index);
      classify(entry, l2_off, index);
    }
    const Kind kind = kind_of(entry, bitmap, s);
    if (kind != m.kind || kind == Kind::Compressed) break;
    if (kind == Kind::Normal) {
      if ((entry & kOffsetMask) + s * sub != expected) break;
      expected += sub;
    }
    bytes += sub;
  }
  m.bytes = std::min(bytes, max_bytes);
  return m;
}

// Extended L2 write inside one cluster: only the subclusters touched become
// allocated; the untouched parts of partially written subclusters (and, when
// the cluster moves, every other allocated subcluster) are copied from the
// old contents.
void Qcow2Node::write_extended_cluster(uint64_t guest, std::span<const std::byte> data) {
  const uint64_t sub = cluster_size_ / 32;
  const uint64_t cluster_guest = guest & ~(cluster_size_ - 1);
  const uint64_t in_cluster = guest - cluster_guest;
  const uint64_t end = in_cluster + data.size();
  const uint64_t s0 = in_cluster / sub, s1 = (end - 1) / sub;
  uint64_t l2_off = 0, old_entry = 0, old_bitmap = 0, target = 0;
  bool relocate = false;
  {
    std::lock_guard lock(meta_);
    l2_off = writable_l2(l1_index(guest));
    std::byte* table = load_table(l2_cache_, l2_off, true);
    const uint64_t index = l2_index(guest);
    old_entry = l2_entry(table, index);
    old_bitmap = l2_bitmap(table, index);
    const Kind kind = classify(old_entry, l2_off, index);
    relocate = kind != Kind::Normal || !(old_entry & kCopied);
    if (relocate) {
      mark_dirty_for_write();
      target = has_data_file_ ? cluster_guest : alloc_clusters(1);
    } else {
      target = old_entry & kOffsetMask;
    }
    check_data_overlap(target, cluster_size_, relocate ? "new data cluster" : "guest data write");
  }
  const bool compressed = old_entry & kCompressed;
  const uint64_t old_alloc = compressed ? 0xffffffffull : (old_bitmap & 0xffffffffull);
  auto fill = [&](uint64_t from, uint64_t to) {
    if (from >= to) return;
    std::byte* buffer = scratch(to - from);
    for (uint64_t pos = from; pos < to;) {
      Mapping m;
      {
        std::lock_guard lock(meta_);
        m = lookup(cluster_guest + pos, to - pos);
      }
      read_mapping(m, cluster_guest + pos, {buffer + (pos - from), m.bytes});
      pos += m.bytes;
    }
    write_data(target + from, {buffer, to - from});
  };
  // Subclusters [first, last) become allocated. In place, those written; when
  // the cluster moves, as qemu, the span from the first to the last allocated
  // or written one, gaps included (they take the contents they showed).
  uint64_t first = s0, last = s1 + 1;
  if (relocate && old_alloc != 0) {
    first = std::min<uint64_t>(s0, __builtin_ctzll(old_alloc));
    last = std::max<uint64_t>(s1 + 1, 64 - __builtin_clzll(old_alloc));
  }
  if (relocate || !((old_alloc >> s0) & 1)) fill(first * sub, in_cluster);
  if (relocate || !((old_alloc >> s1) & 1)) fill(end, last * sub);
  const uint64_t touched = ((last - first == 64 ? ~0ull : ((1ull << (last - first)) - 1)) << first) & 0xffffffffull;
  write_data(target + in_cluster, data);
  std::lock_guard lock(meta_);
  std::byte* table = load_table(l2_cache_, l2_off, true);
  l2_cache_.find(l2_off)->dirty = true;
  const uint64_t alloc = old_alloc | touched;
  const uint64_t zero = compressed ? 0 : ((old_bitmap >> 32) & ~alloc);
  store_l2(table, l2_index(guest), target | kCopied, alloc | (zero << 32));
  if (relocate) release_entry(old_entry);
}

// ---------------------------------------------------------------- refcounts

uint64_t Qcow2Node::get_refcount(uint64_t cluster) {
  const uint64_t block_index = cluster / refblock_entries_;
  if (block_index >= reftable_.size() || reftable_[block_index] == 0) return 0;
  const std::byte* block = load_table(refblock_cache_, reftable_[block_index], false);
  const uint64_t i = cluster % refblock_entries_;
  if (refcount_bits_ < 8) {
    const uint64_t bit = i * refcount_bits_;
    return (std::to_integer<uint64_t>(block[bit / 8]) >> (bit % 8)) & refcount_max_;
  }
  const uint32_t width = refcount_bits_ / 8;
  const std::byte* p = block + i * width;
  switch (width) {
    case 1: return std::to_integer<uint64_t>(*p);
    case 2: return load_be16(p);
    case 4: return load_be32(p);
    default: return load_be64(p);
  }
}

void Qcow2Node::set_refcount(uint64_t cluster, uint64_t value) {
  const uint64_t block_index = cluster / refblock_entries_;
  if (block_index >= reftable_.size()) grow_reftable(block_index + 1);
  if (reftable_[block_index] == 0) create_refblock(block_index);
  TableCache::Slot* slot = nullptr;
  load_table(refblock_cache_, reftable_[block_index], false);
  slot = refblock_cache_.find(reftable_[block_index]);
  std::byte* block = slot->data.data();
  slot->dirty = true;
  const uint64_t i = cluster % refblock_entries_;
  if (refcount_bits_ < 8) {
    const uint64_t bit = i * refcount_bits_;
    uint8_t byte = std::to_integer<uint8_t>(block[bit / 8]);
    byte = static_cast<uint8_t>((byte & ~(refcount_max_ << (bit % 8))) | (value << (bit % 8)));
    block[bit / 8] = std::byte(byte);
    return;
  }
  std::byte* p = block + i * (refcount_bits_ / 8);
  switch (refcount_bits_ / 8) {
    case 1: *p = std::byte(value); break;
    case 2: store_be16(p, static_cast<uint16_t>(value)); break;
    case 4: store_be32(p, static_cast<uint32_t>(value)); break;
    default: store_be64(p, value); break;
  }
}

void Qcow2Node::update_refcount(uint64_t cluster, int64_t delta) {
  const uint64_t old = get_refcount(cluster);
  if (delta < 0 && old < static_cast<uint64_t>(-delta)) {
    corruption(fmt::format("Refcount of cluster 0x{:x} would drop below zero", cluster * cluster_size_));
  }
  if (delta > 0 && refcount_max_ - old < static_cast<uint64_t>(delta)) {
    throw Error(ERANGE, fmt::format("'{}': refcount of cluster 0x{:x} would exceed the {}-bit maximum", filename(),
                                    cluster * cluster_size_, refcount_bits_));
  }
  const uint64_t value = old + static_cast<uint64_t>(delta);
  set_refcount(cluster, value);
  if (value == 0) {
    const uint64_t offset = cluster * cluster_size_;
    // A freed table must never be written back over whatever reuses the cluster.
    l2_cache_.forget(offset);
    refblock_cache_.forget(offset);
    if (cluster < free_hint_) free_hint_ = cluster;
    if (compressed_tail_ / cluster_size_ == cluster) compressed_tail_ = 0;
  }
}

void Qcow2Node::update_refcount_range(uint64_t offset, uint64_t bytes, int64_t delta) {
  if (bytes == 0) return;
  for (uint64_t c = offset / cluster_size_; c <= (offset + bytes - 1) / cluster_size_; ++c) update_refcount(c, delta);
}

bool Qcow2Node::cluster_free(uint64_t cluster) {
  if (cluster == 0 || referenced_in_repair(cluster)) return false;
  for (auto [begin, end] : pending_) {
    if (cluster >= begin && cluster < end) return false;
  }
  return get_refcount(cluster) == 0;
}

uint64_t Qcow2Node::find_free_run(uint64_t count) {
  uint64_t start = std::max<uint64_t>(free_hint_, 1);
  // Clusters in use at the hint stay in use until a decrement to zero lowers
  // the hint again: move past them once, not on every allocation.
  while (get_refcount(start) != 0) ++start;
  free_hint_ = start;
  while (true) {
    uint64_t i = 0;
    while (i < count && cluster_free(start + i)) ++i;
    if (i == count) break;
    start += i + 1;
  }
  if ((start + count) * cluster_size_ > (1ull << 56)) {
    throw Error(EFBIG, fmt::format("'{}': no free host cluster below 64 PiB", filename()));
  }
  return start;
}

uint64_t Qcow2Node::alloc_clusters(uint64_t count) {
  uint64_t start = find_free_run(count);
  if (deferred_reclaimable_ != 0 && (start + count) * cluster_size_ > std::max(host_end_, file_->size())) {
    // Rather than grow the file, make the clusters waiting for their tables to
    // reach the disk reusable (not for mere decrements of shared clusters).
    flush_metadata();
    start = find_free_run(count);
  }
  pending_.emplace_back(start, start + count);
  try {
    for (uint64_t i = 0; i < count; ++i) set_refcount(start + i, 1);
  } catch (...) {
    pending_.pop_back();
    throw;
  }
  std::erase(pending_, std::pair{start, start + count});
  if (start <= free_hint_ + 1) free_hint_ = start + count;
  host_end_ = std::max(host_end_, (start + count) * cluster_size_);
  return start * cluster_size_;
}

void Qcow2Node::create_refblock(uint64_t index) {
  // Self-describing: the block lives inside the range it covers, where every
  // cluster is free (no block yet) except those being allocated right now.
  uint64_t cluster = index * refblock_entries_;
  auto pending = [&](uint64_t c) {
    if (c == 0 || referenced_in_repair(c)) return true;
    for (auto [begin, end] : pending_) {
      if (c >= begin && c < end) return true;
    }
    return false;
  };
  while (cluster < (index + 1) * refblock_entries_ && pending(cluster)) ++cluster;
  const bool self_describing = cluster < (index + 1) * refblock_entries_;
  // Every cluster of the range is being allocated: put the block elsewhere.
  if (!self_describing) cluster = find_free_run(1);
  const uint64_t offset = cluster * cluster_size_;
  reftable_[index] = offset;
  reftable_dirty_ = true;
  overlap_index_valid_ = false;
  host_end_ = std::max(host_end_, offset + cluster_size_);
  load_table(refblock_cache_, offset, false, true);
  refblock_cache_.find(offset)->dirty = true;
  count_in_repair(cluster, 1);
  if (self_describing) {
    set_refcount(cluster, 1);
    return;
  }
  pending_.emplace_back(cluster, cluster + 1);
  try {
    set_refcount(cluster, 1);
  } catch (...) {
    std::erase(pending_, std::pair{cluster, cluster + 1});
    throw;
  }
  std::erase(pending_, std::pair{cluster, cluster + 1});
}

void Qcow2Node::grow_reftable(uint64_t min_entries) {
  const uint64_t per_cluster = cluster_size_ / 8;
  uint64_t entries = std::max<uint64_t>(min_entries, reftable_.size() * 3 / 2 + 1);
  uint64_t clusters = 0, start = 0;
  while (true) {
    clusters = div_round_up(entries, per_cluster);
    if (clusters * cluster_size_ > kMaxRefTableBytes) {
      throw Error(EFBIG, fmt::format("'{}': the refcount table would exceed {} bytes", filename(), kMaxRefTableBytes));
    }
    start = find_free_run(clusters);
    const uint64_t needed = (start + clusters) / refblock_entries_ + 1;
    if (needed <= clusters * per_cluster) break;
    entries = needed + per_cluster;
  }
  pending_.emplace_back(start, start + clusters);
  std::vector<uint64_t> old_table = std::move(reftable_);
  const uint64_t old_offset = header_.refcount_table_offset;
  const uint64_t old_clusters = header_.refcount_table_clusters;
  reftable_ = old_table;
  reftable_.resize(clusters * per_cluster, 0);
  try {
    for (uint64_t i = 0; i < clusters; ++i) set_refcount(start + i, 1);
  } catch (...) {
    std::erase(pending_, std::pair{start, start + clusters});
    throw;
  }
  std::erase(pending_, std::pair{start, start + clusters});
  for (uint64_t i = 0; i < clusters; ++i) count_in_repair(start + i, 1);
  // New blocks first, then the table, then the header pointing at it.
  for (TableCache::Slot& r : refblock_cache_.slots()) write_back(r, false);
  std::vector<std::byte> raw(clusters * cluster_size_);
  for (uint64_t i = 0; i < reftable_.size(); ++i) store_be64(raw.data() + i * 8, reftable_[i]);
  file_->write(start * cluster_size_, raw);
  file_->flush();
  header_.refcount_table_offset = start * cluster_size_;
  header_.refcount_table_clusters = static_cast<uint32_t>(clusters);
  std::byte fields[12];
  store_be64(fields, header_.refcount_table_offset);
  store_be32(fields + 8, header_.refcount_table_clusters);
  file_->write(48, fields);
  file_->flush();
  reftable_dirty_ = false;
  overlap_index_valid_ = false;
  for (uint64_t i = 0; i < old_clusters; ++i) {
    const uint64_t cluster = old_offset / cluster_size_ + i;
    if (repair_refs_ == nullptr) {
      update_refcount(cluster, -1);
      continue;
    }
    // The stored count may be stale: the repair sets it from the counted references.
    count_in_repair(cluster, -1);
    set_refcount(cluster, (*repair_refs_)[cluster]);
  }
}

void Qcow2Node::count_in_repair(uint64_t cluster, int delta) {
  if (repair_refs_ == nullptr) return;
  std::vector<uint32_t>& refs = *repair_refs_;
  if (cluster >= refs.size()) refs.resize(cluster + 1);
  refs[cluster] = static_cast<uint32_t>(static_cast<int64_t>(refs[cluster]) + delta);
}

void Qcow2Node::create_missing_refblocks() {
  // Lazy refcounts or a crash can leave referenced clusters with no refcount
  // block covering them; the blocks (and a larger table) are placed where
  // nothing is referenced, so repairing never overwrites live data.
  const std::vector<uint32_t>& refs = *repair_refs_;
  const uint64_t counted = refs.size();
  for (uint64_t block = 0; block * refblock_entries_ < counted; ++block) {
    if (block < reftable_.size() && reftable_[block] != 0) continue;
    const uint64_t begin = block * refblock_entries_, end = std::min(counted, begin + refblock_entries_);
    for (uint64_t c = begin; c < end; ++c) {
      if (refs[c] == 0) continue;
      set_refcount(c, refs[c]);  // creates the block
      break;
    }
  }
}

void Qcow2Node::grow_l1(uint64_t min_entries) {
  if (min_entries <= l1_.size()) return;
  if (min_entries * 8 > kMaxL1Bytes) throw Error(EFBIG, fmt::format("'{}': the L1 table would exceed {} bytes", filename(), kMaxL1Bytes));
  const uint64_t bytes = round_up(min_entries * 8, cluster_size_);
  const uint64_t new_offset = alloc_clusters(bytes / cluster_size_);
  std::vector<std::byte> raw(bytes);
  for (uint64_t i = 0; i < l1_.size(); ++i) store_be64(raw.data() + i * 8, l1_[i]);
  flush_metadata();  // the tables the L1 points at are on disk before it
  file_->write(new_offset, raw);
  file_->flush();
  const uint64_t old_offset = header_.l1_table_offset;
  const uint64_t old_bytes = uint64_t(header_.l1_size) * 8;
  header_.l1_table_offset = new_offset;
  header_.l1_size = static_cast<uint32_t>(min_entries);
  std::byte fields[12];
  store_be32(fields, header_.l1_size);
  store_be64(fields + 4, header_.l1_table_offset);
  file_->write(36, fields);
  file_->flush();
  l1_.resize(min_entries, 0);
  l1_dirty_ = false;
  overlap_index_valid_ = false;
  if (old_bytes != 0) update_refcount_range(old_offset, old_bytes, -1);
}

// Order on disk: data and refcount increments, then L2 tables, then the L1
// table, then refcount decrements of the references those tables dropped.
// A crash in between leaves at worst leaked clusters, never an entry pointing
// at a free cluster or lost copy-on-write data.
void Qcow2Node::flush_metadata() {
  if (read_only_) return;
  bool refblocks_dirty = reftable_dirty_;
  for (TableCache::Slot& r : refblock_cache_.slots()) refblocks_dirty |= r.dirty;
  bool l2_dirty = false;
  for (TableCache::Slot& s : l2_cache_.slots()) l2_dirty |= s.dirty;
  if (!refblocks_dirty && !l2_dirty && !l1_dirty_ && deferred_frees_.empty()) return;
  auto write_refblocks = [&] {
    for (TableCache::Slot& r : refblock_cache_.slots()) write_back(r, false);
  };
  write_refblocks();
  if (reftable_dirty_) {
    if (!dirty_on_disk_) file_->flush();
    std::vector<std::byte> raw(reftable_.size() * 8);
    for (uint64_t i = 0; i < reftable_.size(); ++i) store_be64(raw.data() + i * 8, reftable_[i]);
    file_->write(header_.refcount_table_offset, raw);
    reftable_dirty_ = false;
  }
  if (l2_dirty) {
    // Data (with copy-on-write parts) and refcounts before the L2 entries referencing them.
    file_->flush();
    for (TableCache::Slot& s : l2_cache_.slots()) {
      if (!s.dirty) continue;
      file_->write(s.offset, s.data);
      s.dirty = false;
    }
  }
  if (l1_dirty_) {
    // Even with lazy refcounts: an L1 entry must not reach the disk before its L2 table.
    file_->flush();
    std::vector<std::byte> raw(l1_.size() * 8);
    for (uint64_t i = 0; i < l1_.size(); ++i) store_be64(raw.data() + i * 8, l1_[i]);
    file_->write(header_.l1_table_offset, raw);
    l1_dirty_ = false;
  }
  if (!deferred_frees_.empty()) {
    // Even with lazy refcounts: a freed cluster may be reused for other data at once.
    file_->flush();
    apply_deferred_frees();
    write_refblocks();
  }
}

void Qcow2Node::apply_deferred_frees() {
  std::vector<uint64_t> frees;
  frees.swap(deferred_frees_);
  deferred_reclaimable_ = 0;
  for (uint64_t cluster : frees) {
    update_refcount(cluster, -1);
    if (get_refcount(cluster) == 0) file_->discard(cluster * cluster_size_, cluster_size_);
  }
}

// Drops one reference held by an L2 entry that is being replaced.
void Qcow2Node::release_entry(uint64_t entry) {
  if (entry & kCompressed) {
    const uint32_t x = 62 - (cluster_bits_ - 8);
    const uint64_t host = entry & ((1ull << x) - 1);
    const uint64_t sectors = ((entry & ~kCompressed & ~kCopied) >> x) + 1;
    const uint64_t begin = host & ~511ull;
    const uint64_t end = begin + sectors * 512;
    for (uint64_t c = begin / cluster_size_; c <= (end - 1) / cluster_size_; ++c) defer_free(c);
    return;
  }
  const uint64_t host = entry & kOffsetMask;
  if (has_data_file_) {
    if (!data_raw_ && (host != 0 || (entry & kCopied))) data_->discard(host, cluster_size_);
    return;
  }
  if (host == 0) return;
  defer_free(host / cluster_size_);
}

// The L2 table for `index`, allocated or copied so that it may be modified.
uint64_t Qcow2Node::writable_l2(uint64_t index) {
  if (index >= l1_.size()) grow_l1(index + 1);
  const uint64_t entry = l1_[index];
  const uint64_t old = l2_offset_of(index);
  if (old != 0 && (entry & kCopied)) return old;
  mark_dirty_for_write();
  const uint64_t fresh = alloc_clusters(1);
  check_metadata_overlap(fresh, cluster_size_, "new L2 table");
  if (old != 0) {
    // Copy-on-write of a table shared with a snapshot: references move with it.
    std::vector<std::byte> copy(cluster_size_);
    std::memcpy(copy.data(), load_table(l2_cache_, old, true), cluster_size_);
    std::memcpy(load_table(l2_cache_, fresh, true, true), copy.data(), cluster_size_);
    defer_free(old / cluster_size_);
  } else {
    load_table(l2_cache_, fresh, true, true);
  }
  l2_cache_.find(fresh)->dirty = true;
  l1_[index] = fresh | kCopied;
  l1_dirty_ = true;
  overlap_index_valid_ = false;
  return fresh;
}

// ---------------------------------------------------------------- data path

void Qcow2Node::read_backing(uint64_t guest, std::span<std::byte> buffer) {
  uint64_t done = 0;
  if (backing_) {
    const uint64_t backing_size = backing_->size();
    if (guest < backing_size) {
      done = std::min<uint64_t>(buffer.size(), backing_size - guest);
      backing_->read(guest, buffer.first(done));
    }
  }
  std::memset(buffer.data() + done, 0, buffer.size() - done);
}

void Qcow2Node::read_mapping(const Mapping& mapping, uint64_t guest, std::span<std::byte> buffer) {
  switch (mapping.kind) {
    case Kind::Unallocated: read_backing(guest, buffer); return;
    case Kind::Zero: std::memset(buffer.data(), 0, buffer.size()); return;
    case Kind::Normal: read_data(mapping.host, buffer); return;
    case Kind::Compressed: {
      // Its own buffer: callers may hold a scratch() pointer.
      thread_local std::vector<std::byte> decompressed;
      if (decompressed.size() < cluster_size_) decompressed.resize(cluster_size_);
      std::byte* cluster = decompressed.data();
      decompress_cluster(mapping.host, {cluster, cluster_size_});
      std::memcpy(buffer.data(), cluster + (guest & (cluster_size_ - 1)), buffer.size());
      return;
    }
  }
}

void Qcow2Node::read(uint64_t offset, std::span<std::byte> buffer) {
  std::shared_lock drain(drain_);
  const uint64_t begin = offset & ~(cluster_size_ - 1);
  RangeGuard range(ranges_, begin, round_up(offset + buffer.size(), cluster_size_), false);
  if (encrypted_ && ((offset | buffer.size()) & 511) != 0) {
    // Whole sectors only through the cipher.
    const uint64_t aligned = offset & ~511ull;
    std::vector<std::byte> bounce(round_up(offset + buffer.size(), 512) - aligned);
    read_unlocked(aligned, bounce);
    std::memcpy(buffer.data(), bounce.data() + (offset - aligned), buffer.size());
    return;
  }
  read_unlocked(offset, buffer);
}

void Qcow2Node::read_unlocked(uint64_t offset, std::span<std::byte> buffer) {
  uint64_t done = 0;
  while (done < buffer.size()) {
    Mapping m;
    {
      std::lock_guard lock(meta_);
      m = lookup(offset + done, buffer.size() - done);
    }
    read_mapping(m, offset + done, buffer.subspan(done, m.bytes));
    done += m.bytes;
  }
}

void Qcow2Node::write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) {
  std::shared_lock drain(drain_);
  check_writable();
  mark_bitmaps_dirty(offset, data.size());
  const uint64_t begin = offset & ~(cluster_size_ - 1);
  {
    RangeGuard range(ranges_, begin, round_up(offset + data.size(), cluster_size_), true);
    if (encrypted_ && ((offset | data.size()) & 511) != 0) {
      // Read-modify-write of the partial sectors, under the exclusive range lock.
      const uint64_t aligned = offset & ~511ull;
      std::vector<std::byte> bounce(round_up(offset + data.size(), 512) - aligned);
      read_unlocked(aligned, bounce);
      std::memcpy(bounce.data() + (offset - aligned), data.data(), data.size());
      write_run(aligned, bounce);
    } else {
      write_run(offset, data);
    }
  }
  if (flags.fua) flush();
}

// Writes `data` at guest `offset`, allocating (with copy-on-write of the
// untouched parts of partial clusters) where needed. The caller holds the
// exclusive range lock of the clusters involved.
void Qcow2Node::write_run(uint64_t offset, std::span<const std::byte> data) {
  if (extended_) {
    for (uint64_t done = 0; done < data.size();) {
      const uint64_t chunk = std::min<uint64_t>(data.size() - done, cluster_size_ - ((offset + done) & (cluster_size_ - 1)));
      write_extended_cluster(offset + done, data.subspan(done, chunk));
      done += chunk;
    }
    return;
  }
  uint64_t done = 0;
  while (done < data.size()) {
    const uint64_t guest = offset + done;
    const uint64_t in_cluster = guest & (cluster_size_ - 1);
    const uint64_t left = data.size() - done;
    uint64_t host = 0;
    uint64_t bytes = 0;
    uint64_t old_entries[kMaxRun];
    uint64_t run = 0;
    uint64_t l2_off = 0;
    {
      std::lock_guard lock(meta_);
      l2_off = writable_l2(l1_index(guest));
      std::byte* table = load_table(l2_cache_, l2_off, true);
      const uint64_t first = l2_index(guest);
      const uint64_t entry = l2_entry(table, first);
      const Kind kind = classify(entry, l2_off, first);
      if (kind == Kind::Normal && (entry & kCopied)) {
        // Overwrite in place: extend over contiguous clusters we own.
        host = (entry & kOffsetMask) + in_cluster;
        bytes = cluster_size_ - in_cluster;
        uint64_t expected = (entry & kOffsetMask) + cluster_size_;
        for (uint64_t i = first + 1; i < l2_entries_ && bytes < left; ++i) {
          const uint64_t next = l2_entry(table, i);
          if (classify(next, l2_off, i) != Kind::Normal || !(next & kCopied) || (next & kOffsetMask) != expected) break;
          expected += cluster_size_;
          bytes += cluster_size_;
        }
        bytes = std::min(bytes, left);
        check_data_overlap(host & ~(cluster_size_ - 1), round_up(in_cluster + bytes, cluster_size_), "guest data write");
      } else {
        const uint64_t clusters_wanted = div_round_up(in_cluster + left, cluster_size_);
        const uint64_t max_run = std::min({clusters_wanted, kMaxRun, refblock_entries_ / 2});
        for (uint64_t i = first; i < l2_entries_ && run < max_run; ++i, ++run) {
          const uint64_t next = l2_entry(table, i);
          const Kind k = classify(next, l2_off, i);
          if (run > 0 && k == Kind::Normal && (next & kCopied)) break;
          old_entries[run] = next;
        }
        mark_dirty_for_write();
        host = has_data_file_ ? guest - in_cluster : alloc_clusters(run);
        check_data_overlap(host, run * cluster_size_, "new data clusters");
        bytes = std::min(left, run * cluster_size_ - in_cluster);
        host += in_cluster;
      }
    }
    const std::span<const std::byte> piece = data.subspan(done, bytes);
    if (run == 0) {
      write_data(host, piece);
      done += bytes;
      continue;
    }
    // Copy-on-write of the head and tail of partially written clusters.
    const uint64_t cluster_host = host - in_cluster;
    if (in_cluster != 0) {
      std::byte* head = scratch(in_cluster);
      const uint64_t cluster_guest = guest - in_cluster;
      Mapping old;
      {
        std::lock_guard lock(meta_);
        old = lookup(cluster_guest, in_cluster);
      }
      read_mapping(old, cluster_guest, {head, in_cluster});
      write_data(cluster_host, {head, in_cluster});
    }
    write_data(host, piece);
    const uint64_t end_in_cluster = (in_cluster + bytes) & (cluster_size_ - 1);
    if (end_in_cluster != 0) {
      const uint64_t tail_guest = guest + bytes;
      const uint64_t tail_bytes = cluster_size_ - end_in_cluster;
      std::byte* tail = scratch(tail_bytes);
      Mapping old;
      {
        std::lock_guard lock(meta_);
        old = lookup(tail_guest, tail_bytes);
      }
      read_mapping(old, tail_guest, {tail, tail_bytes});
      write_data(host + bytes, {tail, tail_bytes});
    }
    {
      std::lock_guard lock(meta_);
      std::byte* table = load_table(l2_cache_, l2_off, true);
      l2_cache_.find(l2_off)->dirty = true;
      const uint64_t first = l2_index(guest);
      for (uint64_t i = 0; i < run; ++i) store_l2(table, first + i, (cluster_host + i * cluster_size_) | kCopied);
      for (uint64_t i = 0; i < run; ++i) release_entry(old_entries[i]);
    }
    done += bytes;
  }
}

// As qemu: whole zeroing units (clusters, or subclusters with extended L2)
// get the zero flag, whether allocated or not; a partial unit does too when
// it is unallocated or zero and the rest of it reads as zeroes, otherwise it
// is written as data.
void Qcow2Node::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) {
  uint32_t version = 0;
  {
    std::shared_lock drain(drain_);
    check_writable();
    mark_bitmaps_dirty(offset, length);
    version = header_.version;
  }
  if (version >= 3 && !data_raw_) {
    const uint64_t unit = extended_ ? cluster_size_ / 32 : cluster_size_;
    const uint64_t end = offset + length;
    uint64_t pos = offset;
    if (pos % unit != 0) {
      const uint64_t stop = std::min(end, round_up(pos, unit));
      zero_partial_unit(pos, stop, flags);
      pos = stop;
    }
    // The image's last partial unit counts as whole.
    const uint64_t aligned_end = end == size() ? end : std::max(pos, end & ~(unit - 1));
    zero_aligned(pos, aligned_end, flags);
    if (aligned_end < end) zero_partial_unit(aligned_end, end, flags);
    return;
  }
  const uint64_t end = offset + length;
  const uint64_t full_begin = round_up(offset, cluster_size_);
  const uint64_t full_end = std::max(full_begin, end & ~(cluster_size_ - 1));
  // Partial clusters are written as data unless they already read as zeroes.
  auto partial = [&](uint64_t begin, uint64_t stop) {
    if (begin >= stop) return;
    {
      std::shared_lock drain(drain_);
      std::lock_guard lock(meta_);
      Mapping m = lookup(begin, stop - begin);
      if (m.bytes >= stop - begin && (m.kind == Kind::Zero || (m.kind == Kind::Unallocated && !backing_))) return;
    }
    if (flags.no_fallback) throw Error(ENOTSUP, fmt::format("'{}': fast zeroing of partial clusters is not supported", filename()));
    Node::write_zeroes(begin, stop - begin, {});
  };
  if (full_begin >= end || full_begin >= full_end) {
    partial(offset, end);
    return;
  }
  partial(offset, full_begin);
  if (version < 3) {
    // No zero flag in v2: unallocated clusters without a backing file already read as zeroes.
    uint64_t pos = full_begin;
    while (pos < full_end) {
      Mapping m;
      {
        std::shared_lock drain(drain_);
        std::lock_guard lock(meta_);
        m = lookup(pos, full_end - pos);
      }
      if (!(m.kind == Kind::Unallocated && !backing_)) {
        if (flags.no_fallback) throw Error(ENOTSUP, fmt::format("'{}': fast zeroing needs qcow2 v3", filename()));
        Node::write_zeroes(pos, m.bytes, {});
      }
      pos += m.bytes;
    }
  } else {
    zero_or_discard(full_begin, full_end - full_begin, false, flags.may_unmap, false);
  }
  partial(full_end, end);
}

// True when [offset, offset+length) reads as zeroes by its metadata alone
// (zero clusters, or unallocated down the whole backing chain), as qemu's
// block status sees it; data is not read.
bool Qcow2Node::reads_zero_by_status(uint64_t offset, uint64_t length) {
  uint64_t pos = offset;
  const uint64_t end = offset + length;
  while (pos < end) {
    Mapping m;
    {
      std::shared_lock drain(drain_);
      std::lock_guard lock(meta_);
      m = lookup(pos, end - pos);
    }
    if (m.kind == Kind::Normal || m.kind == Kind::Compressed) return false;
    if (m.kind == Kind::Unallocated) {
      // Down the backing chain: zero, or unallocated everywhere, or past a layer's end.
      for (uint64_t at = pos; at < pos + m.bytes;) {
        Node* layer = backing_.get();
        uint64_t step = pos + m.bytes - at;
        bool zero = true;
        while (layer != nullptr) {
          if (at >= layer->size()) break;
          step = std::min(step, layer->size() - at);
          const BlockStatus status = layer->block_status(at, step);
          step = std::min(step, status.length);
          if (status.flags & kStatusZero) break;
          if (status.flags & (kStatusData | kStatusAllocated)) {
            zero = false;
            break;
          }
          layer = layer->backing_child();
        }
        if (!zero) return false;
        at += step;
      }
    }
    pos += m.bytes;
  }
  return true;
}

// [begin, end) inside one zeroing unit, not covering all of it.
void Qcow2Node::zero_partial_unit(uint64_t begin, uint64_t end, ZeroFlags flags) {
  const uint64_t unit = extended_ ? cluster_size_ / 32 : cluster_size_;
  const uint64_t unit_begin = begin & ~(unit - 1);
  const uint64_t unit_end = std::min(unit_begin + unit, size());
  bool whole = false;
  {
    std::shared_lock drain(drain_);
    std::lock_guard lock(meta_);
    const Mapping m = lookup(unit_begin, unit_end - unit_begin);
    whole = m.bytes >= unit_end - unit_begin && (m.kind == Kind::Unallocated || m.kind == Kind::Zero);
  }
  whole = whole && reads_zero_by_status(unit_begin, begin - unit_begin) && reads_zero_by_status(end, unit_end - end);
  // Checked again under the range lock: a concurrent write may have allocated the unit meanwhile.
  if (whole && extended_) {
    if (zero_subclusters(unit_begin, unit_begin + unit, true)) return;
  } else if (whole) {
    if (zero_or_discard(unit_begin, cluster_size_, false, flags.may_unmap, false, true)) return;
  }
  if (flags.no_fallback) throw Error(ENOTSUP, fmt::format("'{}': fast zeroing of partial clusters is not supported", filename()));
  Node::write_zeroes(begin, end - begin, {});
}

// [begin, end) aligned to zeroing units.
void Qcow2Node::zero_aligned(uint64_t begin, uint64_t end, ZeroFlags flags) {
  if (begin >= end) return;
  if (!extended_) {
    zero_or_discard(begin, round_up(end - begin, cluster_size_), false, flags.may_unmap, false);
    return;
  }
  // Subclusters of the first and last cluster, whole clusters between. A
  // compressed cluster cannot be zeroed in part: then all is written as data.
  const bool head = begin % cluster_size_ != 0;
  const uint64_t head_end = head ? std::min(end, round_up(begin, cluster_size_)) : begin;
  const uint64_t tail_begin = std::max(head_end, end & ~(cluster_size_ - 1));
  const bool tail = tail_begin < end;
  auto compressed = [&](uint64_t guest) {
    std::shared_lock drain(drain_);
    std::lock_guard lock(meta_);
    return lookup(guest, 1).kind == Kind::Compressed;
  };
  if ((head && compressed(begin)) || (tail && compressed(tail_begin))) {
    if (flags.no_fallback) throw Error(ENOTSUP, fmt::format("'{}': compressed clusters cannot be zeroed in part", filename()));
    Node::write_zeroes(begin, end - begin, {});
    return;
  }
  if (head) zero_subclusters(begin, head_end);
  if (head_end < tail_begin) zero_or_discard(head_end, tail_begin - head_end, false, flags.may_unmap, false);
  if (tail) zero_subclusters(tail_begin, end);
}

// Extended L2: marks the subclusters of [begin, end) (inside one cluster) as
// zero, keeping the cluster. False for a compressed cluster, and with
// `only_unmapped` when one of them holds data.
bool Qcow2Node::zero_subclusters(uint64_t begin, uint64_t end, bool only_unmapped) {
  const uint64_t sub = cluster_size_ / 32;
  const uint64_t cluster = begin & ~(cluster_size_ - 1);
  std::shared_lock drain(drain_);
  RangeGuard range(ranges_, cluster, cluster + cluster_size_, true);
  std::lock_guard lock(meta_);
  const uint64_t l2_off = writable_l2(l1_index(begin));
  std::byte* table = load_table(l2_cache_, l2_off, true);
  const uint64_t index = l2_index(begin);
  const uint64_t entry = l2_entry(table, index);
  if (classify(entry, l2_off, index) == Kind::Compressed) return false;
  const uint64_t s0 = (begin - cluster) / sub, s1 = (end - cluster + sub - 1) / sub;
  const uint64_t mask = (s1 - s0 == 64 ? ~0ull : ((1ull << (s1 - s0)) - 1)) << s0;
  const uint64_t old_bitmap = l2_bitmap(table, index);
  if (only_unmapped && (old_bitmap & mask) != 0) return false;
  const uint64_t bitmap = (old_bitmap | (mask << 32)) & ~mask;
  if (bitmap != old_bitmap) {
    store_l2(table, index, entry, bitmap);
    l2_cache_.find(l2_off)->dirty = true;
  }
  return true;
}

void Qcow2Node::discard(uint64_t offset, uint64_t length) {
  std::shared_lock drain(drain_);
  check_writable();
  mark_bitmaps_dirty(offset, length);
  const uint64_t begin = round_up(offset, cluster_size_);
  // The image's last partial cluster counts as whole.
  const uint64_t end = offset + length >= size() ? round_up(offset + length, cluster_size_) : (offset + length) & ~(cluster_size_ - 1);
  if (begin >= end) return;
  drain.unlock();
  zero_or_discard(begin, end - begin, true, true, false);
}

// Rewrites the L2 entries of whole clusters in [offset, offset+length): zero
// clusters (write_zeroes), or unallocated / zero (discard; `full_unmap` always
// unallocated, used when shrinking). With `only_unmapped` (one cluster),
// nothing happens and false is returned when the cluster holds data: a
// concurrent write got there first.
bool Qcow2Node::zero_or_discard(uint64_t offset, uint64_t length, bool discard, bool may_unmap, bool full_unmap, bool only_unmapped) {
  if (data_raw_ && !full_unmap) {
    // The data file must stay a valid raw image: discard keeps the data, zeroing writes it.
    if (discard) return true;
    bool mapped = true;
    {
      std::shared_lock drain(drain_);
      std::lock_guard lock(meta_);
      for (uint64_t pos = offset; pos < offset + length && mapped;) {
        Mapping m = lookup(pos, offset + length - pos);
        mapped = m.kind == Kind::Normal;
        pos += m.bytes;
      }
    }
    if (mapped) {
      data_->write_zeroes(offset, length, {});
    } else {
      Node::write_zeroes(offset, length, {});
    }
    return true;
  }
  std::shared_lock drain(drain_);
  RangeGuard range(ranges_, offset, offset + length, true);
  uint64_t pos = offset;
  const uint64_t end = offset + length;
  while (pos < end) {
    std::lock_guard lock(meta_);
    const uint64_t index = l1_index(pos);
    const uint64_t first = l2_index(pos);
    const uint64_t count = std::min((end - pos) / cluster_size_, l2_entries_ - first);
    const uint64_t existing = l2_offset_of(index);
    // Discarding unmapped clusters changes nothing unless a backing file shows through;
    // zeroing always sets the zero flags (as qemu, which allocates the table for it).
    if (existing == 0 && (full_unmap || (discard && !backing_))) {
      pos += count * cluster_size_;
      continue;
    }
    const uint64_t l2_off = writable_l2(index);
    std::byte* table = load_table(l2_cache_, l2_off, true);
    l2_cache_.find(l2_off)->dirty = true;
    mark_dirty_for_write();
    for (uint64_t i = first; i < first + count; ++i) {
      const uint64_t old = l2_entry(table, i);
      const uint64_t old_bitmap = l2_bitmap(table, i);
      const Kind kind = classify(old, l2_off, i);
      if (only_unmapped && (kind == Kind::Normal || kind == Kind::Compressed)) return false;
      uint64_t fresh;
      uint64_t fresh_bitmap = 0;
      constexpr uint64_t kAllZero = 0xffffffff00000000ull;  // extended L2: every subcluster reads as zero
      // As qemu, a discarded cluster reads as zeroes (v3) when it was allocated or
      // would show the backing file; an unallocated one without backing stays so.
      const bool allocated = kind == Kind::Normal || kind == Kind::Compressed || (old & kOffsetMask) != 0;
      const bool keep = discard && !full_unmap && !backing_ && !allocated;
      if (extended_) {
        if (keep) continue;
        if (discard) {
          fresh = 0;
          fresh_bitmap = full_unmap ? 0 : kAllZero;
        } else {
          fresh = (!may_unmap && kind == Kind::Normal) ? old : 0;  // keep the cluster, as qemu
          fresh_bitmap = kAllZero;
        }
        if (fresh == old && fresh_bitmap == old_bitmap) continue;
      } else {
        if (keep) continue;
        if (discard) {
          fresh = (!full_unmap && header_.version >= 3) ? kZeroFlag : 0;
        } else if (!may_unmap && kind == Kind::Normal) {
          fresh = old | kZeroFlag;  // keep the cluster (shared ones too), as qemu
        } else if (!may_unmap && kind == Kind::Zero && (old & kOffsetMask)) {
          fresh = old;
        } else {
          fresh = kZeroFlag;
        }
        if (fresh == old) continue;
      }
      store_l2(table, i, fresh, fresh_bitmap);
      if ((fresh & kOffsetMask) != (old & kOffsetMask) || (old & kCompressed)) {
        // load_table may evict; re-fetch after refcount work.
        release_entry(old);
        table = load_table(l2_cache_, l2_off, true);
        l2_cache_.find(l2_off)->dirty = true;
      }
    }
    pos += count * cluster_size_;
    if (deferred_frees_.size() >= kMaxDeferredFrees) flush_metadata();
  }
  return true;
}

void Qcow2Node::flush() {
  if (read_only_) return;
  if (has_data_file_) data_->flush();  // data before the metadata pointing at it
  {
    std::lock_guard lock(meta_);
    flush_metadata();
  }
  file_->flush();
}

BlockStatus Qcow2Node::block_status(uint64_t offset, uint64_t length) {
  std::shared_lock drain(drain_);
  Mapping m;
  {
    std::lock_guard lock(meta_);
    m = lookup(offset, length);
  }
  BlockStatus status;
  status.length = m.bytes;
  switch (m.kind) {
    case Kind::Unallocated: status.flags = 0; break;
    case Kind::Zero: status.flags = kStatusZero | kStatusAllocated; break;
    case Kind::Compressed: status.flags = kStatusData | kStatusAllocated; break;
    case Kind::Normal:
      if (encrypted_) {  // the host bytes are ciphertext: no offset to share, as qemu
        status.flags = kStatusData | kStatusAllocated;
        break;
      }
      status.flags = kStatusData | kStatusAllocated | kStatusOffsetValid;
      status.host_offset = m.host;
      status.host_file = data_->filename();
      break;
  }
  return status;
}

// Only while read-only: a writable image may free a cluster and reuse it for
// other guest data while a caller still reads the old mapping.
std::optional<HostExtent> Qcow2Node::host_extent(uint64_t offset, uint64_t length) {
  if (!read_only_ || encrypted_) return std::nullopt;
  std::shared_lock drain(drain_);
  Mapping m;
  {
    std::lock_guard lock(meta_);
    m = lookup(offset, length);
  }
  if (m.kind == Kind::Normal) return data_->host_extent(m.host, m.bytes);
  if (m.kind == Kind::Unallocated && backing_ && offset < backing_->size()) {
    return backing_->host_extent(offset, std::min(m.bytes, backing_->size() - offset));
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- resize, backing

void Qcow2Node::truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink) {
  std::unique_lock drain(drain_);
  check_writable();
  const uint64_t old_size = size();
  if (!snapshots_.empty() && new_size < old_size) {
    throw Error(ENOTSUP, fmt::format("'{}': Can't shrink an image with internal snapshots", filename()));
  }
  if (new_size < old_size) {
    if (!allow_shrink) throw Error(EINVAL, fmt::format("'{}': Use the --shrink option to perform a shrink operation", filename()));
    drain.unlock();
    const uint64_t begin = round_up(new_size, cluster_size_);
    const uint64_t end = round_up(old_size, cluster_size_);
    if (begin < end) zero_or_discard(begin, end - begin, true, true, true);
    drain.lock();
  } else if (new_size > old_size) {
    std::lock_guard lock(meta_);
    grow_l1(div_round_up(div_round_up(new_size, cluster_size_), l2_entries_));
  }
  {
    std::lock_guard lock(meta_);
    flush_metadata();
    header_.size = new_size;
    std::byte field[8];
    store_be64(field, new_size);
    file_->write(24, field);
    size_ = new_size;
    resize_bitmaps(new_size);
  }
  file_->flush();
  drain.unlock();
  // The old partial last cluster may hold stale bytes past the old end.
  if (new_size > old_size && old_size % cluster_size_ != 0) {
    write_zeroes(old_size, std::min(round_up(old_size, cluster_size_), new_size) - old_size, {});
  }
  if (has_data_file_ && new_size > data_->size()) data_->truncate(new_size, Preallocation::Off, false);
  if (new_size > old_size && data_raw_ && prealloc == Preallocation::Off) prealloc = Preallocation::Metadata;
  if (new_size > old_size && prealloc != Preallocation::Off) preallocate(old_size, new_size, prealloc);
}

void Qcow2Node::preallocate(uint64_t begin, uint64_t end, Preallocation mode) {
  if (mode == Preallocation::Off) return;
  if (encrypted_) throw Error(ENOTSUP, fmt::format("'{}': preallocation of encrypted images is not supported by kiln", filename()));
  std::shared_lock drain(drain_);
  uint64_t pos = begin & ~(cluster_size_ - 1);
  end = round_up(end, cluster_size_);
  while (pos < end) {
    uint64_t host = 0, count = 0;
    {
      std::lock_guard lock(meta_);
      const uint64_t l2_off = writable_l2(l1_index(pos));
      const uint64_t first = l2_index(pos);
      count = std::min({(end - pos) / cluster_size_, l2_entries_ - first, kMaxRun * 16, refblock_entries_ / 2});
      std::byte* table = load_table(l2_cache_, l2_off, true);
      uint64_t todo = 0;
      while (todo < count && l2_entry(table, first + todo) == 0 && l2_bitmap(table, first + todo) == 0) ++todo;
      if (todo == 0) {
        pos += cluster_size_;
        continue;
      }
      count = todo;
      host = has_data_file_ ? pos : alloc_clusters(count);
      table = load_table(l2_cache_, l2_off, true);
      l2_cache_.find(l2_off)->dirty = true;
      // Extended L2 over a backing file: the space is reserved, the subclusters still show the backing file.
      const uint64_t bitmap = backing_ || !header_.backing_file.empty() ? 0 : 0xffffffffull;
      for (uint64_t i = 0; i < count; ++i) store_l2(table, first + i, (host + i * cluster_size_) | kCopied, bitmap);
    }
    if (mode == Preallocation::Falloc) {
      data_->write_zeroes(host, count * cluster_size_, {});
    } else if (mode == Preallocation::Full) {
      AlignedBuffer zeroes(std::min<uint64_t>(count * cluster_size_, 1 << 20));
      std::memset(zeroes.data(), 0, zeroes.size());
      for (uint64_t done = 0; done < count * cluster_size_; done += zeroes.size()) {
        data_->write(host + done, zeroes.span().first(std::min<uint64_t>(zeroes.size(), count * cluster_size_ - done)));
      }
    } else if (host + count * cluster_size_ > data_->size()) {
      // Metadata preallocation: the file covers the clusters, sparsely.
      data_->truncate(host + count * cluster_size_, Preallocation::Off, false);
    }
    pos += count * cluster_size_;
  }
  std::lock_guard lock(meta_);
  flush_metadata();
}

void Qcow2Node::set_backing(const std::string& name, const std::string& format) {
  if (name.size() > kMaxBackingNameLength) throw Error(EINVAL, fmt::format("Backing file name too long: '{}'", name));
  header_.backing_file = name;
  if (!format.empty() && !name.empty()) {
    set_extension(header_, kExtBackingFormat, std::vector<std::byte>(reinterpret_cast<const std::byte*>(format.data()),
                                                                      reinterpret_cast<const std::byte*>(format.data()) + format.size()));
  } else {
    remove_extension(header_, kExtBackingFormat);
  }
  write_header();
  file_->flush();
}

void Qcow2Node::change_backing_file(const std::string& name, const std::string& format) {
  std::unique_lock drain(drain_);
  check_writable();
  std::lock_guard lock(meta_);
  flush_metadata();
  set_backing(name, format);
}

}  // namespace kiln::block::qcow2
