// Shared helpers for the qcow2 tests: temp folders, running the real QEMU
// tools as the oracle, creating/opening images through the block layer.
#pragma once

#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "../support/command_and_tempdir.h"
#include "kiln/block/image.h"
#include "kiln/common/error.h"
#include "kiln/common/size.h"

namespace kiln::block::test {

using kiln::test::CommandResult;
using kiln::test::run;

// qemu's LUKS PBKDF2 benchmark sometimes fails under CPU load ("Unable to get
// accurate CPU usage"); such commands are retried.
inline CommandResult run_retrying(const std::string& command) {
  CommandResult result;
  for (int attempt = 0; attempt < 4; ++attempt) {
    result = run(command);
    if (result.output.find("Unable to get accurate CPU usage") == std::string::npos) break;
  }
  return result;
}

// A temporary folder named kiln-qcow2-XXXXXX.
struct TempDir : kiln::test::TempDir {
  TempDir() : kiln::test::TempDir("kiln-qcow2") {}
};

inline std::string create_qcow2(const std::string& filename, uint64_t size, const std::string& options = "") {
  const FormatDriver* driver = find_format("qcow2");
  CreateOptions parsed = parse_create_options(*driver, options);
  parsed.size = size;
  return create_image(filename, "qcow2", parsed);
}

inline std::unique_ptr<Image> open_image(const std::string& filename, bool read_only = false, KeyValueList driver_options = {}) {
  OpenOptions options;
  options.format = "qcow2";
  options.read_only = read_only;
  options.driver_options = std::move(driver_options);
  return Image::open(filename, options);
}

// A base image made by qemu-img and filled by the qemu-io command `fill`, and
// an image made by kiln with that base as its backing file (plus `options`).
struct BackedImage {
  std::string base;
  std::string top;
};
inline BackedImage create_backed_qcow2(TempDir& dir, uint64_t size, const std::string& fill, const std::string& options = "",
                                       const std::string& top_name = "top.qcow2") {
  BackedImage image{dir.file("base.qcow2"), dir.file(top_name)};
  EXPECT_EQ(run(fmt::format("qemu-img create -q -f qcow2 '{}' {}", image.base, size)).status, 0);
  CommandResult r = run(fmt::format("qemu-io -f qcow2 -c '{}' '{}'", fill, image.base));
  EXPECT_EQ(r.status, 0) << fill << ": " << r.output;
  create_qcow2(image.top, size, "backing_file=base.qcow2,backing_fmt=qcow2" + (options.empty() ? "" : "," + options));
  return image;
}

inline std::vector<std::byte> pattern(size_t size, uint8_t value) { return std::vector<std::byte>(size, std::byte{value}); }

// Expects the real qemu-img check to find nothing wrong.
inline void expect_qemu_check_clean(const std::string& filename) {
  CommandResult r = run("qemu-img check -f qcow2 '" + filename + "'");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("No errors were found"), std::string::npos) << r.output;
}

// Expects qemu-io to read `pattern` at [offset, offset+length).
inline void expect_qemu_reads(const std::string& filename, uint64_t offset, uint64_t length, uint8_t value) {
  CommandResult r = run(fmt::format("qemu-io -f qcow2 -r -c 'read -P 0x{:02x} {} {}' '{}'", value, offset, length, filename));
  EXPECT_EQ(r.status, 0) << "pattern 0x" << std::hex << int(value) << " at " << std::dec << offset << "+" << length << ": " << r.output;
}

inline void qemu_io(const std::string& filename, const std::string& command) {
  CommandResult r = run(fmt::format("qemu-io -f qcow2 -c '{}' '{}'", command, filename));
  ASSERT_EQ(r.status, 0) << command << ": " << r.output;
}

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

}  // namespace kiln::block::test
