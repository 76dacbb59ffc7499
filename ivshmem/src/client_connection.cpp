#include "kiln/ivshmem/client_connection.h"

#include "kiln/common/error.h"
#include "kiln/ivshmem/socket.h"

namespace kiln::ivshmem {

ClientConnection::ClientConnection(std::string socket_path, unsigned max_vectors)
    : socket_path_(std::move(socket_path)), socket_(connect_unix(socket_path_)), protocol_(max_vectors) {}

bool ClientConnection::read_available(std::vector<ClientEvent>& events) {
  while (socket_.valid()) {
    std::optional<Message> message;
    ReceiveStatus status;
    try {
      status = receive_chunk(socket_.get(), decoder_, message);
      if (status == ReceiveStatus::kMessage) {
        received_any_ = true;
        events.push_back(protocol_.handle(std::move(*message)));
      }
    } catch (const Error& error) {
      socket_.reset();  // the spec: close the connection on error
      throw with_context(error, fmt::format("ivshmem server at '{}'", socket_path_));
    }
    if (status == ReceiveStatus::kWouldBlock) return true;
    if (status == ReceiveStatus::kClosed) socket_.reset();
  }
  return false;
}

}  // namespace kiln::ivshmem
