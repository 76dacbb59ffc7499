#include "kiln/emulator/lazy_flags.h"

#include <bit>

#include "kiln/emulator/ir_eval.h"

namespace kiln::emu {

using ir::CcKind;

namespace {

uint64_t szp(uint64_t dst, unsigned bits) {
  uint64_t f = 0;
  if (dst == 0) f |= rflags::ZF;
  if ((dst >> (bits - 1)) & 1) f |= rflags::SF;
  if (!(std::popcount(static_cast<uint8_t>(dst)) & 1)) f |= rflags::PF;
  return f;
}

}  // namespace

uint64_t compute_flags(uint32_t cc_op, uint64_t dst, uint64_t src1, uint64_t src2, uint64_t aux) {
  const auto kind = static_cast<CcKind>(cc_op / 4);
  const unsigned bits = 8u << (cc_op & 3);
  const unsigned msb = bits - 1;
  const uint64_t mask = bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
  uint64_t f = 0;
  switch (kind) {
    case CcKind::Eflags:
      return dst & rflags::kArith;
    case CcKind::Add:
    case CcKind::Adc: {
      bool carry = kind == CcKind::Adc && (aux & 1) ? dst <= src1 : dst < src1;
      f = szp(dst, bits) | (carry ? rflags::CF : 0);
      f |= (dst ^ src1 ^ src2) & rflags::AF;
      if ((((src1 ^ dst) & (src2 ^ dst)) >> msb) & 1) f |= rflags::OF;
      return f;
    }
    case CcKind::Sub:
    case CcKind::Sbb: {
      bool borrow = kind == CcKind::Sbb && (aux & 1) ? src1 <= src2 : src1 < src2;
      f = szp(dst, bits) | (borrow ? rflags::CF : 0);
      f |= (dst ^ src1 ^ src2) & rflags::AF;
      if ((((src1 ^ src2) & (src1 ^ dst)) >> msb) & 1) f |= rflags::OF;
      return f;
    }
    case CcKind::Logic:
      return szp(dst, bits);
    case CcKind::Inc:
    case CcKind::Dec:
      f = szp(dst, bits) | (aux & 1 ? rflags::CF : 0);
      f |= (dst ^ src1 ^ 1) & rflags::AF;
      if (kind == CcKind::Inc ? dst == (uint64_t{1} << msb) : dst == ((uint64_t{1} << msb) - 1)) f |= rflags::OF;
      return f;
    case CcKind::Shl: {
      bool cf = src2 <= bits && ((src1 << (src2 - 1)) >> msb) & 1;
      f = szp(dst, bits) | (cf ? rflags::CF : 0);
      if ((((dst >> msb) & 1) ^ cf) != 0) f |= rflags::OF;
      return f;
    }
    case CcKind::Shr: {
      bool cf = src2 <= 64 && ((src1 & mask) >> (src2 - 1)) & 1;
      f = szp(dst, bits) | (cf ? rflags::CF : 0);
      if ((src1 >> msb) & 1) f |= rflags::OF;
      return f;
    }
    case CcKind::Sar: {
      unsigned n = src2 > bits ? bits : static_cast<unsigned>(src2);
      bool cf = (ir::sign_extend(src1, bits) >> (n - 1)) & 1;
      return szp(dst, bits) | (cf ? rflags::CF : 0);
    }
    case CcKind::Mul:
      return szp(dst, bits) | (src1 & 1 ? rflags::CF | rflags::OF : 0);
    case CcKind::Count:
      break;
  }
  return 0;
}

bool condition_from_flags(uint64_t f, unsigned cond) {
  bool r = false;
  switch (cond >> 1) {
    case 0: r = f & rflags::OF; break;
    case 1: r = f & rflags::CF; break;
    case 2: r = f & rflags::ZF; break;
    case 3: r = f & (rflags::CF | rflags::ZF); break;
    case 4: r = f & rflags::SF; break;
    case 5: r = f & rflags::PF; break;
    case 6: r = ((f & rflags::SF) != 0) != ((f & rflags::OF) != 0); break;
    case 7: r = (f & rflags::ZF) || (((f & rflags::SF) != 0) != ((f & rflags::OF) != 0)); break;
  }
  return (cond & 1) ? !r : r;
}

bool evaluate_condition(const CpuState& cpu, unsigned cond) {
  const auto kind = static_cast<CcKind>(cpu.cc_op / 4);
  // Fast paths for the overwhelmingly common CMP/SUB + Jcc and TEST + Jcc pairs.
  if (kind == CcKind::Sub) {
    const unsigned bits = 8u << (cpu.cc_op & 3);
    const uint64_t a = cpu.cc_src1, b = cpu.cc_src2;
    bool r;
    switch (cond >> 1) {
      case 1: r = a < b; break;
      case 2: r = a == b; break;
      case 3: r = a <= b; break;
      case 6: r = ir::sign_extend(a, bits) < ir::sign_extend(b, bits); break;
      case 7: r = ir::sign_extend(a, bits) <= ir::sign_extend(b, bits); break;
      default: return condition_from_flags(compute_flags(cpu), cond);
    }
    return (cond & 1) ? !r : r;
  }
  if (kind == CcKind::Logic) {
    const unsigned bits = 8u << (cpu.cc_op & 3);
    const int64_t v = ir::sign_extend(cpu.cc_dst, bits);
    bool r;
    switch (cond >> 1) {
      case 0: case 1: r = false; break;
      case 2: case 3: r = v == 0; break;
      case 4: case 6: r = v < 0; break;
      case 7: r = v <= 0; break;
      default: return condition_from_flags(compute_flags(cpu), cond);
    }
    return (cond & 1) ? !r : r;
  }
  const unsigned test = cond >> 1;
  // CF alone (B/AE, and the carry-in of ADC/SBB/INC/DEC), as compute_flags derives it.
  if (test == 1) {
    bool r;
    switch (kind) {
      case CcKind::Eflags: r = cpu.cc_dst & rflags::CF; break;
      case CcKind::Add: r = cpu.cc_dst < cpu.cc_src1; break;
      case CcKind::Adc: r = (cpu.cc_aux & 1) ? cpu.cc_dst <= cpu.cc_src1 : cpu.cc_dst < cpu.cc_src1; break;
      case CcKind::Sbb: r = (cpu.cc_aux & 1) ? cpu.cc_src1 <= cpu.cc_src2 : cpu.cc_src1 < cpu.cc_src2; break;
      case CcKind::Inc: case CcKind::Dec: r = cpu.cc_aux & 1; break;
      default: return condition_from_flags(compute_flags(cpu), cond);
    }
    return (cond & 1) ? !r : r;
  }
  // ZF and SF come from the result alone for every kind (as szp() computes them):
  // DEC/INC/ADD + JNZ/JS loops need no full materialisation.
  if (test == 2 || test == 4) {
    bool r;
    if (kind == CcKind::Eflags) {
      r = cpu.cc_dst & (test == 2 ? rflags::ZF : rflags::SF);
    } else {
      const unsigned bits = 8u << (cpu.cc_op & 3);
      r = test == 2 ? cpu.cc_dst == 0 : ((cpu.cc_dst >> (bits - 1)) & 1) != 0;
    }
    return (cond & 1) ? !r : r;
  }
  return condition_from_flags(compute_flags(cpu), cond);
}

uint64_t read_rflags(const CpuState& cpu) { return compute_flags(cpu) | cpu.rflags_other; }

void write_rflags(CpuState& cpu, uint64_t value) {
  cpu.cc_op = ir::cc_op(CcKind::Eflags, ir::Type::I64);
  cpu.cc_dst = value & rflags::kArith;
  cpu.rflags_other = (value & ~rflags::kArith) | rflags::kFixed;
}

}  // namespace kiln::emu
