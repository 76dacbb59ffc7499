// The ivshmem client-server protocol (reference/ivshmem-spec.txt): the server
// sends 8-byte little-endian signed numbers, each optionally carrying one file
// descriptor via SCM_RIGHTS. This header holds the wire encoding, the stream
// reassembly and the client-side state machine; no sockets are touched here so
// tests and fuzzers can drive it with bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "kiln/common/fd.h"
#include "kiln/ivshmem/peers.h"

namespace kiln::ivshmem {

inline constexpr int64_t kProtocolVersion = 0;
// The value that accompanies the shared memory file descriptor.
inline constexpr int64_t kSharedMemoryMarker = -1;
// Peer IDs fit the 16-bit field of the Doorbell register.
inline constexpr int64_t kMaxPeerId = 65535;
inline constexpr size_t kMaxPeers = 65536;
// QEMU's server accepts at most 64 vectors per peer; so do we.
inline constexpr unsigned kMaxVectors = 64;
inline constexpr size_t kMessageSize = 8;

// One protocol message: a number and the descriptor that came with it, if any.
struct Message {
  int64_t value = 0;
  UniqueFd fd;
};

void encode_value(int64_t value, std::span<std::byte, kMessageSize> out);
int64_t decode_value(std::span<const std::byte, kMessageSize> in);

// Reassembles messages from a stream read in chunks. The reader asks for at most
// bytes_wanted() bytes per read so that a chunk never spans two messages, which
// makes the owner of every received descriptor unambiguous.
class MessageDecoder {
 public:
  size_t bytes_wanted() const { return kMessageSize - filled_; }
  // Adds a chunk (at most bytes_wanted() bytes) and the descriptors received
  // with it. Returns the completed message, if this chunk finished one. Throws
  // kiln::Error when a message carries more than one descriptor.
  std::optional<Message> feed(std::span<const std::byte> chunk, std::vector<UniqueFd> fds);
  // True when a message is partly received (an EOF now truncates it).
  bool mid_message() const { return filled_ != 0; }

 private:
  std::byte buffer_[kMessageSize]{};
  size_t filled_ = 0;
  UniqueFd fd_;
};

// What the client learnt from one message.
struct ClientEvent {
  enum class Kind {
    kVersion,        // protocol version accepted
    kOwnId,          // our ID assigned (peer)
    kSharedMemory,   // shared memory descriptor received (fd)
    kPeerVector,     // a vector of another peer connected (peer, vector, fd)
    kOwnVector,      // one of our own vectors set up (vector, fd)
    kPeerGone,       // peer disconnected (peer); known says whether we had it
    kVectorIgnored,  // a vector beyond max_vectors; its descriptor was closed
  };
  Kind kind;
  PeerId peer = 0;
  unsigned vector = 0;
  bool known = true;
  SharedFd fd;
};

// Client side of the protocol: validates the server's messages in order and
// keeps the peer table. Throws kiln::Error with a one-line message on any
// protocol violation; the caller then closes the connection.
class ClientProtocol {
 public:
  explicit ClientProtocol(unsigned max_vectors = kMaxVectors) : max_vectors_(max_vectors) {}

  ClientEvent handle(Message message);

  bool handshake_done() const { return state_ == State::kRunning; }
  std::optional<PeerId> own_id() const { return own_id_; }
  const SharedFd& shared_memory() const { return shared_memory_; }
  const std::vector<SharedFd>& own_vectors() const { return own_vectors_; }
  const PeerTable& peers() const { return peers_; }

 private:
  enum class State { kExpectVersion, kExpectId, kExpectSharedMemory, kRunning };

  ClientEvent handle_peer_message(int64_t value, UniqueFd fd);

  unsigned max_vectors_;
  State state_ = State::kExpectVersion;
  std::optional<PeerId> own_id_;
  SharedFd shared_memory_;
  std::vector<SharedFd> own_vectors_;
  PeerTable peers_;
};

}  // namespace kiln::ivshmem
