// Small PC devices: isa-debug-exit, the POST diagnostic port 0x80 and system
// control port A (0x92: fast A20 gate and fast reset).
#pragma once

#include <cstdint>
#include <functional>

#include "kiln/emulator/io.h"

namespace kiln::machine {

// qemu's isa-debug-exit: writing v makes the emulator exit with status (v << 1) | 1.
class DebugExit final : public emu::IoHandler {
 public:
  explicit DebugExit(std::function<void(int status)> on_exit) : on_exit_(std::move(on_exit)) {}
  uint32_t io_read(uint16_t, unsigned) override { return 0xffffffff; }
  void io_write(uint16_t, unsigned, uint32_t value) override {
    on_exit_(static_cast<int>((value << 1) | 1));
  }

 private:
  std::function<void(int)> on_exit_;
};

// Port 0x80: POST codes, written by firmware and used as an I/O delay; ignored.
class PostPort final : public emu::IoHandler {
 public:
  uint32_t io_read(uint16_t, unsigned) override { return 0xff; }
  void io_write(uint16_t, unsigned, uint32_t) override {}
};

// Port 0x92: bit 1 is the A20 gate (kept and read back; the address space
// always has A20 enabled), a 0 -> 1 transition of bit 0 requests a reset.
class SystemControlPortA final : public emu::IoHandler {
 public:
  explicit SystemControlPortA(std::function<void()> on_reset) : on_reset_(std::move(on_reset)) {}
  uint32_t io_read(uint16_t, unsigned) override { return value_; }
  void io_write(uint16_t, unsigned, uint32_t value) override {
    const bool reset = (value & 1) && !(value_ & 1);
    value_ = static_cast<uint8_t>(value & 0x03);
    if (reset) {
      value_ &= 0x02;  // the reset bit reads back clear after the reset
      on_reset_();
    }
  }
  void reset() { value_ = 0x02; }  // A20 on

 private:
  std::function<void()> on_reset_;
  uint8_t value_ = 0x02;
};

}  // namespace kiln::machine
