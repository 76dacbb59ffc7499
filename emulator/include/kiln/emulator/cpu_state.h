// Architectural state of one x86 CPU as the translator sees it. The backends
// read and write this struct directly; later issues (system mode) extend it
// with control registers, descriptor caches and the x87/MSR state.
#pragma once

#include <cstdint>

namespace kiln::emu {

enum Reg : uint8_t { RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8, R9, R10, R11, R12, R13, R14, R15 };
enum Seg : uint8_t { ES, CS, SS, DS, FS, GS };

// Code size of the current segment: selects the decoder mode.
enum class CodeSize : uint8_t { Bits16 = 0, Bits32 = 1, Bits64 = 2 };

// The part of the CPU state that changes how code translates; part of the TB cache key.
struct CpuMode {
  CodeSize code = CodeSize::Bits64;
  // True when CS/DS/ES/SS bases are all zero (flat model), letting 16/32-bit
  // code skip the segment base addition for those segments.
  bool flat = true;
  // System mode (a whole machine): privileged instructions, descriptor loads,
  // exceptions through the IDT. Off for user-mode runs (kiln-x86-run, the
  // differential tests), where system instructions raise #UD and SYSCALL and
  // exceptions return to the caller.
  bool system = false;
  // System mode: CR0.EM/TS/MP and CR4.OSFXSR (fpu_mode bits), which decide at
  // translation time whether x87/MMX/SSE instructions raise #NM/#UD. Kept in
  // sync with CR0/CR4 by refresh_fpu_mode (privileged.h); always 0 in user mode.
  uint8_t fpu = 0;
  // System mode outside 64-bit code: the stack pointer width of implicit stack
  // accesses from SS.B, 16 or 32; 0 means "the code size" (user mode, and a machine
  // that sets CpuMode by hand). update_mode() (system.h) computes this and the
  // field below.
  uint8_t stack_bits = 0;
  // System mode, protected mode outside 64-bit code: bit i set when segment i (Seg) is not
  // a usable flat 4 GiB segment, so its accesses are limit-checked.
  uint8_t checked_segments = 0;
  // System mode: virtual-8086 mode (CR0.PE and RFLAGS.VM), where PUSHF is IOPL-sensitive.
  bool vm86 = false;
  // System mode, protected mode outside 64-bit code: the CS limit is below 4 GiB, so code
  // fetch is limit-checked (#GP(0)) and cached blocks are validated against it.
  bool cs_limited = false;
  uint32_t key() const {
    return static_cast<uint32_t>(code) | (flat ? 4u : 0u) | (system ? 8u : 0u) |
           (system ? (stack_bits == 16 ? 16u : stack_bits == 32 ? 32u : 0u) | uint32_t{checked_segments} << 6 |
                         (vm86 ? 1u << 14 : 0u) | (cs_limited ? 1u << 15 : 0u)
                   : 0u) |
           (uint32_t{fpu} << 16);
  }
};

namespace fpu_mode {
constexpr uint8_t EM = 1, TS = 2, MP = 4, OSFXSR = 8;
}

namespace rflags {
constexpr uint64_t CF = 1u << 0, PF = 1u << 2, AF = 1u << 4, ZF = 1u << 6, SF = 1u << 7, TF = 1u << 8,
                   IF = 1u << 9, DF = 1u << 10, OF = 1u << 11, AC = 1u << 18, ID = 1u << 21;
constexpr uint64_t kArith = CF | PF | AF | ZF | SF | OF;
constexpr uint64_t kFixed = 1u << 1;  // always reads as 1
}  // namespace rflags

enum class Vector : uint8_t {
  DE = 0, DB = 1, BP = 3, OF = 4, BR = 5, UD = 6, NM = 7, DF = 8, TS = 10, NP = 11, SS = 12, GP = 13, PF = 14,
  MF = 16, AC = 17, XM = 19,
};

struct PendingException {
  bool raised = false;
  Vector vector = Vector::DE;
  uint32_t error_code = 0;
  uint64_t fault_address = 0;  // CR2 for #PF
};

struct alignas(16) Xmm {
  uint64_t lo = 0, hi = 0;
};

// One x87 data register: 80-bit extended precision (64-bit significand with
// explicit integer bit, 15-bit exponent and sign). MMX register i is the
// significand of physical register i; MMX writes set sign_exponent to 0xFFFF.
struct X87Reg {
  uint64_t significand = 0;
  uint16_t sign_exponent = 0;
};

// The x87 FPU state. Registers are kept by physical index (R0..R7); ST(i) is
// regs[(top + i) & 7]. Like current hardware only the abridged tag word (one
// "not empty" bit per physical register) is kept; FSTENV/FSAVE derive the
// full tags from the register contents.
struct X87State {
  X87Reg regs[8];
  uint16_t fcw = 0x037f;
  uint16_t fsw = 0;   // status word with the TOP field (bits 11-13) kept in `top`
  uint8_t top = 0;
  uint8_t tags = 0;   // bit i set: physical register i holds a value
  uint16_t fop = 0;   // last non-control instruction's opcode (11 bits)
  uint64_t fip = 0, fdp = 0;  // its address and its memory operand's offset
  uint16_t fcs = 0, fds = 0;
  uint16_t status() const { return static_cast<uint16_t>((fsw & ~0x3800u) | (unsigned{top} << 11)); }
  void set_status(uint16_t v) {
    fsw = static_cast<uint16_t>(v & ~0x3800u);
    top = static_cast<uint8_t>((v >> 11) & 7);
  }
};

// A segment register's hidden part, loaded from a descriptor (or computed in
// real/virtual-8086 mode). `attrs` holds descriptor bits 40..47 in its low
// byte (type, S, DPL, P) and bits 52..55 in bits 12..15 (AVL, L, D/B, G), as
// in VMX and SVM; `limit` is the expanded byte limit.
struct SegmentCache {
  uint64_t base = 0;
  uint32_t limit = 0xffff;
  uint16_t selector = 0;
  uint16_t attrs = 0x93;  // present, writable data, accessed (the reset state)
};

struct TableRegister {
  uint64_t base = 0;
  uint32_t limit = 0xffff;
};

namespace cr0 {
constexpr uint64_t PE = 1u << 0, MP = 1u << 1, EM = 1u << 2, TS = 1u << 3, ET = 1u << 4, NE = 1u << 5,
                   WP = 1u << 16, AM = 1u << 18, NW = 1u << 29, CD = 1u << 30, PG = 1u << 31;
}
namespace cr4 {
constexpr uint64_t VME = 1u << 0, PVI = 1u << 1, TSD = 1u << 2, DE = 1u << 3, PSE = 1u << 4, PAE = 1u << 5,
                   MCE = 1u << 6, PGE = 1u << 7, PCE = 1u << 8, OSFXSR = 1u << 9, OSXMMEXCPT = 1u << 10,
                   UMIP = 1u << 11, FSGSBASE = 1u << 16, PCIDE = 1u << 17, OSXSAVE = 1u << 18, SMEP = 1u << 20,
                   SMAP = 1u << 21;
}
namespace efer {
constexpr uint64_t SCE = 1u << 0, LME = 1u << 8, LMA = 1u << 10, NXE = 1u << 11;
}

// System (privileged) state: control registers, descriptor tables, MSRs.
// Reset values are the SDM's power-up state.
struct SystemState {
  uint64_t cr0 = cr0::ET | cr0::CD | cr0::NW;
  uint64_t cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0;
  uint64_t efer = 0;
  uint64_t dr[8] = {0, 0, 0, 0, 0, 0, 0xffff0ff0, 0x400};
  TableRegister gdtr, idtr;
  SegmentCache ldtr{.attrs = 0x82}, tr{.attrs = 0x8b};
  uint8_t cpl = 0;
  // MSRs Linux uses.
  uint64_t star = 0, lstar = 0, cstar = 0, sfmask = 0, kernel_gs_base = 0;
  uint64_t sysenter_cs = 0, sysenter_esp = 0, sysenter_eip = 0;
  uint64_t apic_base = 0xfee00900;  // enabled, bootstrap processor
  uint64_t pat = 0x0007040600070406ull;
  uint64_t tsc_aux = 0, misc_enable = 1;  // fast strings
  uint64_t mtrr_def_type = 0, mtrr_fixed[11] = {}, mtrr_var[16] = {};
  // Interrupts are inhibited for one instruction after STI, MOV SS and POP SS.
  bool interrupt_shadow = false;
  // Single step (RFLAGS.TF, see Cpu::run): MOV SS / POP SS also suppress the #DB trap after
  // them (STI does not); an instruction that delivered an event itself (INT n, INT3, INTO,
  // INT1) takes no trap, its handler runs with TF clear.
  bool mov_ss_shadow = false;
  bool event_delivered = false;
  // HLT executed: the CPU waits for an interrupt (Cpu::run returns StopReason::Halt until one arrives).
  bool halted = false;
};

struct CpuState {
  uint64_t regs[16] = {};
  uint64_t rip = 0;
  // Lazy flags: the last flag-setting operation and its operands (see lazy_flags.h).
  uint32_t cc_op = 0;  // CcKind::Eflags with cc_dst holding explicit OSZAPC bits
  uint64_t cc_dst = 0, cc_src1 = 0, cc_src2 = 0, cc_aux = 0;
  // RFLAGS bits other than OSZAPC (bit 1, TF, IF, DF, AC, ID ...).
  uint64_t rflags_other = rflags::kFixed | rflags::IF;
  uint64_t seg_base[6] = {};
  uint16_t seg_selector[6] = {};
  // Limits and attributes of ES..GS (bases and selectors are above, where the IR reads them).
  uint32_t seg_limit[6] = {0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff};
  uint16_t seg_attrs[6] = {0x93, 0x9b, 0x93, 0x93, 0x93, 0x93};
  SystemState sys;
  Xmm xmm[16] = {};
  uint32_t mxcsr = 0x1f80;
  // x87 FPU; the MMX registers alias its register significands.
  X87State fpu;
  CpuMode mode;
  PendingException exception;
  uint64_t tsc = 0;  // RDTSC value; advanced by the execution loop
  // Requests to leave the execution loop after the current block (StopRequest bits).
  uint32_t stop_request = 0;
};

enum StopRequest : uint32_t { kStopHalt = 1, kStopSyscall = 2 };

// Full RFLAGS (materialises the lazy flags).
uint64_t read_rflags(const CpuState& cpu);
// Sets RFLAGS (arithmetic bits become explicit lazy state).
void write_rflags(CpuState& cpu, uint64_t value);

}  // namespace kiln::emu
