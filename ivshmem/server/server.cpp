#include "server.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "kiln/ivshmem/socket.h"

namespace kiln::ivshmem {
namespace {

SharedMemoryObject create_memory(const ServerOptions& options) {
  if (!options.shm_directory.empty()) {
    return SharedMemoryObject::create_in_directory(options.shm_directory, options.shm_size);
  }
  return SharedMemoryObject::create_posix(options.shm_name, options.shm_size);
}

SharedFd duplicate(int fd) {
  int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) throw system_error(errno, "cannot duplicate the shared memory descriptor");
  return make_shared_fd(UniqueFd(copy));
}

// A peer that never reads would make its queue grow without bound.
constexpr size_t kMaxQueuedMessages = 1 << 22;

}  // namespace

Server::Server(const ServerOptions& options)
    : options_(options),
      memory_(create_memory(options)),
      core_(duplicate(memory_.fd()), options.vectors, options.max_peers),
      listener_(listen_unix(options.socket_path)) {
  log::info("shared memory '{}', {} bytes; {} vectors per peer; listening on '{}'", memory_.name(), memory_.size(),
            options.vectors, options.socket_path);
}

Server::~Server() {
  connections_.clear();
  if (listener_.valid()) ::unlink(options_.socket_path.c_str());
}

void Server::run(int signal_fd) {
  loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { accept_clients(); });
  loop_.add(signal_fd, EPOLLIN, [this, signal_fd](uint32_t) {
    signalfd_siginfo info{};
    while (::read(signal_fd, &info, sizeof info) == sizeof info) {
      log::info("received signal {}; shutting down", info.ssi_signo);
      quit_ = true;
    }
  });
  while (!quit_) loop_.run_once(-1);
}

void Server::accept_clients() {
  for (;;) {
    int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EMFILE || errno == ENFILE) {
        // Out of descriptors: stop accepting (a level-triggered listener would
        // spin) until a peer leaves and frees some.
        log::warn("out of file descriptors; not accepting clients until a peer leaves");
        loop_.remove(listener_.get());
        accepting_ = false;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
        log::warn("accept on '{}' failed: {}", options_.socket_path, errno_text(errno));
      }
      break;
    }
    UniqueFd socket(fd);
    PeerId id;
    try {
      id = core_.add_peer();
    } catch (const Error& error) {
      // The protocol has no way to say why; closing before the version tells the client.
      log::warn("refusing a new client: {}", error.what());
      continue;
    }
    log::info("peer {} connected", id);
    Connection& connection = connections_[id];
    connection.socket = std::move(socket);
    loop_.add(fd, EPOLLIN | EPOLLRDHUP, [this, id](uint32_t events) { on_client_event(id, events); });
  }
  flush_dirty();
}

void Server::on_client_event(PeerId id, uint32_t events) {
  if ((events & EPOLLOUT) && !flush(id)) {
    flush_dirty();  // the departure notices
    return;
  }
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
    // Clients never send anything: any readable event is either the end of the
    // connection or a protocol violation, and both end the peer.
    char byte;
    ssize_t received = ::recv(connections_.at(id).socket.get(), &byte, 1, MSG_DONTWAIT);
    if (received > 0) {
      disconnect(id, "sent unexpected data");
    } else if (received == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
      disconnect(id, "disconnected");
    }
  }
  flush_dirty();
}

void Server::flush_dirty() {
  // Flushing can fail and disconnect peers, which queues more notices: repeat until quiet.
  for (auto dirty = core_.take_dirty(); !dirty.empty(); dirty = core_.take_dirty()) {
    for (PeerId id : dirty) {
      if (connections_.count(id) != 0) flush(id);
    }
  }
}

bool Server::flush(PeerId id) {
  Connection& connection = connections_.at(id);
  auto& outbox = core_.outbox(id);
  try {
    while (!outbox.empty()) {
      const OutgoingMessage& message = outbox.front();
      size_t sent = send_message(connection.socket.get(), message.value, message.fd ? message.fd->get() : -1,
                                 connection.sent_of_front);
      if (sent == 0) break;
      connection.sent_of_front += sent;
      if (connection.sent_of_front == kMessageSize) {
        connection.sent_of_front = 0;
        outbox.pop_front();
      }
    }
  } catch (const Error& error) {
    disconnect(id, error.what());
    return false;
  }
  if (outbox.size() > kMaxQueuedMessages) {
    disconnect(id, "does not read its messages");
    return false;
  }
  bool want_output = !outbox.empty();
  if (want_output != connection.want_output) {
    connection.want_output = want_output;
    loop_.modify(connection.socket.get(), EPOLLIN | EPOLLRDHUP | (want_output ? EPOLLOUT : 0u));
  }
  return true;
}

void Server::disconnect(PeerId id, const std::string& reason) {
  auto it = connections_.find(id);
  if (it == connections_.end()) return;
  log::info("peer {} {}; notifying {} other peers", id, reason, core_.peer_count() - 1);
  loop_.remove(it->second.socket.get());
  connections_.erase(it);
  core_.remove_peer(id);
  if (!accepting_) {
    accepting_ = true;
    loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { accept_clients(); });
  }
}

}  // namespace kiln::ivshmem
