// Feeds arbitrary server byte streams, cut into arbitrary chunks with arbitrary
// descriptors attached, through MessageDecoder and ClientProtocol: the parser a
// client (and the emulator's ivshmem device) exposes to the server.
//
// Input: records of one control byte and up to 15 data bytes. Control bits 0-3:
// chunk length (clipped to what the decoder wants, 0 means 1); bits 4-5: number
// of descriptors received with the chunk.
#include <sys/eventfd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kiln/common/error.h"
#include "kiln/ivshmem/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kiln::ivshmem;
  constexpr int kMaxDescriptors = 256;  // stay far below the process limit
  MessageDecoder decoder;
  ClientProtocol protocol(4);
  int descriptors = 0;
  size_t position = 0;
  try {
    while (position < size) {
      uint8_t control = data[position++];
      size_t length = control & 0x0f;
      if (length == 0) length = 1;
      length = std::min<size_t>({length, decoder.bytes_wanted(), size - position});
      std::vector<kiln::UniqueFd> fds;
      for (int i = 0; i < ((control >> 4) & 3) && descriptors < kMaxDescriptors; ++i, ++descriptors) {
        fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
      }
      auto chunk = std::span(reinterpret_cast<const std::byte*>(data + position), length);
      position += length;
      if (auto message = decoder.feed(chunk, std::move(fds))) protocol.handle(std::move(*message));
    }
  } catch (const kiln::Error&) {
    // A protocol violation: the client closes the connection. Fine.
  }
  return 0;
}
