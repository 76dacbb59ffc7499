// Evaluation of the 128-bit vector operations (vec_ops.inc). Shared by the
// interpreter (and a future JIT's reference checks).
#pragma once

#include <cstdint>

namespace kiln::emu::ir {

enum class VecOp : uint16_t {
#define KILN_VEC_OP(name, text) name,
#include "kiln/emulator/vec_ops.inc"
#undef KILN_VEC_OP
  Count
};

const char* vec_op_name(VecOp op);

// out = op(a, b); `aux` is the immediate (shuffle control, byte count).
// For shifts, b[0] is the count. out may alias a or b.
void eval_vec(VecOp op, uint32_t aux, const uint64_t a[2], const uint64_t b[2], uint64_t out[2]);

}  // namespace kiln::emu::ir
