#include "server.h"

#include <fcntl.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <optional>

#include "kiln/common/error.h"
#include "kiln/common/log.h"

namespace kiln::nbd {

// ---- Worker pool -----------------------------------------------------------

WorkerPool::WorkerPool(unsigned threads) {
  for (unsigned i = 0; i < std::max(1u, threads); ++i) threads_.emplace_back([this] { loop(); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& thread : threads_) thread.join();
}

void WorkerPool::submit(Task& task) {
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(&task);
  }
  wake_.notify_one();
}

namespace {

// Replies are spliced into sockets, and splice() has no MSG_NOSIGNAL: in the
// threads that send, a client gone must give EPIPE, not kill the process.
void block_sigpipe_in_this_thread() {
  sigset_t pipe_signal;
  sigemptyset(&pipe_signal);
  sigaddset(&pipe_signal, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_signal, nullptr);
}

}  // namespace

void WorkerPool::loop() {
  block_sigpipe_in_this_thread();
  while (true) {
    Task* task;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      task = queue_.front();
      queue_.pop_front();
    }
    task->run();
  }
}

// ---- Listening -------------------------------------------------------------

UniqueFd listen_unix(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) throw invalid_argument("UNIX socket path '{}' is too long", path);
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  UniqueFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throw system_error(errno, "Failed to create socket");
  ::unlink(path.c_str());
  if (bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == -1) {
    throw system_error(errno, "Failed to bind socket to {}", path);
  }
  if (listen(fd.get(), 16) == -1) throw system_error(errno, "Failed to listen on {}", path);
  return fd;
}

std::vector<UniqueFd> listen_tcp(const std::string& address, const std::string& port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* results = nullptr;
  if (int rc = getaddrinfo(address.empty() ? nullptr : address.c_str(), port.c_str(), &hints, &results); rc != 0) {
    throw invalid_argument("address resolution failed for {}:{}: {}", address, port, gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(results, freeaddrinfo);
  std::vector<UniqueFd> sockets;
  int last_error = 0;
  for (addrinfo* ai = results; ai != nullptr; ai = ai->ai_next) {
    UniqueFd fd(socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol));
    if (!fd.valid()) continue;
    int one = 1;
    setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd.get(), IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) == -1 || listen(fd.get(), 16) == -1) {
      last_error = errno;
      continue;
    }
    sockets.push_back(std::move(fd));
  }
  if (sockets.empty()) {
    throw system_error(last_error ? last_error : EADDRNOTAVAIL, "Failed to bind socket to {}:{}", address.empty() ? "0.0.0.0" : address,
                       port);
  }
  return sockets;
}

// ---- Connections -----------------------------------------------------------

namespace {

// A worker thread's pipe for zero-copy replies: file pages are spliced into
// it (page references, no copy) and then from it into the socket. Filling it
// completely before the reply's first byte is sent lets a failed or short
// file read fall back to an ordinary read with a proper error reply.
class SplicePipe {
 public:
  static SplicePipe& for_this_thread() {
    thread_local SplicePipe pipe;
    return pipe;
  }
  // File bytes it holds at once, allowing one partial page per range.
  uint64_t capacity() const { return slots_ * kPage; }

  // Splices `files` into the pipe in full; false (and an empty pipe) if not.
  bool fill(std::span<const block::HostExtent> files) {
    uint64_t pages = 0;
    for (const block::HostExtent& file : files) pages += (file.offset % kPage + file.length + kPage - 1) / kPage;
    if (pages > slots_) return false;  // also when the pipe could not be made (no slots)
    for (const block::HostExtent& file : files) {
      loff_t offset = static_cast<loff_t>(file.offset);
      for (uint64_t left = file.length; left > 0;) {
        // Nonblocking on the pipe side: a full pipe must not wait for a reader
        // (there is none until the fill ends); the file read may still block.
        const ssize_t n = ::splice(file.fd, &offset, write_end_.get(), nullptr, left, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {  // read error, end of file, or no room
          reset();
          return false;
        }
        left -= static_cast<uint64_t>(n);
      }
    }
    return true;
  }

  // Moves `length` bytes from the pipe into `socket`. Throws on a socket error.
  void drain_to(int socket, uint64_t length, bool more) {
    while (length > 0) {
      const ssize_t n = ::splice(read_end_.get(), nullptr, socket, nullptr, length, SPLICE_F_MOVE | (more ? SPLICE_F_MORE : 0));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int error = n < 0 ? errno : EPIPE;
        reset();
        throw system_error(error, "Failed to write to client");
      }
      length -= static_cast<uint64_t>(n);
    }
  }

