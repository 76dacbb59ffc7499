// Helper functions called from IR (CallHelper) for instructions too complex
// or too rare to express as IR ops. A helper may read and write any CPU state
// and guest memory (through Cpu's accessors, performing every faulting access
// before its first state change) and raises guest exceptions by filling
// CpuState::exception.
#pragma once

#include <cstdint>
#include <string_view>

#include "kiln/emulator/cpu_state.h"
#include "kiln/emulator/ir.h"

namespace kiln::emu {

#define KILN_HELPERS(X)                                                                      \
  X(DivU8, Void) X(DivU16, Void) X(DivU32, Void) X(DivU64, Void)                             \
  X(DivS8, Void) X(DivS16, Void) X(DivS32, Void) X(DivS64, Void)                             \
  X(Rcl, I64) X(Rcr, I64)                                                                    \
  X(Daa, Void) X(Das, Void) X(Aaa, Void) X(Aas, Void) X(Aam, Void) X(Aad, Void)              \
  X(Cpuid, Void) X(Rdtsc, Void) X(Halt, Void) X(Syscall, Void)                              \
  X(Pdep, I64) X(Pext, I64) X(Crc32, I64)                                                    \
  X(X87, Void) X(Fwait, Void) X(Fxsave, Void) X(Fxrstor, Void) X(MaskMove, Void) X(StringCompare, Void) \
  X(System, I64) X(PortCheck, Void) X(PortIn, I64) X(PortOut, Void) X(PortInString, Void)                \
  X(LoadSegment, Void) X(ReadSelector, I64) X(FarJump, I64) X(FarCall, I64) X(FarReturn, I64) X(Iret, I64) \
  X(SoftwareInterrupt, I64) X(CheckSelector, I64) X(SegmentCheck, Void)

enum class HelperId : uint32_t {
#define KILN_HELPER_ENUM(name, type) name,
  KILN_HELPERS(KILN_HELPER_ENUM)
#undef KILN_HELPER_ENUM
  Count
};

class Cpu;
using HelperFn = uint64_t (*)(Cpu& cpu, uint64_t a, uint64_t b, uint64_t c, uint64_t d);

struct HelperInfo {
  std::string_view name;
  ir::Type result;
  HelperFn fn;
};
const HelperInfo& helper_info(HelperId id);

// x87 (x87.cpp). Argument layout of HelperId::X87: a = X87Insn bits, b = linear
// address of the memory operand, c = its offset (the FPU data pointer).
enum X87Insn : uint64_t {
  kX87OpMask = 0x7ff,          // FOP: low 3 bits of the D8..DF escape << 8 | ModRM
  kX87Operand16 = 1u << 16,    // 16-bit operand size (FLDENV/FSTENV/FRSTOR/FSAVE formats)
};
constexpr unsigned kX87SegmentShift = 20;  // segment (Seg) of the memory operand, for FDS
// Whether the escape byte / ModRM pair is an x87 instruction Kiln executes
// (documented encodings plus the widely implemented aliases FSTP1/FXCH4/...).
bool x87_encoding_supported(unsigned fop);
// FXSAVE/FXRSTOR: a = linear address, b = 1 for the 64-bit (REX.W) format,
// c = 1 in 64-bit mode (XMM8-15 are part of the image).
// MASKMOVDQU/MASKMOVQ: a = linear address, b = source register index | mask register
// index << 8 | 1 << 16 for MMX registers.
// PCMPxSTRx (string_compare.cpp): a = first operand's XMM index | imm8 << 8 | form << 16
// (0 ESTRI, 1 ESTRM, 2 ISTRI, 3 ISTRM) | REX.W << 18; b, c = second operand low/high.

uint64_t helper_x87(Cpu& cpu, uint64_t insn, uint64_t address, uint64_t offset, uint64_t);
uint64_t helper_fwait(Cpu& cpu, uint64_t, uint64_t, uint64_t, uint64_t);
uint64_t helper_fxsave(Cpu& cpu, uint64_t address, uint64_t rex_w, uint64_t long_mode, uint64_t);
uint64_t helper_fxrstor(Cpu& cpu, uint64_t address, uint64_t rex_w, uint64_t long_mode, uint64_t);
uint64_t helper_string_compare(Cpu& cpu, uint64_t insn, uint64_t lo, uint64_t hi, uint64_t);
uint64_t helper_maskmove(Cpu& cpu, uint64_t address, uint64_t regs, uint64_t, uint64_t);

// Port I/O (port_io.cpp), system mode: a = port, b = access size in bytes (1, 2, 4).
// Each checks IOPL / the TSS I/O permission bitmap first (#GP(0)).
// PortOut: c = value. PortInString (INS): c = linear destination, checked writable
// before the port is read.
uint64_t helper_port_check(Cpu& cpu, uint64_t port, uint64_t size, uint64_t, uint64_t);
uint64_t helper_port_in(Cpu& cpu, uint64_t port, uint64_t size, uint64_t, uint64_t);
uint64_t helper_port_out(Cpu& cpu, uint64_t port, uint64_t size, uint64_t value, uint64_t);
uint64_t helper_port_in_string(Cpu& cpu, uint64_t port, uint64_t size, uint64_t address, uint64_t);

}  // namespace kiln::emu
