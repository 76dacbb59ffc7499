// Fuzzes the x86 frontend, the IR verifier/passes and the interpreter with
// arbitrary guest code in 16-, 32- and 64-bit modes, in user mode or (bit 7 of
// the first byte) system mode. Any host crash, sanitizer report or internal
// error (kiln::Error from the IR verifier) is a bug; guest exceptions are expected.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kiln/emulator/cpu.h"

using namespace kiln::emu;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t mode_byte = data[0];
  ++data;
  --size;
  size = std::min<size_t>(size, 2 * kPageSize);
  FlatMemory memory;
  uint8_t* code = memory.map(0x10000, 2 * kPageSize, kPermRead | kPermExec);
  std::memcpy(code, data, size);
  memory.map(0x20000, 4 * kPageSize, kPermRead | kPermWrite);
  Cpu cpu(memory);
  cpu.state.mode.code = static_cast<CodeSize>((mode_byte & 0x7f) % 3);
  if (mode_byte & 0x80) {
    // System mode: privileged instructions, descriptor-table and MSR helpers at CPL 0 or 3.
    cpu.state.mode.system = true;
    cpu.state.sys.cr0 |= cr0::PE;
    cpu.state.sys.cpl = (mode_byte & 0x40) ? 3 : 0;
    cpu.state.sys.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT | ((mode_byte & 0x20) ? cr4::DE | cr4::UMIP : 0);
    cpu.state.sys.efer = efer::SCE;
    cpu.state.sys.gdtr = TableRegister{.base = 0x20000, .limit = 0xfff};
  }
  cpu.state.rip = 0x10000;
  for (int i = 0; i < 16; ++i) cpu.state.regs[i] = 0x20000 + 0x800 * (i % 8);
  for (int step = 0; step < 8; ++step) {
    RunResult r = cpu.run(2000);
    if (r.reason != StopReason::Syscall && r.reason != StopReason::Halt) break;
  }
  return 0;
}
