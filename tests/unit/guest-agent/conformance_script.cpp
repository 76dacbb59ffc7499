#include "conformance_script.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

namespace kiln::test {

using nlohmann::json;

const std::set<std::string>& unimplemented_commands() {
  static const std::set<std::string> names = {};
  return names;
}

std::string make_temp_dir() {
  std::string pattern = (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") + std::string("/kiln-ga-test.XXXXXX");
  if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
  return pattern;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

namespace {

void write_file(const std::string& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

void make_dirs(const std::string& path) {
  std::string partial;
  std::stringstream parts(path);
  std::string part;
  while (std::getline(parts, part, '/')) {
    partial += part + "/";
    ::mkdir(partial.c_str(), 0755);
  }
}

}  // namespace

Sandbox make_sandbox(const std::string& dir) {
  Sandbox box;
  box.sysfs_root = dir + "/sys";
  box.helper_dir = dir + "/bin";
  box.clock_file = dir + "/clock";
  box.passwd_file = dir + "/passwd";
  box.mountinfo = dir + "/mountinfo";
  box.helper_log = dir + "/helpers.log";
  box.home = dir + "/home";
  box.ssh_keys_file = box.home + "/.ssh/authorized_keys";
  make_dirs(box.helper_dir);
  make_dirs(box.home);
  for (int cpu = 0; cpu < 3; ++cpu) make_dirs(box.sysfs_root + "/devices/system/cpu/cpu" + std::to_string(cpu));
  write_file(box.sysfs_root + "/devices/system/cpu/cpu1/online", "1\n");
  write_file(box.sysfs_root + "/devices/system/cpu/cpu2/online", "0\n");
  for (int block = 0; block < 2; ++block) {
    std::string block_dir = box.sysfs_root + "/devices/system/memory/memory" + std::to_string(block);
    make_dirs(block_dir);
    write_file(block_dir + "/state", block == 0 ? "online\n" : "offline\n");
    write_file(block_dir + "/removable", "1\n");
  }
  write_file(box.sysfs_root + "/devices/system/memory/block_size_bytes", "8000000\n");
  // Read-only parts of the real sysfs for disks, devices and file systems.
  for (const char* linked : {"block", "bus", "dev"}) {
    ::symlink((std::string("/sys/") + linked).c_str(), (box.sysfs_root + "/" + linked).c_str());
  }
  // Each helper appends its name, arguments and stdin to the log.
  make_dirs(box.sysfs_root + "/power");
  write_file(box.sysfs_root + "/power/state", "freeze mem disk\n");
  for (const char* helper : {"shutdown", "hwclock", "chpasswd", "systemctl"}) {
    write_file(box.helper_dir + "/" + helper,
               "#!/bin/sh\nprintf '%s' \"$(basename \"$0\") $*\" >> '" + box.helper_log +
                   "'\nif [ \"$(basename \"$0\")\" = chpasswd ]; then printf ' stdin=' >> '" + box.helper_log +
                   "'; cat >> '" + box.helper_log + "'; else echo >> '" + box.helper_log + "'; fi\n",
               0755);
  }
  write_file(box.passwd_file, "kilntest:x:" + std::to_string(::getuid()) + ":" + std::to_string(::getgid()) +
                                  ":Kiln test:" + box.home + ":/bin/sh\n");
  write_file(box.mountinfo, "");
  return box;
}

namespace {

class Runner {
 public:
  Runner(const QapiSchema& schema, std::set<std::string>& exercised) : schema_(schema), exercised_(exercised) {}

  // Runs a command, checks the reply shape, returns the "return" value.
  json run(const AgentCall& call, const std::string& command, const json& arguments = json::object()) {
    json request = {{"execute", command}};
    if (!arguments.empty()) request["arguments"] = arguments;
    exercised_.insert(command);
    std::optional<json> reply = call(request, true);
    if (!reply) {
      ADD_FAILURE() << command << ": no reply";
      return nullptr;
    }
    if (!reply->contains("return")) {
      ADD_FAILURE() << command << " " << arguments.dump() << ": " << reply->dump();
      return nullptr;
    }
    EXPECT_EQ(reply->size(), 1u) << command << ": unexpected members in " << reply->dump();
    if (schema_.has_command(command)) {
      for (const auto& problem : schema_.check_return(command, (*reply)["return"])) ADD_FAILURE() << problem;
    }
    return (*reply)["return"];
  }

 private:
  const QapiSchema& schema_;
  std::set<std::string>& exercised_;
};

}  // namespace

std::set<std::string> run_conformance_script(const QapiSchema& schema, const AgentCall& real, const AgentCall& sandboxed,
                                             const ScriptSetup& setup) {
  std::set<std::string> exercised;
  Runner runner(schema, exercised);

  EXPECT_EQ(runner.run(real, "guest-sync", {{"id", 1234567}}), 1234567);
  EXPECT_EQ(runner.run(real, "guest-sync-delimited", {{"id", 42}}), 42);
  EXPECT_EQ(runner.run(real, "guest-ping"), json::object());
  json info = runner.run(real, "guest-info");

  // Queries of the real system.
  for (const char* query : {"guest-get-osinfo", "guest-get-host-name", "guest-get-timezone", "guest-get-users",
                            "guest-get-vcpus", "guest-get-load", "guest-get-memory-blocks", "guest-get-memory-block-info",
                            "guest-network-get-interfaces", "guest-get-fsinfo", "guest-get-disks", "guest-get-devices",
                            "guest-get-cpustats", "guest-get-diskstats", "guest-fsfreeze-status",
                            "guest-network-get-route"}) {
    runner.run(real, query);
  }
  json time = runner.run(real, "guest-get-time");
  EXPECT_GT(time.get<std::int64_t>(), 1'600'000'000'000'000'000);

  // Files.
  std::string path = setup.scratch_dir + "/file.txt";
  json handle = runner.run(real, "guest-file-open", {{"path", path}, {"mode", "w+"}});
  json written = runner.run(real, "guest-file-write", {{"handle", handle}, {"buf-b64", "aGVsbG8gd29ybGQ="}});
  EXPECT_EQ(written["count"], 11);
  runner.run(real, "guest-file-flush", {{"handle", handle}});
  json seek = runner.run(real, "guest-file-seek", {{"handle", handle}, {"offset", 6}, {"whence", "set"}});
  EXPECT_EQ(seek["position"], 6);
  json read = runner.run(real, "guest-file-read", {{"handle", handle}, {"count", 100}});
  EXPECT_EQ(read["buf-b64"], "d29ybGQ=");
  EXPECT_EQ(read["eof"], true);
  seek = runner.run(real, "guest-file-seek", {{"handle", handle}, {"offset", 0}, {"whence", 0}});
  EXPECT_EQ(seek["position"], 0);
  runner.run(real, "guest-file-close", {{"handle", handle}});
  EXPECT_EQ(read_file(path), "hello world");

  // Exec with input, environment and captured output.
  json exec = runner.run(real, "guest-exec",
                         {{"path", "/bin/sh"},
                          {"arg", {"-c", "cat; echo \"$KILN_VAR\"; echo oops >&2; exit 7"}},
                          {"env", {"KILN_VAR=from-env", "PATH=/usr/bin:/bin"}},
                          {"input-data", "aW5wdXQK"},
                          {"capture-output", true}});
  json status;
  for (int attempt = 0; attempt < 500; ++attempt) {
    status = runner.run(real, "guest-exec-status", {{"pid", exec["pid"]}});
    if (status.value("exited", true)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status["exited"], true);
  EXPECT_EQ(status["exitcode"], 7);
  EXPECT_EQ(status["out-data"], "aW5wdXQKZnJvbS1lbnYK");  // "input\nfrom-env\n"
  EXPECT_EQ(status["err-data"], "b29wcwo=");              // "oops\n"
  exec = runner.run(real, "guest-exec", {{"path", "sh"}, {"arg", {"-c", "kill -TERM $$"}}, {"capture-output", "merged"}});
  for (int attempt = 0; attempt < 500; ++attempt) {
    status = runner.run(real, "guest-exec-status", {{"pid", exec["pid"]}});
    if (status.value("exited", true)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(status["signal"], 15);

  // Commands that change the machine, against the sandbox.
  runner.run(sandboxed, "guest-set-time", {{"time", 1'700'000'000'123'456'789}});
  EXPECT_EQ(read_file(setup.clock_file), "1700000000123456789\n");
  runner.run(sandboxed, "guest-set-time");
  json vcpus = runner.run(sandboxed, "guest-get-vcpus");
  EXPECT_EQ(vcpus.size(), 3u);
  EXPECT_EQ(runner.run(sandboxed, "guest-set-vcpus",
                       {{"vcpus", {{{"logical-id", 2}, {"online", true}}, {{"logical-id", 1}, {"online", false}}}}}),
            2);
  json blocks = runner.run(sandboxed, "guest-set-memory-blocks", {{"mem-blks", {{{"phys-index", 1}, {"online", true}}, {{"phys-index", 9}, {"online", true}}}}});
  EXPECT_EQ(blocks[0]["response"], "success");
  EXPECT_EQ(blocks[1]["response"], "not-found");
  EXPECT_EQ(runner.run(sandboxed, "guest-get-memory-block-info")["size"], 0x8000000);
  runner.run(sandboxed, "guest-set-user-password", {{"username", "kilntest"}, {"password", "c2VjcmV0"}, {"crypted", false}});
  runner.run(sandboxed, "guest-fstrim", {{"minimum", 0}});
  EXPECT_EQ(runner.run(sandboxed, "guest-fsfreeze-freeze"), 0);
  EXPECT_EQ(runner.run(sandboxed, "guest-fsfreeze-status"), "frozen");
  EXPECT_EQ(runner.run(sandboxed, "guest-fsfreeze-thaw"), 0);
  EXPECT_EQ(runner.run(sandboxed, "guest-fsfreeze-freeze-list", {{"mountpoints", json::array()}}), 0);
  runner.run(sandboxed, "guest-fsfreeze-thaw");

  runner.run(sandboxed, "guest-ssh-add-authorized-keys", {{"username", "kilntest"}, {"keys", {"ssh-ed25519 AAAA one", "ssh-rsa BBBB two"}}});
  json keys = runner.run(sandboxed, "guest-ssh-get-authorized-keys", {{"username", "kilntest"}});
  EXPECT_EQ(keys["keys"], json({"ssh-ed25519 AAAA one", "ssh-rsa BBBB two"}));
  runner.run(sandboxed, "guest-ssh-remove-authorized-keys", {{"username", "kilntest"}, {"keys", {"ssh-ed25519 AAAA one"}}});
  EXPECT_EQ(read_file(setup.ssh_keys_file), "ssh-rsa BBBB two\n");

  // guest-suspend-* and guest-shutdown have no success response: no reply at all.
  for (const char* mode : {"ram", "disk", "hybrid"}) {
    std::string command = std::string("guest-suspend-") + mode;
    exercised.insert(command);
    EXPECT_EQ(sandboxed({{"execute", command}}, false), std::nullopt) << command;
  }
  exercised.insert("guest-shutdown");
  EXPECT_EQ(sandboxed({{"execute", "guest-shutdown"}, {"arguments", {{"mode", "reboot"}}}}, false), std::nullopt);
  EXPECT_EQ(read_file(setup.helper_log),
            "hwclock -w\nhwclock -s\nchpasswd  stdin=kilntest:secret\nsystemctl suspend\nsystemctl hibernate\n"
            "systemctl hybrid-sleep\nshutdown -r +0 hypervisor initiated shutdown\n");

  // Every command the agent reports must have been exercised.
  for (const auto& command : info["supported_commands"]) {
    std::string name = command["name"].get<std::string>();
    if (command["enabled"].get<bool>()) {
      EXPECT_TRUE(exercised.count(name)) << name << " is not covered by the script";
    }
  }
  // And every schema command must be implemented, apart from the known gaps.
  std::set<std::string> reported;
  for (const auto& command : info["supported_commands"]) reported.insert(command["name"].get<std::string>());
  for (const auto& name : schema.command_names()) {
    if (!unimplemented_commands().count(name)) {
      EXPECT_TRUE(reported.count(name)) << name << " is missing from guest-info";
    }
  }
  return exercised;
}

}  // namespace kiln::test
