#include "kiln/machine/char_backend.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>

#include "kiln/common/error.h"

namespace kiln::machine {

namespace {

// Writes everything or gives up on the first error (a closed peer). Sockets
// use send() so a vanished peer cannot raise SIGPIPE.
bool write_all(int fd, std::span<const uint8_t> bytes, bool socket = false) {
  while (!bytes.empty()) {
    const ssize_t n = socket ? ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) : ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  return true;
}

// A file descriptor closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~Fd() { reset(); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

// Runs an input thread; stop() wakes it through a pipe and joins it.
class InputThread {
 public:
  InputThread() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw system_error(errno, "Could not create a pipe");
    wake_read_.reset(fds[0]);
    wake_write_.reset(fds[1]);
  }
  ~InputThread() { stop(); }
  template <typename F>
  void start(F body) {
    thread_ = std::thread(std::move(body));
  }
  void stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    const char byte = 0;
    (void)!::write(wake_write_.get(), &byte, 1);
    if (space_) {
      std::lock_guard guard(*lock_);
      space_->notify_all();
    }
    thread_.join();
  }
  bool stopping() const { return stopping_; }
  // Waits until `fd` is readable (true) or stop() was called (false).
  bool wait_readable(int fd) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {wake_read_.get(), POLLIN, 0}};
    for (;;) {
      if (stopping_) return false;
      const int n = ::poll(fds, 2, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 || (fds[1].revents & POLLIN)) return false;
      if (fds[0].revents) return true;
    }
  }
  // Delivers `bytes` under the device lock, waiting for room (never drops input).
  void deliver(CharReceiver& receiver, std::span<const uint8_t> bytes) {
    std::unique_lock guard(*lock_);
    while (!bytes.empty()) {
      space_->wait(guard, [&] { return stopping_ || receiver.receive_space() > 0; });
      if (stopping_) return;
      const size_t n = std::min(bytes.size(), receiver.receive_space());
      receiver.receive(bytes.first(n));
      bytes = bytes.subspan(n);
    }
  }
  void bind(std::mutex& lock, std::condition_variable& space) {
    lock_ = &lock;
    space_ = &space;
  }

 private:
  Fd wake_read_, wake_write_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
  std::mutex* lock_ = nullptr;
  std::condition_variable* space_ = nullptr;
};

class NullBackend final : public CharBackend {
 public:
  void write(std::span<const uint8_t>) override {}
};

class FileBackend final : public CharBackend {
 public:
  explicit FileBackend(const std::string& path) : fd_(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666)) {
    if (fd_.get() < 0) throw system_error(errno, "Could not open '{}'", path);
  }
  void write(std::span<const uint8_t> bytes) override { write_all(fd_.get(), bytes); }

 private:
  Fd fd_;
};

// The terminal's settings before raw mode, restored at exit and on fatal signals.
struct SavedTerminal {
  termios settings{};
  std::atomic<bool> saved{false};
};
SavedTerminal g_terminal;

void restore_terminal() {
  if (g_terminal.saved.exchange(false)) ::tcsetattr(STDIN_FILENO, TCSANOW, &g_terminal.settings);
}

void restore_terminal_and_die(int signal) {
  restore_terminal();
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

class StdioBackend final : public CharBackend {
 public:
  StdioBackend(const CharBackendOptions& options, bool mux) : options_(options), mux_(mux) {
    if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &g_terminal.settings) == 0) {
      termios raw = g_terminal.settings;
      raw.c_iflag &= ~static_cast<tcflag_t>(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
      raw.c_oflag |= OPOST;  // keep "\n" -> "\r\n" so guest output stays readable
      raw.c_lflag &= ~static_cast<tcflag_t>(ECHO | ECHONL | ICANON | IEXTEN);
      if (mux) raw.c_lflag &= ~static_cast<tcflag_t>(ISIG);  // Ctrl-C goes to the guest
      raw.c_cc[VMIN] = 1;
      raw.c_cc[VTIME] = 0;
      g_terminal.saved = true;
      std::atexit(restore_terminal);
      for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) std::signal(s, restore_terminal_and_die);
      ::tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    }
  }
  ~StdioBackend() override {
    input_.stop();
    restore_terminal();
  }
  void write(std::span<const uint8_t> bytes) override { write_all(STDOUT_FILENO, bytes); }
  void start_input(CharReceiver& receiver, std::mutex& lock, std::condition_variable& space) override {
    input_.bind(lock, space);
    input_.start([this, &receiver] {
      uint8_t buffer[256];
      bool escape = false;
      while (input_.wait_readable(STDIN_FILENO)) {
        const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) return;  // end of input: the guest just sees no more characters
        std::vector<uint8_t> out;
        for (ssize_t i = 0; i < n; ++i) {
          const uint8_t c = buffer[i];
          if (!mux_) {
            out.push_back(c);
          } else if (escape) {
            escape = false;
            if (c == 'x') {
              input_.deliver(receiver, out);  // what came before the escape still reaches the guest
              const char* msg = "kiln-system-x86_64: Terminated\r\n";
              (void)!::write(STDERR_FILENO, msg, std::strlen(msg));
              if (options_.on_quit) options_.on_quit();
              return;
            }
            if (c == 0x01) out.push_back(c);  // Ctrl-A Ctrl-A sends Ctrl-A
          } else if (c == 0x01) {
            escape = true;
          } else {
            out.push_back(c);
          }
        }
        input_.deliver(receiver, out);
      }
    });
  }

 private:
  CharBackendOptions options_;
  bool mux_;
  InputThread input_;
};

