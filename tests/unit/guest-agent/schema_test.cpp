// The QAPI schema reader and checker themselves: they must reject wrong shapes,
// or the conformance tests could not fail.
#include <gtest/gtest.h>

#include "qapi_schema.h"

namespace {

using nlohmann::json;

class SchemaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { schema_ = new kiln::test::QapiSchema(kiln::test::QapiSchema::load(KILN_QGA_SCHEMA)); }
  static void TearDownTestSuite() { delete schema_; }
  static kiln::test::QapiSchema* schema_;
};
kiln::test::QapiSchema* SchemaTest::schema_ = nullptr;

TEST_F(SchemaTest, ReadsEveryCommand) {
  auto names = schema_->command_names();
  EXPECT_GE(names.size(), 40u);
  EXPECT_TRUE(schema_->has_command("guest-sync-delimited"));
  EXPECT_TRUE(schema_->has_command("guest-get-devices"));
  EXPECT_TRUE(schema_->command("guest-shutdown").contains("success-response"));
}

TEST_F(SchemaTest, AcceptsCorrectShapes) {
  EXPECT_TRUE(schema_->check_return("guest-ping", json::object()).empty());
  EXPECT_TRUE(schema_->check_return("guest-sync", 5).empty());
  EXPECT_TRUE(schema_->check_return("guest-fsfreeze-status", "thawed").empty());
  EXPECT_TRUE(schema_->check_return("guest-get-vcpus", json::parse(R"([{"logical-id":0,"online":true}])")).empty());
  EXPECT_TRUE(schema_->check_return("guest-get-devices",
                                    json::parse(R"([{"driver-name":"x","id":{"type":"pci","vendor-id":1,"device-id":2}}])"))
                  .empty());
}

TEST_F(SchemaTest, RejectsWrongShapes) {
  EXPECT_FALSE(schema_->check_return("guest-ping", json::parse(R"({"x":1})")).empty());
  EXPECT_FALSE(schema_->check_return("guest-sync", "5").empty());
  EXPECT_FALSE(schema_->check_return("guest-fsfreeze-status", "melted").empty());
  EXPECT_FALSE(schema_->check_return("guest-get-vcpus", json::parse(R"([{"logical-id":0}])")).empty());
  EXPECT_FALSE(schema_->check_return("guest-get-osinfo", json::parse(R"({"bogus":"x"})")).empty());
  EXPECT_FALSE(schema_->check_return("guest-get-load", json::parse(R"({"load1m":"high","load5m":1,"load15m":1})")).empty());
  EXPECT_FALSE(schema_->check_return("guest-get-devices",
                                     json::parse(R"([{"driver-name":"x","id":{"type":"pci","vendor-id":70000,"device-id":2}}])"))
                   .empty());
  EXPECT_FALSE(schema_->check_return("guest-network-get-interfaces",
                                     json::parse(R"([{"name":"lo","statistics":{"rx-bytes":-1}}])"))
                   .empty());
}

}  // namespace
