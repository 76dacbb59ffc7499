// IR table, verifier, printer and passes.
#include <gtest/gtest.h>

#include <set>

#include "kiln/emulator/ir.h"
#include "kiln/emulator/ir_builder.h"
#include "kiln/emulator/ir_passes.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu::ir {
namespace {

size_t count_ops(const Block& b, Op op) {
  size_t n = 0;
  for (const Inst& i : b.insts) n += i.op == op;
  return n;
}

TEST(IrTable, NamesAreUniqueAndPrintable) {
  std::set<std::string_view> names;
  for (size_t i = 0; i < static_cast<size_t>(Op::Count); ++i) {
    auto name = op_info(static_cast<Op>(i)).name;
    EXPECT_FALSE(name.empty());
    EXPECT_TRUE(names.insert(name).second) << name;
  }
  EXPECT_EQ(op_info(Op::Add).name, "add");
  EXPECT_TRUE(has_attr(Op::Exit, kTerminal));
  EXPECT_TRUE(has_attr(Op::Load, kFault));
  EXPECT_TRUE(has_attr(Op::Add, kPure));
}

TEST(IrPrinter, PrintsTypedInstructions) {
  Block b;
  Builder ir(b);
  Value x = ir.constant(Type::I32, 5);
  Value y = ir.emit(Op::Extract, Type::I32, {ir.get_reg(3)}, 0);
  Value s = ir.add(x, y);
  ir.set_reg(0, ir.zext(s, Type::I64));
  ir.emit(Op::Exit, Type::Void, {}, 0x1000);
  std::string text = print(b);
  EXPECT_NE(text.find("%0 = const.i32 #0x5"), std::string::npos) << text;
  EXPECT_NE(text.find("%3 = add.i32 %0, %2"), std::string::npos) << text;
  EXPECT_NE(text.find("exit.void #0x1000"), std::string::npos) << text;
  EXPECT_EQ(verify(b), "");
}

TEST(IrVerifier, RejectsMissingTerminal) {
  Block b;
  Builder ir(b);
  ir.constant(Type::I64, 1);
  EXPECT_NE(verify(b).find("terminal"), std::string::npos);
}

TEST(IrVerifier, RejectsTerminalInTheMiddle) {
  Block b;
  Builder ir(b);
  ir.emit(Op::Exit, Type::Void, {}, 0);
  ir.emit(Op::Exit, Type::Void, {}, 0);
  EXPECT_NE(verify(b), "");
}

TEST(IrVerifier, RejectsTypeMismatch) {
  Block b;
  Builder ir(b);
  Value a = ir.constant(Type::I32, 1);
  Value c = ir.constant(Type::I64, 1);
  ir.emit(Op::Add, Type::I32, {a, c});
  ir.emit(Op::Exit, Type::Void, {}, 0);
  EXPECT_NE(verify(b).find("argument 1 has type i64"), std::string::npos) << verify(b);
}

TEST(IrVerifier, RejectsUseBeforeDefinition) {
  Block b;
  b.insts.push_back(Inst{.op = Op::Add, .type = Type::I64, .args = {1, 1, kNoValue, kNoValue}});
  b.insts.push_back(Inst{.op = Op::Const, .type = Type::I64, .imm = 1});
  b.insts.push_back(Inst{.op = Op::Exit, .type = Type::Void});
  EXPECT_NE(verify(b).find("not defined before use"), std::string::npos);
}

TEST(IrVerifier, RejectsBadImmediatesAndArity) {
  {
    Block b;
    b.insts.push_back(Inst{.op = Op::Const, .type = Type::I8, .imm = 0x100});
    b.insts.push_back(Inst{.op = Op::Exit, .type = Type::Void});
    EXPECT_NE(verify(b).find("does not fit"), std::string::npos);
  }
  {
    Block b;
    Builder ir(b);
    ir.emit(Op::GetReg, Type::I64, {}, 16);
    ir.emit(Op::Exit, Type::Void, {}, 0);
    EXPECT_NE(verify(b).find("register index"), std::string::npos);
  }
  {
    Block b;
    Builder ir(b);
    Value r = ir.get_reg(0);
    ir.emit(Op::Deposit, Type::I64, {r, ir.constant(Type::I8, 1)}, 60 | (8 << 8));
    ir.emit(Op::Exit, Type::Void, {}, 0);
    EXPECT_NE(verify(b).find("deposit"), std::string::npos);
  }
  {
    Block b;
    Builder ir(b);
    ir.emit(Op::Add, Type::I64, {ir.get_reg(0)});
    ir.emit(Op::Exit, Type::Void, {}, 0);
    EXPECT_NE(verify(b).find("missing argument"), std::string::npos);
  }
  {
    Block b;
    Builder ir(b);
    Value v = ir.constant(Type::I64, 1);
    ir.emit(Op::CcSet, Type::Void, {v, v, v}, 0);  // kind 0 (Eflags) is not a CcSet kind
    ir.emit(Op::Exit, Type::Void, {}, 0);
    EXPECT_NE(verify(b).find("lazy flag"), std::string::npos);
  }
}

TEST(IrPasses, FoldsConstantsAndIdentities) {
  Block b;
  Builder ir(b);
  Value x = ir.add(ir.constant(Type::I32, 0xfffffff0), ir.constant(Type::I32, 0x20));
  Value r = ir.emit(Op::Extract, Type::I32, {ir.get_reg(1)}, 0);
  Value y = ir.add(r, ir.constant(Type::I32, 0));  // x + 0 → x
  ir.set_reg(0, ir.zext(ir.add(x, y), Type::I64));
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(verify(b), "");
  EXPECT_EQ(count_ops(b, Op::Add), 1u) << print(b);
  bool found = false;
  for (const Inst& i : b.insts) found |= i.op == Op::Const && i.imm == 0x10 && i.type == Type::I32;
  EXPECT_TRUE(found) << print(b);  // 0xfffffff0 + 0x20 wraps to 0x10 in i32
}

TEST(IrPasses, ReusesIdenticalPureValues) {
  Block b;
  Builder ir(b);
  Value r = ir.get_reg(3);
  Value x = ir.emit(Op::Extract, Type::I32, {r}, 0);
  Value y = ir.emit(Op::Extract, Type::I32, {r}, 0);  // same as x
  Value z = ir.emit(Op::Extract, Type::I32, {r}, 8);  // different immediate: kept
  ir.set_reg(0, ir.zext(ir.add(ir.add(x, y), z), Type::I64));
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(verify(b), "");
  EXPECT_EQ(count_ops(b, Op::Extract), 2u) << print(b);
}

TEST(IrPasses, XorSelfBecomesZero) {
  Block b;
  Builder ir(b);
  Value r = ir.get_reg(2);
  ir.set_reg(2, ir.xor_(r, r));
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(count_ops(b, Op::Xor), 0u);
  EXPECT_EQ(count_ops(b, Op::GetReg), 0u) << print(b);
}

TEST(IrPasses, ForwardsRegisterValuesAndRemovesDeadWrites) {
  Block b;
  Builder ir(b);
  Value v = ir.constant(Type::I64, 7);
  ir.set_reg(0, v);
  Value again = ir.get_reg(0);          // forwarded from the set
  ir.set_reg(1, ir.add(again, again));
  ir.set_reg(0, ir.constant(Type::I64, 9));  // overwrites the first set: dead
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(verify(b), "");
  EXPECT_EQ(count_ops(b, Op::GetReg), 0u) << print(b);
  EXPECT_EQ(count_ops(b, Op::SetReg), 2u) << print(b);
  EXPECT_EQ(count_ops(b, Op::Add), 0u) << print(b);  // 7 + 7 folded
}

TEST(IrPasses, KeepsRegisterWritesBeforePossibleFaults) {
  Block b;
  Builder ir(b);
  ir.set_reg(0, ir.constant(Type::I64, 1));
  ir.load(Type::I64, ir.constant(Type::I64, 0x1000));  // may fault: RAX = 1 must be visible
  ir.set_reg(0, ir.constant(Type::I64, 2));
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(count_ops(b, Op::SetReg), 2u) << print(b);
}

TEST(IrPasses, EliminatesDeadFlags) {
  Block b;
  Builder ir(b);
  Value a = ir.emit(Op::Extract, Type::I32, {ir.get_reg(0)}, 0);
  Value s = ir.add(a, a);
  ir.emit(Op::CcSet, Type::Void, {s, a, a}, cc_op(CcKind::Add, Type::I32));  // dead: overwritten below
  Value t = ir.sub(a, s);
  ir.emit(Op::CcSet, Type::Void, {t, a, s}, cc_op(CcKind::Sub, Type::I32));
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(count_ops(b, Op::CcSet), 1u) << print(b);
}

TEST(IrPasses, KeepsFlagsThatAreRead) {
  Block b;
  Builder ir(b);
  Value a = ir.emit(Op::Extract, Type::I32, {ir.get_reg(0)}, 0);
  ir.emit(Op::CcSet, Type::Void, {a, a, a}, cc_op(CcKind::Logic, Type::I32));
  Value cf = ir.emit(Op::CcCond, Type::I1, {}, 2);
  ir.emit(Op::CcSet, Type::Void, {a, a, ir.zext(cf, Type::I32)}, cc_op(CcKind::Add, Type::I32));
  ir.emit(Op::Exit, Type::Void, {}, 0);
  optimise(b);
  EXPECT_EQ(count_ops(b, Op::CcSet), 2u) << print(b);
}

TEST(LazyFlags, ComputesArithmeticFlags) {
  // 0x7f + 1 (8-bit): OF, SF, AF set; CF, ZF clear; 0x80 has odd parity.
  uint64_t f = compute_flags(cc_op(CcKind::Add, Type::I8), 0x80, 0x7f, 1, 0);
  EXPECT_EQ(f, rflags::OF | rflags::SF | rflags::AF);
  // 0 - 1 (32-bit): CF, SF, AF, PF (0xff low byte has even parity).
  f = compute_flags(cc_op(CcKind::Sub, Type::I32), 0xffffffff, 0, 1, 0);
  EXPECT_EQ(f, rflags::CF | rflags::SF | rflags::AF | rflags::PF);
  // SBB with borrow in: 5 - 5 - 1.
  f = compute_flags(cc_op(CcKind::Sbb, Type::I16), 0xffff, 5, 5, 1);
  EXPECT_TRUE(f & rflags::CF);
  // INC keeps the carry it was given.
  f = compute_flags(cc_op(CcKind::Inc, Type::I64), 0, ~uint64_t{0}, 1, 1);
  EXPECT_EQ(f, rflags::CF | rflags::ZF | rflags::PF | rflags::AF);
  CpuState cpu;
  cpu.cc_op = cc_op(CcKind::Sub, Type::I8);
  cpu.cc_src1 = 0x80;  // -128 < 1 signed, 128 > 1 unsigned
  cpu.cc_src2 = 1;
  cpu.cc_dst = 0x7f;
  EXPECT_TRUE(evaluate_condition(cpu, 0xc));   // L
  EXPECT_FALSE(evaluate_condition(cpu, 0x2));  // B
  EXPECT_TRUE(evaluate_condition(cpu, 0x0));   // O
}

}  // namespace
}  // namespace kiln::emu::ir
