// The kiln-ga binary on its transports: a unix socket and a pty (isa-serial
// mode), driven with the conformance script, broken input and reconnections.
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <termios.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <sstream>
#include <thread>

#include "conformance_script.h"
#include "kiln/qmp/stream.h"

namespace {

using nlohmann::json;

class AgentProcess {
 public:
  explicit AgentProcess(std::vector<std::string> args) {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> argv;
      static std::string binary = KILN_GA_BINARY;
      argv.push_back(binary.data());
      for (auto& arg : args) argv.push_back(arg.data());
      argv.push_back(nullptr);
      ::execv(binary.c_str(), argv.data());
      ::_exit(127);
    }
  }
  ~AgentProcess() {
    if (running()) ::kill(pid_, SIGTERM);
    wait();
  }
  bool running() {
    if (exited_) return false;
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exited_ = true;
      status_ = status;
    }
    return !exited_;
  }
  int wait() {
    if (!exited_) {
      ::waitpid(pid_, &status_, 0);
      exited_ = true;
    }
    return status_;
  }
  void terminate() { ::kill(pid_, SIGTERM); }
  // User + system CPU time in clock ticks, from /proc/PID/stat.
  long cpu_ticks() const {
    std::string stat = kiln::test::read_file("/proc/" + std::to_string(pid_) + "/stat");
    auto close = stat.rfind(')');
    if (close == std::string::npos) return -1;
    std::istringstream fields(stat.substr(close + 2));
    std::string field;
    long utime = 0, stime = 0;
    for (int index = 3; fields >> field; ++index) {
      if (index == 14) utime = std::stol(field);
      if (index == 15) {
        stime = std::stol(field);
        break;
      }
    }
    return utime + stime;
  }

 private:
  pid_t pid_;
  bool exited_ = false;
  int status_ = 0;
};

// One host-side connection: raw bytes out, parsed replies in.
class Channel : kiln::qmp::StreamSink {
 public:
  explicit Channel(int fd) : fd_(fd) {}
  ~Channel() { if (fd_ >= 0) ::close(fd_); }

  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
        pollfd pfd{fd_, POLLOUT, 0};
        ::poll(&pfd, 1, 1000);
        continue;
      }
      ASSERT_GT(n, 0) << std::strerror(errno);
      bytes.remove_prefix(size_t(n));
    }
  }
  std::optional<json> reply(int timeout_ms = 5000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    char buffer[65536];
    while (replies_.empty()) {
      int left = int(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
      if (left <= 0) return std::nullopt;
      pollfd pfd{fd_, POLLIN, 0};
      if (::poll(&pfd, 1, left) <= 0) continue;
      ssize_t n = ::read(fd_, buffer, sizeof buffer);
      if (n <= 0) return std::nullopt;
      saw_resync_byte_ = saw_resync_byte_ || std::memchr(buffer, 0xff, size_t(n)) != nullptr;
      splitter_.feed(std::string_view(buffer, size_t(n)), *this);
    }
    json value = replies_.front();
    replies_.pop_front();
    return value;
  }
  json call(const json& request) {
    send(request.dump() + "\n");
    auto value = reply();
    EXPECT_TRUE(value) << "no reply to " << request.dump();
    return value.value_or(json());
  }
  bool saw_resync_byte() const { return saw_resync_byte_; }

  kiln::test::AgentCall as_call() {
    return [this](const json& request, bool expect_reply) -> std::optional<json> {
      send(request.dump());
      if (expect_reply) return reply();
      // No reply expected: the next reply must belong to a following sync.
      send(R"({"execute":"guest-sync","arguments":{"id":99}})");
      auto next = reply();
      EXPECT_TRUE(next && (*next)["return"] == 99) << (next ? next->dump() : "nothing");
      return std::nullopt;
    };
  }

 private:
  void on_message(std::string_view text) override { replies_.push_back(json::parse(text)); }
  void on_stream_error(std::string_view) override { ADD_FAILURE() << "agent sent malformed JSON"; }

  int fd_;
  kiln::qmp::JsonStreamSplitter splitter_;
  std::deque<json> replies_;
  bool saw_resync_byte_ = false;
};

