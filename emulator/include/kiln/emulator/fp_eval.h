// SSE floating point for the interpreter. The host is x86-64, so each
// operation runs the host's own SSE instruction under the guest's MXCSR
// (rounding, DAZ/FTZ; exceptions masked), which reproduces NaN propagation,
// rounding and the "integer indefinite" results exactly; the exception flags
// raised are merged into the guest MXCSR.
#pragma once

#include <cstdint>

namespace kiln::emu::ir {

enum class FpOp : uint16_t {
#define KILN_FP_OP(name, text) name,
#include "kiln/emulator/fp_ops.inc"
#undef KILN_FP_OP
  Count
};

const char* fp_op_name(FpOp op);

// SSE3/SSE4.1 floating-point ops run on the host's own units; the frontend
// raises #UD for them when the host lacks SSE4.1 (and SSE3).
bool host_has_sse41();
// SSE4.2 string compares (PCMPxSTRx) run on the host's unit too.
bool host_has_sse42();

// out = op(a, b) with b the source operand (a is the destination's old value).
// Returns false when an unmasked SIMD exception must be raised (#XM).
bool eval_fp(FpOp op, uint32_t aux, const uint64_t a[2], const uint64_t b[2], uint64_t out[2], uint32_t& mxcsr);

}  // namespace kiln::emu::ir
