// Runs kiln-ivshmem-client against fake servers that misbehave.
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "kiln/ivshmem/socket.h"

namespace kiln::ivshmem {
namespace {

namespace fs = std::filesystem;

class IvshmemFakeServer : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / fmt::format("kiln-ivshmem-fake-{}-{}", ::getpid(), counter_++);
    fs::create_directories(directory_);
    socket_path_ = (directory_ / "sock").string();
  }
  void TearDown() override {
    if (server_.joinable()) server_.join();
    fs::remove_all(directory_);
  }

  // Serves one connection with `script`, then closes it.
  void serve(std::function<void(int)> script) {
    listener_ = listen_unix(socket_path_);
    server_ = std::thread([this, script = std::move(script)] {
      pollfd ready{listener_.get(), POLLIN, 0};
      if (::poll(&ready, 1, 10000) != 1) return;
      UniqueFd connection(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (connection.valid()) script(connection.get());
    });
  }

  // Runs the client with `arguments`; returns its exit status and stderr.
  std::pair<int, std::string> run_client(const std::string& arguments, const char* timeout = "2") {
    std::string errors = (directory_ / "stderr").string();
    std::string command = fmt::format("{} -S {} -t {} {} >/dev/null 2>{}", KILN_IVSHMEM_CLIENT, socket_path_, timeout,
                                      arguments, errors);
    int status = std::system(command.c_str());
    std::ifstream stream(errors);
    std::stringstream text;
    text << stream.rdbuf();
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, text.str()};
  }

  static void expect_one_line(const std::string& text, const std::string& needle) {
    EXPECT_NE(text.find(needle), std::string::npos) << text;
    EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 1) << text;
    EXPECT_EQ(text.rfind("kiln-ivshmem-client: ", 0), 0u) << text;
  }

  static inline int counter_ = 0;
  fs::path directory_;
  std::string socket_path_;
  UniqueFd listener_;
  std::thread server_;
};

void send_plain(int socket, int64_t value) { ASSERT_EQ(send_message(socket, value, -1), kMessageSize); }

TEST_F(IvshmemFakeServer, RefusesAnotherProtocolVersion) {
  serve([](int socket) { send_plain(socket, 1); });
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "ivshmem server at '" + socket_path_ + "': unsupported protocol version 1 (only version 0 is supported)");
}

TEST_F(IvshmemFakeServer, ReportsGarbage) {
  serve([](int socket) {
    const char garbage[5] = {'h', 'e', 'l', 'l', 'o'};
    ASSERT_EQ(::send(socket, garbage, sizeof garbage, 0), 5);
  });
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "in the middle of a message");
}

TEST_F(IvshmemFakeServer, ReportsInvalidPeerId) {
  serve([](int socket) {
    send_plain(socket, 0);
    send_plain(socket, 70000);
  });
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "invalid peer ID 70000");
}

TEST_F(IvshmemFakeServer, ReportsSharedMemoryWithoutDescriptor) {
  serve([](int socket) {
    send_plain(socket, 0);
    send_plain(socket, 0);
    send_plain(socket, -1);
  });
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "where the shared memory");
}

TEST_F(IvshmemFakeServer, ReportsServerVanishingDuringHandshake) {
  serve([](int socket) { send_plain(socket, 0); });
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "closed the connection during the handshake");
}

TEST_F(IvshmemFakeServer, ReportsServerClosingBeforeTheVersion) {
  serve([](int) {});
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "closed the connection before the handshake (too many peers?)");
}

TEST_F(IvshmemFakeServer, TimesOutOnSilentServer) {
  serve([](int socket) {
    send_plain(socket, 0);
    // Keep the connection open, silent, until the client gives up.
    pollfd closed{socket, POLLRDHUP, 0};
    ::poll(&closed, 1, 10000);
  });
  auto [status, errors] = run_client("-c id", "0.5");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "timed out waiting for the handshake");
}

TEST_F(IvshmemFakeServer, ReportsMissingServer) {
  auto [status, errors] = run_client("-c id");
  EXPECT_EQ(status, 1);
  expect_one_line(errors, "cannot connect to '" + socket_path_ + "': No such file or directory");
}

}  // namespace
}  // namespace kiln::ivshmem
