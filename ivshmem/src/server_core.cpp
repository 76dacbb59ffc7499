#include "kiln/ivshmem/server_core.h"

#include <sys/eventfd.h>

#include "kiln/common/error.h"

namespace kiln::ivshmem {

ServerCore::ServerCore(SharedFd shared_memory, unsigned vectors, size_t max_peers)
    : shared_memory_(std::move(shared_memory)), vectors_(vectors), max_peers_(max_peers) {
  if (vectors == 0 || vectors > kMaxVectors) {
    throw invalid_argument("invalid number of vectors {} (must be 1 to {})", vectors, kMaxVectors);
  }
  if (max_peers == 0 || max_peers > kMaxPeers) {
    throw invalid_argument("invalid maximum number of peers {} (must be 1 to {})", max_peers, kMaxPeers);
  }
}

std::optional<PeerId> ServerCore::next_free_id() const {
  if (peers_.size() >= max_peers_) return std::nullopt;
  // IDs are handed out round-robin so that a departed peer's ID is not reused
  // at once (late interrupts aimed at it would hit the newcomer).
  for (size_t step = 0; step < kMaxPeers; ++step) {
    auto candidate = static_cast<PeerId>((next_id_ + step) % kMaxPeers);
    if (peers_.count(candidate) == 0) return candidate;
  }
  return std::nullopt;
}

void ServerCore::queue(Entry& entry, int64_t value, SharedFd fd) {
  entry.outbox.push_back({value, std::move(fd)});
  if (!entry.dirty) {
    entry.dirty = true;
    dirty_.push_back(entry.peer.id);
  }
}

PeerId ServerCore::add_peer() {
  auto id = next_free_id();
  if (!id) throw Error(EUSERS, fmt::format("too many peers (the maximum is {})", max_peers_));

  Entry entry;
  entry.peer.id = *id;
  entry.peer.vectors.reserve(vectors_);
  for (unsigned i = 0; i < vectors_; ++i) {
    int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) throw system_error(errno, "cannot create an eventfd for peer {}", *id);
    entry.peer.vectors.push_back(make_shared_fd(UniqueFd(fd)));
  }
  auto [it, inserted] = peers_.emplace(*id, std::move(entry));
  Entry& added = it->second;
  next_id_ = (static_cast<uint32_t>(*id) + 1) % kMaxPeers;

  queue(added, kProtocolVersion, nullptr);
  queue(added, *id, nullptr);
  queue(added, kSharedMemoryMarker, shared_memory_);
  for (auto& [other_id, other] : peers_) {
    if (other_id == *id) continue;
    for (const SharedFd& vector : added.peer.vectors) queue(other, *id, vector);
    for (const SharedFd& vector : other.peer.vectors) queue(added, other_id, vector);
  }
  for (const SharedFd& vector : added.peer.vectors) queue(added, *id, vector);
  return *id;
}

void ServerCore::remove_peer(PeerId id) {
  if (peers_.erase(id) == 0) return;
  for (auto& [other_id, other] : peers_) queue(other, id, nullptr);
}

std::deque<OutgoingMessage>& ServerCore::outbox(PeerId id) { return peers_.at(id).outbox; }

std::vector<PeerId> ServerCore::take_dirty() {
  std::vector<PeerId> result;
  result.swap(dirty_);
  for (PeerId id : result) {
    auto it = peers_.find(id);
    if (it != peers_.end()) it->second.dirty = false;
  }
  // Drop IDs of peers removed meanwhile.
  std::erase_if(result, [this](PeerId id) { return peers_.count(id) == 0; });
  return result;
}

}  // namespace kiln::ivshmem