int connect_unix(const std::string& path) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof address.sun_path - 1);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) return fd;
    ::close(fd);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = kiln::test::make_temp_dir();
    box_ = kiln::test::make_sandbox(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::vector<std::string> sandbox_args(const std::string& method, const std::string& path) {
    return {"-m", method, "-p", path, "-t", dir_, "-c", "/dev/null",
            "--sysfs-root", box_.sysfs_root, "--helper-dir", box_.helper_dir, "--clock-file", box_.clock_file,
            "--passwd-file", box_.passwd_file, "--mountinfo", box_.mountinfo};
  }
  void run_script(Channel& channel) {
    auto schema = kiln::test::QapiSchema::load(KILN_QGA_SCHEMA);
    kiln::test::ScriptSetup setup{dir_, "kilntest", box_.clock_file, box_.helper_log, box_.ssh_keys_file};
    kiln::test::run_conformance_script(schema, channel.as_call(), channel.as_call(), setup);
  }

  std::string dir_;
  kiln::test::Sandbox box_;
};

TEST_F(ProcessTest, UnixSocketRunsEveryCommand) {
  std::string socket = dir_ + "/qga.sock";
  AgentProcess agent(sandbox_args("unix-listen", socket));
  Channel channel(connect_unix(socket));
  run_script(channel);
  EXPECT_TRUE(channel.saw_resync_byte());
}

TEST_F(ProcessTest, PtyRunsEveryCommand) {
  int master, slave;
  char name[256];
  ASSERT_EQ(::openpty(&master, &slave, name, nullptr, nullptr), 0);
  // The agent opens the slave by name, like /dev/ttyS0. Keeping our slave fd
  // open avoids EIO on the master before it does; raw mode stops echo meanwhile.
  termios tio;
  ASSERT_EQ(::tcgetattr(slave, &tio), 0);
  ::cfmakeraw(&tio);
  ASSERT_EQ(::tcsetattr(slave, TCSANOW, &tio), 0);
  AgentProcess agent(sandbox_args("isa-serial", name));
  Channel channel(master);
  // The agent may not have opened the tty yet: resynchronise until it answers.
  std::optional<json> first;
  for (int attempt = 0; attempt < 100 && !first; ++attempt) {
    channel.send("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1}}");
    first = channel.reply(100);
  }
  ASSERT_TRUE(first);
  while (channel.reply(200)) {
  }
  run_script(channel);
  ::close(slave);
}

TEST_F(ProcessTest, SerialHangUpNeitherExitsNorSpins) {
  int master, slave;
  char name[256];
  ASSERT_EQ(::openpty(&master, &slave, name, nullptr, nullptr), 0);
  termios tio;
  ASSERT_EQ(::tcgetattr(slave, &tio), 0);
  ::cfmakeraw(&tio);
  ASSERT_EQ(::tcsetattr(slave, TCSANOW, &tio), 0);
  AgentProcess agent(sandbox_args("isa-serial", name));
  {
    Channel channel(master);
    std::optional<json> first;
    for (int attempt = 0; attempt < 100 && !first; ++attempt) {
      channel.send("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":1}}");
      first = channel.reply(100);
    }
    ASSERT_TRUE(first);
    ::close(slave);
  }  // the host side goes away: the agent sees EIO / hang-up
  long before = agent.cpu_ticks();
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));
  EXPECT_TRUE(agent.running());
  EXPECT_LT(agent.cpu_ticks() - before, 20) << "the agent busy-loops on a hung-up channel";
}

