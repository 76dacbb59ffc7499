#include "kiln/machine/pic.h"

namespace kiln::machine {

namespace {
constexpr unsigned kCascadeLine = 2;
}

Pic8259::Pic8259() {
  master_.elcr_mask = 0xf8;  // IRQ0-2 are always edge triggered
  slave_.elcr_mask = 0xde;   // so are IRQ8 and IRQ13
  reset();
}

void Pic8259::reset() {
  for (Chip* c : {&master_, &slave_}) {
    const uint8_t mask = c->elcr_mask;
    *c = Chip{};
    c->elcr_mask = mask;
  }
  master_.is_master = true;
  master_.vector_base = 0x08;
  master_.cascade = 1u << kCascadeLine;
  master_.imr = 0xff;
  slave_.vector_base = 0x70;
  slave_.cascade = kCascadeLine;  // slave identity
  slave_.imr = 0xff;  // all masked until programmed
  output_ = false;
}

// Priority order starts after the lowest-priority line (IR7 after reset).
int Pic8259::Chip::highest_request() const {
  const uint8_t requests = irr & ~imr;
  if (!requests) return -1;
  // In special mask mode, masked in-service levels do not block lower ones; the
  // master in special fully nested mode lets the cascade line interrupt again.
  uint8_t blocking = isr;
  if (special_mask) blocking &= static_cast<uint8_t>(~imr);
  if (special_fully_nested && is_master && !single) blocking &= static_cast<uint8_t>(~cascade);
  for (unsigned i = 1; i <= 8; ++i) {
    const unsigned line = (lowest_priority + i) & 7;
    if (blocking & (1u << line)) return -1;  // an equal or higher level is in service
    if (requests & (1u << line)) return static_cast<int>(line);
  }
  return -1;
}

void Pic8259::Chip::set_line(unsigned line, bool level) {
  const uint8_t bit = static_cast<uint8_t>(1u << line);
  if (level_mode || (elcr & bit)) {
    if (level) irr |= bit;
    else irr &= static_cast<uint8_t>(~bit);
  } else if (level && !(lines & bit)) {
    irr |= bit;  // edge: latched until acknowledged
  }
  if (level) lines |= bit;
  else lines &= static_cast<uint8_t>(~bit);
}

void Pic8259::Chip::accept(unsigned line) {
  const uint8_t bit = static_cast<uint8_t>(1u << line);
  if (!(level_mode || (elcr & bit))) irr &= static_cast<uint8_t>(~bit);  // level requests follow the line
  if (auto_eoi) {
    if (rotate_on_auto_eoi) lowest_priority = static_cast<uint8_t>(line);
  } else {
    isr |= bit;
  }
}

void Pic8259::Chip::end_of_interrupt(unsigned line, bool rotate) {
  isr &= static_cast<uint8_t>(~(1u << line));
  if (rotate) lowest_priority = static_cast<uint8_t>(line);
}

void Pic8259::Chip::init(uint8_t icw1) {
  // ICW1 clears the mask and in-service registers, resets edge detection and
  // priorities and selects IRR for status reads.
  needs_icw4 = icw1 & 1;
  single = icw1 & 2;
  level_mode = icw1 & 8;
  imr = isr = irr = 0;
  lines = 0;
  lowest_priority = 7;
  special_mask = read_isr = poll = auto_eoi = rotate_on_auto_eoi = special_fully_nested = false;
  init_step = 2;
}

void Pic8259::Chip::write_command(uint8_t value) {
  if (value & 0x10) return init(value);
  if ((value & 0x18) == 0) {  // OCW2
    const unsigned command = value >> 5, level = value & 7;
    auto highest_in_service = [&]() -> int {
      for (unsigned i = 1; i <= 8; ++i) {
        const unsigned line = (lowest_priority + i) & 7;
        if (isr & (1u << line)) return static_cast<int>(line);
      }
      return -1;
    };
    switch (command) {
      case 1: case 5: {  // non-specific EOI (5: and rotate)
        const int line = highest_in_service();
        if (line >= 0) end_of_interrupt(static_cast<unsigned>(line), command == 5);
        break;
      }
      case 3: end_of_interrupt(level, false); break;  // specific EOI
      case 7: end_of_interrupt(level, true); break;   // rotate on specific EOI
      case 4: rotate_on_auto_eoi = true; break;
      case 0: rotate_on_auto_eoi = false; break;
      case 6: lowest_priority = static_cast<uint8_t>(level); break;  // set priority
      default: break;                                                // 2: no operation
    }
    return;
  }
  if ((value & 0x18) == 0x08) {  // OCW3
    if (value & 0x04) poll = true;
    if (value & 0x02) read_isr = value & 0x01;
    if (value & 0x40) special_mask = value & 0x20;
  }
}

void Pic8259::Chip::write_data(uint8_t value) {
  switch (init_step) {
    case 0: imr = value; return;  // OCW1
    case 2:
      vector_base = value & 0xf8;
      init_step = single ? (needs_icw4 ? 4 : 0) : 3;
      return;
    case 3:
      cascade = value;
      init_step = needs_icw4 ? 4 : 0;
      return;
    case 4:
      auto_eoi = value & 0x02;
      special_fully_nested = value & 0x10;
      init_step = 0;
      return;
    default: init_step = 0; return;
  }
}

// Poll command: the read acts as an acknowledge of this chip only (a master
// reporting its cascade line leaves the slave to be polled next).
uint8_t Pic8259::poll(Chip& chip) {
  chip.poll = false;
  const int line = chip.highest_request();
  if (line < 0) return 0;
  chip.accept(static_cast<unsigned>(line));
  update();
  return static_cast<uint8_t>(0x80 | line);
}

uint32_t Pic8259::io_read(uint16_t port, unsigned) {
  switch (port) {
    case 0x20: case 0xa0: {
      Chip& chip = port == 0x20 ? master_ : slave_;
      if (chip.poll) return poll(chip);
      return chip.read_isr ? chip.isr : chip.irr;
    }
    case 0x21: return master_.poll ? poll(master_) : master_.imr;
    case 0xa1: return slave_.poll ? poll(slave_) : slave_.imr;
    case 0x4d0: return master_.elcr;
    case 0x4d1: return slave_.elcr;
    default: return 0xff;
  }
}

void Pic8259::io_write(uint16_t port, unsigned, uint32_t value) {
  const auto v = static_cast<uint8_t>(value);
  switch (port) {
    case 0x20: master_.write_command(v); break;
    case 0x21: master_.write_data(v); break;
    case 0xa0: slave_.write_command(v); break;
    case 0xa1: slave_.write_data(v); break;
    case 0x4d0: master_.elcr = v & master_.elcr_mask; break;
    case 0x4d1: slave_.elcr = v & slave_.elcr_mask; break;
    default: return;
  }
  update();
}

void Pic8259::set_irq(unsigned irq, bool level) {
  if (irq >= 16) return;
  if (irq < 8) master_.set_line(irq, level);
  else slave_.set_line(irq - 8, level);
  update();
}

void Pic8259::update() {
  // The slave's INT output drives the master's cascade input.
  master_.set_line(kCascadeLine, slave_.highest_request() >= 0);
  const bool out = master_.highest_request() >= 0;
  if (out != output_) {
    output_ = out;
    if (on_output_) on_output_(out);
  }
}

uint8_t Pic8259::acknowledge() {
  const int line = master_.highest_request();
  uint8_t vector;
  if (line < 0) {
    vector = static_cast<uint8_t>(master_.vector_base + 7);  // spurious IRQ7
  } else if (line == static_cast<int>(kCascadeLine) && !master_.single) {
    master_.accept(kCascadeLine);
    const int slave_line = slave_.highest_request();
    if (slave_line < 0) {
      vector = static_cast<uint8_t>(slave_.vector_base + 7);  // spurious IRQ15
    } else {
      slave_.accept(static_cast<unsigned>(slave_line));
      vector = static_cast<uint8_t>(slave_.vector_base + slave_line);
    }
  } else {
    master_.accept(static_cast<unsigned>(line));
    vector = static_cast<uint8_t>(master_.vector_base + line);
  }
  update();
  return vector;
}

}  // namespace kiln::machine
