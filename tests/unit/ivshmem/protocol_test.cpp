#include "kiln/ivshmem/protocol.h"

#include <gtest/gtest.h>
#include <sys/eventfd.h>

#include "kiln/common/error.h"

namespace kiln::ivshmem {
namespace {

UniqueFd new_eventfd() { return UniqueFd(::eventfd(0, EFD_CLOEXEC)); }

Message plain(int64_t value) { return Message{value, UniqueFd()}; }
Message with_fd(int64_t value) { return Message{value, new_eventfd()}; }

std::string error_of(ClientProtocol& protocol, Message message) {
  try {
    protocol.handle(std::move(message));
  } catch (const Error& error) {
    return error.what();
  }
  return "";
}

TEST(IvshmemEncoding, LittleEndianSigned) {
  std::byte bytes[kMessageSize];
  encode_value(0x0102030405060708, bytes);
  EXPECT_EQ(bytes[0], std::byte{0x08});
  EXPECT_EQ(bytes[7], std::byte{0x01});
  encode_value(-1, bytes);
  for (std::byte b : bytes) EXPECT_EQ(b, std::byte{0xff});
  EXPECT_EQ(decode_value(bytes), -1);
  encode_value(65535, bytes);
  EXPECT_EQ(decode_value(bytes), 65535);
}

TEST(IvshmemDecoder, ReassemblesChunksAndKeepsTheDescriptor) {
  MessageDecoder decoder;
  std::byte bytes[kMessageSize];
  encode_value(42, bytes);
  std::vector<UniqueFd> fds;
  fds.push_back(new_eventfd());
  EXPECT_EQ(decoder.bytes_wanted(), 8u);
  EXPECT_FALSE(decoder.feed(std::span(bytes, 3), std::move(fds)));
  EXPECT_TRUE(decoder.mid_message());
  EXPECT_EQ(decoder.bytes_wanted(), 5u);
  auto message = decoder.feed(std::span(bytes + 3, 5), {});
  ASSERT_TRUE(message);
  EXPECT_EQ(message->value, 42);
  EXPECT_TRUE(message->fd.valid());
  EXPECT_FALSE(decoder.mid_message());
}

TEST(IvshmemDecoder, RejectsTwoDescriptorsForOneMessage) {
  MessageDecoder decoder;
  std::byte bytes[kMessageSize]{};
  std::vector<UniqueFd> first;
  first.push_back(new_eventfd());
  decoder.feed(std::span(bytes, 4), std::move(first));
  std::vector<UniqueFd> second;
  second.push_back(new_eventfd());
  EXPECT_THROW(decoder.feed(std::span(bytes, 4), std::move(second)), Error);
}

TEST(IvshmemDecoder, RejectsOversizedChunk) {
  MessageDecoder decoder;
  std::byte bytes[9]{};
  EXPECT_THROW(decoder.feed(std::span(bytes, 9), {}), Error);
}

TEST(IvshmemClientProtocol, FullHandshakeAndPeerLifecycle) {
  ClientProtocol protocol;
  EXPECT_EQ(protocol.handle(plain(0)).kind, ClientEvent::Kind::kVersion);
  auto id = protocol.handle(plain(3));
  EXPECT_EQ(id.kind, ClientEvent::Kind::kOwnId);
  EXPECT_EQ(*protocol.own_id(), 3);
  EXPECT_FALSE(protocol.handshake_done());
  EXPECT_EQ(protocol.handle(with_fd(-1)).kind, ClientEvent::Kind::kSharedMemory);
  EXPECT_TRUE(protocol.handshake_done());
  ASSERT_TRUE(protocol.shared_memory());

  for (unsigned vector = 0; vector < 2; ++vector) {
    auto event = protocol.handle(with_fd(1));
    EXPECT_EQ(event.kind, ClientEvent::Kind::kPeerVector);
    EXPECT_EQ(event.peer, 1);
    EXPECT_EQ(event.vector, vector);
  }
  auto own = protocol.handle(with_fd(3));
  EXPECT_EQ(own.kind, ClientEvent::Kind::kOwnVector);
  EXPECT_EQ(protocol.own_vectors().size(), 1u);
  ASSERT_NE(protocol.peers().find(1), nullptr);
  EXPECT_EQ(protocol.peers().find(1)->vectors.size(), 2u);

  auto gone = protocol.handle(plain(1));
  EXPECT_EQ(gone.kind, ClientEvent::Kind::kPeerGone);
  EXPECT_TRUE(gone.known);
  EXPECT_TRUE(protocol.peers().empty());
  auto unknown = protocol.handle(plain(7));
  EXPECT_EQ(unknown.kind, ClientEvent::Kind::kPeerGone);
  EXPECT_FALSE(unknown.known);
}

TEST(IvshmemClientProtocol, RefusesOtherVersions) {
  ClientProtocol protocol;
  EXPECT_NE(error_of(protocol, plain(1)).find("protocol version 1"), std::string::npos);
  ClientProtocol with_descriptor;
  EXPECT_NE(error_of(with_descriptor, with_fd(0)), "");
}

TEST(IvshmemClientProtocol, RefusesInvalidIds) {
  ClientProtocol negative;
  negative.handle(plain(0));
  EXPECT_NE(error_of(negative, plain(-5)).find("invalid peer ID -5"), std::string::npos);
  ClientProtocol too_big;
  too_big.handle(plain(0));
  EXPECT_NE(error_of(too_big, plain(65536)), "");
}

TEST(IvshmemClientProtocol, RequiresSharedMemoryWithDescriptor) {
  ClientProtocol protocol;
  protocol.handle(plain(0));
  protocol.handle(plain(0));
  EXPECT_NE(error_of(protocol, plain(-1)).find("shared memory"), std::string::npos);
  ClientProtocol early_peer;
  early_peer.handle(plain(0));
  early_peer.handle(plain(0));
  EXPECT_NE(error_of(early_peer, with_fd(1)), "");
}

TEST(IvshmemClientProtocol, RejectsBadMessagesAfterHandshake) {
  ClientProtocol protocol;
  protocol.handle(plain(0));
  protocol.handle(plain(2));
  protocol.handle(with_fd(-1));
  EXPECT_NE(error_of(protocol, with_fd(-1)), "");        // a second shared memory
  EXPECT_NE(error_of(protocol, plain(2)).find("own ID"), std::string::npos);
  EXPECT_NE(error_of(protocol, plain(70000)), "");
}

TEST(IvshmemClientProtocol, IgnoresVectorsBeyondItsLimit) {
  ClientProtocol protocol(1);
  protocol.handle(plain(0));
  protocol.handle(plain(0));
  protocol.handle(with_fd(-1));
  EXPECT_EQ(protocol.handle(with_fd(4)).kind, ClientEvent::Kind::kPeerVector);
  EXPECT_EQ(protocol.handle(with_fd(4)).kind, ClientEvent::Kind::kVectorIgnored);
  EXPECT_EQ(protocol.peers().find(4)->vectors.size(), 1u);
  EXPECT_EQ(protocol.handle(with_fd(0)).kind, ClientEvent::Kind::kOwnVector);
  EXPECT_EQ(protocol.handle(with_fd(0)).kind, ClientEvent::Kind::kVectorIgnored);
}

}  // namespace
}  // namespace kiln::ivshmem
