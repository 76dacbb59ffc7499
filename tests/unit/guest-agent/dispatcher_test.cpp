#include <gtest/gtest.h>

#include "kiln/qmp/dispatcher.h"

namespace {

using kiln::qmp::Json;
using kiln::qmp::ParamType;

kiln::qmp::Dispatcher make_dispatcher() {
  kiln::qmp::Dispatcher dispatcher;
  dispatcher.add({"echo", {{"id", ParamType::Int}, {"tag", ParamType::Str, true}}, [](const Json& args) { return args; }});
  dispatcher.add({"quiet", {}, [](const Json&) { return Json::object(); }, false});
  dispatcher.add({"fail", {}, [](const Json&) -> Json { throw kiln::qmp::CommandError("it failed"); }});
  return dispatcher;
}

Json reply(kiln::qmp::Dispatcher& dispatcher, const std::string& text) {
  std::string out = dispatcher.dispatch(text);
  EXPECT_FALSE(out.empty());
  EXPECT_EQ(out.back(), '\n');
  return Json::parse(out);
}

TEST(QmpDispatcher, ReturnsWithQemuSeparatorsAndEchoesId) {
  auto dispatcher = make_dispatcher();
  EXPECT_EQ(dispatcher.dispatch(R"({"execute":"echo","arguments":{"id":5},"id":"x1"})"),
            "{\"return\": {\"id\": 5}, \"id\": \"x1\"}\n");
}

TEST(QmpDispatcher, ErrorsUseQemuTexts) {
  auto dispatcher = make_dispatcher();
  auto desc = [&](const std::string& text) { return reply(dispatcher, text)["error"]["desc"].get<std::string>(); };
  EXPECT_EQ(desc(R"({"execute":"echo"})"), "Parameter 'id' is missing");
  EXPECT_EQ(desc(R"({"execute":"echo","arguments":{"id":"x"}})"), "Invalid parameter type for 'id', expected: integer");
  EXPECT_EQ(desc(R"({"execute":"echo","arguments":{"id":1,"zz":2}})"), "Parameter 'zz' is unexpected");
  EXPECT_EQ(desc(R"({"execute":"echo","arguments":{"id":18446744073709551615}})"),
            "Invalid parameter type for 'id', expected: integer");
  EXPECT_EQ(desc("[1]"), "QMP input must be a JSON object");
  EXPECT_EQ(desc(R"({"execute":5})"), "QMP input member 'execute' must be a string");
  EXPECT_EQ(desc(R"({"foo":1})"), "QMP input member 'foo' is unexpected");
  EXPECT_EQ(desc(R"({"arguments":{}})"), "QMP input lacks member 'execute'");
  EXPECT_EQ(desc(R"({"execute":"echo","arguments":[]})"), "QMP input member 'arguments' must be an object");
  EXPECT_EQ(desc(R"({"execute":"fail"})"), "it failed");
  EXPECT_EQ(desc("{\"execute\": bad}").rfind("JSON parse error, ", 0), 0u);
  Json missing = reply(dispatcher, R"({"execute":"nope","id":3})");
  EXPECT_EQ(missing["error"]["class"], "CommandNotFound");
  EXPECT_EQ(missing["error"]["desc"], "The command nope has not been found");
  EXPECT_EQ(missing["id"], 3);
}

TEST(QmpDispatcher, NoSuccessResponseMeansNoReply) {
  auto dispatcher = make_dispatcher();
  EXPECT_EQ(dispatcher.dispatch(R"({"execute":"quiet"})"), "");
  EXPECT_FALSE(dispatcher.dispatch(R"({"execute":"quiet","arguments":{"x":1}})").empty());
}

TEST(QmpDispatcher, DisabledCommandsAndGate) {
  auto dispatcher = make_dispatcher();
  dispatcher.disable("echo", "GenericError", "The command echo has been disabled for this instance");
  Json error = reply(dispatcher, R"({"execute":"echo","arguments":{"id":1}})");
  EXPECT_EQ(error["error"]["desc"], "The command echo has been disabled for this instance");
  dispatcher.enable("echo");
  dispatcher.set_gate([](std::string_view name) -> std::optional<kiln::qmp::CommandError> {
    if (name == "echo") return kiln::qmp::CommandError("gated");
    return std::nullopt;
  });
  EXPECT_EQ(reply(dispatcher, R"({"execute":"echo","arguments":{"id":1}})")["error"]["desc"], "gated");
}

TEST(QmpProtocol, EventsAndGreeting) {
  EXPECT_EQ(kiln::qmp::format_event("SHUTDOWN", Json{{"guest", true}}, 10, 20),
            "{\"data\": {\"guest\": true}, \"event\": \"SHUTDOWN\", \"timestamp\": {\"microseconds\": 20, \"seconds\": 10}}\n");
  EXPECT_EQ(kiln::qmp::format_greeting(Json{{"qemu", {{"major", 7}}}}, Json::array()),
            "{\"QMP\": {\"capabilities\": [], \"version\": {\"qemu\": {\"major\": 7}}}}\n");
  // Invalid UTF-8 from guest data is replaced, not thrown on.
  EXPECT_EQ(kiln::qmp::to_qmp_text(Json("a\xff")), "\"a\\ufffd\"");
}

}  // namespace
