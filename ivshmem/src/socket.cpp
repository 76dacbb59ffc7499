#include "kiln/ivshmem/socket.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include "kiln/common/error.h"

namespace kiln::ivshmem {
namespace {

// Room for a few descriptors so that a misbehaving server sending several
// with one message is detected instead of silently truncated.
constexpr size_t kMaxDescriptorsPerChunk = 4;

sockaddr_un unix_address(const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof address.sun_path) {
    throw invalid_argument("invalid unix socket path '{}' (1 to {} characters)", path, sizeof address.sun_path - 1);
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  return address;
}

UniqueFd new_unix_socket() {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw system_error(errno, "cannot create a unix socket");
  return UniqueFd(fd);
}

}  // namespace

void set_nonblocking(int fd) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    throw system_error(errno, "cannot make descriptor {} non-blocking", fd);
  }
}

size_t send_message(int socket, int64_t value, int fd, size_t offset) {
  std::byte bytes[kMessageSize];
  encode_value(value, bytes);
  iovec iov{bytes + offset, kMessageSize - offset};
  msghdr header{};
  header.msg_iov = &iov;
  header.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))]{};
  if (fd >= 0 && offset == 0) {
    header.msg_control = control;
    header.msg_controllen = sizeof control;
    cmsghdr* cmsg = CMSG_FIRSTHDR(&header);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  }
  for (;;) {
    ssize_t sent = ::sendmsg(socket, &header, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent >= 0) return static_cast<size_t>(sent);
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    throw system_error(errno, "cannot send an ivshmem message");
  }
}

ReceiveStatus receive_chunk(int socket, MessageDecoder& decoder, std::optional<Message>& message) {
  std::byte bytes[kMessageSize];
  iovec iov{bytes, decoder.bytes_wanted()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxDescriptorsPerChunk)];
  msghdr header{};
  header.msg_iov = &iov;
  header.msg_iovlen = 1;
  header.msg_control = control;
  header.msg_controllen = sizeof control;
  ssize_t received;
  do {
    received = ::recvmsg(socket, &header, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (received < 0 && errno == EINTR);
  if (received < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return ReceiveStatus::kWouldBlock;
    // A server closing with our (never expected) bytes unread resets the connection.
    if (errno == ECONNRESET && !decoder.mid_message()) return ReceiveStatus::kClosed;
    throw system_error(errno, "cannot receive");
  }

  std::vector<UniqueFd> fds;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&header); cmsg != nullptr; cmsg = CMSG_NXTHDR(&header, cmsg)) {
    if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  if (header.msg_flags & MSG_CTRUNC) {
    // Also what the kernel reports when our descriptor table is full.
    throw Error(EPROTO, "file descriptors were dropped (more than one message carries, or our descriptor limit)");
  }
  if (received == 0) {
    if (decoder.mid_message()) throw Error(EPROTO, "closed the connection in the middle of a message");
    return ReceiveStatus::kClosed;
  }
  message = decoder.feed(std::span<const std::byte>(bytes, static_cast<size_t>(received)), std::move(fds));
  return message ? ReceiveStatus::kMessage : ReceiveStatus::kPartial;
}

UniqueFd listen_unix(const std::string& path) {
  sockaddr_un address = unix_address(path);
  struct stat info {};
  if (::lstat(path.c_str(), &info) == 0) {
    if (!S_ISSOCK(info.st_mode)) throw Error(EEXIST, fmt::format("'{}' exists and is not a socket", path));
    // Replace a socket left behind by a crashed server, never a live one.
    UniqueFd probe = new_unix_socket();
    if (::connect(probe.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      throw Error(EADDRINUSE, fmt::format("socket '{}' is in use by another server", path));
    }
    ::unlink(path.c_str());
  }
  UniqueFd socket = new_unix_socket();
  if (::bind(socket.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
    throw system_error(errno, "cannot bind socket '{}'", path);
  }
  if (::listen(socket.get(), 64) < 0) {
    int err = errno;
    ::unlink(path.c_str());
    throw system_error(err, "cannot listen on socket '{}'", path);
  }
  set_nonblocking(socket.get());
  return socket;
}

UniqueFd connect_unix(const std::string& path) {
  sockaddr_un address = unix_address(path);
  UniqueFd socket = new_unix_socket();
  int result;
  do {
    result = ::connect(socket.get(), reinterpret_cast<sockaddr*>(&address), sizeof address);
  } while (result < 0 && errno == EINTR);
  if (result < 0) throw system_error(errno, "cannot connect to '{}'", path);
  set_nonblocking(socket.get());
  return socket;
}

}  // namespace kiln::ivshmem
