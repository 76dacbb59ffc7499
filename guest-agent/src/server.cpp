// The channel loop: one host connection at a time (as qemu-ga), bytes through
// the QMP stream splitter into the Agent, replies written back whole.
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/common/log.h"
#include "kiln/ga/server.h"
#include "kiln/qmp/stream.h"

namespace kiln::ga {

namespace {

enum class ReadResult { Data, HangUp, Signal };

class Server : public qmp::StreamSink {
 public:
  Server(const ServerOptions& options, Agent& agent, int signal_fd)
      : options_(options), agent_(agent), signal_fd_(signal_fd) {}

  void run();

  void on_message(std::string_view text) override {
    kiln::log::debug("received: {}", text);
    send(agent_.handle(text));
  }
  void on_stream_error(std::string_view desc) override {
    send(qmp::format_error(qmp::kGenericError, desc, std::nullopt));
  }

 private:
  void serve_listener(UniqueFd listener);
  void serve_device();
  // Reads and handles requests on `fd` until the peer goes away or a signal arrives.
  bool converse(int fd, bool is_device);
  void send(const std::string& reply);
  bool stop_requested();

  const ServerOptions& options_;
  Agent& agent_;
  int signal_fd_;
  int channel_fd_ = -1;
  bool write_failed_ = false;
  qmp::JsonStreamSplitter splitter_;
  std::array<char, 65536> buffer_;
};

void Server::send(const std::string& reply) {
  if (reply.empty() || write_failed_) return;
  kiln::log::debug("sending: {}", reply.substr(0, reply.size() - 1));
  std::string_view rest = reply;
  while (!rest.empty()) {
    ssize_t n = ::write(channel_fd_, rest.data(), rest.size());
    if (n > 0) {
      rest.remove_prefix(size_t(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      pollfd pfd{channel_fd_, POLLOUT, 0};
      ::poll(&pfd, 1, 1000);
      continue;
    }
    kiln::log::warn("failed to write reply: {}", kiln::errno_text(errno));
    write_failed_ = true;  // the host went away; the read side notices next
    return;
  }
}

bool Server::stop_requested() {
  signalfd_siginfo info;
  if (::read(signal_fd_, &info, sizeof info) == sizeof info) {
    kiln::log::info("received signal {}, exiting", info.ssi_signo);
    return true;
  }
  return false;
}

bool Server::converse(int fd, bool is_device) {
  channel_fd_ = fd;
  write_failed_ = false;
  splitter_.reset();
  for (;;) {
    std::array<pollfd, 2> fds = {{{fd, POLLIN, 0}, {signal_fd_, POLLIN, 0}}};
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      throw kiln::system_error(errno, "poll failed");
    }
    if (fds[1].revents && stop_requested()) return false;
    if (!fds[0].revents) continue;
    ssize_t n = ::read(fd, buffer_.data(), buffer_.size());
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) {
      // EOF or EIO: the host side closed the channel.
      kiln::log::debug("channel closed by the host");
      return true;
    }
    splitter_.feed(std::string_view(buffer_.data(), size_t(n)), *this);
    if (write_failed_ && !is_device) return true;
  }
}

void Server::serve_listener(UniqueFd listener) {
  for (;;) {
    std::array<pollfd, 2> fds = {{{listener.get(), POLLIN, 0}, {signal_fd_, POLLIN, 0}}};
    if (::poll(fds.data(), fds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      throw kiln::system_error(errno, "poll failed");
    }
    if (fds[1].revents && stop_requested()) return;
    if (!fds[0].revents) continue;
    UniqueFd client(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!client.valid()) {
      kiln::log::warn("accept failed: {}", kiln::errno_text(errno));
      continue;
    }
    kiln::log::debug("host connected");
    if (!converse(client.get(), false)) return;
  }
}

UniqueFd open_device(const ServerOptions& options, const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_NOCTTY | O_NONBLOCK | O_CLOEXEC));
  if (!fd.valid()) return fd;
  if (options.method == "isa-serial") {
    termios tio;
    if (::tcgetattr(fd.get(), &tio) == 0) {
      ::cfmakeraw(&tio);
      tio.c_cc[VMIN] = 1;
      tio.c_cc[VTIME] = 0;
      ::tcsetattr(fd.get(), TCSANOW, &tio);
    }
  }
  return fd;
}

void Server::serve_device() {
  std::string path = options_.path.empty() ? default_channel_path(options_.method) : options_.path;
  auto wait = [&](std::chrono::milliseconds delay) {
    pollfd pfd{signal_fd_, POLLIN, 0};
    if (::poll(&pfd, 1, int(delay.count())) > 0 && stop_requested()) return false;
    return true;
  };
  bool first = true;
  for (;;) {
    UniqueFd fd = open_device(options_, path);
    if (!fd.valid()) {
      if (first && !options_.retry_path) throw kiln::system_error(errno, "failed to open channel '{}'", path);
      if (first) kiln::log::info("waiting for channel '{}' to appear", path);
      first = false;
      if (!wait(std::chrono::milliseconds(1000))) return;
      continue;
    }
    first = false;
    if (!converse(fd.get(), true)) return;
    // virtio-serial reports a hang-up while the host end is closed; reopen
    // after a pause instead of spinning on POLLHUP.
    fd.reset();
    if (!wait(std::chrono::milliseconds(200))) return;
  }
}

UniqueFd listen_unix(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) throw kiln::invalid_argument("socket path '{}' is too long", path);
  std::memcpy(address.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throw kiln::system_error(errno, "failed to create socket for '{}'", path);
  ::unlink(path.c_str());  // a stale socket from an earlier run
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
    throw kiln::system_error(errno, "failed to bind socket '{}'", path);
  }
  if (::listen(fd.get(), 8) < 0) throw kiln::system_error(errno, "failed to listen on '{}'", path);
  return fd;
}

