#include "kiln/emulator/ir_passes.h"

#include <array>
#include <unordered_map>

#include "kiln/emulator/ir_eval.h"

namespace kiln::emu::ir {

namespace {

constexpr size_t kRegs = 16;
constexpr size_t kFields = static_cast<size_t>(StateField::Count);

// Identity of a pure instruction for common-subexpression elimination.
struct PureKey {
  Op op;
  Type type;
  std::array<ValueId, 4> args;
  uint64_t imm;
  bool operator==(const PureKey&) const = default;
};
struct PureKeyHash {
  size_t operator()(const PureKey& k) const {
    uint64_t h = static_cast<uint64_t>(k.op) * 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(k.type) << 17;
    for (ValueId a : k.args) h = (h ^ a) * 0x100000001b3ull;
    return static_cast<size_t>(h ^ (k.imm * 0xff51afd7ed558ccdull));
  }
};

bool removable_if_unused(Op op) {
  return has_attr(op, kPure) || op == Op::GetReg || op == Op::GetField || op == Op::GetXmm || op == Op::GetMmx ||
         op == Op::CcCond ||
         op == Op::CcFlags;
}

// Any op after which the full guest state may be observed.
bool is_exit_point(Op op) { return has_attr(op, kFault | kTerminal | kBarrier); }

}  // namespace

void fold_constants(Block& block) {
  auto& insts = block.insts;
  std::vector<ValueId> forward(insts.size());
  std::array<ValueId, kRegs> known_reg;
  std::array<ValueId, kFields> known_field;
  known_reg.fill(kNoValue);
  known_field.fill(kNoValue);
  std::unordered_map<PureKey, ValueId, PureKeyHash> seen;  // pure values computed so far
  seen.reserve(insts.size());
  // Reuses an identical earlier pure value (local value numbering).
  auto number = [&](ValueId i) {
    const Inst& inst = insts[i];
    if (!has_attr(inst.op, kPure) || forward[i] != i) return;
    auto [it, inserted] = seen.try_emplace(PureKey{inst.op, inst.type, inst.args, inst.imm}, i);
    if (!inserted) forward[i] = it->second;
  };
  auto is_const = [&](ValueId v) { return v != kNoValue && insts[v].op == Op::Const; };
  auto const_value = [&](ValueId v) { return insts[v].imm; };

  for (ValueId i = 0; i < insts.size(); ++i) {
    forward[i] = i;
    Inst& inst = insts[i];
    for (ValueId& arg : inst.args)
      if (arg != kNoValue) arg = forward[arg];
    const Op op = inst.op;
    if (op == Op::Const) {
      number(i);
      continue;
    }

    if (op == Op::GetReg || op == Op::GetField) {
      auto& known = op == Op::GetReg ? known_reg[inst.imm] : known_field[inst.imm];
      if (known != kNoValue) forward[i] = known;
      else known = i;
      continue;
    }
    if (op == Op::SetReg) { known_reg[inst.imm] = inst.args[0]; continue; }
    if (op == Op::SetField) { known_field[inst.imm] = inst.args[0]; continue; }
    if (op == Op::VecFp) known_field.fill(kNoValue);  // updates MXCSR flags implicitly
    if (has_attr(op, kBarrier)) {
      known_reg.fill(kNoValue);
      known_field.fill(kNoValue);
      continue;
    }
    if (!has_attr(op, kPure)) continue;
    // 128-bit values have no constant form: vector ops are never folded.
    if (inst.type == Type::I128 || (inst.args[0] != kNoValue && insts[inst.args[0]].type == Type::I128)) {
      number(i);
      continue;
    }

    const ValueId a = inst.args[0], b = inst.args[1], c = inst.args[2];
    bool all_const = true;
    for (ValueId arg : inst.args)
      if (arg != kNoValue && !is_const(arg)) all_const = false;
    if (all_const) {
      Type at = a == kNoValue ? Type::Void : insts[a].type;
      uint64_t value = eval_pure(op, inst.type, at, a == kNoValue ? 0 : const_value(a), b == kNoValue ? 0 : const_value(b),
                                 c == kNoValue ? 0 : const_value(c), inst.imm);
      inst = Inst{.op = Op::Const, .type = inst.type, .imm = value & type_mask(inst.type)};
      number(i);
      continue;
    }
    // Algebraic identities that forward an operand unchanged.
    const uint64_t mask = type_mask(inst.type);
    switch (op) {
      case Op::Add: case Op::Sub: case Op::Or: case Op::Xor:
      case Op::Shl: case Op::Shr: case Op::Sar: case Op::Rol: case Op::Ror:
        if (is_const(b) && (const_value(b) & (op >= Op::Shl ? type_bits(inst.type) - 1 : mask)) == 0) forward[i] = a;
        if ((op == Op::Add || op == Op::Or || op == Op::Xor) && is_const(a) && const_value(a) == 0) forward[i] = b;
        break;
      case Op::And:
        if (is_const(b) && const_value(b) == mask) forward[i] = a;
        else if (is_const(a) && const_value(a) == mask) forward[i] = b;
        else if ((is_const(a) && const_value(a) == 0) || (is_const(b) && const_value(b) == 0))
          inst = Inst{.op = Op::Const, .type = inst.type, .imm = 0};
        break;
      case Op::Mul:
        if (is_const(b) && const_value(b) == 1) forward[i] = a;
        break;
      default: break;
    }
    // x ^ x and x - x are zero (XOR reg, reg is the usual way to clear a register).
    if ((op == Op::Xor || op == Op::Sub) && a == b && forward[i] == i) {
      inst = Inst{.op = Op::Const, .type = inst.type, .imm = 0};
      number(i);
      continue;
    }
    switch (op) {
      case Op::Extract:
        // Extracting the low bits of a zero-extended value gives the value back.
        if (inst.imm == 0 && (insts[a].op == Op::Zext) && insts[insts[a].args[0]].type == inst.type)
          forward[i] = insts[a].args[0];
        break;
      case Op::Zext: case Op::Trunc:
        if (insts[a].type == inst.type) forward[i] = a;
        break;
      case Op::Select:
        if (is_const(a)) forward[i] = const_value(a) ? b : c;
        else if (b == c) forward[i] = b;
        break;
      default: break;
    }
    number(i);
  }
}

void eliminate_dead_code(Block& block) {
  auto& insts = block.insts;
  const size_t n = insts.size();
  std::vector<uint32_t> uses(n, 0);
  std::vector<bool> live(n, false);
  std::array<bool, kRegs> reg_overwritten{};
  std::array<bool, kFields> field_overwritten{};
  bool flags_overwritten = false;

  for (size_t k = n; k-- > 0;) {
    const Inst& inst = insts[k];
    const Op op = inst.op;
    bool is_live = true;
    if (removable_if_unused(op) && uses[k] == 0) is_live = false;
    if (op == Op::SetReg && reg_overwritten[inst.imm]) is_live = false;
    if (op == Op::SetField && field_overwritten[inst.imm]) is_live = false;
    if ((op == Op::CcSet || op == Op::CcSetIf || op == Op::CcLoad) && flags_overwritten) is_live = false;
    if (!is_live) continue;
    live[k] = true;
    for (ValueId arg : inst.args)
      if (arg != kNoValue) ++uses[arg];

    if (is_exit_point(op)) {
      reg_overwritten.fill(false);
      field_overwritten.fill(false);
      flags_overwritten = false;
    }
    switch (op) {
      case Op::SetReg: reg_overwritten[inst.imm] = true; break;
      case Op::GetReg: reg_overwritten[inst.imm] = false; break;
      case Op::SetField: field_overwritten[inst.imm] = true; break;
      case Op::GetField: field_overwritten[inst.imm] = false; break;
      case Op::CcSet: case Op::CcLoad: flags_overwritten = true; break;
      case Op::CcSetIf: case Op::CcCond: case Op::CcFlags: flags_overwritten = false; break;
      default: break;
    }
  }

  std::vector<ValueId> renumber(n, kNoValue);
  std::vector<Inst> out;
  out.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    if (!live[k]) continue;
    Inst inst = insts[k];
    for (ValueId& arg : inst.args)
      if (arg != kNoValue) arg = renumber[arg];
    renumber[k] = static_cast<ValueId>(out.size());
    out.push_back(inst);
  }
  insts = std::move(out);
}

}  // namespace kiln::emu::ir
