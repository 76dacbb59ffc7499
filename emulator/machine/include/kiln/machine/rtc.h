// MC146818 real-time clock and CMOS RAM (ports 0x70 index / NMI mask, 0x71
// data). The clock follows host time (UTC) plus the offset the guest sets
// through register B's SET bit; BCD/binary and 12/24-hour formats, UIP, the
// periodic, alarm and update-ended flags of register C with IRQ8, and the
// PC's CMOS memory-size bytes. Like the PIT nothing ticks by itself: flags are
// computed from the clock when register C is read or update() runs at the
// deadline next_event_ns() gives.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>

#include "kiln/emulator/io.h"
#include "kiln/machine/clock.h"

namespace kiln::machine {

class Mc146818Rtc final : public emu::IoHandler {
 public:
  // `unix_ns_at_zero` is the wall-clock time (ns since 1970, UTC) when `clock` reads 0.
  // `irq8` drives IRQ8; `reprogrammed` is called when the next event time may have changed.
  Mc146818Rtc(const Clock& clock, int64_t unix_ns_at_zero, uint64_t ram_size, std::function<void(bool)> irq8 = {},
              std::function<void()> reprogrammed = {});

  // Raises IRQ8 for enabled events due by now; returns whether it rose.
  bool update();
  // Clock time of the next event that can raise IRQ8, if any is enabled.
  std::optional<uint64_t> next_event_ns() const;

  uint32_t io_read(uint16_t port, unsigned size) override;
  void io_write(uint16_t port, unsigned size, uint32_t value) override;
  void reset();
  bool nmi_masked() const { return nmi_masked_; }

 private:
  int64_t now_seconds() const;
  uint8_t encode(unsigned value) const;  // binary or BCD per register B
  unsigned decode(uint8_t value) const;
  void load_time_registers(int64_t seconds);
  int64_t time_from_registers() const;
  uint8_t read_register(unsigned index);
  void write_register(unsigned index, uint8_t value);
  uint64_t periodic_ns() const;  // 0 when the periodic rate is off
  bool alarm_matches(int64_t seconds);
  void collect_flags();          // events since the last collection -> pending_flags_
  uint8_t interrupt_flags() const;
  void update_irq();

  const Clock& clock_;
  int64_t unix_ns_at_zero_;
  uint64_t ram_size_;
  std::array<uint8_t, 128> cmos_{};
  unsigned index_ = 0;
  bool nmi_masked_ = false;
  int64_t offset_seconds_ = 0;  // guest time minus host time
  std::function<void(bool)> irq8_;
  std::function<void()> reprogrammed_;
  uint64_t flags_since_ns_ = 0;  // events after this clock time are not yet in pending_flags_
  uint8_t pending_flags_ = 0;    // PF, AF, UF not yet read from register C
  bool irq_level_ = false;
};

}  // namespace kiln::machine
