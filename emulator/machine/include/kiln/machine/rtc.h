// MC146818 real-time clock and CMOS RAM (ports 0x70 index / NMI mask, 0x71
// data). The clock follows host time (UTC) plus the offset the guest sets
// through register B's SET bit; BCD/binary and 12/24-hour formats, UIP, and
// the PC's CMOS memory-size bytes. Minimal: periodic, alarm and update
// interrupts (IRQ8) are not generated yet (register C reads 0).
#pragma once

#include <array>
#include <cstdint>

#include "kiln/emulator/io.h"
#include "kiln/machine/clock.h"

namespace kiln::machine {

class Mc146818Rtc final : public emu::IoHandler {
 public:
  // `unix_ns_at_zero` is the wall-clock time (ns since 1970, UTC) when `clock` reads 0.
  Mc146818Rtc(const Clock& clock, int64_t unix_ns_at_zero, uint64_t ram_size);

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

  const Clock& clock_;
  int64_t unix_ns_at_zero_;
  uint64_t ram_size_;
  std::array<uint8_t, 128> cmos_{};
  unsigned index_ = 0;
  bool nmi_masked_ = false;
  int64_t offset_seconds_ = 0;  // guest time minus host time
};

}  // namespace kiln::machine