  // Empties the pipe by replacing it (after a failure; rare).
  void reset() {
    read_end_.reset();
    write_end_.reset();
    open();
  }

 private:
  static constexpr uint64_t kPage = 4096;
  static constexpr int kWantedBytes = 1 << 20;  // the default /proc/sys/fs/pipe-max-size

  SplicePipe() { open(); }
  void open() {
    int ends[2];
    slots_ = 0;
    if (::pipe2(ends, O_CLOEXEC) == -1) return;
    read_end_ = UniqueFd(ends[0]);
    write_end_ = UniqueFd(ends[1]);
    fcntl(ends[1], F_SETPIPE_SZ, kWantedBytes);  // may be refused: keep the default size
    const int size = fcntl(ends[1], F_GETPIPE_SZ);
    // One slot in reserve: a range's pages may split where the count above did not expect.
    slots_ = size > 0 ? static_cast<uint64_t>(size) / kPage - 1 : 0;
  }

  UniqueFd read_end_;
  UniqueFd write_end_;
  uint64_t slots_ = 0;
};

constexpr int kSendBuffer = 4 << 20;

// A TCP connection from this host: loopback, or the peer's address is ours.
bool peer_is_this_host_over_tcp(int fd) {
  sockaddr_storage local{}, peer{};
  socklen_t local_size = sizeof local, peer_size = sizeof peer;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) == -1 ||
      getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) == -1) {
    return false;
  }
  if (peer.ss_family == AF_INET) {
    const in_addr_t peer_address = reinterpret_cast<const sockaddr_in&>(peer).sin_addr.s_addr;
    if ((ntohl(peer_address) >> 24) == 127) return true;
    return local.ss_family == AF_INET && reinterpret_cast<const sockaddr_in&>(local).sin_addr.s_addr == peer_address;
  }
  if (peer.ss_family == AF_INET6) {
    const in6_addr& peer_address = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&peer_address)) return true;
    if (IN6_IS_ADDR_V4MAPPED(&peer_address) && peer_address.s6_addr[12] == 127) return true;
    return local.ss_family == AF_INET6 &&
           std::memcmp(&reinterpret_cast<const sockaddr_in6&>(local).sin6_addr, &peer_address, sizeof peer_address) == 0;
  }
  return false;
}

