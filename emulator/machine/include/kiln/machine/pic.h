// The PC's two cascaded 8259A programmable interrupt controllers (master at
// 0x20/0x21, slave at 0xa0/0xa1 on the master's IRQ2) and the PIIX edge/level
// control registers (ELCR, 0x4d0/0x4d1). A pure state machine: the machine
// serialises calls with its device lock and learns about the INTR line through
// the output callback.
#pragma once

#include <cstdint>
#include <functional>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/io.h"

namespace kiln::machine {

class Pic8259 : public emu::IoHandler {
 public:
  Pic8259();

  // Drives interrupt request line `irq` (0..15) to `level`.
  void set_irq(unsigned irq, bool level);
  // The INTR output to the CPU.
  bool output() const { return output_; }
  // Interrupt acknowledge cycle: the vector of the highest-priority request
  // (a spurious IRQ7/IRQ15 vector when the request went away).
  uint8_t acknowledge();
  // Called with the new INTR level whenever it changes.
  void set_output_callback(std::function<void(bool)> callback) { on_output_ = std::move(callback); }
  // Power-on state: initialised as a PC BIOS does (vectors 0x08/0x70, cascade
  // on IRQ2, 8086 mode), every line masked.
  void reset();

  uint32_t io_read(uint16_t port, unsigned size) override;
  void io_write(uint16_t port, unsigned size, uint32_t value) override;

 private:
  struct Chip {
    uint8_t irr = 0, isr = 0, imr = 0, lines = 0, elcr = 0, elcr_mask = 0;
    uint8_t vector_base = 0, cascade = 0, lowest_priority = 7;
    uint8_t init_step = 0;  // 0: operational; 2..4: expecting ICW2..ICW4
    bool single = false, needs_icw4 = false, level_mode = false, auto_eoi = false, rotate_on_auto_eoi = false;
    bool read_isr = false, poll = false, special_mask = false, special_fully_nested = false;
    bool is_master = false;
    int highest_request() const;  // -1 when nothing should interrupt
    void set_line(unsigned line, bool level);
    void accept(unsigned line);   // INTA: IRR -> ISR (or auto EOI)
    void end_of_interrupt(unsigned line, bool rotate);
    void write_command(uint8_t value);
    void write_data(uint8_t value);
    uint8_t read_command();
    void init(uint8_t icw1);
  };
  void update();
  uint8_t poll(Chip& chip);

  Chip master_, slave_;
  bool output_ = false;
  std::function<void(bool)> on_output_;
};

}  // namespace kiln::machine
