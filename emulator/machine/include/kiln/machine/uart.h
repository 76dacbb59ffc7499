// 16550A UART: registers with DLAB, 16-byte receive FIFO with trigger levels,
// LSR (DR, OE, THRE, TEMT), IER/IIR with line-status, receive-data,
// character-timeout, THR-empty and modem-status interrupts, MCR loopback
// (MSR follows MCR), scratch register. Transmission is immediate: the
// transmitter is empty again as soon as THR is written (no baud-rate timing).
#pragma once

#include <array>
#include <cstdint>
#include <functional>

#include "kiln/emulator/io.h"
#include "kiln/machine/char_backend.h"

namespace kiln::machine {

class Uart16550 : public emu::IoHandler, public CharReceiver {
 public:
  // `irq` drives the interrupt line; `rx_space` is called when the receive FIFO frees room.
  Uart16550(uint16_t base, CharBackend& backend, std::function<void(bool)> irq, std::function<void()> rx_space = {});

  uint32_t io_read(uint16_t port, unsigned size) override;
  void io_write(uint16_t port, unsigned size, uint32_t value) override;
  size_t receive_space() const override;
  void receive(std::span<const uint8_t> bytes) override;
  void reset();

 private:
  static constexpr size_t kFifoSize = 16;
  bool fifo_enabled() const { return fcr_ & 1; }
  size_t capacity() const { return fifo_enabled() ? kFifoSize : 1; }
  void push_rx(uint8_t byte);
  uint8_t pop_rx();
  void clear_rx();
  uint8_t interrupt_id() const;
  void update_irq();
  void set_modem_status(uint8_t lines);

  uint16_t base_;
  CharBackend& backend_;
  std::function<void(bool)> irq_;
  std::function<void()> rx_space_;
  std::array<uint8_t, kFifoSize> rx_{};
  size_t rx_head_ = 0, rx_count_ = 0;
  uint16_t divisor_ = 12;
  uint8_t ier_ = 0, fcr_ = 0, lcr_ = 0, mcr_ = 0, lsr_ = 0, msr_ = 0, scr_ = 0;
  uint8_t trigger_ = 1;
  bool thr_interrupt_ = false;
  bool irq_level_ = false;
};

}  // namespace kiln::machine
