// Port I/O helpers for IN/OUT/INS/OUTS (system mode only; the frontend makes
// them #UD in user mode). Every helper first checks the I/O permission
// (IOPL, then the TSS I/O permission bitmap) and raises #GP(0) when denied.
#include "kiln/emulator/cpu.h"
#include "kiln/emulator/helpers.h"

namespace kiln::emu {

namespace {

constexpr uint64_t kRflagsVm = 1u << 17;
constexpr unsigned kIoplShift = 12;
constexpr uint32_t kTssIoMapOffset = 0x66;  // 16-bit offset of the I/O bitmap in a 32/64-bit TSS
constexpr uint32_t kTssMinLimit = 0x67;     // smallest valid 32-bit TSS

void raise_gp(Cpu& cpu) { cpu.state.exception = PendingException{.raised = true, .vector = Vector::GP}; }

// Whether the current privilege level may access ports [port, port + size).
// Returns false with #GP(0) (or a #PF from reading the TSS) pending when not.
bool io_permitted(Cpu& cpu, uint16_t port, unsigned size) {
  CpuState& s = cpu.state;
  if (!(s.sys.cr0 & cr0::PE)) return true;  // real mode: no protection
  const unsigned iopl = static_cast<unsigned>((s.rflags_other >> kIoplShift) & 3);
  const bool vm86 = s.rflags_other & kRflagsVm;
  if (!vm86 && s.sys.cpl <= iopl) return true;
  // Only an available or busy 32/64-bit TSS (types 9 and 11) has an I/O bitmap.
  const SegmentCache& tr = s.sys.tr;
  if ((tr.attrs & 0x80) == 0 || (tr.attrs & 0x1d) != 0x09 || tr.limit < kTssMinLimit) return raise_gp(cpu), false;
  uint64_t map_offset = 0;
  if (!cpu.read<2>(tr.base + kTssIoMapOffset, map_offset)) return false;
  // The processor reads the two bitmap bytes covering the access; both must lie inside the limit.
  const uint64_t byte = map_offset + port / 8;
  if (byte + 1 > tr.limit) return raise_gp(cpu), false;
  uint64_t bits = 0;
  if (!cpu.read<2>(tr.base + byte, bits)) return false;
  const uint64_t wanted = ((1u << size) - 1) << (port & 7);
  if (bits & wanted) return raise_gp(cpu), false;
  return true;
}

uint32_t bus_read(Cpu& cpu, uint16_t port, unsigned size) {
  IoBus* bus = cpu.io_bus();
  const uint32_t ones = size >= 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
  return bus ? bus->read(port, size) & ones : ones;  // no devices: the bus floats high
}

}  // namespace

uint64_t helper_port_check(Cpu& cpu, uint64_t port, uint64_t size, uint64_t, uint64_t) {
  io_permitted(cpu, static_cast<uint16_t>(port), static_cast<unsigned>(size));
  return 0;
}

uint64_t helper_port_in(Cpu& cpu, uint64_t port, uint64_t size, uint64_t, uint64_t) {
  const auto p = static_cast<uint16_t>(port);
  const auto n = static_cast<unsigned>(size);
  if (!io_permitted(cpu, p, n)) return 0;
  return bus_read(cpu, p, n);
}

uint64_t helper_port_out(Cpu& cpu, uint64_t port, uint64_t size, uint64_t value, uint64_t) {
  const auto p = static_cast<uint16_t>(port);
  const auto n = static_cast<unsigned>(size);
  if (!io_permitted(cpu, p, n)) return 0;
  if (IoBus* bus = cpu.io_bus()) bus->write(p, n, static_cast<uint32_t>(value));
  return 0;
}

uint64_t helper_port_in_string(Cpu& cpu, uint64_t port, uint64_t size, uint64_t address, uint64_t) {
  const auto p = static_cast<uint16_t>(port);
  const auto n = static_cast<unsigned>(size);
  if (!io_permitted(cpu, p, n)) return 0;
  // The destination must be writable before the port is read: a device read
  // has side effects (a UART pops its FIFO) and a faulting INS is restarted.
  if (!cpu.probe(address, Access::Write)) return 0;
  const uint64_t last = address + n - 1;
  if ((last & kPageMask) != (address & kPageMask) && !cpu.probe(last & kPageMask, Access::Write)) return 0;
  const uint32_t value = bus_read(cpu, p, n);
  switch (n) {
    case 1: cpu.write<1>(address, value); break;
    case 2: cpu.write<2>(address, value); break;
    default: cpu.write<4>(address, value); break;
  }
  return 0;
}

}  // namespace kiln::emu
