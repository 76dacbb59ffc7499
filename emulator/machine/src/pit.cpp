#include "kiln/machine/pit.h"

namespace kiln::machine {

namespace {

constexpr uint64_t kNsPerSecond = 1'000'000'000;
constexpr uint64_t kRefreshPeriodNs = 15085;  // port 0x61 bit 4 toggles at the DRAM refresh rate

uint32_t from_bcd(uint32_t v) {
  return (v & 0xf) + ((v >> 4) & 0xf) * 10 + ((v >> 8) & 0xf) * 100 + ((v >> 12) & 0xf) * 1000;
}
uint32_t to_bcd(uint32_t v) {
  v %= 10000;
  return (v % 10) | ((v / 10 % 10) << 4) | ((v / 100 % 10) << 8) | ((v / 1000) << 12);
}

}  // namespace

Pit8254::Pit8254(const Clock& clock, std::function<void(bool)> irq0, std::function<void()> reprogrammed)
    : clock_(clock), irq0_(std::move(irq0)), reprogrammed_(std::move(reprogrammed)) {
  reset();
}

// Power-on state as qemu models it: every channel in mode 3 with count 65536,
// channels 0 and 1 running, channel 2's gate (port 0x61 bit 0) low.
void Pit8254::reset() {
  speaker_data_ = false;
  if (irq_level_ && irq0_) irq0_(false);
  irq_level_ = false;
  for (unsigned i = 0; i < 3; ++i) {
    Channel& c = channels_[i];
    c = Channel{};
    c.mode = 3;
    c.gate = i != 2;
    load(c, 0);
  }
  next_irq_tick_ = next_edge_tick(channels_[0], ticks());
  if (reprogrammed_) reprogrammed_();
}

uint64_t Pit8254::ticks() const {
  return static_cast<uint64_t>(static_cast<unsigned __int128>(clock_.now_ns()) * kFrequency / kNsPerSecond);
}

uint32_t Pit8254::count(const Channel& c, uint64_t now) const {
  const uint32_t modulus = c.bcd ? 10000 : 0x10000;
  if (!c.armed) return c.reload % modulus;
  if (!c.gate && c.mode != 1 && c.mode != 5) return c.frozen_count % modulus;
  const uint64_t elapsed = now - c.start_tick;
  if (c.mode == 2) return static_cast<uint32_t>(c.reload - elapsed % c.reload) % modulus;
  if (c.mode == 3) {
    // The count drops by two per clock, once through each half period.
    const uint64_t phase = elapsed % c.reload, half = (c.reload + 1) / 2;
    const uint64_t in_half = phase < half ? phase : phase - half;
    const uint64_t v = c.reload - 2 * in_half;
    return static_cast<uint32_t>((v < 2 ? 2 : v) & ~1ull) % modulus;
  }
  // One-shot modes keep counting down past zero (wrapping).
  return static_cast<uint32_t>((c.start_count + uint64_t{modulus} * 4 - elapsed % modulus) % modulus);
}

bool Pit8254::out(const Channel& c, uint64_t now) const {
  if (!c.armed) return c.mode != 0 && c.mode != 1;
  const uint64_t elapsed = now - c.start_tick;
  switch (c.mode) {
    case 0: return c.gate ? elapsed >= c.start_count : c.frozen_out;
    case 1: return elapsed >= c.start_count;
    case 2: return !c.gate || elapsed % c.reload != c.reload - 1;
    case 3: return !c.gate || elapsed % c.reload < (c.reload + 1) / 2;
    default: return !(c.gate || c.mode == 5) || elapsed != c.start_count;  // 4, 5: one-clock strobe
  }
}

// Rising edges of OUT (what the edge-triggered PIC sees) strictly after `after`.
std::optional<uint64_t> Pit8254::next_edge_tick(const Channel& c, uint64_t after) const {
  if (!c.armed || (!c.gate && c.mode != 1 && c.mode != 5)) return std::nullopt;
  const uint64_t start = c.start_tick;
  switch (c.mode) {
    case 2: case 3: {
      const uint64_t periods = after < start ? 0 : (after - start) / c.reload;
      return start + (periods + 1) * c.reload;
    }
    case 0: case 1: {
      const uint64_t edge = start + c.start_count;
      return edge > after ? std::optional<uint64_t>(edge) : std::nullopt;
    }
    default: {
      const uint64_t edge = start + c.start_count + 1;  // end of the strobe
      return edge > after ? std::optional<uint64_t>(edge) : std::nullopt;
    }
  }
}

void Pit8254::schedule() {
  next_irq_tick_ = next_edge_tick(channels_[0], ticks());
  if (reprogrammed_) reprogrammed_();
}

std::optional<uint64_t> Pit8254::next_irq_ns() const {
  if (!next_irq_tick_) return std::nullopt;
  const unsigned __int128 scaled = static_cast<unsigned __int128>(*next_irq_tick_) * kNsPerSecond;
  return static_cast<uint64_t>((scaled + kFrequency - 1) / kFrequency);
}

bool Pit8254::update() {
  if (!next_irq_tick_) return false;
  const uint64_t now = ticks();
  if (now < *next_irq_tick_) return false;
  const Channel& c = channels_[0];
  if (irq0_) {
    if (c.mode == 0 || c.mode == 1) {
      irq_level_ = true;  // OUT stays high after the terminal count
      irq0_(true);
    } else {
      // Edge-triggered IRQ0 latches a short pulse; missed periods coalesce into one.
      irq0_(true);
      irq0_(false);
    }
  }
  next_irq_tick_ = next_edge_tick(c, now);
  return true;
}

void Pit8254::load(Channel& c, uint32_t value) {
  const uint64_t now = ticks();
  if (c.bcd) value = from_bcd(value);
  c.reload = value == 0 ? (c.bcd ? 10000 : 0x10000) : value;
  if (c.mode == 2 || c.mode == 3) {
    if (c.reload == 1) c.reload = 2;  // count 1 is illegal in these modes
  }
  c.null_count = false;
  c.start_count = c.reload;
  c.frozen_count = c.reload;
  c.start_tick = now;
  // Modes 1 and 5 wait for a gate trigger; the others start counting now (if the gate allows).
  c.armed = c.mode != 1 && c.mode != 5;
}

void Pit8254::set_gate(Channel& c, bool gate) {
  if (gate == c.gate) return;
  const uint64_t now = ticks();
  if (!gate) {
    c.frozen_count = count(c, now);
    c.frozen_out = out(c, now);
    c.gate = false;
    return;
  }
  c.gate = true;
  if (c.mode == 0 || c.mode == 4) {
    c.start_count = c.frozen_count;  // resume where it stopped
    c.start_tick = now;
  } else if (!c.null_count) {
    c.armed = true;  // rising edge: (re)trigger / reload
    c.start_count = c.reload;
    c.start_tick = now;
  }
}

void Pit8254::latch_count(Channel& c) {
  if (c.latched) return;
  uint32_t v = count(c, ticks());
  if (c.bcd) v = to_bcd(v);
  c.latch = static_cast<uint16_t>(v);
  c.latched = true;
  c.latch_high = false;
}

void Pit8254::control(uint8_t value) {
  const unsigned select = value >> 6;
  if (select == 3) {  // read-back: bit 5 clear latches counts, bit 4 clear latches status
    const uint64_t now = ticks();
    for (unsigned i = 0; i < 3; ++i) {
      if (!(value & (2u << i))) continue;
      Channel& c = channels_[i];
      if (!(value & 0x20)) latch_count(c);
      if (!(value & 0x10) && !c.status_latched) {
        c.status = static_cast<uint8_t>((out(c, now) ? 0x80 : 0) | (c.null_count ? 0x40 : 0) | (c.access << 4) |
                                        (c.mode << 1) | (c.bcd ? 1 : 0));
        c.status_latched = true;
      }
    }
    return;
  }
  Channel& c = channels_[select];
  const unsigned access = (value >> 4) & 3;
  if (access == 0) return latch_count(c);
  const bool gate = c.gate;
  c = Channel{};
  c.gate = gate;
  c.access = static_cast<uint8_t>(access);
  c.mode = static_cast<uint8_t>((value >> 1) & 7);
  if (c.mode > 5) c.mode -= 4;  // 6 and 7 are aliases of 2 and 3
  c.bcd = value & 1;
  if (select == 0) {
    // OUT goes to its initial state: low in mode 0, high otherwise.
    const bool level = c.mode != 0;
    if (level != irq_level_ && irq0_) {
      // A rising level here would be seen by the PIC as an edge; only lower it.
      if (!level) irq0_(false);
    }
    irq_level_ = false;
    schedule();
  }
}

void Pit8254::write_counter(unsigned index, uint8_t value) {
  Channel& c = channels_[index];
  switch (c.access) {
    case 1: load(c, value); break;
    case 2: load(c, uint32_t{value} << 8); break;
    default:
      if (!c.write_high) {
        c.write_low = value;
        c.write_high = true;
        if (c.mode == 0) c.armed = false;  // mode 0 stops counting after the first byte
        return;
      }
      c.write_high = false;
      load(c, c.write_low | (uint32_t{value} << 8));
      break;
  }
  if (index == 0) {
    if (irq_level_ && irq0_) irq0_(false);
    irq_level_ = false;
    schedule();
  }
}

uint8_t Pit8254::read_counter(Channel& c) {
  if (c.status_latched) {
    c.status_latched = false;
    return c.status;
  }
  if (c.latched) {
    uint8_t v;
    if (c.access == 1) v = static_cast<uint8_t>(c.latch), c.latched = false;
    else if (c.access == 2) v = static_cast<uint8_t>(c.latch >> 8), c.latched = false;
    else if (!c.latch_high) v = static_cast<uint8_t>(c.latch), c.latch_high = true;
    else v = static_cast<uint8_t>(c.latch >> 8), c.latched = false, c.latch_high = false;
    return v;
  }
  uint32_t v = count(c, ticks());
  if (c.bcd) v = to_bcd(v);
  if (c.access == 1) return static_cast<uint8_t>(v);
  if (c.access == 2) return static_cast<uint8_t>(v >> 8);
  c.read_high = !c.read_high;
  return static_cast<uint8_t>(c.read_high ? v : v >> 8);
}

uint32_t Pit8254::io_read(uint16_t port, unsigned) {
  switch (port) {
    case 0x40: case 0x41: case 0x42: return read_counter(channels_[port - 0x40]);
    case 0x43: return 0xff;  // the control register is write-only
    case 0x61: {
      const Channel& c2 = channels_[2];
      const bool refresh = (clock_.now_ns() / kRefreshPeriodNs) & 1;
      return (c2.gate ? 1u : 0u) | (speaker_data_ ? 2u : 0u) | (refresh ? 0x10u : 0u) | (out(c2, ticks()) ? 0x20u : 0u);
    }
    default: return 0xff;
  }
}

void Pit8254::io_write(uint16_t port, unsigned, uint32_t value) {
  const auto v = static_cast<uint8_t>(value);
  switch (port) {
    case 0x40: case 0x41: case 0x42: write_counter(port - 0x40u, v); break;
    case 0x43: control(v); break;
    case 0x61:
      set_gate(channels_[2], v & 1);
      speaker_data_ = v & 2;
      break;
    default: break;
  }
}

}  // namespace kiln::machine