// One connection's byte stream, plain or TLS. Replies from many workers are
// serialised by write_mutex_; a broken peer turns later sends into no-ops.
class Connection final : public Output {
 public:
  explicit Connection(int fd) : fd_(fd) {
    // A client that stops reading replies is dropped instead of blocking a
    // worker thread forever.
    timeval stall{.tv_sec = 30, .tv_usec = 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &stall, sizeof stall);
    // A deep send buffer lets a reply go out whole while the client is busy
    // with the previous one: fewer wake-ups on both sides. Beyond
    // net.core.wmem_max only with CAP_NET_ADMIN; otherwise the cap applies.
    if (setsockopt(fd_, SOL_SOCKET, SO_SNDBUFFORCE, &kSendBuffer, sizeof kSendBuffer) == -1) {
      setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &kSendBuffer, sizeof kSendBuffer);
    }
    // Every reply ends with a send without MSG_MORE, which must go out now:
    // Nagle's algorithm would hold small replies for the client's delayed ACK.
    // (Fails harmlessly on UNIX sockets.)
    const int one = 1;
    setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    splice_ = !peer_is_this_host_over_tcp(fd_);
  }

  void start_tls(const TlsContext& context) {
    int flags = fcntl(fd_, F_GETFL);
    fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    tls_.emplace(context, fd_);
    tls_->accept();
  }

  size_t read(std::span<std::byte> buffer) {
    if (tls_) return tls_->read(buffer);
    while (true) {
      ssize_t n = ::recv(fd_, buffer.data(), buffer.size(), 0);
      if (n >= 0) return static_cast<size_t>(n);
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) return 0;
      throw system_error(errno, "Failed to read from client");
    }
  }

  uint64_t file_capacity() const override { return splice_ && !tls_ ? SplicePipe::for_this_thread().capacity() : 0; }

  bool send_with_files(std::span<const ReplyPart> parts, std::span<const block::HostExtent> files) override {
    SplicePipe& pipe = SplicePipe::for_this_thread();
    if (tls_ || !pipe.fill(files)) return false;
    std::lock_guard lock(write_mutex_);
    if (broken_) {
      pipe.reset();
      return true;  // dropped like any reply to a broken client
    }
    try {
      for (size_t i = 0; i < parts.size(); ++i) {
        const bool more = i + 1 < parts.size();
        if (parts[i].memory.empty()) {
          pipe.drain_to(fd_, parts[i].file_bytes, more);
        } else {
          const std::span<const std::byte> bytes[] = {parts[i].memory};
          send_plain(bytes, more ? MSG_MORE : 0);
        }
      }
    } catch (const Error& error) {
      log::debug("kiln-nbd: dropping replies to a broken client: {}", error.what());
      broken_ = true;
      pipe.reset();
      ::shutdown(fd_, SHUT_RDWR);
    }
    return true;
  }

  void send(std::span<const std::span<const std::byte>> parts) override {
    std::lock_guard lock(write_mutex_);
    if (broken_) return;
    try {
      if (tls_) {
        for (auto part : parts) tls_->write(part);
      } else {
        send_plain(parts);
      }
    } catch (const Error& error) {
      log::debug("kiln-nbd: dropping replies to a broken client: {}", error.what());
      broken_ = true;
      ::shutdown(fd_, SHUT_RDWR);  // wake the reader
    }
  }

 private:
  void send_plain(std::span<const std::span<const std::byte>> parts, int flags = 0) {
    // In batches of up to kBatch parts; the caller holds write_mutex_, so
    // the reply stays contiguous.
    constexpr size_t kBatch = 64;
    std::array<iovec, kBatch> vectors{};
    while (!parts.empty()) {
      size_t count = 0, taken = 0;
      for (; taken < parts.size() && count < kBatch; ++taken) {
        if (parts[taken].empty()) continue;
        vectors[count++] = {const_cast<std::byte*>(parts[taken].data()), parts[taken].size()};
      }
      parts = parts.subspan(taken);
      send_vectors({vectors.data(), count}, parts.empty() ? flags : flags | MSG_MORE);
    }
  }

  void send_vectors(std::span<iovec> vectors, int flags) {
    iovec* next = vectors.data();
    size_t count = vectors.size();
    while (count > 0) {
      msghdr message{};
      message.msg_iov = next;
      message.msg_iovlen = count;
      ssize_t n = ::sendmsg(fd_, &message, MSG_NOSIGNAL | flags);
      if (n < 0) {
        if (errno == EINTR) continue;
        throw system_error(errno, "Failed to write to client");
      }
      size_t written = static_cast<size_t>(n);
      while (count > 0 && written >= next->iov_len) {
        written -= next->iov_len;
        ++next;
        --count;
      }
      if (count > 0) {
        next->iov_base = static_cast<std::byte*>(next->iov_base) + written;
        next->iov_len -= written;
      }
    }
  }

  int fd_;
  // Replies splice file data over UNIX sockets and to other hosts. To a TCP
  // client on this host they copy it: that client's side of the loopback
  // costs it more with spliced page-cache pages than the copy costs here
  // (nbdcopy: client CPU 0.87 vs 0.74 s per GiB, throughput +10%).
  bool splice_ = true;
  std::optional<TlsStream> tls_;
  std::mutex write_mutex_;
  bool broken_ = false;
};

}  // namespace

