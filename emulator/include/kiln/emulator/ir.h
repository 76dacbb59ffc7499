// The translator's intermediate representation: a straight-line block of typed
// SSA instructions produced by the frontend for one translation block (TB).
// Values are instruction indices; every operation is described once in
// ir_ops.inc, which generates the enum, the names, the type rules and the printer.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::emu::ir {

enum class Type : uint8_t { Void, I1, I8, I16, I32, I64, I128 };

constexpr unsigned type_bits(Type t) {
  switch (t) {
    case Type::I1: return 1;
    case Type::I8: return 8;
    case Type::I16: return 16;
    case Type::I32: return 32;
    case Type::I64: return 64;
    case Type::I128: return 128;
    default: return 0;
  }
}
constexpr uint64_t type_mask(Type t) {
  unsigned bits = type_bits(t);
  return bits >= 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
}
constexpr Type int_type(unsigned bits) {
  switch (bits) {
    case 1: return Type::I1;
    case 8: return Type::I8;
    case 16: return Type::I16;
    case 32: return Type::I32;
    case 64: return Type::I64;
    case 128: return Type::I128;
    default: return Type::Void;
  }
}
std::string_view type_name(Type t);

enum class TypeClass : uint8_t { N, V, T, B, L, A, S, M, Q, O, R };

enum Attr : uint32_t {
  kPure = 1u << 0,
  kImm = 1u << 1,
  kFault = 1u << 2,
  kReadFlags = 1u << 3,
  kWriteFlags = 1u << 4,
  kReadState = 1u << 5,
  kWriteState = 1u << 6,
  kTerminal = 1u << 7,
  kBarrier = 1u << 8,
};

enum class Op : uint16_t {
#define KILN_IR_OP(name, text, r, a0, a1, a2, a3, attrs) name,
#include "kiln/emulator/ir_ops.inc"
#undef KILN_IR_OP
  Count
};

struct OpInfo {
  std::string_view name;
  TypeClass result;
  std::array<TypeClass, 4> args;
  uint32_t attrs;
};
const OpInfo& op_info(Op op);
inline bool has_attr(Op op, uint32_t attr) { return (op_info(op).attrs & attr) != 0; }

using ValueId = uint32_t;
constexpr ValueId kNoValue = 0xffffffffu;

struct Inst {
  Op op = Op::Const;
  Type type = Type::Void;
  std::array<ValueId, 4> args{kNoValue, kNoValue, kNoValue, kNoValue};
  uint64_t imm = 0;
};

// Guest state fields reachable through GetField/SetField.
enum class StateField : uint32_t {
  RflagsOther = 0,  // RFLAGS bits not kept lazily (DF, IF, TF, AC, ID, bit 1)
  SegBaseEs = 1, SegBaseCs, SegBaseSs, SegBaseDs, SegBaseFs, SegBaseGs,
  Mxcsr,
  FpuTop,   // x87 TOP (MMX instructions set it to 0)
  FpuTags,  // x87 abridged tag word (MMX instructions: 0xFF, EMMS: 0)
  FpuStatus,   // x87 status word without TOP (read: pending-exception check of MMX instructions)
  FpuControl,  // x87 control word
  Count
};

// Lazy flag operations: CcOp = kind * 4 + log2(size in bytes).
enum class CcKind : uint8_t { Eflags, Add, Adc, Sub, Sbb, Logic, Inc, Dec, Shl, Shr, Sar, Mul, Count };
constexpr uint32_t cc_op(CcKind kind, Type t) {
  unsigned log = t == Type::I8 ? 0 : t == Type::I16 ? 1 : t == Type::I32 ? 2 : 3;
  return static_cast<uint32_t>(kind) * 4 + log;
}

// A translated guest block before backend compilation.
struct Block {
  uint64_t guest_pc = 0;
  uint32_t mode = 0;          // CpuMode key bits
  uint32_t guest_insns = 0;   // guest instructions covered
  uint32_t guest_bytes = 0;
  std::vector<Inst> insts;
};

// Turns a block into text, one instruction per line ("%3 = add.i32 %1, %2").
std::string print(const Block& block);
std::string print_inst(const Block& block, ValueId id);

// Checks a block's well-formedness; returns the empty string when valid,
// otherwise a one-line description of the first problem.
std::string verify(const Block& block);

}  // namespace kiln::emu::ir
