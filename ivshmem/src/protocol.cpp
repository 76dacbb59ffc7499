#include "kiln/ivshmem/protocol.h"

#include <cstring>

#include "kiln/common/error.h"

namespace kiln::ivshmem {

void encode_value(int64_t value, std::span<std::byte, kMessageSize> out) {
  auto bits = static_cast<uint64_t>(value);
  for (size_t i = 0; i < kMessageSize; ++i) out[i] = static_cast<std::byte>(bits >> (8 * i));
}

int64_t decode_value(std::span<const std::byte, kMessageSize> in) {
  uint64_t bits = 0;
  for (size_t i = 0; i < kMessageSize; ++i) bits |= static_cast<uint64_t>(in[i]) << (8 * i);
  return static_cast<int64_t>(bits);
}

std::optional<Message> MessageDecoder::feed(std::span<const std::byte> chunk, std::vector<UniqueFd> fds) {
  if (chunk.size() > bytes_wanted()) {
    throw invalid_argument("ivshmem message chunk of {} bytes exceeds the {} bytes still missing", chunk.size(),
                           bytes_wanted());
  }
  if (fds.size() + (fd_.valid() ? 1 : 0) > 1) {
    throw Error(EPROTO, "sent more than one file descriptor with one message");
  }
  if (!fds.empty()) fd_ = std::move(fds.front());
  std::memcpy(buffer_ + filled_, chunk.data(), chunk.size());
  filled_ += chunk.size();
  if (filled_ < kMessageSize) return std::nullopt;
  filled_ = 0;
  return Message{decode_value(std::span<const std::byte, kMessageSize>(buffer_)), std::move(fd_)};
}

namespace {

void reject_descriptor(const Message& message, const char* what) {
  if (message.fd.valid()) throw Error(EPROTO, fmt::format("sent a file descriptor with {}", what));
}

}  // namespace

ClientEvent ClientProtocol::handle(Message message) {
  switch (state_) {
    case State::kExpectVersion:
      reject_descriptor(message, "the protocol version");
      if (message.value != kProtocolVersion) {
        throw Error(EPROTO, fmt::format("unsupported protocol version {} (only version {} is supported)",
                                        message.value, kProtocolVersion));
      }
      state_ = State::kExpectId;
      return {ClientEvent::Kind::kVersion};
    case State::kExpectId:
      reject_descriptor(message, "our peer ID");
      if (message.value < 0 || message.value > kMaxPeerId) {
        throw Error(EPROTO, fmt::format("assigned the invalid peer ID {}", message.value));
      }
      own_id_ = static_cast<PeerId>(message.value);
      state_ = State::kExpectSharedMemory;
      return {ClientEvent::Kind::kOwnId, *own_id_};
    case State::kExpectSharedMemory:
      if (message.value != kSharedMemoryMarker || !message.fd.valid()) {
        throw Error(EPROTO, fmt::format("sent {}{} where the shared memory (-1 with a descriptor) "
                                        "was expected",
                                        message.value, message.fd.valid() ? " with a descriptor" : ""));
      }
      shared_memory_ = make_shared_fd(std::move(message.fd));
      state_ = State::kRunning;
      return {ClientEvent::Kind::kSharedMemory, *own_id_, 0, true, shared_memory_};
    case State::kRunning:
      return handle_peer_message(message.value, std::move(message.fd));
  }
  throw Error(EPROTO, "client protocol in an impossible state");
}

ClientEvent ClientProtocol::handle_peer_message(int64_t value, UniqueFd fd) {
  if (value < 0 || value > kMaxPeerId) {
    throw Error(EPROTO, fmt::format("sent the invalid peer ID {}", value));
  }
  const auto id = static_cast<PeerId>(value);
  if (!fd.valid()) {
    if (id == *own_id_) throw Error(EPROTO, fmt::format("announced our own ID {} as gone", id));
    const bool known = peers_.remove(id);
    return {ClientEvent::Kind::kPeerGone, id, 0, known};
  }
  if (id == *own_id_) {
    const auto vector = static_cast<unsigned>(own_vectors_.size());
    if (vector >= max_vectors_) return {ClientEvent::Kind::kVectorIgnored, id, vector};
    own_vectors_.push_back(make_shared_fd(std::move(fd)));
    return {ClientEvent::Kind::kOwnVector, id, vector, true, own_vectors_.back()};
  }
  const Peer* peer = peers_.find(id);
  const auto vector = peer == nullptr ? 0u : static_cast<unsigned>(peer->vectors.size());
  if (vector >= max_vectors_) return {ClientEvent::Kind::kVectorIgnored, id, vector};
  auto shared = make_shared_fd(std::move(fd));
  peers_.add_vector(id, shared);
  return {ClientEvent::Kind::kPeerVector, id, vector, true, std::move(shared)};
}

}  // namespace kiln::ivshmem
