#include "kiln/qmp/client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <linux/vm_sockets.h>
#include <cstdio>
#include <unistd.h>

#include <array>
#include <cstring>
#include <random>

#include "kiln/common/error.h"

namespace kiln::qmp {

AgentClient::AgentClient(const std::string& socket_path, std::chrono::milliseconds timeout)
    : path_(socket_path), timeout_(timeout) {
  if (socket_path.rfind("vsock:", 0) == 0) {
    connect_vsock(socket_path.substr(6));
    return;
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof address.sun_path) throw kiln::invalid_argument("socket path '{}' is too long", socket_path);
  std::memcpy(address.sun_path, socket_path.data(), socket_path.size());
  fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd_.valid()) throw kiln::system_error(errno, "failed to create socket");
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
    throw kiln::system_error(errno, "failed to connect to agent socket '{}'", socket_path);
  }
}

void AgentClient::connect_vsock(const std::string& spec) {
  unsigned cid = 0, port = 0;
  char extra;
  if (std::sscanf(spec.c_str(), "%u:%u%c", &cid, &port, &extra) != 2) {
    throw kiln::invalid_argument("vsock address '{}' must be vsock:CID:PORT", path_);
  }
  fd_.reset(::socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd_.valid()) throw kiln::system_error(errno, "failed to create vsock socket for '{}'", path_);
  sockaddr_vm address{};
  address.svm_family = AF_VSOCK;
  address.svm_cid = cid;
  address.svm_port = port;
  if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) < 0) {
    throw kiln::system_error(errno, "failed to connect to agent at '{}'", path_);
  }
}

void AgentClient::on_message(std::string_view text) {
  try {
    replies_.push_back(Json::parse(text.begin(), text.end()));
  } catch (const Json::exception&) {
    // Not JSON: an agent would never send this; skip it like noise on the line.
  }
}

void AgentClient::on_stream_error(std::string_view) {}

void AgentClient::send_text(const std::string& text) {
  std::string_view rest = text;
  while (!rest.empty()) {
    ssize_t n = ::send(fd_.get(), rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw kiln::system_error(errno, "failed to send to agent socket '{}'", path_);
    rest.remove_prefix(size_t(n));
  }
}

bool AgentClient::next_reply(Json& reply, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<char, 65536> buffer;
  while (replies_.empty()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd{fd_.get(), POLLIN, 0};
    int ready = ::poll(&pfd, 1, int(left.count()));
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) throw kiln::system_error(errno, "poll on agent socket '{}' failed", path_);
    if (ready == 0) return false;
    ssize_t n = ::read(fd_.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw kiln::system_error(errno, "failed to read from agent socket '{}'", path_);
    if (n == 0) throw kiln::Error(ECONNRESET, "agent socket '" + path_ + "' was closed by the agent");
    splitter_.feed(std::string_view(buffer.data(), size_t(n)), *this);
  }
  reply = std::move(replies_.front());
  replies_.pop_front();
  return true;
}

void AgentClient::sync() {
  std::random_device random;
  std::int64_t id = std::int64_t(random() & 0x7fffffff);
  // 0xFF makes the agent drop any partial input left by an earlier client.
  send_text("\xff" + to_qmp_text(Json{{"execute", "guest-sync-delimited"}, {"arguments", {{"id", id}}}}) + "\n");
  auto deadline = std::chrono::steady_clock::now() + timeout_;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    Json reply;
    if (left.count() <= 0 || !next_reply(reply, left)) {
      throw kiln::Error(ETIMEDOUT, "no guest agent answered on '" + path_ + "' within " +
                                       std::to_string(timeout_.count()) + " ms");
    }
    // Stale replies meant for an earlier client are skipped.
    if (reply.is_object() && reply.contains("return") && reply["return"] == id) return;
  }
}

Json AgentClient::execute(const std::string& command, const Json& arguments) {
  Json request = {{"execute", command}};
  if (!arguments.empty()) request["arguments"] = arguments;
  send_text(to_qmp_text(request) + "\n");
  Json reply;
  if (!next_reply(reply, timeout_)) {
    throw kiln::Error(ETIMEDOUT, "guest agent on '" + path_ + "' did not answer " + command + " within " +
                                     std::to_string(timeout_.count()) + " ms");
  }
  if (reply.contains("error")) {
    const Json& error = reply["error"];
    throw CommandError(error.value("desc", std::string("unknown error")), error.value("class", std::string(kGenericError)));
  }
  if (!reply.contains("return")) throw kiln::Error(EPROTO, "unexpected reply from guest agent: " + to_qmp_text(reply));
  return reply["return"];
}

void AgentClient::execute_no_reply(const std::string& command, const Json& arguments, std::chrono::milliseconds grace) {
  Json request = {{"execute", command}};
  if (!arguments.empty()) request["arguments"] = arguments;
  send_text(to_qmp_text(request) + "\n");
  Json reply;
  try {
    if (!next_reply(reply, grace)) return;
  } catch (const kiln::Error&) {
    return;  // the guest went down: what was asked for
  }
  if (reply.contains("error")) {
    const Json& error = reply["error"];
    throw CommandError(error.value("desc", std::string("unknown error")), error.value("class", std::string(kGenericError)));
  }
}

}  // namespace kiln::qmp