UniqueFd listen_vsock(const std::string& spec) {
  unsigned cid = VMADDR_CID_ANY, port = 0;
  char extra;
  if (std::sscanf(spec.c_str(), "%u:%u%c", &cid, &port, &extra) != 2) {
    throw kiln::invalid_argument("vsock path '{}' must be CID:PORT", spec);
  }
  UniqueFd fd(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) throw kiln::system_error(errno, "failed to create vsock socket");
  sockaddr_vm address{};
  address.svm_family = AF_VSOCK;
  address.svm_cid = cid;
  address.svm_port = port;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
    throw kiln::system_error(errno, "failed to bind vsock '{}'", spec);
  }
  if (::listen(fd.get(), 8) < 0) throw kiln::system_error(errno, "failed to listen on vsock '{}'", spec);
  return fd;
}

void Server::run() {
  const std::string& method = options_.method;
  if (method == "unix-listen") {
    if (options_.path.empty()) throw kiln::invalid_argument("unix-listen needs a socket path (-p)");
    serve_listener(listen_unix(options_.path));
  } else if (method == "vsock-listen") {
    if (options_.path.empty()) throw kiln::invalid_argument("vsock-listen needs CID:PORT (-p)");
    serve_listener(listen_vsock(options_.path));
  } else if (method == "virtio-serial" || method == "isa-serial") {
    serve_device();
  } else {
    throw kiln::invalid_argument("invalid method '{}' (virtio-serial, isa-serial, unix-listen or vsock-listen)", method);
  }
}

void daemonize_now() {
  pid_t pid = ::fork();
  if (pid < 0) throw kiln::system_error(errno, "failed to daemonize");
  if (pid > 0) ::_exit(0);
  ::setsid();
  pid = ::fork();
  if (pid < 0) throw kiln::system_error(errno, "failed to daemonize");
  if (pid > 0) ::_exit(0);
  ::umask(022);
  if (::chdir("/") < 0) throw kiln::system_error(errno, "failed to change to /");
  int null_fd = ::open("/dev/null", O_RDWR);
  if (null_fd >= 0) {
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
    ::dup2(null_fd, 2);
    if (null_fd > 2) ::close(null_fd);
  }
}

UniqueFd write_pidfile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) throw kiln::system_error(errno, "failed to open pid file '{}'", path);
  if (::lockf(fd.get(), F_TLOCK, 0) < 0) throw kiln::Error(EBUSY, fmt::format("pid file '{}' is locked by another process", path));
  std::string text = fmt::format("{}\n", ::getpid());
  if (::ftruncate(fd.get(), 0) < 0 || ::write(fd.get(), text.data(), text.size()) != ssize_t(text.size())) {
    throw kiln::system_error(errno, "failed to write pid file '{}'", path);
  }
  return fd;
}

}  // namespace

void run_server(const ServerOptions& options) {
  ::signal(SIGPIPE, SIG_IGN);
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  if (options.daemonize) daemonize_now();
  UniqueFd pidfile;
  // Like qemu-ga, a pid file is written when daemonized (or asked for with -f).
  if (options.daemonize || options.pidfile_requested) pidfile = write_pidfile(options.pidfile);
  // Signals are taken through a signalfd so the loop can thaw and exit cleanly.
  ::pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  UniqueFd signal_fd(::signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd.valid()) throw kiln::system_error(errno, "failed to create signalfd");

  Agent agent(options.agent);
  Server server(options, agent, signal_fd.get());
  try {
    server.run();
  } catch (...) {
    agent.shutdown_cleanup();
    throw;
  }
  agent.shutdown_cleanup();
  if (pidfile.valid()) ::unlink(options.pidfile.c_str());
  if (options.method == "unix-listen") ::unlink(options.path.c_str());
}

}  // namespace kiln::ga
