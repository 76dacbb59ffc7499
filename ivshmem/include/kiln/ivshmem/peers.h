// Peer bookkeeping shared by the ivshmem server, client and the emulator
// device: which peers exist and the eventfds of their interrupt vectors.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "kiln/common/fd.h"

namespace kiln::ivshmem {

using PeerId = uint16_t;
// Descriptors are shared: the server hands one eventfd to many outgoing
// messages, and a message may still be queued after its peer has left.
using SharedFd = std::shared_ptr<const UniqueFd>;

inline SharedFd make_shared_fd(UniqueFd fd) { return std::make_shared<const UniqueFd>(std::move(fd)); }

struct Peer {
  PeerId id = 0;
  // Eventfd of vector i at index i.
  std::vector<SharedFd> vectors;
};

// Peers ordered by ID (listings print in that order).
class PeerTable {
 public:
  // Appends the next vector of a peer, creating the peer on its first vector.
  // Returns the vector's index.
  unsigned add_vector(PeerId id, SharedFd fd);
  // Removes a peer and drops its descriptors; false when it was unknown.
  bool remove(PeerId id);
  const Peer* find(PeerId id) const;
  bool contains(PeerId id) const { return peers_.count(id) != 0; }
  size_t size() const { return peers_.size(); }
  bool empty() const { return peers_.empty(); }
  void clear() { peers_.clear(); }

  auto begin() const { return peers_.begin(); }
  auto end() const { return peers_.end(); }

 private:
  std::map<PeerId, Peer> peers_;
};

}  // namespace kiln::ivshmem
