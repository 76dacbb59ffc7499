#include "kiln/ivshmem/peers.h"

namespace kiln::ivshmem {

unsigned PeerTable::add_vector(PeerId id, SharedFd fd) {
  Peer& peer = peers_[id];
  peer.id = id;
  peer.vectors.push_back(std::move(fd));
  return static_cast<unsigned>(peer.vectors.size() - 1);
}

bool PeerTable::remove(PeerId id) { return peers_.erase(id) != 0; }

const Peer* PeerTable::find(PeerId id) const {
  auto it = peers_.find(id);
  return it == peers_.end() ? nullptr : &it->second;
}

}  // namespace kiln::ivshmem
