// qemu-io's number parsing and output formatting, as kiln-io implements them.
#include "output.h"

#include <cerrno>
#include <chrono>
#include <vector>

#include <gtest/gtest.h>

namespace kiln::io {
namespace {

using namespace std::chrono_literals;

TEST(ParseNumber, AcceptsQemuSpellings) {
  EXPECT_EQ(parse_number("0"), 0);
  EXPECT_EQ(parse_number("512"), 512);
  EXPECT_EQ(parse_number("00010"), 10);
  EXPECT_EQ(parse_number("0x10"), 16);
  EXPECT_EQ(parse_number("0X1b"), 27);  // b and e are hex digits after 0x
  EXPECT_EQ(parse_number("4k"), 4096);
  EXPECT_EQ(parse_number("512b"), 512);
  EXPECT_EQ(parse_number("1.5k"), 1536);
  EXPECT_EQ(parse_number("1.3k"), 1331);  // fractions truncate
  EXPECT_EQ(parse_number("1.0"), 1);
  EXPECT_EQ(parse_number("1.k"), 1024);
  EXPECT_EQ(parse_number("7E"), 7LL << 60);
  EXPECT_EQ(parse_number("9223372036854775807"), INT64_MAX);
}

TEST(ParseNumber, RejectsLikeQemu) {
  for (const char* bad : {"", "abc", "1.5", "1.5b", "1e3", "1kB", "1KiB", "0x", "0x1.8k", ".5k", "-1"}) {
    EXPECT_EQ(parse_number(bad), -EINVAL) << bad;
  }
  for (const char* big : {"8E", "9223372036854775808", "18446744073709551616", "0x8000000000000000", "0xffffffffffffffffff"}) {
    EXPECT_EQ(parse_number(big), -ERANGE) << big;
  }
}

TEST(FormatBytes, DropsWholeDecimals) {
  EXPECT_EQ(format_bytes(0), "0 bytes");
  EXPECT_EQ(format_bytes(512), "512 bytes");
  EXPECT_EQ(format_bytes(1000), "1000 bytes");
  EXPECT_EQ(format_bytes(1023.5), "1023.500000 bytes");
  EXPECT_EQ(format_bytes(1024), "1 KiB");
  EXPECT_EQ(format_bytes(1025), "1.001 KiB");
  EXPECT_EQ(format_bytes(1536), "1.500 KiB");
  EXPECT_EQ(format_bytes(1000000), "976.562 KiB");
  EXPECT_EQ(format_bytes(4194000), "4 MiB");  // 3.99977 rounds to 4.000
  EXPECT_EQ(format_bytes(1u << 30), "1 GiB");
}

TEST(FormatElapsed, ShortAndFixedForms) {
  EXPECT_EQ(format_elapsed(160ms, false), "00.16 sec");
  EXPECT_EQ(format_elapsed(160ms, true), "0:00:00.16");
  EXPECT_EQ(format_elapsed(2750ms, false), "0:00:02.75");
  EXPECT_EQ(format_elapsed(std::chrono::seconds(3 * 3600 + 5 * 60 + 17) + 90ms, false), "3:05:17.09");
}

TEST(FormatReport, TwoLinesOrMachineLine) {
  EXPECT_EQ(format_report("wrote", 1s, 0, 4096, 4096, 1, false),
            "wrote 4096/4096 bytes at offset 0\n4 KiB, 1 ops; 0:00:01.00 (4 KiB/sec and 1.0000 ops/sec)\n");
  EXPECT_EQ(format_report("read", 500ms, 512, 1024, 1024, 1, true), "1024,1,0:00:00.50,2048.000,2.000\n");
}

TEST(FormatDump, HexAndAlphanumerics) {
  std::vector<std::byte> data;
  for (char c : std::string("Hello, world! 0123")) data.push_back(static_cast<std::byte>(c));
  EXPECT_EQ(format_dump(data, 0x5a),
            "0000005a:  48 65 6c 6c 6f 2c 20 77 6f 72 6c 64 21 20 30 31  Hello..world..01\n"
            "0000006a:  32 33  23\n");
}

}  // namespace
}  // namespace kiln::io
