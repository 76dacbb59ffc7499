// The 8254 programmable interval timer (ports 0x40-0x43) and the gate/output
// bits of system control port B (0x61): channel 0 drives IRQ0, channel 2's
// gate is port 0x61 bit 0 and its output reads back in bit 5 (calibration
// loops). Counters follow a Clock at 1.193182 MHz; nothing ticks on its own:
// the machine calls update() at the deadline next_irq_ns() gives (timer
// thread) and the counters are computed from the clock on every access.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>

#include "kiln/emulator/io.h"
#include "kiln/machine/clock.h"

namespace kiln::machine {

class Pit8254 : public emu::IoHandler {
 public:
  static constexpr uint64_t kFrequency = 1193182;

  // `irq0` drives the PIC's IRQ0 line; `reprogrammed` is called when channel 0
  // changes so a timer thread can recompute its deadline.
  Pit8254(const Clock& clock, std::function<void(bool)> irq0, std::function<void()> reprogrammed = {});

  // Raises IRQ0 edges due by now. Returns whether one was raised.
  bool update();
  // Host time (on the clock) of the next IRQ0 edge, if channel 0 will produce one.
  std::optional<uint64_t> next_irq_ns() const;
  void reset();

  uint32_t io_read(uint16_t port, unsigned size) override;
  void io_write(uint16_t port, unsigned size, uint32_t value) override;

 private:
  struct Channel {
    uint8_t mode = 0;         // 0..5
    uint8_t access = 3;       // 1 lobyte, 2 hibyte, 3 lobyte/hibyte
    bool bcd = false;
    bool gate = true;
    bool armed = false;       // a count has been loaded and counting runs
    bool null_count = true;
    uint32_t reload = 0x10000;  // written count (0 means 65536)
    uint64_t start_tick = 0;  // tick at which counting (re)started from start_count
    uint32_t start_count = 0;
    uint32_t frozen_count = 0;  // count while the gate is low (modes 0, 4)
    bool frozen_out = false;    // mode 0 OUT while the gate is low
    bool write_high = false, read_high = false;
    uint8_t write_low = 0;
    bool latched = false, latch_high = false;
    uint16_t latch = 0;
    bool status_latched = false;
    uint8_t status = 0;
  };
  uint64_t ticks() const;
  uint32_t count(const Channel& c, uint64_t now) const;
  bool out(const Channel& c, uint64_t now) const;
  void load(Channel& c, uint32_t value);
  void set_gate(Channel& c, bool gate);
  void control(uint8_t value);
  void latch_count(Channel& c);
  uint8_t read_counter(Channel& c);
  void write_counter(unsigned index, uint8_t value);
  std::optional<uint64_t> next_edge_tick(const Channel& c, uint64_t after) const;
  void schedule();

  const Clock& clock_;
  std::function<void(bool)> irq0_;
  std::function<void()> reprogrammed_;
  Channel channels_[3];
  bool speaker_data_ = false;
  bool irq_level_ = false;
  std::optional<uint64_t> next_irq_tick_;
};

}  // namespace kiln::machine
