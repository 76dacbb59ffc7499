// The raw format: guest bytes are file bytes, optionally a window
// [offset, offset+size) of the file. A raw image that was only guessed by
// probing refuses writes that would make its first sector probe as another
// format, as qemu does, so a guest cannot turn its disk into, say, a qcow2
// header pointing at host files.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kiln/block/driver.h"
#include "kiln/block/image.h"
#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "kiln/common/size.h"

namespace kiln::block {
namespace {

class RawNode final : public Node {
 public:
  RawNode(std::unique_ptr<Node> file, uint64_t offset, uint64_t size, bool has_size_option, bool probed)
      : file_(std::move(file)), offset_(offset), size_(size), fixed_size_(has_size_option), probed_(probed) {}

  std::string_view driver_name() const override { return "raw"; }
  const std::string& filename() const override { return file_->filename(); }
  // Like qemu, a raw image is a whole number of 512-byte sectors; the tail past
  // the end of the file reads as zeroes.
  uint64_t size() const override { return fixed_size_ ? size_ : (file_->size() - offset_ + 511) / 512 * 512; }
  bool read_only() const override { return file_->read_only(); }
  uint32_t request_alignment() const override { return file_->request_alignment(); }
  Node* file_child() const override { return file_.get(); }

  void read(uint64_t offset, std::span<std::byte> buffer) override { file_->read(offset_ + offset, buffer); }

  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override {
    if (probed_ && offset < kProbeBytes) check_probe_safe(offset, data);
    file_->write(offset_ + offset, data, flags);
  }

  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) override {
    file_->write_zeroes(offset_ + offset, length, flags);
  }
  void discard(uint64_t offset, uint64_t length) override { file_->discard(offset_ + offset, length); }
  void flush() override { file_->flush(); }

  void truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink) override {
    if (fixed_size_ || offset_ != 0) {
      throw Error(ENOTSUP, fmt::format("Cannot resize '{}': raw images with offset or size options cannot be resized", filename()));
    }
    file_->truncate(new_size, prealloc, allow_shrink);
  }

  BlockStatus block_status(uint64_t offset, uint64_t length) override {
    BlockStatus status = file_->block_status(offset_ + offset, length);
    status.flags |= kStatusAllocated;
    return status;
  }

  std::optional<HostExtent> host_extent(uint64_t offset, uint64_t length) override {
    return file_->host_extent(offset_ + offset, length);
  }

 private:
  // Refuses a write into the probe window whose result would probe as non-raw.
  void check_probe_safe(uint64_t offset, std::span<const std::byte> data) {
    std::vector<std::byte> head(std::min<uint64_t>(kProbeBytes, size()));
    file_->read(offset_, head);
    size_t count = std::min<size_t>(data.size(), head.size() - offset);
    std::memcpy(head.data() + offset, data.data(), count);
    const FormatDriver& guess = probe_format(head);
    if (guess.name() != "raw") {
      throw Error(EPERM, fmt::format("Write to the first sector of '{}' refused: the image was probed as raw and the data would make it "
                                     "probe as {} (specify the raw format explicitly to allow it)",
                                     filename(), guess.name()));
    }
  }

  std::unique_ptr<Node> file_;
  uint64_t offset_;
  uint64_t size_;
  bool fixed_size_;
  bool probed_;
};

class RawDriver final : public FormatDriver {
 public:
  std::string_view name() const override { return "raw"; }
  int probe(std::span<const std::byte>) const override { return 1; }
  bool readers_share_writes() const override { return true; }

  std::unique_ptr<Node> open(std::unique_ptr<Node> file, const OpenContext& context) const override {
    if (!context.options.snapshot.empty()) {
      throw Error(ENOENT, fmt::format("Could not open '{}': Failed to load snapshot '{}': raw images have no snapshots",
                                      file->filename(), context.options.snapshot));
    }
    uint64_t offset = 0;
    std::optional<uint64_t> size;
    for (const auto& [key, value] : context.options.driver_options) {
      if (key == "offset" || key == "size") {
        auto parsed = parse_size(value);
        if (!parsed) throw invalid_argument("Could not open '{}': invalid {} '{}'", file->filename(), key, value);
        (key == "offset" ? offset : size.emplace()) = *parsed;
      } else {
        throw invalid_argument("Could not open '{}': Invalid parameter '{}' for format raw", file->filename(), key);
      }
    }
    const uint64_t file_size = file->size();
    if (offset > file_size || (size && *size > file_size - offset)) {
      throw invalid_argument("Could not open '{}': The sum of offset ({}) and size ({}) has to be smaller or equal to the actual size of the containing file ({})",
                             file->filename(), offset, size.value_or(0), file_size);
    }
    return std::make_unique<RawNode>(std::move(file), offset, size.value_or(0), size.has_value(), context.probed);
  }

  std::vector<CreateOptionSpec> create_options() const override {
    return {{"size", CreateOptionSpec::Type::Size, "Virtual disk size"},
            {"preallocation", CreateOptionSpec::Type::String, "Preallocation mode (allowed values: off, falloc, full)"}};
  }

  void create(Node& file, const CreateOptions& options) const override {
    auto prealloc = parse_preallocation(options.get("preallocation", "off"));
    if (!prealloc || *prealloc == Preallocation::Metadata) {
      throw invalid_argument("invalid parameter value: {}", options.get("preallocation"));
    }
    file.truncate(options.size, *prealloc, true);
    // Like qemu, allocate the first block so that O_DIRECT alignment probing
    // has data to read and tools agree on "disk size".
    if (*prealloc == Preallocation::Off && options.size > 0) {
      AlignedBuffer zeroes(std::min<uint64_t>(options.size, 4096));
      std::memset(zeroes.data(), 0, zeroes.size());
      file.write(0, zeroes.span());
    }
  }

  MeasureResult measure(uint64_t size, uint64_t, const CreateOptions&) const override {
    return {.required = size, .fully_allocated = size, .bitmaps = std::nullopt};
  }
};

}  // namespace

const FormatDriver& raw_driver() {
  static const RawDriver driver;
  return driver;
}

}  // namespace kiln::block
