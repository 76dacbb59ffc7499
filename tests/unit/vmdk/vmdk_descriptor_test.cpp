// The descriptor parser and writer: qemu-img's own text, VMware variants,
// malformed input and extent names that try to leave the descriptor's folder.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "kiln/common/error.h"
#include "vmdk/descriptor.h"

namespace kiln::block::vmdk {
namespace {

const char* kQemuSparse =
    "# Disk DescriptorFile\n"
    "version=1\n"
    "CID=b422867f\n"
    "parentCID=ffffffff\n"
    "createType=\"monolithicSparse\"\n"
    "\n"
    "# Extent description\n"
    "RW 204800 SPARSE \"a.vmdk\"\n"
    "\n"
    "# The Disk Data Base\n"
    "#DDB\n"
    "\n"
    "ddb.virtualHWVersion = \"4\"\n"
    "ddb.geometry.cylinders = \"203\"\n"
    "ddb.geometry.heads = \"16\"\n"
    "ddb.geometry.sectors = \"63\"\n"
    "ddb.adapterType = \"ide\"\n"
    "ddb.toolsVersion = \"2147483647\"\n";

std::string error_of(std::string_view text) {
  try {
    parse_descriptor(text, "d.vmdk");
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

TEST(VmdkDescriptor, ParsesQemuText) {
  Descriptor d = parse_descriptor(kQemuSparse, "a.vmdk");
  EXPECT_EQ(d.version, 1);
  EXPECT_EQ(d.cid, 0xb422867fu);
  EXPECT_EQ(d.parent_cid, 0xffffffffu);
  EXPECT_EQ(d.create_type, "monolithicSparse");
  EXPECT_TRUE(d.parent_file_name_hint.empty());
  ASSERT_EQ(d.extents.size(), 1u);
  EXPECT_EQ(d.extents[0].access, ExtentAccess::ReadWrite);
  EXPECT_EQ(d.extents[0].sectors, 204800u);
  EXPECT_EQ(d.extents[0].type, ExtentType::Sparse);
  EXPECT_EQ(d.extents[0].filename, "a.vmdk");
  ASSERT_NE(d.ddb_value("ddb.geometry.cylinders"), nullptr);
  EXPECT_EQ(*d.ddb_value("ddb.geometry.cylinders"), "203");
  EXPECT_EQ(*d.ddb_value("ddb.adapterType"), "ide");
  EXPECT_EQ(d.ddb.size(), 6u);
}

TEST(VmdkDescriptor, WriterMatchesQemuAndRoundTrips) {
  DescriptorSettings s;
  s.cid = 0xb422867f;
  s.create_type = "monolithicSparse";
  s.extents.push_back({ExtentAccess::ReadWrite, 204800, ExtentType::Sparse, "SPARSE", "a.vmdk", 0});
  s.cylinders = 203;
  EXPECT_EQ(format_descriptor(s), kQemuSparse);

  s.create_type = "twoGbMaxExtentFlat";
  s.parent_file_name_hint = "base.vmdk";
  s.parent_cid = 0x1234;
  s.extents = {{ExtentAccess::ReadWrite, 4194304, ExtentType::Flat, "FLAT", "x-f001.vmdk", 0},
               {ExtentAccess::ReadOnly, 2048, ExtentType::Flat, "FLAT", "x-f002.vmdk", 7}};
  const std::string text = format_descriptor(s);
  EXPECT_NE(text.find("createType=\"twoGbMaxExtentFlat\"\nparentFileNameHint=\"base.vmdk\"\n# Extent description\n"), std::string::npos);
  EXPECT_NE(text.find("RW 4194304 FLAT \"x-f001.vmdk\" 0\nRDONLY 2048 FLAT \"x-f002.vmdk\" 7\n"), std::string::npos);
  Descriptor d = parse_descriptor(text, "x.vmdk");
  EXPECT_EQ(d.parent_cid, 0x1234u);
  EXPECT_EQ(d.parent_file_name_hint, "base.vmdk");
  ASSERT_EQ(d.extents.size(), 2u);
  EXPECT_EQ(d.extents[1].access, ExtentAccess::ReadOnly);
  EXPECT_EQ(d.extents[1].offset, 7u);
}

TEST(VmdkDescriptor, AcceptsVmwareVariants) {
  const char* text =
      "# Disk DescriptorFile\r\n"
      "version=1\r\n"
      "encoding=\"UTF-8\"\r\n"
      "cid=0000000A\r\n"
      "parentCID=ffffffff\r\n"
      "isNativeSnapshot=\"no\"\r\n"
      "createType=\"vmfs\"\r\n"
      "\r\n"
      "RW 100 VMFS \"disk flat.vmdk\"\r\n"
      "RDONLY 50 ZERO\r\n"
      "RW 8 VMFSSPARSE \"sub/delta.vmdk\"\r\n"
      "ddb.uuid = \"60 00 C2 9b\"\r\n";
  Descriptor d = parse_descriptor(text, "v.vmdk");
  EXPECT_EQ(d.cid, 10u);
  EXPECT_EQ(d.create_type, "vmfs");
  ASSERT_EQ(d.extents.size(), 3u);
  EXPECT_EQ(d.extents[0].filename, "disk flat.vmdk");
  EXPECT_EQ(d.extents[0].type, ExtentType::Vmfs);
  EXPECT_EQ(d.extents[1].type, ExtentType::Zero);
  EXPECT_TRUE(d.extents[1].filename.empty());
  EXPECT_EQ(d.extents[2].type, ExtentType::VmfsSparse);
  EXPECT_EQ(*d.ddb_value("ddb.uuid"), "60 00 C2 9b");
}

TEST(VmdkDescriptor, RefusesMalformedInput) {
  const std::string head = "version=1\ncreateType=\"monolithicFlat\"\n";
  EXPECT_NE(error_of("createType=\"x\"\n").find("no version line"), std::string::npos);
  EXPECT_NE(error_of("version=1\n").find("no createType"), std::string::npos);
  EXPECT_NE(error_of("version=4\ncreateType=\"x\"\n").find("unsupported version"), std::string::npos);
  EXPECT_NE(error_of(head + "CID=zz\n").find("invalid CID"), std::string::npos);
  EXPECT_NE(error_of(head + "CID=123456789\n").find("invalid CID"), std::string::npos);
  EXPECT_NE(error_of(head + "createType=\"open\n").find("unterminated quote"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 10 FLAT \"f.vmdk\"\n").find("need an offset"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 10 SPARSE \"f.vmdk\" 5\n").find("only FLAT"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 10 WEIRD \"f.vmdk\"\n").find("unknown extent type"), std::string::npos);
  EXPECT_NE(error_of(head + "RW -1 FLAT \"f.vmdk\" 0\n").find("bad sector count"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 99999999999999999999999 FLAT \"f.vmdk\" 0\n").find("bad sector count"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 18014398509481985 FLAT \"f.vmdk\" 0\n").find("extent too large"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 18014398509481983 FLAT \"f.vmdk\" 0\nRW 18014398509481983 FLAT \"g.vmdk\" 0\n").find("absurd size"),
            std::string::npos);
  EXPECT_NE(error_of(head + "RW 10 FLAT f.vmdk 0\n").find("must be quoted"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 10 FLAT \"f.vmdk 0\n").find("unterminated quote"), std::string::npos);
  EXPECT_NE(error_of(head + "RW 10 SPARSE\n").find("missing file name"), std::string::npos);
  EXPECT_NE(error_of(head + "this is not a descriptor line\n").find("Invalid line"), std::string::npos);
  EXPECT_NE(error_of(std::string(kMaxDescriptorBytes + 1, '#')).find("too large"), std::string::npos);
  // Errors are one line, even for binary garbage.
  std::string garbage = head + "RW 10 FLAT \"\x01\n\x02\" 0\n";
  std::string message = error_of(garbage);
  EXPECT_FALSE(message.empty());
  EXPECT_EQ(message.find('\n'), std::string::npos);
}

TEST(VmdkDescriptor, ExtentNamesStayInTheFolder) {
  EXPECT_EQ(resolve_extent_path("dir/x.vmdk", "x-flat.vmdk"), "dir/x-flat.vmdk");
  EXPECT_EQ(resolve_extent_path("x.vmdk", "x-flat.vmdk"), "x-flat.vmdk");
  EXPECT_EQ(resolve_extent_path("/a/b/x.vmdk", "sub/y.vmdk"), "/a/b/sub/y.vmdk");
  EXPECT_EQ(resolve_extent_path("x.vmdk", "..data"), "..data");
  for (const char* bad : {"/etc/passwd", "../x.vmdk", "sub/../../x.vmdk", "sub/..", "..", "a/../b"}) {
    try {
      resolve_extent_path("dir/x.vmdk", bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const Error& error) {
      EXPECT_EQ(error.errno_value(), EPERM) << bad;
      EXPECT_NE(std::string(error.what()).find("dir/x.vmdk"), std::string::npos);
    }
  }
  // Allowed only when the user says so explicitly (extent-paths=any).
  EXPECT_EQ(resolve_extent_path("dir/x.vmdk", "/etc/passwd", true), "/etc/passwd");
  EXPECT_EQ(resolve_extent_path("dir/x.vmdk", "../y.vmdk", true), "dir/../y.vmdk");
}

TEST(VmdkDescriptor, ProbesLikeQemu) {
  auto probe = [](std::string_view text) { return looks_like_descriptor(std::as_bytes(std::span(text.data(), text.size()))); };
  EXPECT_TRUE(probe(kQemuSparse));
  EXPECT_TRUE(probe("version=2\r\nfoo"));
  EXPECT_TRUE(probe("\n\n# c\nversion=3\n"));
  EXPECT_FALSE(probe("version=4\n"));
  EXPECT_FALSE(probe("version=1"));
  EXPECT_FALSE(probe("x\nversion=1\n"));
  EXPECT_FALSE(probe("# only a comment"));
  EXPECT_FALSE(probe(""));
}

TEST(VmdkDescriptor, ReplacesCid) {
  std::string text = replace_cid(kQemuSparse, 0xabc);
  EXPECT_EQ(parse_descriptor(text, "a").cid, 0xabcu);
  EXPECT_EQ(text.size(), std::strlen(kQemuSparse) - 5);
  std::string inserted = replace_cid("version=1\ncreateType=\"x\"\n", 0x12);
  EXPECT_EQ(inserted, "version=1\nCID=12\ncreateType=\"x\"\n");
}

}  // namespace
}  // namespace kiln::block::vmdk
