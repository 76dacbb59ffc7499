#include "kiln/machine/uart.h"

namespace kiln::machine {

namespace {

// LSR bits.
constexpr uint8_t kDataReady = 0x01, kOverrun = 0x02, kBreakAndErrors = 0x1e, kThrEmpty = 0x20,
                  kTransmitterEmpty = 0x40, kFifoError = 0x80;
// IER bits.
constexpr uint8_t kIerReceive = 0x01, kIerThrEmpty = 0x02, kIerLineStatus = 0x04, kIerModemStatus = 0x08;
// IIR interrupt identifications.
constexpr uint8_t kIirNone = 0x01, kIirLineStatus = 0x06, kIirReceive = 0x04, kIirTimeout = 0x0c,
                  kIirThrEmpty = 0x02, kIirModemStatus = 0x00;
// MCR bits.
constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08, kMcrLoop = 0x10;
// MSR status bits (high nibble) with their delta bits (low nibble).
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80, kMsrTeri = 0x04;
constexpr uint8_t kTriggerLevels[4] = {1, 4, 8, 14};

}  // namespace

Uart16550::Uart16550(uint16_t base, CharBackend& backend, std::function<void(bool)> irq, std::function<void()> rx_space)
    : base_(base), backend_(backend), irq_(std::move(irq)), rx_space_(std::move(rx_space)) {
  reset();
}

void Uart16550::reset() {
  rx_head_ = rx_count_ = 0;
  divisor_ = 12;
  ier_ = fcr_ = lcr_ = mcr_ = scr_ = 0;
  lsr_ = kThrEmpty | kTransmitterEmpty;
  msr_ = kMsrCts | kMsrDsr | kMsrDcd;  // a connected line, as qemu presents its backends
  trigger_ = 1;
  thr_interrupt_ = false;
  update_irq();
}

size_t Uart16550::receive_space() const {
  if (mcr_ & kMcrLoop) return 0;  // in loopback the line is disconnected from the backend
  return capacity() - rx_count_;
}

void Uart16550::receive(std::span<const uint8_t> bytes) {
  for (uint8_t b : bytes) push_rx(b);
  update_irq();
}

void Uart16550::push_rx(uint8_t byte) {
  if (rx_count_ >= capacity()) {
    lsr_ |= kOverrun;
    // Without FIFO the new character overwrites the unread one; with FIFO it is lost.
    if (!fifo_enabled()) rx_[rx_head_] = byte;
    return;
  }
  rx_[(rx_head_ + rx_count_) % kFifoSize] = byte;
  ++rx_count_;
  lsr_ |= kDataReady;
}

uint8_t Uart16550::pop_rx() {
  if (rx_count_ == 0) return 0;
  const uint8_t b = rx_[rx_head_];
  rx_head_ = (rx_head_ + 1) % kFifoSize;
  if (--rx_count_ == 0) lsr_ &= static_cast<uint8_t>(~kDataReady);
  if (rx_space_) rx_space_();
  return b;
}

void Uart16550::clear_rx() {
  rx_head_ = rx_count_ = 0;
  lsr_ &= static_cast<uint8_t>(~kDataReady);
  if (rx_space_) rx_space_();
}

uint8_t Uart16550::interrupt_id() const {
  if ((ier_ & kIerLineStatus) && (lsr_ & kBreakAndErrors)) return kIirLineStatus;
  if ((ier_ & kIerReceive) && rx_count_ > 0) {
    // Without a character-time model, data below the trigger level is reported
    // as a timeout at once rather than after four character times.
    return !fifo_enabled() || rx_count_ >= trigger_ ? kIirReceive : kIirTimeout;
  }
  if ((ier_ & kIerThrEmpty) && thr_interrupt_) return kIirThrEmpty;
  if ((ier_ & kIerModemStatus) && (msr_ & 0x0f)) return kIirModemStatus;
  return kIirNone;
}

void Uart16550::update_irq() {
  // Like qemu (the reference for guest tests) OUT2 does not gate the line.
  const bool level = interrupt_id() != kIirNone;
  if (level != irq_level_) {
    irq_level_ = level;
    if (irq_) irq_(level);
  }
}

void Uart16550::set_modem_status(uint8_t lines) {
  const uint8_t old = msr_;
  uint8_t deltas = msr_ & 0x0f;
  if ((old ^ lines) & kMsrCts) deltas |= 0x01;
  if ((old ^ lines) & kMsrDsr) deltas |= 0x02;
  if ((old & kMsrRi) && !(lines & kMsrRi)) deltas |= kMsrTeri;  // trailing edge of RI
  if ((old ^ lines) & kMsrDcd) deltas |= 0x08;
  msr_ = static_cast<uint8_t>(lines | deltas);
}

uint32_t Uart16550::io_read(uint16_t port, unsigned) {
  const bool dlab = lcr_ & 0x80;
  uint8_t v = 0xff;
  switch (port - base_) {
    case 0:
      if (dlab) return divisor_ & 0xff;
      v = pop_rx();
      break;
    case 1: return dlab ? divisor_ >> 8 : ier_;
    case 2: {
      const uint8_t id = interrupt_id();
      if (id == kIirThrEmpty) thr_interrupt_ = false;  // reading IIR acknowledges THR empty
      v = static_cast<uint8_t>(id | (fifo_enabled() ? 0xc0 : 0));
      break;
    }
    case 3: return lcr_;
    case 4: return mcr_;
    case 5:
      v = lsr_;
      if (rx_count_ > 0 && fifo_enabled() && (lsr_ & kBreakAndErrors)) v |= kFifoError;
      lsr_ &= static_cast<uint8_t>(~(kBreakAndErrors | kFifoError));
      break;
    case 6:
      v = msr_;
      msr_ &= 0xf0;
      break;
    case 7: return scr_;
    default: return 0xff;
  }
  update_irq();
  return v;
}

void Uart16550::io_write(uint16_t port, unsigned, uint32_t value) {
  const auto v = static_cast<uint8_t>(value);
  const bool dlab = lcr_ & 0x80;
  switch (port - base_) {
    case 0:
      if (dlab) {
        divisor_ = static_cast<uint16_t>((divisor_ & 0xff00) | v);
        return;
      }
      if (mcr_ & kMcrLoop) {
        push_rx(v);
      } else {
        const uint8_t byte[1] = {v};
        backend_.write(byte);
      }
      // Sent at once: THR and the shift register are empty again.
      lsr_ |= kThrEmpty | kTransmitterEmpty;
      thr_interrupt_ = true;
      break;
    case 1: {
      if (dlab) {
        divisor_ = static_cast<uint16_t>((divisor_ & 0x00ff) | (v << 8));
        return;
      }
      const uint8_t old = ier_;
      ier_ = v & 0x0f;
      // Enabling the THR-empty interrupt while THR is empty raises it.
      if ((ier_ & kIerThrEmpty) && !(old & kIerThrEmpty) && (lsr_ & kThrEmpty)) thr_interrupt_ = true;
      break;
    }
    case 2: {
      const bool was_enabled = fifo_enabled();
      fcr_ = v & 0xc9;
      if (was_enabled != fifo_enabled() || (v & 0x02)) clear_rx();
      if (v & 0x04) lsr_ |= kThrEmpty | kTransmitterEmpty;  // transmit FIFO cleared (it is always empty)
      trigger_ = kTriggerLevels[v >> 6];
      break;
    }
    case 3: lcr_ = v; return;
    case 4: {
      const bool was_loop = mcr_ & kMcrLoop;
      mcr_ = v & 0x1f;
      if (mcr_ & kMcrLoop) {
        // Loopback: CTS = RTS, DSR = DTR, RI = OUT1, DCD = OUT2.
        set_modem_status(static_cast<uint8_t>(((mcr_ & kMcrRts) ? kMsrCts : 0) | ((mcr_ & kMcrDtr) ? kMsrDsr : 0) |
                                              ((mcr_ & kMcrOut1) ? kMsrRi : 0) | ((mcr_ & kMcrOut2) ? kMsrDcd : 0)));
      } else if (was_loop) {
        set_modem_status(kMsrCts | kMsrDsr | kMsrDcd);
        if (rx_space_) rx_space_();  // the backend may deliver again
      }
      break;
    }
    case 5: return;  // LSR is read-only (factory test)
    case 6: return;
    case 7: scr_ = v; return;
    default: return;
  }
  update_irq();
}

}  // namespace kiln::machine
