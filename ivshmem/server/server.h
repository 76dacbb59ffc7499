// kiln-ivshmem-server's socket loop around ServerCore.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kiln/common/fd.h"
#include "kiln/ivshmem/event_loop.h"
#include "kiln/ivshmem/server_core.h"
#include "kiln/ivshmem/shared_memory.h"

namespace kiln::ivshmem {

struct ServerOptions {
  std::string socket_path = "/tmp/ivshmem_socket";
  std::string shm_name = "ivshmem";  // POSIX object name (-M)
  std::string shm_directory;         // directory for a file (-m); wins over shm_name when set
  uint64_t shm_size = 4 * 1024 * 1024;
  unsigned vectors = 1;
  size_t max_peers = kMaxPeers;
};

class Server {
 public:
  // Creates the shared memory and the listening socket; throws kiln::Error.
  explicit Server(const ServerOptions& options);
  // Removes the socket file; the shared memory object unlinks itself.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves until SIGTERM or SIGINT arrives (they must be blocked already and
  // delivered through `signal_fd`).
  void run(int signal_fd);

 private:
  struct Connection {
    UniqueFd socket;
    size_t sent_of_front = 0;  // bytes of the first queued message already sent
    bool want_output = false;
  };

  void accept_clients();
  void on_client_event(PeerId id, uint32_t events);
  void flush_dirty();
  // Sends queued messages; returns false when the connection failed.
  bool flush(PeerId id);
  void disconnect(PeerId id, const std::string& reason);

  ServerOptions options_;
  SharedMemoryObject memory_;
  ServerCore core_;
  UniqueFd listener_;  // after core_: a failure before it exists leaves no socket file
  EventLoop loop_;
  std::map<PeerId, Connection> connections_;
  bool quit_ = false;
  bool accepting_ = true;
};

}  // namespace kiln::ivshmem
