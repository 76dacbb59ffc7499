// One client connection to an ivshmem server: handshake, mapped memory, peer
// table (kept by ClientProtocol) and interrupts in both directions.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kiln/common/fd.h"
#include "kiln/ivshmem/client_connection.h"
#include "kiln/ivshmem/event_loop.h"
#include "kiln/ivshmem/protocol.h"
#include "kiln/ivshmem/shared_memory.h"

namespace kiln::ivshmem {

class ClientSession {
 public:
  // `notice` receives one line per event (peer joined/left, interrupt received, server gone).
  ClientSession(std::string socket_path, EventLoop& loop, std::function<void(const std::string&)> notice);

  // Connects, completes the handshake and maps the memory. Throws kiln::Error.
  void connect(std::chrono::milliseconds timeout);

  PeerId id() const { return *connection_->protocol().own_id(); }
  std::span<std::byte> memory() const { return mapping_.bytes(); }
  const PeerTable& peers() const { return connection_->protocol().peers(); }
  size_t own_vector_count() const { return connection_->protocol().own_vectors().size(); }
  bool server_connected() const { return connection_ && connection_->connected(); }

  // Rings `vector` of `peer`. Throws kiln::Error for an unknown peer or vector.
  void notify(PeerId peer, unsigned vector);
  // Rings every vector of one peer / of every peer; returns how many were rung.
  unsigned notify_peer(PeerId peer);
  unsigned notify_all();

  // Interrupts received and not yet taken, per vector (index = vector).
  const std::vector<uint64_t>& pending_interrupts() const { return pending_; }
  // Takes the pending interrupts of one vector (or all); returns (vector, count) pairs.
  std::vector<std::pair<unsigned, uint64_t>> take_interrupts(std::optional<unsigned> vector);

  // Runs the loop until `done` holds or the timeout passes; returns `done()`.
  bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout);

 private:
  void on_server_readable();
  void handle_event(ClientEvent event);
  void on_interrupt(unsigned vector, int fd);
  void server_gone(int fd, const std::string& why);

  std::string socket_path_;
  EventLoop& loop_;
  std::function<void(const std::string&)> notice_;
  std::optional<ClientConnection> connection_;
  SharedMapping mapping_;
  std::vector<uint64_t> pending_;
  std::vector<ClientEvent> events_;  // reused between reads
};

}  // namespace kiln::ivshmem
