// The x86 frontend: decodes guest code with Zydis and emits IR for one
// translation block, ending at the first control transfer, exception-raising
// instruction, or the instruction limit.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/emulator/cpu_state.h"
#include "kiln/emulator/ir.h"
#include "kiln/emulator/memory.h"

namespace kiln::emu {

struct TranslateOptions {
  uint32_t max_insns = 256;  // per TB
  bool optimise = true;      // run the IR passes
  bool verify = true;        // run the verifier (throws kiln::Error on a frontend bug)
};

// Translates the block at `pc`. Fetch faults and invalid encodings become
// guest exceptions in the IR (#PF, #UD), never host errors.
ir::Block translate_block(Memory& memory, uint64_t pc, CpuMode mode, const TranslateOptions& options,
                          ir::Block* unoptimised = nullptr);

// Intel-syntax disassembly of `count` instructions at `pc`, one per line with addresses.
std::string disassemble(Memory& memory, uint64_t pc, CpuMode mode, uint32_t count);

}  // namespace kiln::emu
