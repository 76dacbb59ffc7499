// Image: what tools and servers hold — an opened block graph (format node on a
// protocol node, backing chain below) with the QEMU-compatible image lock,
// range checks, and whole-chain block status. Thread-safe like Node.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <map>
#include <string>
#include <vector>

#include "kiln/block/driver.h"
#include "kiln/block/node.h"
#include "kiln/block/types.h"

namespace kiln::block {

struct OpenOptions {
  std::string format;         // empty: probe
  bool read_only = false;
  CacheMode cache = CacheMode::Writeback;
  bool force_share = false;   // -U: share every permission, take no write lock
  bool no_backing = false;    // open without the backing chain
  bool locking = true;        // take qemu-compatible OFD locks
  // Format options such as raw's offset=/size=, and "file.*" for the protocol.
  KeyValueList driver_options;
  // Internal snapshot to open read-only instead of the active image ("" = none).
  std::string snapshot;
  // Secrets from --object secret,id=ID,data=...|file=... by id (for encryption keys).
  std::map<std::string, std::string> secrets;
};

// Status of a range through the whole backing chain.
struct ChainStatus {
  uint64_t length = 0;
  uint32_t flags = 0;   // kStatusData / kStatusZero; kStatusAllocated when some layer has it
  int depth = 0;        // chain depth of the layer that defines it (0 = top)
  uint64_t host_offset = 0;
  std::string host_file;  // with kStatusOffsetValid
};

class Image {
 public:
  static std::unique_ptr<Image> open(const std::string& filename, const OpenOptions& options);

  ~Image();
  Image(const Image&) = delete;
  Image& operator=(const Image&) = delete;

  Node& top() { return *top_; }
  const Node& top() const { return *top_; }
  const std::string& filename() const { return top_->filename(); }
  std::string_view format() const { return top_->driver_name(); }
  uint64_t size() const { return top_->size(); }
  bool read_only() const { return top_->read_only(); }

  // Range-checked data path ("offset beyond end" is an EINVAL Error naming the image).
  void read(uint64_t offset, std::span<std::byte> buffer);
  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags = {});
  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags flags = {});
  void discard(uint64_t offset, uint64_t length);
  void flush();
  void truncate(uint64_t new_size, Preallocation prealloc, bool allow_shrink);
  void write_compressed(uint64_t offset, std::span<const std::byte> data);
  // See Node::compress_for_write: compress on any thread, store in order.
  void compress_for_write(uint64_t offset, std::span<const std::byte> data, Node::PreparedCompressed& out);
  void write_compressed_prepared(uint64_t offset, std::span<const std::byte> data, const Node::PreparedCompressed& prepared);

  // Status of the top node only.
  BlockStatus block_status(uint64_t offset, uint64_t length);
  // Status through the backing chain, as qemu-img map reports it.
  ChainStatus chain_status(uint64_t offset, uint64_t length);

 private:
  explicit Image(std::unique_ptr<Node> top);
  void check_range(uint64_t offset, uint64_t length, const char* what) const;

  std::unique_ptr<Node> top_;
};

// Creates an image file of `format`; returns the "fmt=... size=..." summary
// that qemu-img prints after "Formatting 'name', ".
std::string create_image(const std::string& filename, const std::string& format, const CreateOptions& options);

// Parses `-o` text into CreateOptions for `driver` (size= taken out), checking
// every key against the driver's specs. Throws on unknown keys.
CreateOptions parse_create_options(const FormatDriver& driver, std::string_view text);

}  // namespace kiln::block
