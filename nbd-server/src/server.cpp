#include "server.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
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

void WorkerPool::loop() {
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

// One connection's byte stream, plain or TLS. Replies from many workers are
// serialised by write_mutex_; a broken peer turns later sends into no-ops.
class Connection final : public Output {
 public:
  explicit Connection(int fd) : fd_(fd) {
    // A client that stops reading replies is dropped instead of blocking a
    // worker thread forever.
    timeval stall{.tv_sec = 30, .tv_usec = 0};
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &stall, sizeof stall);
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
  void send_plain(std::span<const std::span<const std::byte>> parts) {
    std::array<iovec, 4> vectors{};
    size_t count = 0;
    for (auto part : parts) {
      if (part.empty()) continue;
      if (count == vectors.size()) throw Error(EINVAL, "too many reply parts");
      vectors[count++] = {const_cast<std::byte*>(part.data()), part.size()};
    }
    iovec* next = vectors.data();
    while (count > 0) {
      msghdr message{};
      message.msg_iov = next;
      message.msg_iovlen = count;
      ssize_t n = ::sendmsg(fd_, &message, MSG_NOSIGNAL);
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
  UniqueFd fd(raw_fd);
  {
    Connection connection(fd.get());
    SessionLimits limits = options_.limits;
    limits.buffers = &buffers_;
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
