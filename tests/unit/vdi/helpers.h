// Shared helpers for the VDI tests: temp folders, the real QEMU tools as the
// oracle, creating/opening images, raw header pokes.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "../support/command_and_tempdir.h"
#include "kiln/block/image.h"
#include "kiln/common/error.h"
#include "vdi/format.h"
#include "vdi/node.h"

namespace kiln::block::vdi::test {

using kiln::test::CommandResult;
using kiln::test::run;

// A temporary folder named kiln-vdi-XXXXXX.
struct TempDir : kiln::test::TempDir {
  TempDir() : kiln::test::TempDir("kiln-vdi") {}
};

inline constexpr uint64_t kMiB = 1 << 20;

inline std::string create_vdi(const std::string& filename, uint64_t size, const std::string& options = "") {
  CreateOptions parsed = parse_create_options(*find_format("vdi"), options);
  parsed.size = size;
  return create_image(filename, "vdi", parsed);
}

inline std::unique_ptr<Image> open_vdi(const std::string& filename, bool read_only = false) {
  OpenOptions options;
  options.format = "vdi";
  options.read_only = read_only;
  return Image::open(filename, options);
}

inline VdiNode& node_of(Image& image) { return dynamic_cast<VdiNode&>(image.top()); }

inline std::vector<std::byte> pattern(size_t size, uint8_t value) { return std::vector<std::byte>(size, std::byte{value}); }

inline void expect_reads(Image& image, uint64_t offset, uint64_t length, uint8_t value) {
  std::vector<std::byte> buffer(length);
  image.read(offset, buffer);
  for (size_t i = 0; i < length; ++i) {
    if (buffer[i] != std::byte{value}) {
      ADD_FAILURE() << "byte " << offset + i << " is " << std::to_integer<int>(buffer[i]) << ", expected " << int(value);
      return;
    }
  }
}

inline void expect_qemu_check_clean(const std::string& filename) {
  CommandResult r = run("qemu-img check -f vdi '" + filename + "'");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("No errors were found"), std::string::npos) << r.output;
}

inline void expect_qemu_reads(const std::string& filename, uint64_t offset, uint64_t length, uint8_t value) {
  CommandResult r = run(fmt::format("qemu-io -f vdi -r -c 'read -P 0x{:02x} {} {}' '{}'", value, offset, length, filename));
  EXPECT_EQ(r.status, 0) << "pattern 0x" << std::hex << int(value) << " at " << std::dec << offset << "+" << length << ": " << r.output;
  EXPECT_EQ(r.output.find("Pattern verification failed"), std::string::npos) << r.output;
}

inline void qemu_io(const std::string& filename, const std::string& command) {
  CommandResult r = run(fmt::format("qemu-io -f vdi -c '{}' '{}'", command, filename));
  ASSERT_EQ(r.status, 0) << command << ": " << r.output;
}

inline std::vector<std::byte> read_bytes(const std::string& filename, uint64_t offset, size_t length) {
  std::ifstream in(filename, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<std::byte> data(length);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(length));
  data.resize(static_cast<size_t>(in.gcount()));
  return data;
}

inline void poke_le32(const std::string& filename, uint64_t offset, uint32_t value) {
  std::fstream f(filename, std::ios::binary | std::ios::in | std::ios::out);
  std::array<std::byte, 4> raw;
  store_le32(raw.data(), value);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(raw.data()), 4);
}

inline void poke_le64(const std::string& filename, uint64_t offset, uint64_t value) {
  std::fstream f(filename, std::ios::binary | std::ios::in | std::ios::out);
  std::array<std::byte, 8> raw;
  store_le64(raw.data(), value);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(reinterpret_cast<const char*>(raw.data()), 8);
}

inline Header file_header(const std::string& filename) { return decode_header(read_bytes(filename, 0, 512)); }

inline uint32_t map_entry(const std::string& filename, uint32_t block) {
  const Header h = file_header(filename);
  return load_le32(read_bytes(filename, h.offset_bmap + uint64_t{block} * 4, 4).data());
}

}  // namespace kiln::block::vdi::test
