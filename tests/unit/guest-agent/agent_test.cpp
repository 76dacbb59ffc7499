// The agent in-process: the full conformance script against the schema, and
// the error paths of individual commands.
#include <gtest/gtest.h>

#include <filesystem>

#include "conformance_script.h"
#include "kiln/ga/agent.h"

namespace {

using nlohmann::json;

kiln::test::AgentCall in_process(kiln::ga::Agent& agent) {
  return [&agent](const json& request, bool expect_reply) -> std::optional<json> {
    std::string out = agent.handle(request.dump());
    if (out.empty()) return std::nullopt;
    EXPECT_TRUE(expect_reply) << "unexpected reply " << out;
    if (request["execute"] == "guest-sync-delimited") {
      EXPECT_EQ(out.front(), '\xff');
      out.erase(0, 1);
    }
    return json::parse(out);
  };
}

kiln::ga::AgentConfig sandbox_config(const kiln::test::Sandbox& box) {
  kiln::ga::AgentConfig config;
  config.paths.sysfs_root = box.sysfs_root;
  config.paths.helper_dir = box.helper_dir;
  config.paths.clock_file = box.clock_file;
  config.paths.passwd_file = box.passwd_file;
  config.paths.mountinfo = box.mountinfo;
  return config;
}

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = kiln::test::make_temp_dir();
    box_ = kiln::test::make_sandbox(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  json call(kiln::ga::Agent& agent, const json& request) { return json::parse(agent.handle(request.dump())); }
  std::string error_of(kiln::ga::Agent& agent, const json& request) {
    json reply = call(agent, request);
    EXPECT_TRUE(reply.contains("error")) << reply.dump();
    return reply["error"].value("desc", "");
  }

  std::string dir_;
  kiln::test::Sandbox box_;
};

TEST_F(AgentTest, EveryCommandConformsToTheSchema) {
  auto schema = kiln::test::QapiSchema::load(KILN_QGA_SCHEMA);
  kiln::ga::Agent real(kiln::ga::AgentConfig{});
  kiln::ga::Agent sandboxed(sandbox_config(box_));
  kiln::test::ScriptSetup setup{dir_, "kilntest", box_.clock_file, box_.helper_log, box_.ssh_keys_file};
  auto exercised = kiln::test::run_conformance_script(schema, in_process(real), in_process(sandboxed), setup);
  EXPECT_GE(exercised.size(), 40u);
}

TEST_F(AgentTest, FileHandleErrors) {
  kiln::ga::Agent agent(sandbox_config(box_));
  EXPECT_EQ(error_of(agent, {{"execute", "guest-file-close"}, {"arguments", {{"handle", 999}}}}), "handle '999' has not been found");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-file-open"}, {"arguments", {{"path", dir_ + "/x"}, {"mode", "zz"}}}}),
            "invalid file open mode 'zz'");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-file-open"}, {"arguments", {{"path", "/nonexistent/x"}}}}),
            "failed to open file '/nonexistent/x' (mode: 'r'): No such file or directory");
  json handle = call(agent, {{"execute", "guest-file-open"}, {"arguments", {{"path", dir_ + "/x"}, {"mode", "w"}}}})["return"];
  EXPECT_EQ(handle, 1000);
  EXPECT_EQ(error_of(agent, {{"execute", "guest-file-write"}, {"arguments", {{"handle", handle}, {"buf-b64", "!!"}}}}),
            "Guest agent command failed, error was 'Invalid base64 data'");
}

TEST_F(AgentTest, HandleCounterPersistsInStateDir) {
  kiln::ga::AgentConfig config = sandbox_config(box_);
  config.state_dir = dir_;
  json request = {{"execute", "guest-file-open"}, {"arguments", {{"path", dir_ + "/y"}, {"mode", "w"}}}};
  {
    kiln::ga::Agent agent(config);
    EXPECT_EQ(call(agent, request)["return"], 1000);
    EXPECT_EQ(call(agent, request)["return"], 1001);
  }
  kiln::ga::Agent restarted(config);
  EXPECT_EQ(call(restarted, request)["return"], 1002);
}

