// Unix socket plumbing for the ivshmem protocol: sending one message with an
// optional descriptor, receiving into a MessageDecoder, listening and connecting.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kiln/common/fd.h"
#include "kiln/ivshmem/protocol.h"

namespace kiln::ivshmem {

// Sends the bytes of `value` from `offset` on (the descriptor only with the
// first byte). Returns the number of bytes sent, 0 when the socket would block.
// Throws kiln::Error on failure (EPIPE when the peer has gone).
size_t send_message(int socket, int64_t value, int fd, size_t offset = 0);

enum class ReceiveStatus { kMessage, kPartial, kWouldBlock, kClosed };

// Reads at most one message's remaining bytes (and their descriptors). A reset
// connection between messages counts as closed.
// Throws kiln::Error on socket errors, truncated descriptor lists or a
// connection closed in the middle of a message.
ReceiveStatus receive_chunk(int socket, MessageDecoder& decoder, std::optional<Message>& message);

// Binds and listens on a unix socket path. A stale socket file (nobody
// accepting on it) is replaced; a live one is an error.
UniqueFd listen_unix(const std::string& path);
// Connects to a unix socket path (blocking); the result is non-blocking.
UniqueFd connect_unix(const std::string& path);

void set_nonblocking(int fd);

}  // namespace kiln::ivshmem
