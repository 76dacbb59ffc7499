// The vmdk FormatDriver: probing, opening, creation of every subformat
// qemu-img writes (same files, layout and descriptor text), and the
// creation summary in qemu-img's order.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "kiln/block/driver.h"
#include "kiln/block/image.h"
#include "kiln/block/protocol.h"
#include "kiln/common/error.h"
#include "vmdk/descriptor.h"
#include "vmdk/format.h"
#include "vmdk/node.h"

namespace kiln::block::vmdk {
namespace {

enum class Subformat { MonolithicSparse, MonolithicFlat, TwoGbSparse, TwoGbFlat, StreamOptimized };

struct CreateSettings {
  Subformat subformat = Subformat::MonolithicSparse;
  std::string subformat_name = "monolithicSparse";
  std::string adapter_type = "ide";
  std::string hw_version = "4";
  std::string tools_version = "2147483647";
  bool zeroed_grain = false;
  Preallocation prealloc = Preallocation::Off;
  std::string backing_file;
};

CreateSettings parse_settings(const CreateOptions& options) {
  CreateSettings s;
  s.subformat_name = options.get("subformat", "monolithicSparse");
  if (s.subformat_name == "monolithicSparse") {
    s.subformat = Subformat::MonolithicSparse;
  } else if (s.subformat_name == "monolithicFlat") {
    s.subformat = Subformat::MonolithicFlat;
  } else if (s.subformat_name == "twoGbMaxExtentSparse") {
    s.subformat = Subformat::TwoGbSparse;
  } else if (s.subformat_name == "twoGbMaxExtentFlat") {
    s.subformat = Subformat::TwoGbFlat;
  } else if (s.subformat_name == "streamOptimized") {
    s.subformat = Subformat::StreamOptimized;
  } else {
    throw invalid_argument("invalid parameter value: {}", s.subformat_name);
  }
  s.adapter_type = options.get("adapter_type", "ide");
  if (s.adapter_type != "ide" && s.adapter_type != "lsilogic" && s.adapter_type != "buslogic" && s.adapter_type != "legacyESX") {
    throw invalid_argument("invalid parameter value: {}", s.adapter_type);
  }
  const bool compat6 = options.get_bool("compat6", false);
  const std::string hw = options.get("hwversion", "undefined");
  if (hw != "undefined" && compat6) throw invalid_argument("compat6 cannot be enabled with hwversion set");
  // qemu writes "4", or "6" with compat6, unless hwversion says otherwise.
  s.hw_version = hw != "undefined" ? hw : std::string(compat6 ? "6" : "4");
  s.tools_version = options.get("toolsversion", "2147483647");
  s.zeroed_grain = options.get_bool("zeroed_grain", false);
  auto prealloc = parse_preallocation(options.get("preallocation", "off"));
  if (!prealloc || *prealloc == Preallocation::Metadata) throw invalid_argument("invalid parameter value: {}", options.get("preallocation"));
  s.prealloc = *prealloc;
  s.backing_file = options.get("backing_file");
  if (const std::string* format = options.find("backing_fmt"); format && *format != "vmdk") {
    throw invalid_argument("backing_file must be a vmdk image");
  }
  if (!s.backing_file.empty() && (s.subformat == Subformat::MonolithicFlat || s.subformat == Subformat::TwoGbFlat)) {
    throw invalid_argument("Flat image can't have backing file");
  }
  return s;
}

// Writes a hosted sparse extent of `capacity` sectors into `file` (empty),
// with `descriptor` embedded when given.
void create_sparse_extent(Node& file, uint64_t capacity, bool stream, bool zeroed_grain, std::string_view descriptor) {
  const SparseLayout layout = SparseLayout::compute(capacity);
  if (layout.gt_count > kMaxGdEntries) throw invalid_argument("The image size is too large for file format 'vmdk'");
  if (descriptor.size() > kDescriptorSectors * kSector) throw invalid_argument("The VMDK descriptor is too long for its reserved area");
  SparseHeader h;
  h.version = stream ? 3 : zeroed_grain ? 2 : 1;
  h.flags = kFlagNewlineTest | kFlagRedundantGd;
  if (zeroed_grain) h.flags |= kFlagZeroedGrain;
  if (stream) h.flags |= kFlagCompressed | kFlagMarkers;
  h.capacity = capacity;
  h.grain_sectors = kDefaultGrainSectors;
  h.descriptor_offset = kDescriptorOffsetSectors;
  h.descriptor_sectors = kDescriptorSectors;
  h.gtes_per_gt = kMaxGtesPerGt;
  h.rgd_offset = layout.rgd_offset;
  h.gd_offset = layout.gd_offset;
  h.overhead = layout.overhead;
  h.compress_algorithm = stream ? kCompressDeflate : 0;

  file.truncate(0, Preallocation::Off, true);
  file.truncate(layout.overhead * kSector, Preallocation::Off, true);
  std::vector<std::byte> head((kDescriptorOffsetSectors + kDescriptorSectors) * kSector);
  h.encode(std::span(head).first(kSector));
  std::memcpy(head.data() + kSector, descriptor.data(), descriptor.size());
  file.write(0, head);
  // Both directories point at their (zeroed, preallocated) tables.
  std::vector<uint32_t> directory(layout.gd_sectors * kSector / 4);
  for (uint64_t i = 0; i < layout.gt_count; ++i) directory[i] = static_cast<uint32_t>(layout.rgd_offset + layout.gd_sectors + i * layout.gt_sectors);
  file.write(layout.rgd_offset * kSector, std::as_bytes(std::span(directory)));
  for (uint64_t i = 0; i < layout.gt_count; ++i) directory[i] = static_cast<uint32_t>(layout.gd_offset + layout.gd_sectors + i * layout.gt_sectors);
  file.write(layout.gd_offset * kSector, std::as_bytes(std::span(directory)));
}

uint32_t random_cid() {
  std::random_device random;
  return random();
}

class VmdkDriver final : public FormatDriver {
 public:
  std::string_view name() const override { return "vmdk"; }

