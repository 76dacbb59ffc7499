// The VMDK text descriptor: parsing (header keys, extent lines, disk database)
// and writing it the way qemu-img does. Pure functions so they can be unit
// tested and fuzzed without files.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kiln::block::vmdk {

enum class ExtentAccess { ReadWrite, ReadOnly, NoAccess };
enum class ExtentType { Flat, Sparse, Zero, Vmfs, VmfsSparse, VmfsRdm, VmfsRaw, SeSparse };

struct ExtentLine {
  ExtentAccess access = ExtentAccess::ReadWrite;
  uint64_t sectors = 0;
  ExtentType type = ExtentType::Flat;
  std::string type_name;  // as written ("FLAT", "SPARSE", ...)
  std::string filename;   // relative to the descriptor's folder; empty for ZERO
  uint64_t offset = 0;    // sectors into the file (FLAT only)
};

struct Descriptor {
  int version = 1;
  uint32_t cid = 0;
  uint32_t parent_cid = 0xffffffff;
  std::string create_type;
  std::string parent_file_name_hint;
  std::vector<ExtentLine> extents;
  std::vector<std::pair<std::string, std::string>> ddb;  // "ddb.x" keys, in order

  const std::string* ddb_value(std::string_view key) const;
};

// Largest descriptor accepted (a real one is well under 4 KiB).
inline constexpr size_t kMaxDescriptorBytes = 1 << 20;
// Largest disk accepted: the sum of all extents, in sectors (2^63 bytes).
inline constexpr uint64_t kMaxTotalSectors = (uint64_t{1} << 63) / 512;

// True when `head` (a file's first bytes) is a text descriptor as qemu probes
// it: after '#' comment and blank lines, "version=1|2|3" ends its line.
bool looks_like_descriptor(std::span<const std::byte> head);

// Parses descriptor text; `name` names the file in errors. Throws kiln::Error
// (EINVAL) with a one-line message for malformed input.
Descriptor parse_descriptor(std::string_view text, std::string_view name);

// Checks an extent file name from a descriptor: it must be relative and stay
// inside the descriptor's folder. Returns the path to open (joined with the
// descriptor's folder). Throws kiln::Error naming `descriptor_path` otherwise,
// unless the user allowed names outside the folder (open option
// extent-paths=any): an image from elsewhere must not read or write arbitrary
// host files just by being opened.
std::string resolve_extent_path(const std::string& descriptor_path, const std::string& extent_name, bool allow_outside = false);

// What qemu-img writes for a new image.
struct DescriptorSettings {
  uint32_t cid = 0;
  uint32_t parent_cid = 0xffffffff;
  std::string create_type;
  std::string parent_file_name_hint;  // "" = no parent
  std::vector<ExtentLine> extents;
  std::string hw_version = "4";
  uint64_t cylinders = 0;
  uint32_t heads = 16;
  std::string adapter_type = "ide";
  std::string tools_version = "2147483647";
};
std::string format_descriptor(const DescriptorSettings& settings);

// `text` with its CID line set to `cid` (inserted after "version=" when missing).
std::string replace_cid(std::string_view text, uint32_t cid);

std::string_view extent_type_name(ExtentType type);

}  // namespace kiln::block::vmdk
