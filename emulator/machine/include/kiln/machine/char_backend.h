// Character backends behind a serial port, named as qemu's -serial argument:
// stdio, mon:stdio (stdio with qemu's Ctrl-A escapes; there is no monitor
// yet), file:PATH, none (also null), unix:PATH[,server][,nowait] (qemu 7's
// server=on/wait=off spellings are accepted too).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>

namespace kiln::machine {

// The device side: called with the machine's device lock held.
class CharReceiver {
 public:
  virtual ~CharReceiver() = default;
  // How many bytes receive() accepts now (flow control: input waits, never drops).
  virtual size_t receive_space() const = 0;
  virtual void receive(std::span<const uint8_t> bytes) = 0;
};

class CharBackend {
 public:
  virtual ~CharBackend() = default;
  // Output from the device (device lock held). Never throws: a broken
  // connection drops the bytes, as a disconnected serial line would.
  virtual void write(std::span<const uint8_t> bytes) = 0;
  // Starts an input thread delivering bytes to `receiver` under `lock`. It
  // waits on `space` (which the device notifies when it frees room) when the
  // receiver is full. Stopped by the destructor.
  virtual void start_input(CharReceiver& receiver, std::mutex& lock, std::condition_variable& space) {
    (void)receiver, (void)lock, (void)space;
  }
};

struct CharBackendOptions {
  // mon:stdio (-nographic's default) interprets qemu's escapes on input:
  // Ctrl-A x quits through this callback, Ctrl-A Ctrl-A sends Ctrl-A; Ctrl-C
  // goes to the guest.
  std::function<void()> on_quit;
};

// Opens the backend named by `spec`; kiln::Error with qemu's wording on a bad name.
std::unique_ptr<CharBackend> open_char_backend(std::string_view spec, const CharBackendOptions& options);

}  // namespace kiln::machine