  int probe(std::span<const std::byte> header) const override {
    if (header.size() >= 4) {
      const uint32_t magic = load_le32(header.data());
      if (magic == kSparseMagic || magic == kCowdMagic) return 100;
    }
    return looks_like_descriptor(header) ? 100 : 0;
  }

  std::unique_ptr<Node> open(std::unique_ptr<Node> file, const OpenContext& context) const override {
    if (!context.options.snapshot.empty()) {
      throw Error(ENOTSUP, fmt::format("Could not open '{}': Failed to load snapshot '{}': vmdk images have no internal snapshots",
                                       file->filename(), context.options.snapshot));
    }
    return std::make_unique<VmdkNode>(std::move(file), context);
  }

  std::vector<CreateOptionSpec> create_options() const override {
    using T = CreateOptionSpec::Type;
    return {
        {"adapter_type", T::String, "Virtual adapter type, can be one of ide (default), lsilogic, buslogic or legacyESX"},
        {"backing_file", T::String, "File name of a base image"},
        {"backing_fmt", T::String, "Must be 'vmdk' if present"},
        {"compat6", T::Bool, "VMDK version 6 image"},
        {"extent_size_hint", T::Size, "Extent size hint for the image file, 0 to disable"},
        {"hwversion", T::String, "VMDK hardware version"},
        {"nocow", T::Bool, "Turn off copy-on-write (valid only on btrfs)"},
        {"preallocation", T::String, "Preallocation mode (allowed values: off, falloc, full)"},
        {"size", T::Size, "Virtual disk size"},
        {"subformat", T::String,
         "VMDK flat extent format, can be one of {monolithicSparse (default) | monolithicFlat | twoGbMaxExtentSparse | "
         "twoGbMaxExtentFlat | streamOptimized} "},
        {"toolsversion", T::String, "VMware guest tools version"},
        {"zeroed_grain", T::Bool, "Enable efficient zero writes using the zeroed-grain GTE feature"},
    };
  }

  // qemu-img's order: the vmdk options, then the file protocol's.
  std::string creation_summary(const CreateOptions& options) const override {
    std::string out = fmt::format("fmt=vmdk size={}", options.size);
    auto given = [&](const char* key) {
      if (const std::string* value = options.find(key)) out += fmt::format(" {}={}", key, *value);
    };
    given("adapter_type");
    given("backing_file");
    given("backing_fmt");
    out += fmt::format(" compat6={}", options.get("compat6", "off"));
    out += fmt::format(" hwversion={}", options.get("hwversion", "undefined"));
    given("toolsversion");
    given("subformat");
    given("zeroed_grain");
    given("nocow");
    given("preallocation");
    if (options.find("extent_size_hint")) out += fmt::format(" extent_size_hint={}", *options.get_size("extent_size_hint"));
    return out;
  }

