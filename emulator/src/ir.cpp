#include "kiln/emulator/ir.h"

#include <fmt/format.h>

#include "kiln/emulator/fp_eval.h"
#include "kiln/emulator/vec_eval.h"

namespace kiln::emu::ir {

namespace {

using enum TypeClass;
constexpr OpInfo kOpInfo[] = {
#define KILN_IR_OP(name, text, r, a0, a1, a2, a3, attrs) {text, r, {a0, a1, a2, a3}, (attrs)},
#include "kiln/emulator/ir_ops.inc"
#undef KILN_IR_OP
};
static_assert(std::size(kOpInfo) == static_cast<size_t>(Op::Count));

bool is_int(Type t) { return t >= Type::I1 && t <= Type::I64; }
bool is_sized_int(Type t) { return t >= Type::I8 && t <= Type::I64; }

// Checks an instruction's own type against its result class.
bool result_ok(TypeClass c, Type t) {
  switch (c) {
    case V: return t == Type::Void;
    case T: return is_int(t);
    case B: return t == Type::I1;
    case L: return t == Type::I64;
    case Q: return t == Type::I128;
    case M: return is_sized_int(t) || t == Type::I128;
    case R: return true;
    default: return false;
  }
}

}  // namespace

std::string_view type_name(Type t) {
  switch (t) {
    case Type::Void: return "void";
    case Type::I1: return "i1";
    case Type::I8: return "i8";
    case Type::I16: return "i16";
    case Type::I32: return "i32";
    case Type::I64: return "i64";
    case Type::I128: return "i128";
  }
  return "?";
}

const OpInfo& op_info(Op op) { return kOpInfo[static_cast<size_t>(op)]; }

std::string print_inst(const Block& block, ValueId id) {
  const Inst& inst = block.insts[id];
  const OpInfo& info = op_info(inst.op);
  std::string out;
  if (inst.type != Type::Void) out = fmt::format("%{} = ", id);
  out += fmt::format("{}.{}", info.name, type_name(inst.type));
  bool first = true;
  for (ValueId arg : inst.args) {
    if (arg == kNoValue) continue;
    out += fmt::format("{}%{}", first ? " " : ", ", arg);
    first = false;
  }
  if (inst.op == Op::Vec)
    out += fmt::format("{}{} #0x{:x}", first ? " " : ", ", vec_op_name(static_cast<VecOp>(inst.imm & 0xffff)), inst.imm >> 16);
  else if (inst.op == Op::VecFp)
    out += fmt::format("{}{} #0x{:x}", first ? " " : ", ", fp_op_name(static_cast<FpOp>(inst.imm & 0xffff)), inst.imm >> 16);
  else if (info.attrs & kImm)
    out += fmt::format("{}#0x{:x}", first ? " " : ", ", inst.imm);
  return out;
}

std::string print(const Block& block) {
  std::string out = fmt::format("block pc=0x{:x} mode={} insns={}\n", block.guest_pc, block.mode, block.guest_insns);
  for (ValueId i = 0; i < block.insts.size(); ++i) {
    if (block.insts[i].op == Op::InsnStart) out += fmt::format(" ---- 0x{:x}\n", block.insts[i].imm);
    else out += fmt::format("  {}\n", print_inst(block, i));
  }
  return out;
}

std::string verify(const Block& block) {
  if (block.insts.empty()) return "empty block";
  for (ValueId i = 0; i < block.insts.size(); ++i) {
    const Inst& inst = block.insts[i];
    auto fail = [&](std::string_view why) { return fmt::format("inst {} ({}): {}", i, print_inst(block, i), why); };
    if (static_cast<size_t>(inst.op) >= static_cast<size_t>(Op::Count)) return fmt::format("inst {}: bad opcode", i);
    const OpInfo& info = op_info(inst.op);
    if (!result_ok(info.result, inst.type)) return fail("result type not allowed for this op");
    Type same = Type::Void;
    for (size_t a = 0; a < 4; ++a) {
      ValueId arg = inst.args[a];
      TypeClass c = info.args[a];
      if (arg == kNoValue) {
        if (c == N || c == O) continue;
        return fail(fmt::format("missing argument {}", a));
      }
      if (c == N) return fail(fmt::format("unexpected argument {}", a));
      if (arg >= i) return fail(fmt::format("argument {} is not defined before use", a));
      Type at = block.insts[arg].type;
      bool ok = false;
      switch (c) {
        case T: ok = at == inst.type; break;
        case B: ok = at == Type::I1; break;
        case L: ok = at == Type::I64; break;
        case Q: ok = at == Type::I128; break;
        case A: case O: ok = is_int(at); break;
        case M: ok = inst.type == Type::Void ? (is_sized_int(at) || at == Type::I128) : at == inst.type; break;
        case S:
          ok = is_int(at) && (same == Type::Void || same == at);
          same = at;
          break;
        default: ok = false;
      }
      if (!ok) return fail(fmt::format("argument {} has type {}", a, type_name(at)));
    }
    switch (inst.op) {
      case Op::Const:
        if (inst.imm & ~type_mask(inst.type)) return fail("constant does not fit its type");
        break;
      case Op::GetReg: case Op::SetReg: case Op::GetXmm: case Op::SetXmm:
        if (inst.imm >= 16) return fail("register index out of range");
        break;
      case Op::GetMmx: case Op::SetMmx:
        if (inst.imm >= 8) return fail("MMX register index out of range");
        break;
      case Op::GetField: case Op::SetField:
        if (inst.imm >= static_cast<uint64_t>(StateField::Count)) return fail("state field out of range");
        break;
      case Op::Extract:
        if (inst.imm >= 64) return fail("extract position out of range");
        break;
      case Op::Deposit: {
        uint64_t pos = inst.imm & 0xff, width = (inst.imm >> 8) & 0xff;
        if (width == 0 || pos + width > 64 || (inst.imm >> 16) != 0) return fail("deposit field out of range");
        break;
      }
      case Op::Zext: case Op::Sext:
        if (type_bits(block.insts[inst.args[0]].type) > type_bits(inst.type)) return fail("extension narrows");
        break;
      case Op::Trunc:
        if (type_bits(block.insts[inst.args[0]].type) < type_bits(inst.type)) return fail("truncation widens");
        break;
      case Op::CcSet: case Op::CcSetIf: {
        uint64_t kind = inst.imm / 4;
        if (kind == 0 || kind >= static_cast<uint64_t>(CcKind::Count)) return fail("bad lazy flag op");
        break;
      }
      case Op::CcCond:
        if (inst.imm >= 16) return fail("condition out of range");
        break;
      case Op::Vec:
        if ((inst.imm & 0xffff) >= static_cast<uint64_t>(VecOp::Count)) return fail("bad vector op");
        break;
      case Op::VecFp:
        if ((inst.imm & 0xffff) >= static_cast<uint64_t>(FpOp::Count)) return fail("bad floating-point op");
        break;
      default: break;
    }
    bool last = i + 1 == block.insts.size();
    if ((info.attrs & kTerminal) && !last) return fail("terminal op before the end of the block");
    if (last && !(info.attrs & kTerminal)) return fail("block does not end with a terminal op");
  }
  return {};
}

}  // namespace kiln::emu::ir
