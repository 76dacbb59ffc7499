// The VDI FormatDriver: probing by the signature, opening with QEMU's header
// checks plus kiln's own bounds, creation in QEMU's layout (dynamic or
// static=on), and the creation summary in qemu-img's order.
#include <algorithm>
#include <cstring>

#include "kiln/block/driver.h"
#include "kiln/block/image.h"
#include "kiln/common/error.h"
#include "vdi/node.h"

namespace kiln::block::vdi {
namespace {

// Block map bytes read or written per I/O.
constexpr uint32_t kMapChunkEntries = 1u << 18;

std::vector<uint32_t> read_block_map(Node& file, const Header& header) {
  std::vector<uint32_t> map(header.blocks_in_image);
  std::vector<std::byte> chunk(std::min<uint64_t>(header.blocks_in_image, kMapChunkEntries) * 4);
  for (uint32_t pos = 0; pos < header.blocks_in_image;) {
    const uint32_t count = std::min(kMapChunkEntries, header.blocks_in_image - pos);
    file.read(header.offset_bmap + uint64_t{pos} * 4, std::span(chunk).first(uint64_t{count} * 4));
    for (uint32_t i = 0; i < count; ++i) map[pos + i] = load_le32(chunk.data() + uint64_t{i} * 4);
    pos += count;
  }
  return map;
}

class VdiDriver final : public FormatDriver {
 public:
  std::string_view name() const override { return "vdi"; }

  int probe(std::span<const std::byte> header) const override {
    if (header.size() >= kSignatureOffset + 4 && load_le32(header.data() + kSignatureOffset) == kSignature) return 100;
    return 0;
  }

  std::unique_ptr<Node> open(std::unique_ptr<Node> file, const OpenContext& context) const override {
    const std::string name = file->filename();
    if (!context.options.snapshot.empty()) {
      throw Error(ENOENT, fmt::format("Could not open '{}': Failed to load snapshot '{}': vdi images have no snapshots", name,
                                      context.options.snapshot));
    }
    for (const auto& [key, value] : context.options.driver_options) {
      if (key.rfind("file.", 0) == 0) continue;
      throw invalid_argument("Could not open '{}': Invalid parameter '{}' for format vdi", name, key);
    }
    const uint64_t file_size = file->size();
    std::vector<std::byte> sector(std::min<uint64_t>(file_size, kHeaderSectorBytes));
    file->read(0, sector);
    const Header header = decode_header(sector);
    try {
      validate_header(header, file_size);
    } catch (const Error& error) {
      throw Error(error.errno_value(), fmt::format("Could not open '{}': {}", name, error.what()));
    }
    std::vector<uint32_t> map = read_block_map(*file, header);
    const bool read_only = context.options.read_only || file->read_only();
    return std::make_unique<VdiNode>(std::move(file), header, std::move(map), read_only);
  }

  std::vector<CreateOptionSpec> create_options() const override {
    using T = CreateOptionSpec::Type;
    return {
        {"extent_size_hint", T::Size, "Extent size hint for the image file, 0 to disable"},
        {"nocow", T::Bool, "Turn off copy-on-write (valid only on btrfs)"},
        {"preallocation", T::String, "Preallocation mode (allowed values: off, falloc, full)"},
        {"size", T::Size, "Virtual disk size"},
        {"static", T::Bool, "VDI static (pre-allocated) image"},
    };
  }

  // qemu-img prints the vdi options (static with its default) and then the
  // file protocol's options that were given; sizes as plain numbers.
  std::string creation_summary(const CreateOptions& options) const override {
    std::string out = fmt::format("fmt=vdi size={} static={}", options.size, options.get("static", "off"));
    for (const char* key : {"nocow", "preallocation"}) {
      if (const std::string* value = options.find(key)) out += fmt::format(" {}={}", key, *value);
    }
    if (auto hint = options.get_size("extent_size_hint")) out += fmt::format(" extent_size_hint={}", *hint);
    return out;
  }

  void create(Node& file, const CreateOptions& options) const override {
    const bool fixed = options.get_bool("static", false);
    options.get_bool("nocow", false);  // validated; kiln's file protocol does not set the attribute
    const std::string prealloc_text = options.get("preallocation", "off");
    const auto prealloc = parse_preallocation(prealloc_text);
    if (!prealloc) throw invalid_argument("invalid parameter value: {}", prealloc_text);
    // As qemu: the mode applies to creating the (empty) file, so only metadata is refused.
    if (*prealloc == Preallocation::Metadata) throw Error(ENOTSUP, "Unsupported preallocation mode: metadata");
    if (options.size > uint64_t{kMaxBlocks} * kDefaultBlockSize) throw unsupported_size(options.size);

    const Header header = new_header(options.size, fixed);
    file.truncate(0, Preallocation::Off, true);
    const auto sector = encode_header(header);
    file.write(0, sector);
    // The block map, padded with zeroes to a whole sector: free entries, or the identity for static images.
    const uint64_t map_bytes = header.offset_data - header.offset_bmap;
    std::vector<std::byte> chunk(std::min<uint64_t>(map_bytes, uint64_t{kMapChunkEntries} * 4));
    for (uint64_t pos = 0; pos < map_bytes;) {
      const uint64_t count = std::min<uint64_t>(chunk.size(), map_bytes - pos);
      for (uint64_t i = 0; i < count; i += 4) {
        const uint64_t block = (pos + i) / 4;
        store_le32(chunk.data() + i, block >= header.blocks_in_image ? 0 : fixed ? static_cast<uint32_t>(block) : kBlockFree);
      }
      file.write(header.offset_bmap + pos, std::span(chunk).first(count));
      pos += count;
    }
    if (fixed) file.truncate(header.offset_data + uint64_t{header.blocks_in_image} * header.block_size, Preallocation::Off, true);
  }

  MeasureResult measure(uint64_t, uint64_t, const CreateOptions&) const override {
    throw Error(ENOTSUP, "Block driver 'vdi' does not support size measurement");
  }
};

}  // namespace
}  // namespace kiln::block::vdi

namespace kiln::block {
const FormatDriver& vdi_driver() {
  static const vdi::VdiDriver driver;
  return driver;
}
}  // namespace kiln::block