  void create(Node& file, const CreateOptions& options) const override {
    const CreateSettings s = parse_settings(options);
    const uint64_t capacity = (options.size + kSector - 1) / kSector;
    DescriptorSettings d;
    d.cid = random_cid();
    d.create_type = s.subformat_name;
    d.hw_version = s.hw_version;
    d.adapter_type = s.adapter_type;
    d.tools_version = s.tools_version;
    d.heads = s.adapter_type == "ide" ? 16 : 255;
    d.cylinders = capacity / (uint64_t{d.heads} * 63);
    if (!s.backing_file.empty()) {
      d.parent_file_name_hint = s.backing_file;
      d.parent_cid = parent_cid(file.filename(), s.backing_file);
    }

    // Extent files sit beside the descriptor: "name-s001.ext" for "name.ext".
    const std::filesystem::path path(file.filename());
    const std::string base = path.filename().string();
    const size_t dot = base.rfind('.');
    const std::string prefix = dot == std::string::npos ? base : base.substr(0, dot);
    const std::string postfix = dot == std::string::npos ? "" : base.substr(dot);
    auto beside = [&](const std::string& name) { return (path.parent_path() / name).string(); };

    switch (s.subformat) {
      case Subformat::MonolithicSparse:
      case Subformat::StreamOptimized: {
        d.extents.push_back({ExtentAccess::ReadWrite, capacity, ExtentType::Sparse, "SPARSE", base, 0});
        create_sparse_extent(file, capacity, s.subformat == Subformat::StreamOptimized, s.zeroed_grain, format_descriptor(d));
        return;
      }
      case Subformat::MonolithicFlat:
      case Subformat::TwoGbFlat:
      case Subformat::TwoGbSparse: {
        const bool flat = s.subformat != Subformat::TwoGbSparse;
        const uint64_t extent_sectors = s.subformat == Subformat::MonolithicFlat ? std::max<uint64_t>(capacity, 1) : kSplitExtentBytes / kSector;
        uint64_t remaining = capacity;
        unsigned index = 1;
        do {
          const uint64_t sectors = std::min(remaining, extent_sectors);
          const std::string name = s.subformat == Subformat::MonolithicFlat ? fmt::format("{}-flat{}", prefix, postfix)
                                   : flat ? fmt::format("{}-f{:03}{}", prefix, index, postfix)
                                          : fmt::format("{}-s{:03}{}", prefix, index, postfix);
          auto extent_file = open_protocol(beside(name), {.read_only = false, .cache = CacheMode::Writeback, .force_share = false,
                                                          .locking = true, .create = true});
          if (flat) {
            extent_file->truncate(0, Preallocation::Off, true);
            extent_file->truncate(sectors * kSector, s.prealloc, true);
            d.extents.push_back({ExtentAccess::ReadWrite, sectors, ExtentType::Flat, "FLAT", name, 0});
          } else {
            create_sparse_extent(*extent_file, sectors, false, s.zeroed_grain, {});
            d.extents.push_back({ExtentAccess::ReadWrite, sectors, ExtentType::Sparse, "SPARSE", name, 0});
          }
          extent_file->flush();
          remaining -= sectors;
          ++index;
        } while (remaining > 0);
        const std::string text = format_descriptor(d);
        file.truncate(0, Preallocation::Off, true);
        file.write(0, std::as_bytes(std::span(text.data(), text.size())));
        return;
      }
    }
  }

  MeasureResult measure(uint64_t, uint64_t, const CreateOptions&) const override {
    throw Error(ENOTSUP, "Block driver 'vmdk' does not support size measurement");
  }

  bool supports_backing() const override { return true; }

 private:
  // The CID of the parent a new delta image links to (it must be a vmdk).
  static uint32_t parent_cid(const std::string& image, const std::string& backing) {
    std::string name = backing;
    if (!backing.empty() && backing.front() != '/') {
      const std::filesystem::path parent = std::filesystem::path(image).parent_path();
      if (!parent.empty()) name = (parent / backing).string();
    }
    OpenOptions open;
    open.read_only = true;
    open.force_share = true;
    open.no_backing = true;
    auto parent_image = Image::open(name, open);
    const auto* vmdk = dynamic_cast<const VmdkNode*>(&parent_image->top());
    if (vmdk == nullptr) throw invalid_argument("backing_file must be a vmdk image");
    return vmdk->descriptor().cid;
  }
};

}  // namespace
}  // namespace kiln::block::vmdk

namespace kiln::block {
const FormatDriver& vmdk_driver() {
  static const vmdk::VmdkDriver driver;
  return driver;
}
}  // namespace kiln::block