// unix:PATH — client by default; with "server" it listens (and unless "nowait",
// waits for the first connection before the machine starts).
class UnixSocketBackend final : public CharBackend {
 public:
  UnixSocketBackend(const std::string& path, bool server, bool wait) : path_(path), server_(server) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.size() >= sizeof address.sun_path) throw invalid_argument("UNIX socket path '{}' is too long", path);
    std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
    Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) throw system_error(errno, "Failed to create socket");
    if (!server) {
      if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
        throw system_error(errno, "Failed to connect to '{}'", path);
      connection_ = std::move(fd);
      return;
    }
    ::unlink(path.c_str());
    if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0)
      throw system_error(errno, "Failed to bind socket to {}", path);
    if (::listen(fd.get(), 1) != 0) throw system_error(errno, "Failed to listen on socket {}", path);
    listener_ = std::move(fd);
    if (wait) {
      std::fprintf(stderr, "kiln-system-x86_64: waiting for connection on: unix:%s,server=on\n", path.c_str());
      const int c = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) throw system_error(errno, "Failed to accept a connection on {}", path);
      connection_.reset(c);
    }
  }
  ~UnixSocketBackend() override {
    input_.stop();
    if (server_) ::unlink(path_.c_str());
  }
  void write(std::span<const uint8_t> bytes) override {
    std::lock_guard guard(connection_mutex_);
    if (connection_.get() >= 0 && !write_all(connection_.get(), bytes, true)) connection_.reset();
  }
  void start_input(CharReceiver& receiver, std::mutex& lock, std::condition_variable& space) override {
    input_.bind(lock, space);
    input_.start([this, &receiver] {
      for (;;) {
        int fd;
        {
          std::lock_guard guard(connection_mutex_);
          fd = connection_.get();
        }
        if (fd < 0) {
          // Server: wait for the next client; client: the peer is gone for good.
          if (!server_ || !input_.wait_readable(listener_.get())) return;
          const int c = ::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC);
          if (c < 0) continue;
          std::lock_guard guard(connection_mutex_);
          connection_.reset(c);
          continue;
        }
        if (!input_.wait_readable(fd)) return;
        uint8_t buffer[256];
        const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          std::lock_guard guard(connection_mutex_);
          if (connection_.get() == fd) connection_.reset();
          continue;
        }
        input_.deliver(receiver, std::span<const uint8_t>(buffer, static_cast<size_t>(n)));
      }
    });
  }

 private:
  std::string path_;
  bool server_;
  Fd listener_;
  std::mutex connection_mutex_;
  Fd connection_;
  InputThread input_;
};

bool option_enabled(std::string_view option, std::string_view name, bool& value) {
  // "server", "server=on", "server=off", "nowait" (for "wait").
  if (option == name) return value = true, true;
  if (option == std::string(name) + "=on") return value = true, true;
  if (option == std::string(name) + "=off") return value = false, true;
  if (option == "no" + std::string(name)) return value = false, true;
  return false;
}

}  // namespace

std::unique_ptr<CharBackend> open_char_backend(std::string_view spec, const CharBackendOptions& options) {
  if (spec == "stdio") return std::make_unique<StdioBackend>(options, false);
  if (spec == "mon:stdio") return std::make_unique<StdioBackend>(options, true);
  if (spec == "null" || spec == "none") return std::make_unique<NullBackend>();
  if (spec.starts_with("file:")) return std::make_unique<FileBackend>(std::string(spec.substr(5)));
  if (spec.starts_with("unix:")) {
    std::string_view rest = spec.substr(5);
    const size_t comma = rest.find(',');
    const std::string path(rest.substr(0, comma));
    bool server = false, wait = true;
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    while (!rest.empty()) {
      const size_t next = rest.find(',');
      const std::string_view option = rest.substr(0, next);
      if (!option_enabled(option, "server", server) && !option_enabled(option, "wait", wait))
        throw invalid_argument("Invalid parameter '{}'", option);
      rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
    }
    if (path.empty()) throw invalid_argument("'{}' is not a valid char driver", spec);
    return std::make_unique<UnixSocketBackend>(path, server, server && wait);
  }
  const size_t colon = spec.find(':');
  throw invalid_argument("'{}' is not a valid char driver", spec.substr(0, colon));
}

}  // namespace kiln::machine
