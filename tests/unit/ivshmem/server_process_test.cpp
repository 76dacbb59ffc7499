// Runs kiln-ivshmem-server and talks to it through raw sockets: misbehaving
// clients, the peer limit and descriptor hygiene.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "kiln/common/error.h"
#include "kiln/ivshmem/socket.h"

namespace kiln::ivshmem {
namespace {

namespace fs = std::filesystem;

struct Received {
  int64_t value;
  bool has_fd;
};

// A client that records what it receives and drops the descriptors at once.
class RawPeer {
 public:
  explicit RawPeer(const std::string& path) : socket_(connect_unix(path)) {}

  // Next message, or nullopt on EOF / after `timeout_ms` of silence.
  std::optional<Received> next(int timeout_ms = 5000) {
    for (;;) {
      std::optional<Message> message;
      auto status = receive_chunk(socket_.get(), decoder_, message);
      if (status == ReceiveStatus::kMessage) return Received{message->value, message->fd.valid()};
      if (status == ReceiveStatus::kClosed) return std::nullopt;
      if (status == ReceiveStatus::kWouldBlock) {
        pollfd ready{socket_.get(), POLLIN, 0};
        if (::poll(&ready, 1, timeout_ms) != 1) return std::nullopt;
      }
    }
  }
  std::vector<Received> drain(int quiet_ms = 100) {
    std::vector<Received> all;
    while (auto message = next(quiet_ms)) all.push_back(*message);
    return all;
  }
  int fd() const { return socket_.get(); }
  void close() { socket_.reset(); }

 private:
  UniqueFd socket_;
  MessageDecoder decoder_;
};

class IvshmemServerProcess : public ::testing::Test {
 protected:
  void SetUp() override {
    directory_ = fs::temp_directory_path() / fmt::format("kiln-ivshmem-server-{}-{}", ::getpid(), counter_++);
    fs::create_directories(directory_);
    socket_path_ = (directory_ / "sock").string();
    shm_name_ = fmt::format("kiln-unit-{}-{}", ::getpid(), counter_);
  }
  void TearDown() override {
    stop();
    fs::remove_all(directory_);
  }

  void start(std::vector<std::string> extra) {
    std::vector<std::string> arguments = {KILN_IVSHMEM_SERVER, "-F", "-v", "-S", socket_path_, "-M", shm_name_};
    arguments.insert(arguments.end(), extra.begin(), extra.end());
    log_path_ = (directory_ / "server.log").string();
    pid_ = ::fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      std::FILE* log = std::fopen(log_path_.c_str(), "w");
      ::dup2(fileno(log), STDERR_FILENO);
      std::vector<char*> argv;
      for (auto& argument : arguments) argv.push_back(argument.data());
      argv.push_back(nullptr);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    for (int i = 0; i < 500 && !fs::exists(socket_path_); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(fs::exists(socket_path_));
  }

  int stop() {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  size_t server_fd_count() const {
    return std::distance(fs::directory_iterator(fmt::format("/proc/{}/fd", pid_)), fs::directory_iterator());
  }

  std::string log() const {
    std::ifstream stream(log_path_);
    std::stringstream text;
    text << stream.rdbuf();
    return text.str();
  }

  static inline int counter_ = 0;
  fs::path directory_;
  std::string socket_path_, shm_name_, log_path_;
  pid_t pid_ = -1;
};

void expect_handshake(RawPeer& peer, int64_t id, int64_t other_peers, unsigned vectors) {
  auto version = peer.next();
  ASSERT_TRUE(version);
  EXPECT_EQ(version->value, 0);
  EXPECT_FALSE(version->has_fd);
  auto own = peer.next();
  ASSERT_TRUE(own);
  EXPECT_EQ(own->value, id);
  auto memory = peer.next();
  ASSERT_TRUE(memory);
  EXPECT_EQ(memory->value, -1);
  EXPECT_TRUE(memory->has_fd);
  for (int64_t i = 0; i < other_peers * vectors; ++i) {
    auto notice = peer.next();
    ASSERT_TRUE(notice);
    EXPECT_NE(notice->value, id);
    EXPECT_TRUE(notice->has_fd);
  }
  for (unsigned i = 0; i < vectors; ++i) {
    auto setup = peer.next();
    ASSERT_TRUE(setup);
    EXPECT_EQ(setup->value, id);
    EXPECT_TRUE(setup->has_fd);
  }
}

TEST_F(IvshmemServerProcess, ClientSendingGarbageIsDisconnected) {
  start({"-n", "1"});
  RawPeer first(socket_path_);
  expect_handshake(first, 0, 0, 1);
  RawPeer rude(socket_path_);
  expect_handshake(rude, 1, 1, 1);
  auto joined = first.next();
  ASSERT_TRUE(joined);
  EXPECT_EQ(joined->value, 1);
  EXPECT_TRUE(joined->has_fd);

  ASSERT_EQ(::send(rude.fd(), "garbage", 7, MSG_NOSIGNAL), 7);
  auto left = first.next();
  ASSERT_TRUE(left);
  EXPECT_EQ(left->value, 1);
  EXPECT_FALSE(left->has_fd);
  EXPECT_FALSE(rude.next());  // the server closed it
  EXPECT_NE(log().find("peer 1 sent unexpected data"), std::string::npos) << log();
  EXPECT_EQ(stop(), 0);
  EXPECT_FALSE(fs::exists("/dev/shm/" + shm_name_));
  EXPECT_FALSE(fs::exists(socket_path_));
}

TEST_F(IvshmemServerProcess, PeerLimitNoticesAndDescriptorHygiene) {
  constexpr int kPeers = 64;
  start({"-n", "2", "--max-peers", std::to_string(kPeers)});
  const size_t baseline = server_fd_count();
  std::vector<std::unique_ptr<RawPeer>> peers;
  auto began = std::chrono::steady_clock::now();
  for (int i = 0; i < kPeers; ++i) {
    peers.push_back(std::make_unique<RawPeer>(socket_path_));
    expect_handshake(*peers.back(), i, i, 2);
  }
  auto elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count();
  RecordProperty("handshakes_seconds", fmt::format("{:.3f}", elapsed));
  // One socket and two eventfds per peer.
  EXPECT_EQ(server_fd_count(), baseline + kPeers * 3);

  RawPeer refused(socket_path_);
  EXPECT_FALSE(refused.next());
  EXPECT_NE(log().find("too many peers (the maximum is 64)"), std::string::npos);

  // Earlier peers saw every later one join (2 vectors each).
  for (int i = 0; i < kPeers; ++i) {
    for (int later = i + 1; later < kPeers; ++later) {
      for (int vector = 0; vector < 2; ++vector) {
        auto notice = peers[i]->next();
        ASSERT_TRUE(notice) << "peer " << i;
        EXPECT_EQ(notice->value, later);
        EXPECT_TRUE(notice->has_fd);
      }
    }
  }
  EXPECT_TRUE(peers[0]->drain(20).empty());
  peers[10]->close();
  for (int i = 0; i < kPeers; ++i) {
    if (i == 10) continue;
    auto notice = peers[i]->next();
    ASSERT_TRUE(notice) << "peer " << i;
    EXPECT_EQ(notice->value, 10);
    EXPECT_FALSE(notice->has_fd);
  }
  for (auto& peer : peers) peer->close();
  for (int i = 0; i < 100 && server_fd_count() != baseline; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(server_fd_count(), baseline);
  // The freed slots admit new peers again, with fresh IDs.
  RawPeer again(socket_path_);
  expect_handshake(again, kPeers, 0, 2);
}

}  // namespace
}  // namespace kiln::ivshmem
