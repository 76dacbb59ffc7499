// Segmentation, operating modes and control transfers of system mode:
// descriptor loads with their protection checks, far JMP/CALL/RET through
// call gates, IRET, and the delivery of exceptions and interrupts through the
// IVT (real mode) or the IDT (protected and long mode). Everything here runs
// only when CpuMode::system is set; the frontend routes the instructions to
// the helpers below, the execution loop (Cpu::run) delivers events.
//
// Conventions: a function returning bool returns false after filling
// CpuState::exception with the guest exception to raise; CPU state is then
// unchanged except for memory already written (stack frames, accessed bits),
// as on hardware.
#pragma once

#include <cstdint>

#include "kiln/emulator/cpu_state.h"

namespace kiln::emu {

class Cpu;

// ---- modes ----
inline bool in_protected_mode(const CpuState& s) { return (s.sys.cr0 & cr0::PE) != 0; }
inline bool long_mode_active(const CpuState& s) { return (s.sys.efer & efer::LMA) != 0; }
// Recomputes CpuMode::code (real 16, protected 16/32 from CS.D, long mode 64 from
// CS.L or compatibility 16/32) and CpuMode::flat from CR0.PE, EFER.LMA and the
// segment caches. Call after anything that changes them (CR0, EFER, CS, segment bases).
void update_mode(CpuState& s);

// Attribute bits of SegmentCache::attrs / CpuState::seg_attrs (descriptor bits 40..47, 52..55).
namespace seg_attr {
constexpr uint16_t kAccessed = 1u << 0, kWritable = 1u << 1, kReadable = 1u << 1, kConforming = 1u << 2,
                   kExpandDown = 1u << 2, kCode = 1u << 3, kS = 1u << 4, kPresent = 1u << 7, kAvl = 1u << 12,
                   kLong = 1u << 13, kDefaultBig = 1u << 14, kGranularity = 1u << 15;
constexpr unsigned dpl(uint16_t attrs) { return (attrs >> 5) & 3; }
constexpr unsigned type(uint16_t attrs) { return attrs & 15; }
}  // namespace seg_attr

// System descriptor types (S = 0).
namespace desc_type {
constexpr unsigned kTss16Available = 1, kLdt = 2, kTss16Busy = 3, kCallGate16 = 4, kTaskGate = 5,
                   kInterruptGate16 = 6, kTrapGate16 = 7, kTss32Available = 9, kTss32Busy = 11, kCallGate32 = 12,
                   kInterruptGate32 = 14, kTrapGate32 = 15;
}

// A segment or gate descriptor as stored in the GDT/LDT/IDT (`high` holds the
// second quadword of 16-byte long-mode system descriptors and gates).
struct Descriptor {
  uint64_t low = 0, high = 0;
  uint64_t base() const {
    return ((low >> 16) & 0xffffff) | (((low >> 56) & 0xff) << 24);
  }
  uint64_t base64() const { return base() | ((high & 0xffffffffu) << 32); }
  uint32_t limit() const {
    uint32_t raw = static_cast<uint32_t>((low & 0xffff) | (((low >> 48) & 0xf) << 16));
    return (low >> 55) & 1 ? (raw << 12) | 0xfff : raw;
  }
  uint16_t attrs() const { return static_cast<uint16_t>(((low >> 40) & 0xff) | (((low >> 52) & 0xf) << 12)); }
  unsigned type() const { return (low >> 40) & 15; }
  bool system() const { return ((low >> 44) & 1) == 0; }
  unsigned dpl() const { return (low >> 45) & 3; }
  bool present() const { return (low >> 47) & 1; }
  // Gates.
  uint16_t gate_selector() const { return static_cast<uint16_t>(low >> 16); }
  uint64_t gate_offset() const { return (low & 0xffff) | (((low >> 48) & 0xffff) << 16); }
  uint64_t gate_offset64() const { return gate_offset() | ((high & 0xffffffffu) << 32); }
  unsigned gate_param_count() const { return (low >> 32) & 31; }
  unsigned gate_ist() const { return (low >> 32) & 7; }
};

// Reads the 8-byte descriptor `selector` names from the GDT or LDT (the 16-byte
// form when `wide`). Raises #GP(selector) when the index lies beyond the table limit
// (or TI=1 with an unusable LDT). Table reads are supervisor accesses.
bool read_descriptor(Cpu& cpu, uint16_t selector, Descriptor& out, bool wide = false);

// Loads ES/SS/DS/FS/GS with `selector`: real-mode semantics (base = selector << 4)
// or every protected-mode check (#GP/#SS/#NP with the selector error code, null
// selector rules incl. 64-bit SS), setting the descriptor's accessed bit.
// Loading SS sets the interrupt shadow.
bool load_data_segment(Cpu& cpu, Seg seg, uint16_t selector);
// LLDT and LTR (for the privileged-instruction helpers): all checks (#GP(sel), #NP(sel),
// null LDT selector allowed), 16-byte descriptors in long mode; LTR marks the TSS busy.
bool load_ldt(Cpu& cpu, uint16_t selector);
bool load_task_register(Cpu& cpu, uint16_t selector);

// ---- events ----
enum class EventKind : uint8_t {
  Exception,          // fault or trap raised by the CPU (error code per vector, EXT set on nested faults)
  Software,           // INT n: gate DPL checked against CPL, no error code
  SoftwareException,  // INT3 / INTO: like INT n (DPL check) but delivered as exceptions 3 / 4
  External,           // maskable interrupt from the interrupt controller (EXT = 1)
};
// Whether exception `vector` pushes an error code (in protected and long mode).
bool exception_has_error_code(uint8_t vector);

// Delivers one event through the IVT/IDT: `return_rip` is the RIP pushed
// (faulting instruction for faults, next instruction for traps and interrupts).
// Returns false with CpuState::exception set when the delivery itself faults.
bool deliver_event(Cpu& cpu, uint8_t vector, EventKind kind, uint32_t error_code, uint64_t return_rip);

// Delivers the exception in CpuState::exception (raised by the last block) with
// the double-fault rules: contributory + contributory or #PF + (#PF | contributory)
// becomes #DF; a fault while delivering #DF is a triple fault. Writes CR2 for #PF.
// Returns false on a triple fault (the machine must reset).
bool deliver_exception(Cpu& cpu);
// Delivers an external interrupt (`vector` from the interrupt controller), with
// the same nesting rules for faults during delivery. False on a triple fault.
bool deliver_external_interrupt(Cpu& cpu, uint8_t vector);

// ---- helpers called from translated code (HelperId entries, see helpers.h) ----
// a = Seg, b = selector, c = 1 when loading SS must not start an interrupt shadow (LSS).
uint64_t helper_load_segment(Cpu& cpu, uint64_t seg, uint64_t selector, uint64_t no_shadow, uint64_t);
// Returns the selector of Seg a.
uint64_t helper_read_selector(Cpu& cpu, uint64_t seg, uint64_t, uint64_t, uint64_t);
// Far JMP/CALL: a = selector, b = offset, c = operand bits, d = offset of the next instruction
// (pushed by CALL, saved in the old TSS by task switches). Return the new RIP.
uint64_t helper_far_jump(Cpu& cpu, uint64_t selector, uint64_t offset, uint64_t bits, uint64_t next_offset);
uint64_t helper_far_call(Cpu& cpu, uint64_t selector, uint64_t offset, uint64_t bits, uint64_t return_offset);
// RETF [imm16]: a = operand bits, b = imm16. IRET: a = operand bits, b = offset of the next
// instruction (saved by a task return). Return the new RIP.
uint64_t helper_far_return(Cpu& cpu, uint64_t bits, uint64_t pop_bytes, uint64_t, uint64_t);
uint64_t helper_iret(Cpu& cpu, uint64_t bits, uint64_t next_offset, uint64_t, uint64_t);
// INT n / INT3 / INTO: a = vector, b = instruction length, c = EventKind (| kSoftwareInterruptInto
// for INTO, which only interrupts when OF is set). Returns the new RIP.
constexpr uint64_t kSoftwareInterruptInto = 0x100;
uint64_t helper_software_interrupt(Cpu& cpu, uint64_t vector, uint64_t length, uint64_t kind, uint64_t);
// LAR / LSL / VERR / VERW / ARPL: a = selector, b = which (0 LAR, 1 LSL, 2 VERR, 3 VERW, 4 ARPL
// with c = source selector). Sets ZF; returns the access rights / limit (LAR, LSL) or the
// adjusted selector (ARPL). #UD in real mode.
uint64_t helper_check_selector(Cpu& cpu, uint64_t selector, uint64_t which, uint64_t source, uint64_t);
// Data access through a segment listed in CpuMode::checked_segments: a = linear address
// of the first byte, b = Seg | size in bytes << 8 (0: 1) | access << 24 (kSegmentRead,
// kSegmentWrite; 0: unknown). #GP(0) (#SS(0) for SS) for an unusable segment, a byte of
// the access outside the limit (expand-down aware), a write to a read-only data or a code
// segment, a read from an execute-only code segment.
constexpr unsigned kSegmentRead = 1, kSegmentWrite = 2;
uint64_t helper_segment_check(Cpu& cpu, uint64_t linear, uint64_t seg, uint64_t, uint64_t);

}  // namespace kiln::emu
