// The qcow2 FormatDriver: probing, opening, creation (same layout as
// qemu-img: header, refcount table, refcount block, L1 table), the creation
// summary in qemu-img 7.2's order, and measure.
#include <algorithm>
#include <cstring>

#include "kiln/block/driver.h"
#include "kiln/block/image.h"
#include "kiln/block/protocol.h"
#include "kiln/common/error.h"
#include "kiln/common/size.h"
#include "qcow2/node.h"

namespace kiln::block::qcow2 {
namespace {

uint64_t round_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }

struct CreateSettings {
  uint32_t version = 3;
  uint32_t cluster_bits = 16;
  uint32_t refcount_order = 4;
  bool lazy_refcounts = false;
  bool extended_l2 = false;
  CompressionType compression = CompressionType::Deflate;
  Preallocation prealloc = Preallocation::Off;
  std::string backing_file;
  std::string backing_format;
  std::string data_file;
  bool data_file_raw = false;
  std::optional<LuksCreateParams> luks;
  std::string luks_secret_id;
};

CreateSettings parse_settings(const CreateOptions& options) {
  CreateSettings s;
  const std::string compat = options.get("compat", "1.1");
  if (compat == "0.10" || compat == "v2") {
    s.version = 2;
  } else if (compat == "1.1" || compat == "v3") {
    s.version = 3;
  } else {
    throw invalid_argument("Parameter 'compat' does not accept value '{}'", compat);
  }
  const uint64_t cluster_size = options.get_size("cluster_size").value_or(65536);
  if (cluster_size < 512 || cluster_size > (2u << 20) || (cluster_size & (cluster_size - 1)) != 0) {
    throw invalid_argument("Cluster size must be a power of two between 512 and 2048k");
  }
  s.cluster_bits = static_cast<uint32_t>(__builtin_ctzll(cluster_size));
  if (const std::string* bits = options.find("refcount_bits")) {
    char* end = nullptr;
    unsigned long value = std::strtoul(bits->c_str(), &end, 10);
    if (bits->empty() || *end != '\0' || value == 0 || value > 64 || (value & (value - 1)) != 0) {
      throw invalid_argument("Refcount width must be a power of two and may not exceed 64 bits");
    }
    s.refcount_order = static_cast<uint32_t>(__builtin_ctzl(value));
    if (s.version < 3 && value != 16) {
      throw invalid_argument("Different refcount widths than 16 bits require compatibility level 1.1 or above (use version=v3 or greater)");
    }
  }
  s.lazy_refcounts = options.get_bool("lazy_refcounts", false);
  if (s.lazy_refcounts && s.version < 3) {
    throw invalid_argument("Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  const std::string compression = options.get("compression_type", "zlib");
  if (compression == "zstd") {
    s.compression = CompressionType::Zstd;
    if (s.version < 3) throw invalid_argument("Non-zlib compression type is only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  } else if (compression != "zlib") {
    throw invalid_argument("Parameter 'compression_type' does not accept value '{}'", compression);
  }
  s.extended_l2 = options.get_bool("extended_l2", false);
  if (s.extended_l2) {
    if (s.version < 3) {
      throw invalid_argument("Extended L2 entries are only supported with compatibility level 1.1 and above (use compat=1.1 or greater)");
    }
    if (s.cluster_bits < 14) throw invalid_argument("Extended L2 entries are only supported with cluster sizes of at least 16384 bytes");
  }
  s.data_file = options.get("data_file");
  s.data_file_raw = options.get_bool("data_file_raw", false);
  if (s.data_file_raw && s.data_file.empty()) throw invalid_argument("data-file-raw requires data-file");
  if (!s.data_file.empty() && s.version < 3) {
    throw invalid_argument("External data files are only supported with compatibility level 1.1 and above (use version=v3 or greater)");
  }
  const std::string encrypt_format = options.get("encrypt.format");
  if (options.get_bool("encryption", false) || encrypt_format == "aes") {
    throw Error(ENOTSUP, "The qcow2 AES encryption format is not supported by kiln (use encrypt.format=luks)");
  }
  if (!encrypt_format.empty() && encrypt_format != "luks") throw invalid_argument("Invalid encryption format '{}'", encrypt_format);
  if (encrypt_format.empty()) {
    for (const auto& [key, value] : options.values) {
      if (key.rfind("encrypt.", 0) == 0) throw invalid_argument("Parameter '{}' requires encrypt.format", key);
    }
  } else {
    LuksCreateParams p;
    const std::string secret = options.get("encrypt.key-secret");
    if (secret.empty()) throw invalid_argument("Parameter 'encrypt.key-secret' is required for cipher");
    // The secret itself is looked up only when creating (measure does not need it).
    if (auto it = options.secrets.find(secret); it != options.secrets.end()) p.passphrase = it->second;
    s.luks_secret_id = secret;
    p.cipher_alg = options.get("encrypt.cipher-alg", "aes-256");
    p.cipher_mode = options.get("encrypt.cipher-mode", "xts");
    p.ivgen_alg = options.get("encrypt.ivgen-alg", "plain64");
    p.hash_alg = options.get("encrypt.hash-alg", "sha256");
    if (options.find("encrypt.ivgen-hash-alg")) throw Error(ENOTSUP, "encrypt.ivgen-hash-alg is not supported by kiln (plain64 IVs)");
    if (const std::string* ms = options.find("encrypt.iter-time")) {
      char* end = nullptr;
      p.iter_time_ms = std::strtoull(ms->c_str(), &end, 10);
      if (ms->empty() || *end != '\0') throw invalid_argument("Parameter 'encrypt.iter-time' expects a number");
    }
    s.luks = p;
  }
  auto prealloc = parse_preallocation(options.get("preallocation", "off"));
  if (!prealloc) throw invalid_argument("Invalid parameter '{}'", options.get("preallocation"));
  s.prealloc = *prealloc;
  s.backing_file = options.get("backing_file");
  s.backing_format = options.get("backing_fmt");
  if (s.data_file_raw && !s.backing_file.empty()) throw invalid_argument("Backing file and data-file-raw cannot be used at the same time");
  if (!s.backing_format.empty() && s.backing_file.empty()) throw invalid_argument("Backing format cannot be used without backing file");
  if (s.prealloc != Preallocation::Off && !s.backing_file.empty() && !s.extended_l2) {
    throw invalid_argument("Backing file and preallocation can only be used at the same time if extended_l2 is on");
  }
  return s;
}

class Qcow2Driver final : public FormatDriver {
 public:
  std::string_view name() const override { return "qcow2"; }

  int probe(std::span<const std::byte> header) const override {
    if (header.size() >= 8 && load_be32(header.data()) == kMagic && load_be32(header.data() + 4) >= 2) return 100;
    return 0;
  }

  std::unique_ptr<Node> open(std::unique_ptr<Node> file, const OpenContext& context) const override {
    OpenSettings settings;
    settings.read_only = context.options.read_only || file->read_only();
    settings.no_backing = context.options.no_backing;
    for (const auto& [key, value] : context.options.driver_options) {
      if (key.rfind("file.", 0) == 0) continue;
      auto size = parse_size(value);
      if (key == "l2-cache-size" && size) {
        settings.l2_cache_bytes = *size;
      } else if (key == "refcount-cache-size" && size) {
        settings.refcount_cache_bytes = *size;
      } else if (key == "cache-size" && size) {
        settings.l2_cache_bytes = *size * 4 / 5;
        settings.refcount_cache_bytes = *size / 5;
      } else if (key == "encrypt.key-secret") {
        auto it = context.options.secrets.find(value);
        if (it == context.options.secrets.end()) {
          throw invalid_argument("Could not open '{}': No secret with id '{}' found", file->filename(), value);
        }
        settings.passphrase = it->second;
      } else if (key == "encrypt.format" && value == "luks") {
        // The header says so already.
      } else if (key == "cache-clean-interval" || key == "discard-no-unref" || key == "pass-discard-request") {
        // Accepted for compatibility; kiln's caches are written back on flush.
      } else {
        throw invalid_argument("Could not open '{}': Invalid parameter '{}' for format qcow2", file->filename(), key);
      }
    }
    Node& file_ref = *file;
    return std::make_unique<Qcow2Node>(std::move(file), file_ref, settings, &context);
  }

  std::vector<CreateOptionSpec> create_options() const override {
    using T = CreateOptionSpec::Type;
    return {
        {"backing_file", T::String, "File name of a base image"},
        {"backing_fmt", T::String, "Image format of the base image"},
        {"cluster_size", T::Size, "qcow2 cluster size"},
        {"compat", T::String, "Compatibility level (v2 [0.10] or v3 [1.1])"},
        {"compression_type", T::String, "Compression method used for image cluster compression"},
        {"data_file", T::String, "File name of an external data file"},
        {"data_file_raw", T::Bool, "The external data file must stay valid as a raw image"},
        {"encrypt.cipher-alg", T::String, "Name of encryption cipher algorithm"},
        {"encrypt.cipher-mode", T::String, "Name of encryption cipher mode"},
        {"encrypt.format", T::String, "Encrypt the image, format choices: 'aes', 'luks'"},
        {"encrypt.hash-alg", T::String, "Name of encryption hash algorithm"},
        {"encrypt.iter-time", T::Number, "Time to spend in PBKDF in milliseconds"},
        {"encrypt.ivgen-alg", T::String, "Name of IV generator algorithm"},
        {"encrypt.ivgen-hash-alg", T::String, "Name of IV generator hash algorithm"},
        {"encrypt.key-secret", T::String, "ID of secret providing qcow AES key or LUKS passphrase"},
        {"encryption", T::Bool, "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)"},
        {"extended_l2", T::Bool, "Extended L2 tables"},
        {"extent_size_hint", T::Size, "Extent size hint for the image file, 0 to disable"},
        {"lazy_refcounts", T::Bool, "Postpone refcount updates"},
        {"nocow", T::Bool, "Turn off copy-on-write (valid only on btrfs)"},
        {"preallocation", T::String, "Preallocation mode (allowed values: off, metadata, falloc, full)"},
        {"refcount_bits", T::Number, "Width of a reference count entry in bits"},
        {"size", T::Size, "Virtual disk size"},
    };
  }

  // qemu-img prints every option of the merged qcow2+file option list that is
  // set or has a default, in that list's order; sizes as plain numbers.
  std::string creation_summary(const CreateOptions& options) const override {
    std::string out = "fmt=qcow2";
    auto given = [&](const char* key) {
      if (const std::string* value = options.find(key)) out += fmt::format(" {}={}", key, *value);
    };
    auto with_default = [&](const char* key, const char* fallback) { out += fmt::format(" {}={}", key, options.get(key, fallback)); };
    auto size_value = [&](const char* key, std::optional<uint64_t> fallback) {
      auto value = options.find(key) ? options.get_size(key) : fallback;
      if (value) out += fmt::format(" {}={}", key, *value);
    };
    given("encryption");
    for (const char* key : {"encrypt.format", "encrypt.key-secret", "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.ivgen-alg",
                            "encrypt.ivgen-hash-alg", "encrypt.hash-alg", "encrypt.iter-time"}) {
      given(key);
    }
    size_value("cluster_size", 65536);
    with_default("extended_l2", "off");
    given("preallocation");
    with_default("compression_type", "zlib");
    out += fmt::format(" size={}", options.size);
    given("compat");
    given("backing_file");
    given("backing_fmt");
    given("data_file");
    given("data_file_raw");
    with_default("lazy_refcounts", "off");
    with_default("refcount_bits", "16");
    given("nocow");
    size_value("extent_size_hint", std::nullopt);
    return out;
  }

  void create(Node& file, const CreateOptions& options) const override {
    const CreateSettings s = parse_settings(options);
    if (options.size % 512 != 0) throw invalid_argument("Image size must be a multiple of 512 bytes");
    const uint64_t cluster_size = 1ull << s.cluster_bits;
    const uint64_t l2_entries = cluster_size / (s.extended_l2 ? 16 : 8);
    if ((options.size + cluster_size * l2_entries - 1) / (cluster_size * l2_entries) * 8 > kMaxL1Bytes) {
      throw invalid_argument("The image size is too large for file format 'qcow2' (try using a larger cluster size)");
    }

    Header h;
    h.version = s.version;
    h.cluster_bits = s.cluster_bits;
    h.size = 0;
    h.refcount_order = s.refcount_order;
    h.refcount_table_offset = cluster_size;
    h.refcount_table_clusters = 1;
    if (s.version >= 3) {
      h.header_length = 112;
      h.compression_type = static_cast<uint8_t>(s.compression);
      h.extra_fields.assign(7, std::byte{0});
      if (s.compression != CompressionType::Deflate) h.incompatible_features |= kIncompatCompression;
      if (s.lazy_refcounts) h.compatible_features |= kCompatLazyRefcounts;
      if (s.extended_l2) h.incompatible_features |= kIncompatExtendedL2;
      if (!s.data_file.empty()) {
        h.incompatible_features |= kIncompatDataFile;
        if (s.data_file_raw) h.autoclear_features |= kAutoclearDataFileRaw;
        h.extensions.push_back({kExtDataFile, std::vector<std::byte>(reinterpret_cast<const std::byte*>(s.data_file.data()),
                                                                     reinterpret_cast<const std::byte*>(s.data_file.data()) + s.data_file.size())});
      }
      h.extensions.push_back(default_feature_table());
    }
    std::vector<std::byte> image(3 * cluster_size);
    std::vector<std::byte> encoded = encode_header(h);
    std::copy(encoded.begin(), encoded.end(), image.begin());
    store_be64(image.data() + cluster_size, 2 * cluster_size);  // refcount table -> block at cluster 2
    // Clusters 0, 1 and 2 are in use.
    for (uint64_t cluster = 0; cluster < 3; ++cluster) {
      const uint32_t bits = 1u << s.refcount_order;
      std::byte* block = image.data() + 2 * cluster_size;
      if (bits < 8) {
        block[cluster * bits / 8] |= std::byte(1u << (cluster * bits % 8));
      } else {
        block[(cluster + 1) * (bits / 8) - 1] = std::byte{1};
      }
    }
    file.truncate(0, Preallocation::Off, true);
    file.write(0, image);

    OpenSettings settings;
    settings.repair_dirty = false;
    std::unique_ptr<Node> data_file;
    if (!s.data_file.empty()) {
      // As qemu: the name as given, relative to the working directory.
      data_file = open_protocol(s.data_file, {.read_only = false, .cache = CacheMode::Writeback, .force_share = false, .locking = true, .create = true});
      data_file->truncate(options.size, Preallocation::Off, true);
      settings.data_file = data_file.get();
    }
    Qcow2Node node(nullptr, file, settings, nullptr);
    node.truncate(options.size, Preallocation::Off, false);
    if (!s.backing_file.empty()) node.set_backing(s.backing_file, s.backing_format);
    if (s.luks) {
      if (!options.secrets.contains(s.luks_secret_id)) throw invalid_argument("No secret with id '{}' found", s.luks_secret_id);
      if (s.prealloc != Preallocation::Off) throw Error(ENOTSUP, "Preallocation of encrypted qcow2 images is not supported by kiln");
      node.setup_luks(*s.luks);
    }
    Preallocation prealloc = s.prealloc;
    if (s.data_file_raw && prealloc == Preallocation::Off) prealloc = Preallocation::Metadata;  // raw view: every cluster mapped
    if (prealloc != Preallocation::Off) node.preallocate(0, options.size, prealloc);
    node.flush();
  }

  MeasureResult measure(uint64_t size, uint64_t allocated, const CreateOptions& options) const override {
    const CreateSettings s = parse_settings(options);
    const uint64_t cluster_size = 1ull << s.cluster_bits;
    const uint64_t virtual_size = round_up(size, cluster_size);
    uint64_t required = std::min(round_up(allocated, cluster_size), virtual_size);
    if (!s.backing_file.empty() || s.prealloc == Preallocation::Full || s.prealloc == Preallocation::Falloc) required = virtual_size;
    MeasureResult result;
    result.fully_allocated = fully_allocated_size(virtual_size, cluster_size, s.refcount_order, s.extended_l2);
    if (s.luks) result.fully_allocated += round_up(luks_header_region_bytes(*s.luks), cluster_size);
    result.required = result.fully_allocated - virtual_size + required;
    return result;
  }

  // As qemu: every persistent bitmap of a qcow2 v3 source, fully allocated
  // at the target's cluster size, plus its table and directory entry.
  std::optional<uint64_t> measure_bitmaps(const Node& source, const CreateOptions& options) const override {
    const CreateSettings s = parse_settings(options);
    const auto* qcow2_source = dynamic_cast<const Qcow2Node*>(&source);
    if (s.version < 3 || qcow2_source == nullptr || qcow2_source->version() < 3) return std::nullopt;
    const uint64_t cluster_size = 1ull << s.cluster_bits;
    uint64_t bytes = 0, directory = 0;
    for (const Qcow2Node::BitmapEntry& bitmap : qcow2_source->persistent_bitmaps()) {
      if (bitmap.granularity_bits > 63) continue;
      const uint64_t bits = (source.size() + (1ull << bitmap.granularity_bits) - 1) >> bitmap.granularity_bits;
      const uint64_t clusters = ((bits + 7) / 8 + cluster_size - 1) / cluster_size;
      bytes += clusters * cluster_size + round_up(clusters * 8, cluster_size);
      directory += round_up(24 + bitmap.name.size(), 8);
    }
    return bytes + round_up(directory, cluster_size);
  }

  bool supports_backing() const override { return true; }
};

}  // namespace
}  // namespace kiln::block::qcow2

namespace kiln::block {
const FormatDriver& qcow2_driver() {
  static const qcow2::Qcow2Driver driver;
  return driver;
}
}  // namespace kiln::block
