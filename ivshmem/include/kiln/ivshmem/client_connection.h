// A client's connection to an ivshmem server: the socket, the stream decoder
// and the protocol state, without any event loop. The client program and the
// emulator's ivshmem device watch fd() in their own loops and call
// read_available() when it is readable.
#pragma once

#include <string>
#include <vector>

#include "kiln/common/fd.h"
#include "kiln/ivshmem/protocol.h"

namespace kiln::ivshmem {

class ClientConnection {
 public:
  // Connects to the server's socket (the descriptor is non-blocking). Throws kiln::Error.
  explicit ClientConnection(std::string socket_path, unsigned max_vectors = kMaxVectors);

  int fd() const { return socket_.get(); }
  bool connected() const { return socket_.valid(); }
  const std::string& socket_path() const { return socket_path_; }
  const ClientProtocol& protocol() const { return protocol_; }
  // True once at least one complete message arrived (a refused client gets none).
  bool received_any() const { return received_any_; }

  // Handles every message already received, appending what they meant to
  // `events`. Returns false when the server has closed the connection (the
  // socket is closed then; peers and own vectors stay). Throws kiln::Error,
  // naming the server, on protocol violations and socket errors.
  bool read_available(std::vector<ClientEvent>& events);

 private:
  std::string socket_path_;
  UniqueFd socket_;
  MessageDecoder decoder_;
  ClientProtocol protocol_;
  bool received_any_ = false;
};

}  // namespace kiln::ivshmem
