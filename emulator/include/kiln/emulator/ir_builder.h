// Small helper for appending instructions to an IR block with typed values.
#pragma once

#include <initializer_list>

#include "kiln/emulator/ir.h"

namespace kiln::emu::ir {

struct Value {
  ValueId id = kNoValue;
  Type type = Type::Void;
  explicit operator bool() const { return id != kNoValue; }
};

class Builder {
 public:
  explicit Builder(Block& block) : block_(block) {}

  Value emit(Op op, Type type, std::initializer_list<Value> args = {}, uint64_t imm = 0) {
    Inst inst{.op = op, .type = type, .imm = imm};
    size_t i = 0;
    for (Value v : args) inst.args[i++] = v.id;
    block_.insts.push_back(inst);
    return Value{static_cast<ValueId>(block_.insts.size() - 1), type};
  }

  Value constant(Type t, uint64_t v) { return emit(Op::Const, t, {}, v & type_mask(t)); }
  Value binary(Op op, Value a, Value b) { return emit(op, a.type, {a, b}); }
  Value unary(Op op, Value a) { return emit(op, a.type, {a}); }
  Value add(Value a, Value b) { return binary(Op::Add, a, b); }
  Value sub(Value a, Value b) { return binary(Op::Sub, a, b); }
  Value and_(Value a, Value b) { return binary(Op::And, a, b); }
  Value or_(Value a, Value b) { return binary(Op::Or, a, b); }
  Value xor_(Value a, Value b) { return binary(Op::Xor, a, b); }
  Value cmp(Op op, Value a, Value b) { return emit(op, Type::I1, {a, b}); }
  Value select(Value c, Value a, Value b) { return emit(Op::Select, a.type, {c, a, b}); }
  // Zero/sign-extends or truncates `v` to `t`.
  Value zext(Value v, Type t) {
    if (v.type == t) return v;
    return emit(type_bits(v.type) < type_bits(t) ? Op::Zext : Op::Trunc, t, {v});
  }
  Value sext(Value v, Type t) {
    if (v.type == t) return v;
    return emit(type_bits(v.type) < type_bits(t) ? Op::Sext : Op::Trunc, t, {v});
  }
  Value get_reg(unsigned r) { return emit(Op::GetReg, Type::I64, {}, r); }
  void set_reg(unsigned r, Value v) { emit(Op::SetReg, Type::Void, {v}, r); }
  Value get_field(StateField f) { return emit(Op::GetField, Type::I64, {}, static_cast<uint64_t>(f)); }
  void set_field(StateField f, Value v) { emit(Op::SetField, Type::Void, {v}, static_cast<uint64_t>(f)); }
  Value load(Type t, Value addr) { return emit(Op::Load, t, {addr}); }
  void store(Value addr, Value v) { emit(Op::Store, Type::Void, {addr, v}); }

  Block& block() { return block_; }

 private:
  Block& block_;
};

}  // namespace kiln::emu::ir
