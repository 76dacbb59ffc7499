// The ivshmem server's protocol logic without sockets: assigns peer IDs,
// creates each peer's eventfds and queues, per peer, the messages the spec
// prescribes (handshake, connect and disconnect notices). The socket loop
// drains the outboxes; tests inspect them directly.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <vector>

#include "kiln/ivshmem/peers.h"
#include "kiln/ivshmem/protocol.h"

namespace kiln::ivshmem {

struct OutgoingMessage {
  int64_t value = 0;
  SharedFd fd;  // null when the message carries no descriptor
};

class ServerCore {
 public:
  // `vectors` eventfds per peer (1..kMaxVectors); at most `max_peers` peers
  // (1..kMaxPeers) at a time.
  ServerCore(SharedFd shared_memory, unsigned vectors, size_t max_peers = kMaxPeers);

  // Admits a new client: picks the next free ID (the first client gets 0),
  // creates its eventfds and queues its handshake and the connect notices for
  // everyone else. Throws kiln::Error when the server is full.
  PeerId add_peer();
  // Forgets a peer (closing our copies of its eventfds once no queued message
  // needs them) and queues disconnect notices for the others. Unknown IDs are ignored.
  void remove_peer(PeerId id);

  std::deque<OutgoingMessage>& outbox(PeerId id);
  // Peers whose outbox received messages since the last call.
  std::vector<PeerId> take_dirty();

  size_t peer_count() const { return peers_.size(); }
  bool contains(PeerId id) const { return peers_.count(id) != 0; }
  unsigned vectors() const { return vectors_; }
  size_t max_peers() const { return max_peers_; }
  const Peer& peer(PeerId id) const { return peers_.at(id).peer; }

 private:
  struct Entry {
    Peer peer;
    std::deque<OutgoingMessage> outbox;
    bool dirty = false;
  };

  void queue(Entry& entry, int64_t value, SharedFd fd);
  std::optional<PeerId> next_free_id() const;

  SharedFd shared_memory_;
  unsigned vectors_;
  size_t max_peers_;
  uint32_t next_id_ = 0;
  std::map<PeerId, Entry> peers_;
  std::vector<PeerId> dirty_;
};

}  // namespace kiln::ivshmem
