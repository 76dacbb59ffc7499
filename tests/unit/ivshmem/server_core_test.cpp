#include "kiln/ivshmem/server_core.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "kiln/common/error.h"

namespace kiln::ivshmem {
namespace {

SharedFd fake_memory() { return make_shared_fd(UniqueFd(::eventfd(0, EFD_CLOEXEC))); }

std::vector<int64_t> values(const std::deque<OutgoingMessage>& outbox) {
  std::vector<int64_t> result;
  for (const auto& message : outbox) result.push_back(message.value);
  return result;
}

// Feeds a server outbox into a client protocol, as the socket would.
void deliver(std::deque<OutgoingMessage>& outbox, ClientProtocol& client) {
  for (auto& message : outbox) {
    UniqueFd fd;
    if (message.fd) fd.reset(::fcntl(message.fd->get(), F_DUPFD_CLOEXEC, 0));
    client.handle(Message{message.value, std::move(fd)});
  }
  outbox.clear();
}

TEST(IvshmemServerCore, FirstPeerHandshake) {
  SharedFd memory = fake_memory();
  ServerCore core(memory, 2);
  EXPECT_EQ(core.add_peer(), 0);
  auto& outbox = core.outbox(0);
  EXPECT_EQ(values(outbox), (std::vector<int64_t>{0, 0, -1, 0, 0}));
  EXPECT_FALSE(outbox[0].fd);
  EXPECT_FALSE(outbox[1].fd);
  EXPECT_EQ(outbox[2].fd, memory);
  EXPECT_EQ(outbox[3].fd, core.peer(0).vectors[0]);
  EXPECT_EQ(outbox[4].fd, core.peer(0).vectors[1]);
  EXPECT_EQ(core.take_dirty(), std::vector<PeerId>{0});
}

TEST(IvshmemServerCore, ConnectAndDisconnectNotices) {
  ServerCore core(fake_memory(), 2);
  core.add_peer();
  core.outbox(0).clear();
  core.take_dirty();
  EXPECT_EQ(core.add_peer(), 1);
  // Newcomer: version, id, memory, peer 0's vectors, then its own.
  EXPECT_EQ(values(core.outbox(1)), (std::vector<int64_t>{0, 1, -1, 0, 0, 1, 1}));
  EXPECT_EQ(core.outbox(1)[3].fd, core.peer(0).vectors[0]);
  EXPECT_EQ(core.outbox(1)[4].fd, core.peer(0).vectors[1]);
  // Existing peer: the newcomer's vectors in order.
  EXPECT_EQ(values(core.outbox(0)), (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(core.outbox(0)[0].fd, core.peer(1).vectors[0]);
  EXPECT_EQ(core.outbox(0)[1].fd, core.peer(1).vectors[1]);
  auto dirty = core.take_dirty();
  std::sort(dirty.begin(), dirty.end());
  EXPECT_EQ(dirty, (std::vector<PeerId>{0, 1}));

  core.outbox(0).clear();
  core.remove_peer(1);
  EXPECT_FALSE(core.contains(1));
  ASSERT_EQ(core.outbox(0).size(), 1u);
  EXPECT_EQ(core.outbox(0)[0].value, 1);
  EXPECT_FALSE(core.outbox(0)[0].fd);
  core.remove_peer(1);  // unknown now: ignored
  EXPECT_EQ(core.outbox(0).size(), 1u);
}

TEST(IvshmemServerCore, IdsAreNotReusedAtOnce) {
  ServerCore core(fake_memory(), 1);
  EXPECT_EQ(core.add_peer(), 0);
  EXPECT_EQ(core.add_peer(), 1);
  core.remove_peer(0);
  EXPECT_EQ(core.add_peer(), 2);
}

TEST(IvshmemServerCore, RefusesPeersBeyondTheMaximum) {
  ServerCore core(fake_memory(), 1, 2);
  core.add_peer();
  core.add_peer();
  EXPECT_THROW(core.add_peer(), Error);
  core.remove_peer(0);
  EXPECT_EQ(core.add_peer(), 2);
}

TEST(IvshmemServerCore, WrapsIdsAroundAfter65535) {
  ServerCore core(fake_memory(), 1, 3);
  // Walk the round-robin counter to the top of the ID space.
  for (int i = 0; i < 65535; ++i) core.remove_peer(core.add_peer());
  EXPECT_EQ(core.add_peer(), 65535);
  EXPECT_EQ(core.add_peer(), 0);
}

TEST(IvshmemServerCore, RejectsBadVectorCounts) {
  EXPECT_THROW(ServerCore(fake_memory(), 0), Error);
  EXPECT_THROW(ServerCore(fake_memory(), kMaxVectors + 1), Error);
  EXPECT_NO_THROW(ServerCore(fake_memory(), kMaxVectors));
}

TEST(IvshmemServerCore, ClientsAgreeWithTheServer) {
  ServerCore core(fake_memory(), 3);
  ClientProtocol clients[3];
  for (int i = 0; i < 3; ++i) core.add_peer();
  for (PeerId id = 0; id < 3; ++id) deliver(core.outbox(id), clients[id]);
  for (PeerId id = 0; id < 3; ++id) {
    EXPECT_EQ(*clients[id].own_id(), id);
    EXPECT_EQ(clients[id].own_vectors().size(), 3u);
    EXPECT_EQ(clients[id].peers().size(), 2u);
  }
  // Interrupt peer 2, vector 1 through peer 0's copy of the eventfd.
  uint64_t one = 1;
  ASSERT_EQ(::write(clients[0].peers().find(2)->vectors[1]->get(), &one, 8), 8);
  uint64_t got = 0;
  ASSERT_EQ(::read(clients[2].own_vectors()[1]->get(), &got, 8), 8);
  EXPECT_EQ(got, 1u);

  core.remove_peer(1);
  deliver(core.outbox(0), clients[0]);
  deliver(core.outbox(2), clients[2]);
  EXPECT_FALSE(clients[0].peers().contains(1));
  EXPECT_FALSE(clients[2].peers().contains(1));
  EXPECT_TRUE(clients[2].peers().contains(0));
}

}  // namespace
}  // namespace kiln::ivshmem
