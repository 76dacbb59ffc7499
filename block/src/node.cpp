#include "kiln/block/node.h"

#include <algorithm>
#include <array>

#include "kiln/common/error.h"

namespace kiln::block {

namespace {
// Shared source of zeroes for write_zeroes fallbacks.
constexpr size_t kZeroChunk = 1 << 20;
const std::array<std::byte, kZeroChunk>& zero_chunk() {
  static const std::array<std::byte, kZeroChunk> zeroes{};
  return zeroes;
}
}  // namespace

void Node::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags) {
  if (flags.no_fallback) throw Error(ENOTSUP, fmt::format("'{}': fast zeroing is not supported", filename()));
  while (length > 0) {
    size_t chunk = static_cast<size_t>(std::min<uint64_t>(length, kZeroChunk));
    write(offset, std::span(zero_chunk().data(), chunk));
    offset += chunk;
    length -= chunk;
  }
}

void Node::discard(uint64_t, uint64_t) {}

void Node::truncate(uint64_t, Preallocation, bool) {
  throw Error(ENOTSUP, fmt::format("Image format '{}' does not support resizing", driver_name()));
}

int64_t Node::allocated_size() const {
  Node* file = file_child();
  return file != nullptr ? file->allocated_size() : -1;
}

CheckResult Node::check(CheckRepair) { throw Error(ENOTSUP, "This image format does not support checks"); }

void Node::compress_for_write(uint64_t, std::span<const std::byte>, PreparedCompressed& out) { out.ready = false; }

void Node::write_compressed_prepared(uint64_t offset, std::span<const std::byte> data, const PreparedCompressed&) {
  write_compressed(offset, data);
}

void Node::write_compressed(uint64_t, std::span<const std::byte>) {
  throw Error(ENOTSUP, fmt::format("Image format '{}' does not support compression", driver_name()));
}

std::vector<SnapshotInfo> Node::list_snapshots() { return {}; }

void Node::create_snapshot(const std::string& name) {
  throw Error(ENOTSUP, fmt::format("Could not create snapshot '{}': -95 (Operation not supported)", name));
}

void Node::apply_snapshot(const std::string& name) {
  throw Error(ENOTSUP, fmt::format("Could not apply snapshot '{}': -95 (Operation not supported)", name));
}

void Node::delete_snapshot(const std::string& name) {
  throw Error(ENOTSUP, fmt::format("Could not delete snapshot '{}': -95 (Operation not supported)", name));
}

void Node::amend(const KeyValueList&) {
  throw Error(ENOTSUP, fmt::format("Format driver '{}' does not support option amendment", driver_name()));
}

void Node::change_backing_file(const std::string&, const std::string&) {
  throw Error(ENOTSUP, fmt::format("Image format '{}' does not support backing files", driver_name()));
}

Node::DirtyRun Node::dirty_bitmap_status(const std::string& name, uint64_t, uint64_t) {
  throw Error(ENOENT, fmt::format("Bitmap '{}' is not found", name));
}

void Node::make_empty() {
  throw Error(ENOTSUP, fmt::format("Image format '{}' cannot be emptied", driver_name()));
}

}  // namespace kiln::block
