#include "kiln/ivshmem/socket.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "kiln/common/error.h"
#include "kiln/ivshmem/client_connection.h"
#include "kiln/ivshmem/shared_memory.h"

namespace kiln::ivshmem {
namespace {

struct SocketPair {
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    sender.reset(fds[0]);
    receiver.reset(fds[1]);
  }
  UniqueFd sender, receiver;
};

std::optional<Message> receive_one(int socket, MessageDecoder& decoder) {
  for (;;) {
    std::optional<Message> message;
    auto status = receive_chunk(socket, decoder, message);
    if (status == ReceiveStatus::kMessage) return message;
    if (status != ReceiveStatus::kPartial) return std::nullopt;
  }
}

TEST(IvshmemSocket, MessageWithDescriptorRoundTrip) {
  SocketPair pair;
  UniqueFd event(::eventfd(0, EFD_CLOEXEC));
  ASSERT_EQ(send_message(pair.sender.get(), 5, event.get()), kMessageSize);
  ASSERT_EQ(send_message(pair.sender.get(), 6, -1), kMessageSize);
  MessageDecoder decoder;
  auto first = receive_one(pair.receiver.get(), decoder);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->value, 5);
  ASSERT_TRUE(first->fd.valid());
  // The received descriptor is the same eventfd.
  uint64_t one = 1, got = 0;
  ASSERT_EQ(::write(first->fd.get(), &one, 8), 8);
  ASSERT_EQ(::read(event.get(), &got, 8), 8);
  EXPECT_EQ(got, 1u);
  auto second = receive_one(pair.receiver.get(), decoder);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->value, 6);
  EXPECT_FALSE(second->fd.valid());
}

TEST(IvshmemSocket, PartialSendsResume) {
  SocketPair pair;
  EXPECT_EQ(send_message(pair.sender.get(), 0x1122334455667788, -1, 0) > 0, true);
  MessageDecoder decoder;
  set_nonblocking(pair.receiver.get());
  auto message = receive_one(pair.receiver.get(), decoder);
  ASSERT_TRUE(message);
  EXPECT_EQ(message->value, 0x1122334455667788);
  // Sending from an offset transmits only the tail.
  EXPECT_EQ(send_message(pair.sender.get(), 7, -1, 5), 3u);
}

TEST(IvshmemSocket, ClosedMidMessageIsAnError) {
  SocketPair pair;
  char three[3] = {1, 2, 3};
  ASSERT_EQ(::send(pair.sender.get(), three, 3, 0), 3);
  pair.sender.reset();
  MessageDecoder decoder;
  std::optional<Message> message;
  EXPECT_EQ(receive_chunk(pair.receiver.get(), decoder, message), ReceiveStatus::kPartial);
  EXPECT_THROW(receive_chunk(pair.receiver.get(), decoder, message), Error);
}

TEST(IvshmemSocket, ListenReplacesStaleSocketButNotLiveOne) {
  std::string path = std::filesystem::temp_directory_path() / fmt::format("kiln-ivshmem-test-{}.sock", ::getpid());
  {
    UniqueFd first = listen_unix(path);
    EXPECT_THROW(listen_unix(path), Error);  // live
  }
  // `first` closed without unlinking: the file is stale now.
  UniqueFd second = listen_unix(path);
  EXPECT_TRUE(second.valid());
  UniqueFd client = connect_unix(path);
  EXPECT_TRUE(client.valid());
  ::unlink(path.c_str());
  EXPECT_THROW(connect_unix(path), Error);
}

TEST(IvshmemClientConnection, ReadsHandshakeThenNoticesTheServerLeaving) {
  std::string path = std::filesystem::temp_directory_path() / fmt::format("kiln-ivshmem-conn-{}.sock", ::getpid());
  UniqueFd listener = listen_unix(path);
  ClientConnection connection(path);
  UniqueFd server(::accept(listener.get(), nullptr, nullptr));
  ASSERT_TRUE(server.valid());
  UniqueFd memory(::eventfd(0, EFD_CLOEXEC)), vector(::eventfd(0, EFD_CLOEXEC));
  send_message(server.get(), 0, -1);
  send_message(server.get(), 4, -1);
  send_message(server.get(), -1, memory.get());
  send_message(server.get(), 4, vector.get());
  std::vector<ClientEvent> events;
  EXPECT_TRUE(connection.read_available(events));
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[1].kind, ClientEvent::Kind::kOwnId);
  EXPECT_EQ(events[3].kind, ClientEvent::Kind::kOwnVector);
  EXPECT_TRUE(connection.received_any());
  server.reset();
  events.clear();
  EXPECT_FALSE(connection.read_available(events));
  EXPECT_FALSE(connection.connected());
  EXPECT_EQ(connection.protocol().own_vectors().size(), 1u);  // kept after the server left
  ::unlink(path.c_str());
}

TEST(IvshmemClientConnection, ProtocolErrorsNameTheServerAndClose) {
  std::string path = std::filesystem::temp_directory_path() / fmt::format("kiln-ivshmem-conn2-{}.sock", ::getpid());
  UniqueFd listener = listen_unix(path);
  ClientConnection connection(path);
  UniqueFd server(::accept(listener.get(), nullptr, nullptr));
  send_message(server.get(), 3, -1);
  std::vector<ClientEvent> events;
  try {
    connection.read_available(events);
    ADD_FAILURE() << "version 3 accepted";
  } catch (const Error& error) {
    EXPECT_EQ(std::string(error.what()), fmt::format("ivshmem server at '{}': unsupported protocol version 3 "
                                                     "(only version 0 is supported)",
                                                     path));
  }
  EXPECT_FALSE(connection.connected());
  ::unlink(path.c_str());
}

TEST(IvshmemSharedMemory, PosixObjectIsSizedMappedAndUnlinked) {
  std::string name = fmt::format("/kiln-ivshmem-test-{}", ::getpid());
  {
    auto object = SharedMemoryObject::create_posix(name, 65536);
    EXPECT_TRUE(std::filesystem::exists("/dev/shm" + name));
    SharedMapping mapping(object.fd());
    EXPECT_EQ(mapping.size(), 65536u);
    mapping.bytes()[100] = std::byte{0x5a};
    SharedMapping other(object.fd());
    EXPECT_EQ(other.bytes()[100], std::byte{0x5a});
  }
  EXPECT_FALSE(std::filesystem::exists("/dev/shm" + name));
}

TEST(IvshmemSharedMemory, DirectoryFileLeavesNothingBehind) {
  auto directory = std::filesystem::temp_directory_path() / fmt::format("kiln-ivshmem-dir-{}", ::getpid());
  std::filesystem::create_directory(directory);
  {
    auto object = SharedMemoryObject::create_in_directory(directory.string(), 8192);
    EXPECT_TRUE(std::filesystem::is_empty(directory));
    SharedMapping mapping(object.fd());
    EXPECT_EQ(mapping.size(), 8192u);
  }
  std::filesystem::remove(directory);
  EXPECT_THROW(SharedMemoryObject::create_in_directory("/nonexistent-kiln-dir", 4096), Error);
}

}  // namespace
}  // namespace kiln::ivshmem