TEST_F(AgentTest, BlockedAndAllowedCommands) {
  kiln::ga::AgentConfig config = sandbox_config(box_);
  config.block_rpcs = {"guest-ping", "guest-sync"};
  kiln::ga::Agent blocked(config);
  json reply = call(blocked, {{"execute", "guest-ping"}});
  EXPECT_EQ(reply["error"]["class"], "GenericError");
  EXPECT_EQ(reply["error"]["desc"], "The command guest-ping has been disabled for this instance");
  EXPECT_EQ(call(blocked, {{"execute", "guest-sync"}, {"arguments", {{"id", 1}}}})["return"], 1);  // never blocked

  config.block_rpcs.clear();
  config.allow_rpcs = {"guest-info"};
  kiln::ga::Agent allowed(config);
  EXPECT_TRUE(call(allowed, {{"execute", "guest-ping"}}).contains("error"));
  json info = call(allowed, {{"execute", "guest-info"}})["return"];
  for (const auto& command : info["supported_commands"]) {
    bool expected = command["name"] == "guest-info" || command["name"] == "guest-sync" ||
                    command["name"] == "guest-sync-delimited";
    EXPECT_EQ(command["enabled"], expected) << command.dump();
  }
}

TEST_F(AgentTest, FrozenStateBlocksWritingCommands) {
  kiln::ga::Agent agent(sandbox_config(box_));
  EXPECT_EQ(call(agent, {{"execute", "guest-fsfreeze-freeze"}})["return"], 0);
  EXPECT_EQ(error_of(agent, {{"execute", "guest-file-open"}, {"arguments", {{"path", dir_ + "/z"}, {"mode", "w"}}}}),
            "Command guest-file-open has been disabled: the agent is in frozen state");
  EXPECT_EQ(call(agent, {{"execute", "guest-ping"}})["return"], json::object());
  EXPECT_EQ(call(agent, {{"execute", "guest-fsfreeze-thaw"}})["return"], 0);
  EXPECT_EQ(call(agent, {{"execute", "guest-file-open"}, {"arguments", {{"path", dir_ + "/z"}, {"mode", "w"}}}})["return"], 1000);
}

TEST_F(AgentTest, FreezeHookRunsAroundFreezeAndThaw) {
  kiln::ga::AgentConfig config = sandbox_config(box_);
  config.fsfreeze_hook = dir_ + "/hook";
  std::string log = dir_ + "/hook.log";
  {
    std::FILE* hook = std::fopen(config.fsfreeze_hook.c_str(), "w");
    std::fprintf(hook, "#!/bin/sh\necho \"$1\" >> '%s'\n", log.c_str());
    std::fclose(hook);
  }
  std::filesystem::permissions(config.fsfreeze_hook, std::filesystem::perms::owner_all);
  kiln::ga::Agent agent(config);
  call(agent, {{"execute", "guest-fsfreeze-freeze"}});
  call(agent, {{"execute", "guest-fsfreeze-thaw"}});
  EXPECT_EQ(kiln::test::read_file(log), "freeze\nthaw\n");
}

TEST_F(AgentTest, SystemChangingCommandErrors) {
  kiln::ga::Agent agent(sandbox_config(box_));
  EXPECT_EQ(error_of(agent, {{"execute", "guest-set-vcpus"}, {"arguments", {{"vcpus", {{{"logical-id", 0}, {"online", false}}}}}}}),
            "logical processor #0 can't be offlined");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-set-vcpus"}, {"arguments", {{"vcpus", {{{"logical-id", 0}}}}}}}),
            "Parameter 'vcpus[0].online' is missing");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-shutdown"}, {"arguments", {{"mode", "bogus"}}}}),
            "mode is invalid (valid values are: halt|powerdown|reboot");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-set-time"}, {"arguments", {{"time", -5}}}}),
            "Failed to set time to guest: Invalid argument");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-ssh-get-authorized-keys"}, {"arguments", {{"username", "nosuchuser"}}}}),
            "failed to lookup user 'nosuchuser'");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-exec-status"}, {"arguments", {{"pid", 1}}}}), "Invalid parameter 'pid'");
  EXPECT_EQ(error_of(agent, {{"execute", "guest-fsfreeze-freeze-list"}, {"arguments", {{"mountpoints", {"/nope"}}}}}),
            "mount point '/nope' not found");
  {
    std::FILE* state = std::fopen((box_.sysfs_root + "/power/state").c_str(), "w");
    std::fputs("freeze\n", state);
    std::fclose(state);
  }
  EXPECT_EQ(error_of(agent, {{"execute", "guest-suspend-disk"}}), "the requested suspend mode is not supported by the guest");
  EXPECT_EQ(kiln::test::read_file(box_.helper_log), "");  // nothing reached the helpers
}

}  // namespace
