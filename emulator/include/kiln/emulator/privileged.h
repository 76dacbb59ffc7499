// System-mode privileged instructions (SYS-B): control/debug register moves,
// descriptor-table registers, MSRs, fast system calls, CLI/STI/POPF privilege
// rules and the system CPU's CPUID. Every instruction is one call of
// HelperId::System whose first argument selects the operation; the
// privilege checks run there (CPL and IOPL are not part of the TB key).
#pragma once

#include <cstdint>

#include "kiln/emulator/cpu_state.h"
#include "kiln/emulator/memory.h"

namespace kiln::emu {

class Cpu;

// Operations of HelperId::System: a = SystemOp, b/c/d as listed. Operations that
// change how code translates or what memory maps are followed by the end of the TB.
enum class SystemOp : uint64_t {
  RequireCpl0,  // #GP(0) unless CPL 0 (HLT, WBINVD, INVD)
  MovToCr,      // b = register number, c = value
  MovFromCr,    // b = register number; returns the value
  MovToDr,      // b = register number, c = value
  MovFromDr,    // b = register number; returns the value
  Clts,
  Lmsw,         // b = source (low 4 bits used)
  Smsw,         // returns CR0 (UMIP check)
  LoadTable,    // b = linear address, c = 0 GDTR / 1 IDTR, d = operand bits
  StoreTable,   // b = linear address, c = 0 GDTR / 1 IDTR
  Lldt,         // b = selector
  Ltr,          // b = selector
  Sldt,         // returns the LDTR selector
  Str,          // returns the TR selector
  Rdmsr,
  Wrmsr,
  Rdtscp,
  Rdpid,        // returns TSC_AUX
  Invlpg,       // b = linear address
  Syscall,      // b = address of the next instruction; returns the new RIP
  Sysret,       // b = 1 with REX.W; returns the new RIP
  Sysenter,     // returns the new RIP
  Sysexit,      // b = 1 with REX.W; returns the new RIP
  Swapgs,
  Cli,
  Sti,
  Popf,         // b = popped value, c = operand bits
  Stac,
  Clac,
  Vm86Pushf,    // #GP(0) in virtual-8086 mode unless IOPL is 3 (translated only there)
};

uint64_t helper_system(Cpu& cpu, uint64_t op, uint64_t b, uint64_t c, uint64_t d);

// CPUID of the Kiln system CPU (CpuMode::system); helpers.cpp dispatches to it.
void system_cpuid(const CpuState& state, uint32_t leaf, uint32_t subleaf, uint32_t out[4]);

// MSR access as RDMSR/WRMSR see it (no CPL check). False means #GP(0).
bool read_msr(Cpu& cpu, uint32_t index, uint64_t& value);
bool write_msr(Cpu& cpu, uint32_t index, uint64_t value);

// Sets CpuMode::fpu from CR0.EM/TS/MP and CR4.OSFXSR. Whoever loads CR0/CR4
// other than through MOV CR (reset, task switch, a machine's boot state) calls it.
void refresh_fpu_mode(CpuState& state);

// Sets CpuMode::code and ::flat from CR0.PE, EFER.LMA and the segment caches
// (after SYSCALL/SYSRET/SYSENTER/SYSEXIT load CS/SS). SYS-B's own copy of the
// mode computation; the lead unifies it with system.cpp's at merge.
void refresh_code_mode(CpuState& state);

}  // namespace kiln::emu
