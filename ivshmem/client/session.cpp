#include "session.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "kiln/ivshmem/socket.h"

namespace kiln::ivshmem {

ClientSession::ClientSession(std::string socket_path, EventLoop& loop, std::function<void(const std::string&)> notice)
    : socket_path_(std::move(socket_path)), loop_(loop), notice_(std::move(notice)) {}

void ClientSession::connect(std::chrono::milliseconds timeout) {
  connection_.emplace(socket_path_);
  loop_.add(connection_->fd(), EPOLLIN | EPOLLRDHUP, [this](uint32_t) { on_server_readable(); });
  // Our own vectors close the handshake burst: peers' vectors come before them.
  bool complete = wait_until([this] { return !server_connected() || own_vector_count() > 0; }, timeout);
  if (!server_connected()) {
    // A server refusing a client (peer limit) closes before the version.
    throw Error(ECONNRESET, connection_->received_any()
                                ? fmt::format("ivshmem server at '{}' closed the connection during the handshake",
                                              socket_path_)
                                : fmt::format("ivshmem server at '{}' closed the connection before the handshake "
                                              "(too many peers?)",
                                              socket_path_));
  }
  if (!complete) {
    throw Error(ETIMEDOUT, fmt::format("timed out waiting for the handshake of the ivshmem server at '{}'",
                                       socket_path_));
  }
  // Let the rest of the burst (remaining own vectors) arrive.
  while (loop_.run_once(5) > 0) {
  }
}

bool ClientSession::wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    loop_.run_once(static_cast<int>(left.count()) + 1);
  }
  return true;
}

void ClientSession::on_server_readable() {
  const int fd = connection_->fd();
  events_.clear();
  bool open;
  try {
    open = connection_->read_available(events_);
  } catch (const Error&) {
    loop_.remove(fd);
    throw;
  }
  for (ClientEvent& event : events_) handle_event(std::move(event));
  if (!open) server_gone(fd, "closed the connection");
}

void ClientSession::handle_event(ClientEvent event) {
  switch (event.kind) {
    case ClientEvent::Kind::kVersion:
      break;
    case ClientEvent::Kind::kOwnId:
      log::info("our peer ID is {}", event.peer);
      break;
    case ClientEvent::Kind::kSharedMemory:
      mapping_ = SharedMapping(event.fd->get());
      log::info("mapped {} bytes of shared memory", mapping_.size());
      break;
    case ClientEvent::Kind::kOwnVector: {
      unsigned vector = event.vector;
      int fd = event.fd->get();
      set_nonblocking(fd);
      pending_.resize(vector + 1, 0);
      loop_.add(fd, EPOLLIN, [this, vector, fd](uint32_t) { on_interrupt(vector, fd); });
      log::info("own vector {} set up", vector);
      break;
    }
    case ClientEvent::Kind::kPeerVector:
      if (event.vector == 0) notice_(fmt::format("peer {} joined", event.peer));
      log::info("peer {} vector {} connected", event.peer, event.vector);
      break;
    case ClientEvent::Kind::kPeerGone:
      if (event.known) {
        notice_(fmt::format("peer {} left", event.peer));
      } else {
        log::warn("ivshmem server announced the departure of unknown peer {}", event.peer);
      }
      break;
    case ClientEvent::Kind::kVectorIgnored:
      log::warn("ignoring vector {} of peer {}: more than {} vectors", event.vector, event.peer, kMaxVectors);
      break;
  }
}

void ClientSession::on_interrupt(unsigned vector, int fd) {
  uint64_t count = 0;
  ssize_t got = ::read(fd, &count, sizeof count);
  if (got != static_cast<ssize_t>(sizeof count)) return;  // spurious wakeup or EAGAIN
  pending_[vector] += count;
  notice_(fmt::format("received interrupt on vector {} (count {})", vector, count));
}

void ClientSession::server_gone(int fd, const std::string& why) {
  loop_.remove(fd);
  if (own_vector_count() > 0) {
    notice_(fmt::format("ivshmem server {}; peers stay usable but no new peers will be announced", why));
  }
}

void ClientSession::notify(PeerId peer, unsigned vector) {
  const Peer* target = peers().find(peer);
  if (target == nullptr) throw Error(ENOENT, fmt::format("no peer with ID {}", peer));
  if (vector >= target->vectors.size()) {
    throw Error(ENOENT, fmt::format("peer {} has no vector {} (it has {})", peer, vector, target->vectors.size()));
  }
  const uint64_t one = 1;
  if (::write(target->vectors[vector]->get(), &one, sizeof one) != static_cast<ssize_t>(sizeof one)) {
    throw system_error(errno, "cannot interrupt vector {} of peer {}", vector, peer);
  }
}

unsigned ClientSession::notify_peer(PeerId peer) {
  const Peer* target = peers().find(peer);
  if (target == nullptr) throw Error(ENOENT, fmt::format("no peer with ID {}", peer));
  auto count = static_cast<unsigned>(target->vectors.size());
  for (unsigned vector = 0; vector < count; ++vector) notify(peer, vector);
  return count;
}

unsigned ClientSession::notify_all() {
  unsigned rung = 0;
  for (const auto& [peer_id, peer] : peers()) rung += notify_peer(peer_id);
  return rung;
}

std::vector<std::pair<unsigned, uint64_t>> ClientSession::take_interrupts(std::optional<unsigned> vector) {
  std::vector<std::pair<unsigned, uint64_t>> taken;
  for (unsigned i = 0; i < pending_.size(); ++i) {
    if (vector && *vector != i) continue;
    if (pending_[i] == 0) continue;
    taken.emplace_back(i, pending_[i]);
    pending_[i] = 0;
  }
  return taken;
}

}  // namespace kiln::ivshmem
