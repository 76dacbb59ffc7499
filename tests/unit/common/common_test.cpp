#include <gtest/gtest.h>

#include <vector>

#include "kiln/common/buffer.h"
#include "kiln/common/error.h"
#include "kiln/common/key_value.h"
#include "kiln/common/size.h"

namespace kiln {
namespace {

TEST(ParseSize, PlainNumbersAreBytes) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("4096"), 4096u);
}

TEST(ParseSize, SuffixesArePowersOf1024) {
  EXPECT_EQ(parse_size("1k"), 1024u);
  EXPECT_EQ(parse_size("1K"), 1024u);
  EXPECT_EQ(parse_size("2M"), 2u << 20);
  EXPECT_EQ(parse_size("3G"), 3ull << 30);
  EXPECT_EQ(parse_size("1T"), 1ull << 40);
  EXPECT_EQ(parse_size("1P"), 1ull << 50);
  EXPECT_EQ(parse_size("1E"), 1ull << 60);
  EXPECT_EQ(parse_size("512b"), 512u);
}

TEST(ParseSize, FractionsWithUnits) {
  EXPECT_EQ(parse_size("1.5G"), 3ull << 29);
  EXPECT_EQ(parse_size("0.5k"), 512u);
}

TEST(ParseSize, RejectsMalformed) {
  EXPECT_FALSE(parse_size(""));
  EXPECT_FALSE(parse_size("-1"));
  EXPECT_FALSE(parse_size("1Q"));
  EXPECT_FALSE(parse_size("G"));
  EXPECT_FALSE(parse_size("1.5"));
  EXPECT_FALSE(parse_size("16E"));
  EXPECT_FALSE(parse_size("99999999999999999999"));
  EXPECT_FALSE(parse_size("1GG"));
}

TEST(FormatSize, MatchesQemuImgInfo) {
  EXPECT_EQ(format_size_iec(0), "0 B");
  EXPECT_EQ(format_size_iec(4096), "4 KiB");
  EXPECT_EQ(format_size_iec(1ull << 30), "1 GiB");
  EXPECT_EQ(format_size_iec(1536ull << 20), "1.5 GiB");
  EXPECT_EQ(format_size_iec(1000 * 1024), "0.977 MiB");
  EXPECT_EQ(format_size_iec(999), "999 B");
  EXPECT_EQ(format_size_iec(197120), "192 KiB");
  EXPECT_EQ(format_size_iec(1024000), "0.977 MiB");
}

TEST(KeyValue, ParsesListsWithEscapedCommas) {
  auto list = parse_key_value_list("size=1G,preallocation=full,backing_file=a,,b");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0], (std::pair<std::string, std::string>{"size", "1G"}));
  EXPECT_EQ(list[2].second, "a,b");
}

TEST(KeyValue, BareWordsAndEmptyValues) {
  auto list = parse_key_value_list("help");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].first, "help");
  EXPECT_TRUE(parse_key_value_list("").empty());
  EXPECT_THROW(parse_key_value_list("=x"), Error);
}

TEST(IsZero, FindsAnyNonZeroByte) {
  std::vector<std::byte> data(4099);
  EXPECT_TRUE(is_zero(data));
  for (size_t position : {size_t{0}, size_t{7}, size_t{64}, size_t{4098}}) {
    data[position] = std::byte{1};
    EXPECT_FALSE(is_zero(data)) << position;
    if (position > 0) {
      EXPECT_FALSE(is_zero(std::span(data).subspan(1))) << position;
    }
    data[position] = std::byte{0};
  }
}

TEST(ErrorText, CarriesErrnoAndMessage) {
  Error e = system_error(ENOENT, "Could not open '{}'", "x");
  EXPECT_EQ(e.errno_value(), ENOENT);
  EXPECT_STREQ(e.what(), "Could not open 'x': No such file or directory");
}

}  // namespace
}  // namespace kiln
