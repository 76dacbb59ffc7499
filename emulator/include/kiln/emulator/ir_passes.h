// Optimisation passes over an IR block. Each keeps the block valid (verify()).
#pragma once

#include "kiln/emulator/ir.h"

namespace kiln::emu::ir {

// Folds operations on constants, applies algebraic identities (x+0, x&~0, ...),
// reuses identical pure values (common-subexpression elimination, constants
// included) and forwards guest register/field values within the block (a get
// after a set of the same register reuses the set value). Leaves replaced
// instructions in place for eliminate_dead_code() to remove.
void fold_constants(Block& block);

// Removes unused side-effect-free instructions, guest register/field writes
// overwritten before any possible exit, and lazy flag updates overwritten
// before any flag read or possible exit (dead-flag elimination), then
// compacts the block.
void eliminate_dead_code(Block& block);

// The standard pipeline.
inline void optimise(Block& block) {
  fold_constants(block);
  eliminate_dead_code(block);
}

}  // namespace kiln::emu::ir