Server::Server(ServerOptions options, std::vector<UniqueFd> listeners)
    : options_(std::move(options)), listeners_(std::move(listeners)), stop_event_(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
      pool_(options_.workers) {
  if (!stop_event_.valid()) throw system_error(errno, "eventfd");
}

Server::~Server() {
  stop();
  std::unique_lock lock(mutex_);
  changed_.wait(lock, [&] { return threads_running_ == 0; });
}

void Server::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_.store(true);
  }
  changed_.notify_all();
  uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(stop_event_.get(), &one, sizeof one);
}

void Server::run() {
  std::vector<pollfd> fds;
  fds.push_back({.fd = stop_event_.get(), .events = POLLIN, .revents = 0});
  for (auto& listener : listeners_) fds.push_back({.fd = listener.get(), .events = POLLIN, .revents = 0});
  while (!stopping_.load()) {
    {
      // At most `shared` clients at once; others wait in the backlog.
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [&] { return stopping_.load() || active_.size() < options_.shared; });
      if (!options_.persistent && served_.load() > 0 && active_.empty()) break;
    }
    // Wake up now and then to notice the last client leaving.
    int ready = poll(fds.data(), fds.size(), options_.persistent ? -1 : 100);
    if (ready < 0 && errno != EINTR) throw system_error(errno, "poll");
    if (ready <= 0 || (fds[0].revents & POLLIN)) continue;
    for (size_t i = 1; i < fds.size(); ++i) {
      if (!(fds[i].revents & POLLIN)) continue;
      UniqueFd client(accept4(fds[i].fd, nullptr, nullptr, SOCK_CLOEXEC));
      if (!client.valid()) continue;
      serve_connection(std::move(client));
      break;  // re-check the client limit before accepting more
    }
  }
  // Ending: cut every connection so readers return, then wait for them.
  std::unique_lock lock(mutex_);
  for (int fd : active_) ::shutdown(fd, SHUT_RDWR);
  changed_.wait(lock, [&] { return threads_running_ == 0; });
}

void Server::serve_connection(UniqueFd fd) {
  std::lock_guard lock(mutex_);
  const int raw = fd.release();
  active_.insert(raw);
  ++threads_running_;
  served_.fetch_add(1);
  std::thread([this, raw] { connection_thread(raw); }).detach();
}

void Server::connection_thread(int raw_fd) {
  block_sigpipe_in_this_thread();  // it answers cached reads itself
  UniqueFd fd(raw_fd);
  {
    Connection connection(fd.get());
    SessionLimits limits = options_.limits;
    limits.buffers = &buffers_;
    limits.read_stats = &read_stats_;
    Session session(options_.export_config, limits, connection, pool_, options_.tls != nullptr, options_.tls != nullptr);
    try {
      session.start();
      while (!session.finished()) {
        if (session.tls_pending()) {
          connection.start_tls(*options_.tls);
          session.tls_started();
          continue;
        }
        std::span<std::byte> buffer = session.input();
        size_t n = connection.read(buffer);
        if (n == 0) {
          if (session.in_transmission()) log::debug("kiln-nbd: client disconnected without NBD_CMD_DISC");
          break;
        }
        session.consumed(n);
      }
      if (!session.end_reason().empty()) log::info("kiln-nbd: closing connection: {}", session.end_reason());
    } catch (const Error& error) {
      log::info("kiln-nbd: closing connection: {}", error.what());
    }
    session.drain();
  }
  std::lock_guard lock(mutex_);
  active_.erase(raw_fd);
  fd.reset();
  --threads_running_;
  changed_.notify_all();
}

}  // namespace kiln::nbd
