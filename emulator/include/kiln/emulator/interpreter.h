// The interpreter backend: compiles an optimised IR block into a compact
// array of instructions over a frame of 64-bit value slots and executes it.
// It is the reference the JIT backend must match.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/emulator/ir.h"

namespace kiln::emu {

class Cpu;

struct ExecInst {
  ir::Op op;
  ir::Type type;
  ir::Type arg_type;  // type of argument 0
  uint32_t dst;
  uint32_t a, b, c, d;
  uint64_t imm;
  uint64_t mask;  // type_mask(type)
};

struct ExecBlock {
  std::vector<ExecInst> code;
  std::vector<uint64_t> frame_template;  // constants preloaded, other slots zero
};

ExecBlock compile_for_interpreter(const ir::Block& block);

struct ExecResult {
  bool exception = false;
  uint64_t next_pc = 0;
  uint32_t insns = 0;  // guest instructions completed
};

// Runs a block on `cpu`. `frame` is scratch space reused across calls.
ExecResult interpret(Cpu& cpu, const ExecBlock& block, std::vector<uint64_t>& frame);

}  // namespace kiln::emu
