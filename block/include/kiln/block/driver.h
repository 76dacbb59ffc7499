// Format and protocol drivers and their registry. Drivers are listed once in
// registry.cpp (one line each); nothing self-registers.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/block/node.h"
#include "kiln/block/types.h"
#include "kiln/common/key_value.h"

namespace kiln::block {

class Image;
struct OpenOptions;

// One creation option as shown by `-o help`.
struct CreateOptionSpec {
  enum class Type { Size, String, Bool, Number };
  std::string name;
  Type type = Type::String;
  std::string help;
};

// Parsed `-o` options plus the size, validated against a driver's specs.
struct CreateOptions {
  uint64_t size = 0;
  KeyValueList values;  // as given, in order, without "size"
  // Secrets from --object secret,... by id (encrypt.key-secret refers to one).
  std::map<std::string, std::string> secrets;

  const std::string* find(std::string_view key) const;
  std::string get(std::string_view key, std::string_view fallback = "") const;
  bool get_bool(std::string_view key, bool fallback) const;  // on/off/true/false
  std::optional<uint64_t> get_size(std::string_view key) const;
};

// Everything a driver may need while opening: the user's options and a way to
// open further images (backing files) through the same machinery.
struct OpenContext {
  const OpenOptions& options;
  // Opens another image read-only-or-as-asked, e.g. a backing file.
  std::function<std::unique_ptr<Node>(const std::string& filename, const std::string& format, bool read_only)> open_image;
  // True when the format was guessed by probing (raw then guards sector 0).
  bool probed = false;
};

class FormatDriver {
 public:
  virtual ~FormatDriver() = default;
  virtual std::string_view name() const = 0;
  // Confidence 0..100 that `header` (the image's first bytes) is this format.
  virtual int probe(std::span<const std::byte> header) const = 0;
  virtual std::unique_ptr<Node> open(std::unique_ptr<Node> file, const OpenContext& context) const = 0;

  virtual std::vector<CreateOptionSpec> create_options() const = 0;
  // Creates `filename` (the file already exists, empty, opened as `file`).
  virtual void create(Node& file, const CreateOptions& options) const = 0;
  // The "Formatting 'x', fmt=..." summary's option part, in the driver's order.
  virtual std::string creation_summary(const CreateOptions& options) const;
  // Size needed for an image of `size` bytes whose source data occupies `allocated` bytes.
  virtual MeasureResult measure(uint64_t size, uint64_t allocated, const CreateOptions& options) const = 0;
  // qemu-img measure's "bitmaps size": bytes this format needs for the
  // persistent dirty bitmaps of `source` (the source image's top node), or
  // nullopt when the source or the target cannot hold persistent bitmaps (the
  // line is then not printed). Default: nullopt.
  virtual std::optional<uint64_t> measure_bitmaps(const Node& source, const CreateOptions& options) const {
    (void)source;
    (void)options;
    return std::nullopt;
  }
  virtual bool supports_backing() const { return false; }
  // Whether read-only users let others write the file underneath (true for raw,
  // whose readers hold no metadata; false for formats with cached metadata).
  virtual bool readers_share_writes() const { return false; }
};

// All formats, in probing order.
std::span<const FormatDriver* const> formats();
const FormatDriver* find_format(std::string_view name);
// The most likely format for `header` (raw when nothing else matches).
const FormatDriver& probe_format(std::span<const std::byte> header);
// Bytes probe_format looks at.
inline constexpr size_t kProbeBytes = 2048;

}  // namespace kiln::block