TEST_F(ProcessTest, BrokenInputAndRecovery) {
  std::string socket = dir_ + "/qga.sock";
  AgentProcess agent(sandbox_args("unix-listen", socket));
  Channel channel(connect_unix(socket));
  // Bad JSON gets a GenericError and the agent carries on.
  json error = channel.call(json::parse(R"({"execute":"guest-ping"})"));  // warm-up
  channel.send("{\"execute\": bad}\n");
  error = channel.reply().value_or(json());
  EXPECT_EQ(error["error"]["class"], "GenericError");
  EXPECT_EQ(error["error"]["desc"].get<std::string>().rfind("JSON parse error", 0), 0u);
  // A message split over several writes.
  channel.send("{\"exec");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  channel.send("ute\":\"guest-ping\"");
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  channel.send("}");
  EXPECT_EQ(channel.reply().value_or(json())["return"], json::object());
  // Garbage left half-way, then 0xFF + guest-sync-delimited resynchronises.
  channel.send("{\"execute\":\"guest-ping\", \"arguments\": {\"junk\": [1, 2, {");
  channel.send("\xff{\"execute\":\"guest-sync-delimited\",\"arguments\":{\"id\":77}}");
  json reply;
  do {
    reply = channel.reply().value_or(json());
  } while (reply.contains("error"));  // the dropped partial input may be reported
  EXPECT_EQ(reply["return"], 77);
  EXPECT_EQ(channel.call({{"execute", "guest-ping"}})["return"], json::object());
  // An oversized message (over 64 MiB) is refused with one error, then normal service.
  std::string big = "{\"execute\":\"guest-ping\",\"arguments\":{\"x\":\"" + std::string(65u << 20, 'a') + "\"}}";
  channel.send(big);
  error = channel.reply(20000).value_or(json());
  EXPECT_EQ(error["error"]["desc"], "JSON parse error, message too large");
  EXPECT_EQ(channel.call({{"execute", "guest-sync"}, {"arguments", {{"id", 5}}}})["return"], 5);
}

TEST_F(ProcessTest, SeveralClientsInTurnAndReconnects) {
  std::string socket = dir_ + "/qga.sock";
  AgentProcess agent(sandbox_args("unix-listen", socket));
  json handle;
  for (int client = 0; client < 4; ++client) {
    Channel channel(connect_unix(socket));
    if (client == 1) channel.send("{\"execute\":\"guest-pi");  // leaves half a message behind
    if (client == 1) continue;
    EXPECT_EQ(channel.call({{"execute", "guest-sync"}, {"arguments", {{"id", client}}}})["return"], client);
    // State (open file handles) survives reconnections, as with qemu-ga.
    if (client == 0) {
      handle = channel.call({{"execute", "guest-file-open"}, {"arguments", {{"path", dir_ + "/keep"}, {"mode", "w"}}}})["return"];
    }
    if (client == 3) {
      EXPECT_EQ(channel.call({{"execute", "guest-file-close"}, {"arguments", {{"handle", handle}}}})["return"], json::object());
    }
  }
  EXPECT_TRUE(agent.running());
  agent.terminate();
  int status = agent.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(std::filesystem::exists(socket));
}

TEST_F(ProcessTest, ConfigFileAndDump) {
  std::string config = dir_ + "/qemu-ga.conf";
  std::FILE* file = std::fopen(config.c_str(), "w");
  std::fprintf(file, "# comment\n[general]\nmethod=unix-listen\npath=%s/c.sock\nblock-rpcs=guest-ping;guest-get-time\nverbose=true\n", dir_.c_str());
  std::fclose(file);
  std::string out_path = dir_ + "/dump";
  std::string command = std::string(KILN_GA_BINARY) + " -c " + config + " -D -t /st > " + out_path;
  ASSERT_EQ(std::system(command.c_str()), 0);
  EXPECT_EQ(kiln::test::read_file(out_path),
            "[general]\ndaemon=false\nmethod=unix-listen\npath=" + dir_ +
                "/c.sock\npidfile=/var/run/kiln-ga.pid\nstatedir=/st\nverbose=true\nretry-path=false\n"
                "block-rpcs=guest-ping,guest-get-time\n");
  AgentProcess agent({"-c", config, "-t", dir_});
  Channel channel(connect_unix(dir_ + "/c.sock"));
  EXPECT_EQ(channel.call({{"execute", "guest-ping"}})["error"]["desc"], "The command guest-ping has been disabled for this instance");
}

TEST_F(ProcessTest, RetryPathWaitsForTheDevice) {
  std::string device = dir_ + "/late-device";
  AgentProcess agent({"-m", "virtio-serial", "-p", device, "-r", "-t", dir_, "-c", "/dev/null"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_TRUE(agent.running());
  AgentProcess failing({"-m", "virtio-serial", "-p", device + ".none", "-t", dir_, "-c", "/dev/null"});
  int status = failing.wait();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
}

}  // namespace
