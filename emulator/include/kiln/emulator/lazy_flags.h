// Lazy x86 arithmetic flags: instructions record (CcOp, result, operands) and
// the flags are computed only when something reads them.
//
// Operand conventions per CcKind (all values zero-extended to the op size):
//   Add/Sub:  dst = result, src1 = first operand, src2 = second operand
//   Adc/Sbb:  as Add/Sub, aux = carry in (0/1)
//   Logic:    dst = result (CF = OF = AF = 0)
//   Inc/Dec:  dst = result, src1 = operand, aux = CF before the instruction
//   Shl/Shr/Sar: dst = result, src1 = value before the shift, src2 = count (1..63, never 0)
//   Mul:      dst = low half of the result, src1 = 1 when CF = OF = 1
//   Eflags:   dst = explicit OSZAPC bits
// Architecturally undefined flags get fixed, documented values:
//   Logic: AF = 0.  Shl/Shr/Sar: AF = 0; OF for count > 1 uses the count-1 formula
//   (Shl: MSB(result) ^ CF, Shr: MSB(original), Sar: 0).  Mul: SF/ZF/PF from the
//   low half, AF = 0.
#pragma once

#include <cstdint>

#include "kiln/emulator/cpu_state.h"
#include "kiln/emulator/ir.h"

namespace kiln::emu {

uint64_t compute_flags(uint32_t cc_op, uint64_t dst, uint64_t src1, uint64_t src2, uint64_t aux);
inline uint64_t compute_flags(const CpuState& cpu) {
  return compute_flags(cpu.cc_op, cpu.cc_dst, cpu.cc_src1, cpu.cc_src2, cpu.cc_aux);
}
// Evaluates x86 condition code `cond` (0 = O ... 15 = G) from the lazy state.
bool evaluate_condition(const CpuState& cpu, unsigned cond);
// Evaluates a condition on explicit flags.
bool condition_from_flags(uint64_t flags, unsigned cond);

}  // namespace kiln::emu
