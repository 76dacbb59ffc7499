// Evaluation of pure IR operations on 64-bit carriers. Shared by the constant
// folder and the interpreter so that both give bit-identical results.
// Values of type T are kept zero-extended: an I8 value never has bits above 7.
#pragma once

#include <bit>
#include <cstdint>

#include "kiln/emulator/ir.h"

namespace kiln::emu::ir {

inline int64_t sign_extend(uint64_t v, unsigned bits) {
  if (bits >= 64) return static_cast<int64_t>(v);
  unsigned shift = 64 - bits;
  return static_cast<int64_t>(v << shift) >> shift;
}

// Evaluates a pure op. `t` is the instruction type, `at` the type of arg 0.
inline uint64_t eval_pure(Op op, Type t, Type at, uint64_t a, uint64_t b, uint64_t c, uint64_t imm) {
  const unsigned bits = type_bits(t);
  const uint64_t mask = type_mask(t);
  switch (op) {
    case Op::Const: return imm & mask;
    case Op::Zext: return a & type_mask(at) & mask;
    case Op::Sext: return static_cast<uint64_t>(sign_extend(a, type_bits(at))) & mask;
    case Op::Trunc: return a & mask;
    case Op::Extract: return (imm >= 64 ? 0 : a >> imm) & mask;
    case Op::Deposit: {
      unsigned pos = imm & 0xff, width = (imm >> 8) & 0xff;
      uint64_t field = width >= 64 ? ~uint64_t{0} : ((uint64_t{1} << width) - 1);
      return (a & ~(field << pos)) | ((b & field) << pos);
    }
    case Op::Add: return (a + b) & mask;
    case Op::Sub: return (a - b) & mask;
    case Op::And: return a & b;
    case Op::Or: return a | b;
    case Op::Xor: return a ^ b;
    case Op::Not: return ~a & mask;
    case Op::Neg: return (0 - a) & mask;
    case Op::Shl: return (a << (b & (bits - 1))) & mask;
    case Op::Shr: return (a & mask) >> (b & (bits - 1));
    case Op::Sar: return static_cast<uint64_t>(sign_extend(a, bits) >> (b & (bits - 1))) & mask;
    case Op::Rol: {
      unsigned n = b & (bits - 1);
      return n == 0 ? a : ((a << n) | (a >> (bits - n))) & mask;
    }
    case Op::Ror: {
      unsigned n = b & (bits - 1);
      return n == 0 ? a : ((a >> n) | (a << (bits - n))) & mask;
    }
    case Op::Mul: return (a * b) & mask;
    case Op::MulHiU:
      if (bits == 64) return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
      return ((a * b) >> bits) & mask;
    case Op::MulHiS:
      if (bits == 64)
        return static_cast<uint64_t>((static_cast<__int128>(static_cast<int64_t>(a)) * static_cast<int64_t>(b)) >> 64);
      return static_cast<uint64_t>((sign_extend(a, bits) * sign_extend(b, bits)) >> bits) & mask;
    case Op::DivU: return b == 0 ? 0 : (a / b) & mask;
    case Op::RemU: return b == 0 ? 0 : (a % b) & mask;
    case Op::Bswap:
      switch (bits) {
        case 16: return __builtin_bswap16(static_cast<uint16_t>(a));
        case 32: return __builtin_bswap32(static_cast<uint32_t>(a));
        case 64: return __builtin_bswap64(a);
        default: return a & mask;
      }
    case Op::Popcnt: return static_cast<uint64_t>(std::popcount(a & mask));
    case Op::Ctz: return (a & mask) == 0 ? bits : static_cast<uint64_t>(std::countr_zero(a & mask));
    case Op::Clz: return (a & mask) == 0 ? bits : static_cast<uint64_t>(std::countl_zero(a & mask)) - (64 - bits);
    case Op::CmpEq: return a == b;
    case Op::CmpNe: return a != b;
    case Op::CmpLtU: return a < b;
    case Op::CmpLeU: return a <= b;
    case Op::CmpLtS: return sign_extend(a, type_bits(at)) < sign_extend(b, type_bits(at));
    case Op::CmpLeS: return sign_extend(a, type_bits(at)) <= sign_extend(b, type_bits(at));
    case Op::Select: return a ? b : c;
    default: return 0;
  }
}

}  // namespace kiln::emu::ir
