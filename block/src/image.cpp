#include "kiln/block/image.h"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "kiln/block/protocol.h"
#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "kiln/common/size.h"

namespace kiln::block {

std::optional<uint64_t> CreateOptions::get_size(std::string_view key) const {
  const std::string* value = find(key);
  if (!value) return std::nullopt;
  auto parsed = parse_size(*value);
  if (!parsed) throw invalid_argument("Parameter '{}' expects a size", key);
  return parsed;
}

namespace {

ProtocolOptions protocol_options(const OpenOptions& options, bool read_only) {
  // Locks are taken once the format is known (it decides what readers share).
  return {.read_only = read_only, .cache = options.cache, .force_share = options.force_share, .locking = false, .create = false};
}

std::unique_ptr<Node> open_node(const std::string& filename, const std::string& format, bool read_only, const OpenOptions& options,
                                int depth) {
  if (depth > 64) throw invalid_argument("Could not open '{}': backing chain too deep (a loop?)", filename);
  const FormatDriver* driver = nullptr;
  if (!format.empty()) {
    driver = find_format(format);
    if (driver == nullptr) throw invalid_argument("Could not open '{}': Unknown driver '{}'", filename, format);
  }
  std::unique_ptr<Node> file = open_protocol(filename, protocol_options(options, read_only));
  bool probed = false;
  if (driver == nullptr) {
    std::vector<std::byte> header(std::min<uint64_t>(file->size(), kProbeBytes));
    file->read(0, header);
    driver = &probe_format(header);
    probed = driver->name() == "raw";
    if (probed && !read_only) {
      log::warn("Image format was not specified for '{}' and probing guessed raw; writes to block 0 are restricted "
                "(specify the raw format explicitly to remove the restriction)",
                filename);
    }
  }
  if (options.locking) file->lock(default_lock_permissions(read_only, driver->readers_share_writes(), options.force_share));
  OpenOptions backing_options = options;
  backing_options.driver_options.clear();
  backing_options.snapshot.clear();
  OpenContext context{
      .options = options,
      .open_image = [&, depth](const std::string& name, const std::string& backing_format, bool backing_read_only) {
        return open_node(name, backing_format, backing_read_only, backing_options, depth + 1);
      },
      .probed = probed,
  };
  return driver->open(std::move(file), context);
}

}  // namespace

Image::Image(std::unique_ptr<Node> top) : top_(std::move(top)) {}
Image::~Image() = default;

std::unique_ptr<Image> Image::open(const std::string& filename, const OpenOptions& options) {
  return std::unique_ptr<Image>(new Image(open_node(filename, options.format, options.read_only, options, 0)));
}

void Image::check_range(uint64_t offset, uint64_t length, const char* what) const {
  const uint64_t size = top_->size();
  if (offset > size || length > size - offset) {
    throw Error(EINVAL, fmt::format("Cannot {} '{}' at offset {} length {}: beyond the end of the image ({} bytes)", what, filename(),
                                    offset, length, size));
  }
}

void Image::read(uint64_t offset, std::span<std::byte> buffer) {
  check_range(offset, buffer.size(), "read");
  if (!buffer.empty()) top_->read(offset, buffer);
}

void Image::write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) {
  check_range(offset, data.size(), "write");
  if (read_only()) throw Error(EACCES, fmt::format("Cannot write '{}': the image is opened read-only", filename()));
  if (!data.empty()) top_->write(offset, data, flags);
}

void Image::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) {
  check_range(offset, length, "write zeroes to");
  if (read_only()) throw Error(EACCES, fmt::format("Cannot write '{}': the image is opened read-only", filename()));
  if (length > 0) top_->write_zeroes(offset, length, flags);
}

void Image::discard(uint64_t offset, uint64_t length) {
  check_range(offset, length, "discard");
  if (read_only()) throw Error(EACCES, fmt::format("Cannot discard '{}': the image is opened read-only", filename()));
  if (length > 0) top_->discard(offset, length);
}

void Image::flush() { top_->flush(); }

void Image::truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink) {
  if (read_only()) throw Error(EACCES, fmt::format("Cannot resize '{}': the image is opened read-only", filename()));
  top_->truncate(new_size, prealloc, allow_shrink);
}

void Image::write_compressed(uint64_t offset, std::span<const std::byte> data) {
  check_range(offset, data.size(), "write");
  top_->write_compressed(offset, data);
}

void Image::compress_for_write(uint64_t offset, std::span<const std::byte> data, Node::PreparedCompressed& out) {
  check_range(offset, data.size(), "write");
  top_->compress_for_write(offset, data, out);
}

void Image::write_compressed_prepared(uint64_t offset, std::span<const std::byte> data, const Node::PreparedCompressed& prepared) {
  check_range(offset, data.size(), "write");
  top_->write_compressed_prepared(offset, data, prepared);
}

BlockStatus Image::block_status(uint64_t offset, uint64_t length) {
  check_range(offset, length, "query");
  return top_->block_status(offset, length);
}

ChainStatus Image::chain_status(uint64_t offset, uint64_t length) {
  check_range(offset, length, "query");
  Node* node = top_.get();
  int depth = 0;
  while (true) {
    if (offset >= node->size()) {  // past a shorter backing file: reads as zeroes
      return {.length = length, .flags = kStatusZero, .depth = depth, .host_offset = 0, .host_file = {}};
    }
    BlockStatus status = node->block_status(offset, std::min(length, node->size() - offset));
    length = status.length;
    Node* backing = node->backing_child();
    if ((status.flags & kStatusAllocated) || backing == nullptr) {
      uint32_t flags = status.flags;
      if (!(flags & kStatusAllocated) && backing == nullptr) {
        // Unallocated at the bottom of the chain: zeroes, present nowhere
        // (reported at the bottom layer's depth, as qemu-img map does).
        flags = kStatusZero;
      }
      return {.length = length, .flags = flags, .depth = depth, .host_offset = status.host_offset, .host_file = status.host_file};
    }
    node = backing;
    ++depth;
  }
}

CreateOptions parse_create_options(const FormatDriver& driver, std::string_view text) {
  CreateOptions options;
  const auto specs = driver.create_options();
  for (auto& entry : parse_key_value_list(text)) {
    std::string& key = entry.first;
    std::string& value = entry.second;
    auto spec = std::find_if(specs.begin(), specs.end(), [&](const CreateOptionSpec& s) { return s.name == key; });
    if (spec == specs.end()) throw invalid_argument("Invalid parameter '{}'", key);
    if (spec->type == CreateOptionSpec::Type::Size) {
      if (!parse_size(value)) throw invalid_argument("Parameter '{}' expects a size", key);
    }
    if (key == "size") {
      options.size = *parse_size(value);
      options.values.emplace_back("size", value);  // kept so callers can tell "given twice"
      continue;
    }
    options.values.emplace_back(std::move(key), std::move(value));
  }
  return options;
}

std::string create_image(const std::string& filename, const std::string& format, const CreateOptions& options) {
  const FormatDriver* driver = find_format(format);
  if (driver == nullptr) throw invalid_argument("Unknown file format '{}'", format);
  CreateOptions clean = options;
  std::erase_if(clean.values, [](const auto& kv) { return kv.first == "size"; });
  std::string summary = driver->creation_summary(clean);
  std::unique_ptr<Node> file = open_protocol(filename, {.read_only = false, .cache = CacheMode::Writeback, .force_share = false,
                                                       .locking = true, .create = true});
  driver->create(*file, clean);
  file->flush();
  return summary;
}

}  // namespace kiln::block
