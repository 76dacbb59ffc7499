// x86 → IR. One Translator per block; one case per instruction family.
// Ordering rule for precise exceptions: every access that can fault happens
// before the instruction's first guest register, flag or RFLAGS write.
#include "kiln/emulator/frontend.h"

#include <algorithm>

#include <Zydis/Zydis.h>
#include <fmt/format.h>

#include "kiln/common/error.h"
#include "kiln/emulator/helpers.h"
#include "kiln/emulator/ir_builder.h"
#include "kiln/emulator/ir_passes.h"
#include "kiln/emulator/privileged.h"
#include "kiln/emulator/system.h"
#include "kiln/emulator/fp_eval.h"
#include "kiln/emulator/vec_eval.h"

namespace kiln::emu {

using ir::CcKind;
using ir::Op;
using ir::Type;
using ir::Value;

namespace {

constexpr unsigned kMaxInsnLength = 15;

ZydisMachineMode machine_mode(CpuMode mode) {
  switch (mode.code) {
    case CodeSize::Bits64: return ZYDIS_MACHINE_MODE_LONG_64;
    case CodeSize::Bits32: return ZYDIS_MACHINE_MODE_LEGACY_32;
    case CodeSize::Bits16: return ZYDIS_MACHINE_MODE_LEGACY_16;
  }
  return ZYDIS_MACHINE_MODE_LONG_64;
}
ZydisStackWidth stack_width(CpuMode mode) {
  switch (mode.code) {
    case CodeSize::Bits64: return ZYDIS_STACK_WIDTH_64;
    case CodeSize::Bits32: return ZYDIS_STACK_WIDTH_32;
    case CodeSize::Bits16: return ZYDIS_STACK_WIDTH_16;
  }
  return ZYDIS_STACK_WIDTH_64;
}

// Copies up to `want` code bytes at `pc`; stops at the first unfetchable byte.
size_t fetch_code(Memory& memory, uint64_t pc, uint8_t* out, size_t want, uint64_t& fault_address) {
  return memory.fetch_code(pc, out, want, fault_address);
}

struct GprRef {
  unsigned index = 0;
  unsigned shift = 0;  // 8 for AH/CH/DH/BH
  Type type = Type::I64;
};

// A decoded operand's location: a register or a computed linear address.
struct Loc {
  bool is_mem = false;
  GprRef reg;
  Value addr;
  Type type = Type::I64;
};


class Translator {
 public:
  Translator(Memory& memory, CpuMode mode, ir::Block& block, const TranslateOptions& options)
      : memory_(memory), mode_(mode), block_(block), options_(options), b_(block) {
    ZydisDecoderInit(&decoder_, machine_mode(mode), stack_width(mode));
  }

  void translate(uint64_t pc);

 private:
  // ---- small emit helpers ----
  Value c(Type t, uint64_t v) { return b_.constant(t, v); }
  Value c64(uint64_t v) { return b_.constant(Type::I64, v); }
  Value cc_cond(unsigned cond) { return b_.emit(Op::CcCond, Type::I1, {}, cond); }
  void cc_set(CcKind kind, Value dst, Value src1, Value src2, Value aux = {}) {
    if (aux) b_.emit(Op::CcSet, Type::Void, {dst, src1, src2, aux}, ir::cc_op(kind, dst.type));
    else b_.emit(Op::CcSet, Type::Void, {dst, src1, src2}, ir::cc_op(kind, dst.type));
  }
  Value cc_flags() { return b_.emit(Op::CcFlags, Type::I64); }
  void cc_load(Value flags) { b_.emit(Op::CcLoad, Type::Void, {flags}); }
  Value helper(HelperId id, std::initializer_list<Value> args) {
    return b_.emit(Op::CallHelper, helper_info(id).result, args, static_cast<uint64_t>(id));
  }
  Value to_bool(Value v) { return b_.cmp(Op::CmpNe, v, c(v.type, 0)); }
  Value bool_to(Value cond, Type t) { return b_.select(cond, c(t, 1), c(t, 0)); }
  unsigned code_bits() const { return mode_.code == CodeSize::Bits64 ? 64 : mode_.code == CodeSize::Bits32 ? 32 : 16; }
  unsigned stack_bits() const {
    if (mode_.system && mode_.code != CodeSize::Bits64 && mode_.stack_bits != 0) return mode_.stack_bits;
    return code_bits();
  }
  uint64_t ip_mask() const {
    return mode_.code == CodeSize::Bits64 ? ~uint64_t{0} : mode_.code == CodeSize::Bits32 ? 0xffffffffu : 0xffffu;
  }

  // ---- registers ----
  GprRef gpr(ZydisRegister r) {
    GprRef g;
    const ZydisRegisterClass cls = ZydisRegisterGetClass(r);
    if (cls != ZYDIS_REGCLASS_GPR8 && cls != ZYDIS_REGCLASS_GPR16 && cls != ZYDIS_REGCLASS_GPR32 &&
        cls != ZYDIS_REGCLASS_GPR64) {
      unsupported_operand_ = true;  // e.g. control/debug registers: the instruction becomes #UD
      return g;
    }
    ZydisRegister big = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, r);
    g.index = static_cast<unsigned>(big - ZYDIS_REGISTER_RAX);
    g.shift = (r == ZYDIS_REGISTER_AH || r == ZYDIS_REGISTER_CH || r == ZYDIS_REGISTER_DH || r == ZYDIS_REGISTER_BH) ? 8 : 0;
    g.type = ir::int_type(ZydisRegisterGetWidth(ZYDIS_MACHINE_MODE_LONG_64, r));
    return g;
  }
  static GprRef reg_ref(unsigned index, Type t) { return GprRef{index, 0, t}; }
  Value full_reg(unsigned index) { return override_[index] ? override_[index] : b_.get_reg(index); }
  Value read_gpr(GprRef g) {
    Value full = full_reg(g.index);
    if (g.type == Type::I64) return full;
    return b_.emit(Op::Extract, g.type, {full}, g.shift);
  }
  // The full 64-bit register value after writing `v` to `g` (32-bit writes zero-extend).
  Value merged_gpr(GprRef g, Value v) {
    if (g.type == Type::I64) return v;
    if (g.type == Type::I32) return b_.zext(v, Type::I64);
    return b_.emit(Op::Deposit, Type::I64, {full_reg(g.index), v}, g.shift | (ir::type_bits(g.type) << 8));
  }
  void write_gpr(GprRef g, Value v) { b_.set_reg(g.index, merged_gpr(g, v)); }

  // ---- addressing ----
  Value seg_base(ZydisRegister seg) {
    if (seg == ZYDIS_REGISTER_NONE) return {};
    unsigned idx = static_cast<unsigned>(seg - ZYDIS_REGISTER_ES);
    bool is_fs_gs = seg == ZYDIS_REGISTER_FS || seg == ZYDIS_REGISTER_GS;
    if (!is_fs_gs && (mode_.code == CodeSize::Bits64 || mode_.flat)) return {};
    return b_.get_field(static_cast<ir::StateField>(static_cast<unsigned>(ir::StateField::SegBaseEs) + idx));
  }
  // `size` (bytes) and `access` (kSegmentRead | kSegmentWrite) refine the segment check when known.
  Value linear(Value ea, ZydisRegister seg, unsigned size = 1, unsigned access = 0) {
    Value base = seg_base(seg);
    Value address = ea;
    if (base) {
      Value sum = b_.add(ea, base);
      address = mode_.code == CodeSize::Bits64 ? sum : b_.zext(b_.zext(sum, Type::I32), Type::I64);
    }
    // System mode: segments that are not flat 4 GiB get their limit and usability checked.
    const unsigned index = static_cast<unsigned>(seg - ZYDIS_REGISTER_ES);
    if (seg != ZYDIS_REGISTER_NONE && (mode_.checked_segments >> index) & 1)
      helper(HelperId::SegmentCheck, {address, c64(index | uint64_t{size} << 8 | uint64_t{access} << 24)});
    return address;
  }
  Value truncate_address(Value v, unsigned bits) {
    if (bits == 64) return v;
    return b_.zext(b_.zext(v, ir::int_type(bits)), Type::I64);
  }
  Value effective_address(const ZydisDecodedOperand& op) {
    const auto& m = op.mem;
    const unsigned bits = insn_.address_width;
    const uint64_t disp = m.disp.has_displacement ? static_cast<uint64_t>(m.disp.value) : 0;
    if (m.base == ZYDIS_REGISTER_RIP || m.base == ZYDIS_REGISTER_EIP) {
      uint64_t target = next_pc_ + disp;
      return c64(bits == 64 ? target : target & 0xffffffffu);
    }
    Value sum;
    if (m.base != ZYDIS_REGISTER_NONE) sum = full_reg(gpr(m.base).index);
    if (m.index != ZYDIS_REGISTER_NONE) {
      Value idx = full_reg(gpr(m.index).index);
      if (m.scale > 1) idx = b_.binary(Op::Shl, idx, c64(std::countr_zero(static_cast<unsigned>(m.scale))));
      sum = sum ? b_.add(sum, idx) : idx;
    }
    if (!sum) return c64(disp & (bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1));
    if (disp) sum = b_.add(sum, c64(disp));
    return truncate_address(sum, bits);
  }
  // The linear address of memory operand `op` (its segment checked with its size and use).
  Value operand_linear(const ZydisDecodedOperand& op, Value ea) {
    if (!mode_.checked_segments) return linear(ea, op.mem.segment);
    const unsigned access = ((op.actions & ZYDIS_OPERAND_ACTION_MASK_READ) ? kSegmentRead : 0u) |
                            ((op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE) ? kSegmentWrite : 0u);
    return linear(ea, op.mem.segment, std::max(1u, op.size / 8u), access);
  }
  Value mem_address(const ZydisDecodedOperand& op) { return operand_linear(op, effective_address(op)); }

  Loc loc(unsigned i) {
    const ZydisDecodedOperand& op = ops_[i];
    Loc l;
    l.type = ir::int_type(op.size);
    if (op.type == ZYDIS_OPERAND_TYPE_MEMORY) {
      l.is_mem = true;
      l.addr = mem_address(op);
    } else {
      l.reg = gpr(op.reg.value);
      l.type = l.reg.type;
    }
    return l;
  }
  Value get(const Loc& l) { return l.is_mem ? b_.load(l.type, l.addr) : read_gpr(l.reg); }
  void put(const Loc& l, Value v) {
    if (l.is_mem) b_.store(l.addr, v);
    else write_gpr(l.reg, v);
  }
  // Operand i as a value of type t (immediates are sign- or zero-extended by Zydis).
  Value operand(unsigned i, Type t) {
    const ZydisDecodedOperand& op = ops_[i];
    switch (op.type) {
      case ZYDIS_OPERAND_TYPE_IMMEDIATE: return c(t, op.imm.value.u);
      case ZYDIS_OPERAND_TYPE_REGISTER: return b_.zext(read_gpr(gpr(op.reg.value)), t);
      case ZYDIS_OPERAND_TYPE_MEMORY: return b_.load(t, mem_address(op));
      default: return c(t, 0);
    }
  }
  bool is_reg(unsigned i) const { return ops_[i].type == ZYDIS_OPERAND_TYPE_REGISTER; }
  bool is_gpr(unsigned i) const {
    if (!is_reg(i)) return false;
    ZydisRegisterClass cls = ZydisRegisterGetClass(ops_[i].reg.value);
    return cls == ZYDIS_REGCLASS_GPR8 || cls == ZYDIS_REGCLASS_GPR16 || cls == ZYDIS_REGCLASS_GPR32 ||
           cls == ZYDIS_REGCLASS_GPR64;
  }
  Type op_type() const { return ir::int_type(insn_.operand_width); }

  // ---- stack ----
  Value stack_address(Value rsp, unsigned size = 1) {
    return linear(truncate_address(rsp, stack_bits()), ZYDIS_REGISTER_SS, size);
  }
  Value stack_pointer_plus(Value rsp, int64_t delta) {
    return b_.add(rsp, c64(static_cast<uint64_t>(delta)));
  }
  void write_rsp(Value v) {
    if (stack_bits() == 64) b_.set_reg(RSP, v);
    else write_gpr(reg_ref(RSP, ir::int_type(stack_bits())), b_.zext(v, ir::int_type(stack_bits())));
  }
  // Pushes v (of its own size); the store happens before RSP changes.
  void push(Value v) {
    Value rsp = full_reg(RSP);
    Value new_rsp = stack_pointer_plus(rsp, -static_cast<int64_t>(ir::type_bits(v.type) / 8));
    b_.store(stack_address(new_rsp, ir::type_bits(v.type) / 8), v);
    write_rsp(new_rsp);
  }
  // Loads the value at the top of the stack; returns it and the incremented RSP (not yet written).
  std::pair<Value, Value> pop_value(Type t) {
    Value rsp = full_reg(RSP);
    Value v = b_.load(t, stack_address(rsp, ir::type_bits(t) / 8));
    return {v, stack_pointer_plus(rsp, ir::type_bits(t) / 8)};
  }

  // ---- control ----
  void end_exit(uint64_t target) {
    b_.emit(Op::Exit, Type::Void, {}, target);
    ended_ = true;
  }
  void end_indirect(Value target) {
    b_.emit(Op::ExitIndirect, Type::Void, {b_.zext(target, Type::I64)});
    ended_ = true;
  }
  void raise(Vector v, uint32_t error = 0, unsigned advance = 0) {
    b_.emit(Op::Raise, Type::Void, {}, static_cast<uint64_t>(v) | (uint64_t{error} << 8) | (uint64_t{advance} << 40));
    ended_ = true;
  }
  void raise_if(Value cond, Vector v) { b_.emit(Op::RaiseIf, Type::Void, {cond}, static_cast<uint64_t>(v)); }
  uint64_t branch_target() const {
    uint64_t target = next_pc_ + static_cast<uint64_t>(ops_[0].imm.value.s);
    if (insn_.operand_width == 16) return target & 0xffff;
    return target & ip_mask();
  }

  // ---- instruction families ----
  void translate_insn();
  void alu(ZydisMnemonic m);
  void inc_dec(bool inc);
  void neg_not(bool neg);
  void shift(ZydisMnemonic m);
  void rotate(bool left);
  void rotate_carry(bool left);
  void shift_double(bool left);
  void mul_div(ZydisMnemonic m);
  void imul_multi();
  void bit_test(ZydisMnemonic m);
  void bit_scan(ZydisMnemonic m);
  void string_op(ZydisMnemonic m);
  void port_io(ZydisMnemonic m);
  void cmpxchg();
  void cmpxchg_wide(bool is16b);
  void xadd();
  void xchg();
  void push_pop(ZydisMnemonic m);
  void flags_insn(ZydisMnemonic m);
  void convert(ZydisMnemonic m);
  void branch(ZydisMnemonic m);
  void enter_leave(ZydisMnemonic m);
  void bmi(ZydisMnemonic m);
  void set_zf_only(Value zf_bool);
  bool sse(ZydisMnemonic m);
  bool sse_fp(ZydisMnemonic m);
  void x87();
  // System mode (SYS-B, privileged.cpp): privileged instructions as HelperId::System calls.
  bool system_insn(ZydisMnemonic m);
  void move_system_register();
  bool fpu_unavailable(Vector& vector) const;
  bool is_system_register(unsigned i) const {
    if (!is_reg(i)) return false;
    const ZydisRegisterClass cls = ZydisRegisterGetClass(ops_[i].reg.value);
    return cls == ZYDIS_REGCLASS_CONTROL || cls == ZYDIS_REGCLASS_DEBUG;
  }
  Value system(SystemOp op, Value b = {}, Value c = {}, Value d = {}) {
    return b_.emit(Op::CallHelper, Type::I64, {c64(static_cast<uint64_t>(op)), b, c, d},
                   static_cast<uint64_t>(HelperId::System));
  }
  // Segmentation and control transfers (system mode; helpers in system.cpp).
  bool is_segment(unsigned i) const {
    return is_reg(i) && ZydisRegisterGetClass(ops_[i].reg.value) == ZYDIS_REGCLASS_SEGMENT;
  }
  unsigned segment_index(unsigned i) const { return static_cast<unsigned>(ops_[i].reg.value - ZYDIS_REGISTER_ES); }
  void segment_insn(ZydisMnemonic m);
  void far_branch(ZydisMnemonic m);
  void software_interrupt(uint8_t vector, uint64_t kind);
  bool uses_mmx() const {
    for (unsigned i = 0; i < insn_.operand_count; ++i)
      if (is_reg(i) && ZydisRegisterGetClass(ops_[i].reg.value) == ZYDIS_REGCLASS_MMX) return true;
    return false;
  }
  bool mmx(ZydisMnemonic m);
  unsigned mmx_index(unsigned i) const { return static_cast<unsigned>(ops_[i].reg.value - ZYDIS_REGISTER_MM0); }
  Value get_mmx(unsigned index) { return b_.emit(Op::GetMmx, Type::I64, {}, index); }
  void set_mmx(unsigned index, Value v) { b_.emit(Op::SetMmx, Type::Void, {v}, index); }
  // An MMX register or m64 source (no alignment requirement).
  Value mmx_source(unsigned i) {
    if (is_mmx(i)) return get_mmx(mmx_index(i));
    if (is_xmm(i)) return vec_lo(get_xmm(xmm_index(i)));
    return b_.zext(operand(i, ir::int_type(ops_[i].size)), Type::I64);
  }
  Value fp(ir::FpOp op, Value a, Value bv, uint32_t aux = 0) {
    return b_.emit(Op::VecFp, Type::I128, {a, bv}, static_cast<uint64_t>(op) | (uint64_t{aux} << 16));
  }
  // XMM register or memory of the operand's size (m128 must be aligned; m32/m64 zero-extended).
  Value fp_source(unsigned i) {
    if (is_xmm(i) || ops_[i].size == 128) return vec_source(i, true);
    if (ops_[i].type == ZYDIS_OPERAND_TYPE_MEMORY)
      return vec_from(b_.zext(b_.load(ir::int_type(ops_[i].size), mem_address(ops_[i])), Type::I64), c64(0));
    return vec_from(b_.zext(operand(i, ir::int_type(ops_[i].size)), Type::I64), c64(0));
  }
  bool is_xmm(unsigned i) const {
    return is_reg(i) && ZydisRegisterGetClass(ops_[i].reg.value) == ZYDIS_REGCLASS_XMM;
  }
  bool is_mmx(unsigned i) const {
    return is_reg(i) && ZydisRegisterGetClass(ops_[i].reg.value) == ZYDIS_REGCLASS_MMX;
  }
  unsigned xmm_index(unsigned i) const { return static_cast<unsigned>(ops_[i].reg.value - ZYDIS_REGISTER_XMM0); }
  Value get_xmm(unsigned index) { return b_.emit(Op::GetXmm, Type::I128, {}, index); }
  void set_xmm(unsigned index, Value v) { b_.emit(Op::SetXmm, Type::Void, {v}, index); }
  Value vec(ir::VecOp op, Value a, Value bv, uint32_t aux = 0) {
    return b_.emit(Op::Vec, Type::I128, {a, bv}, static_cast<uint64_t>(op) | (uint64_t{aux} << 16));
  }
  Value vec_from(Value lo, Value hi) { return b_.emit(Op::VecFrom, Type::I128, {lo, hi}); }
  Value vec_lo(Value v) { return b_.emit(Op::VecLow, Type::I64, {v}); }
  Value vec_hi(Value v) { return b_.emit(Op::VecHigh, Type::I64, {v}); }
  // A 128-bit source operand; legacy SSE memory operands must be 16-byte aligned (#GP).
  Value vec_source(unsigned i, bool aligned) {
    if (is_xmm(i)) return get_xmm(xmm_index(i));
    Value addr = mem_address(ops_[i]);
    if (aligned) raise_if(b_.cmp(Op::CmpNe, b_.and_(addr, c64(15)), c64(0)), Vector::GP);
    return b_.load(Type::I128, addr);
  }
  Value df_delta(unsigned size);

  Memory& memory_;
  CpuMode mode_;
  ir::Block& block_;
  const TranslateOptions& options_;
  ir::Builder b_;
  ZydisDecoder decoder_;
  ZydisDecodedInstruction insn_;
  ZydisDecodedOperand ops_[ZYDIS_MAX_OPERAND_COUNT];
  uint64_t pc_ = 0, next_pc_ = 0;
  bool ended_ = false;
  bool unsupported_operand_ = false;
  Value override_[16] = {};
};

void Translator::translate(uint64_t start) {
  block_.guest_pc = start;
  block_.mode = mode_.key();
  uint64_t pc = start;
  while (!ended_) {
    if (block_.guest_insns >= options_.max_insns || (block_.guest_insns > 0 && (pc & kPageMask) != (start & kPageMask))) {
      end_exit(pc);
      break;
    }
    pc_ = pc;
    uint8_t bytes[kMaxInsnLength];
    uint64_t fault_address = 0;
    size_t got = fetch_code(memory_, pc, bytes, kMaxInsnLength, fault_address);
    b_.emit(Op::InsnStart, Type::Void, {}, pc);
    ZyanStatus status = ZydisDecoderDecodeFull(&decoder_, bytes, got, &insn_, ops_);
    if (!ZYAN_SUCCESS(status)) {
      if (got < kMaxInsnLength && (got == 0 || status == ZYDIS_STATUS_NO_MORE_DATA)) {
        const PendingException f = memory_.fetch_fault(fault_address);  // #PF (or #GP) as the MMU reports it
        b_.emit(Op::Raise, Type::Void, {c64(f.fault_address)},
                static_cast<uint64_t>(f.vector) | (static_cast<uint64_t>(f.error_code) << 8));
        ended_ = true;
      } else if (status == ZYDIS_STATUS_INSTRUCTION_TOO_LONG) {
        raise(Vector::GP);  // more than 15 bytes
      } else {
        raise(Vector::UD);
      }
      ++block_.guest_insns;
      break;
    }
    next_pc_ = (pc + insn_.length) & ip_mask();
    for (auto& o : override_) o = {};
    const size_t insn_begin = block_.insts.size();
    unsupported_operand_ = false;
    Vector unavailable = Vector::NM;
    if (mode_.system && fpu_unavailable(unavailable)) {  // CR0.EM/TS/MP, CR4.OSFXSR (part of the TB key)
      raise(unavailable);
      ++block_.guest_insns;
      break;
    }
    if (uses_mmx() || insn_.mnemonic == ZYDIS_MNEMONIC_EMMS) {
      // MMX instructions first check for a pending unmasked x87 exception (#MF).
      Value unmasked = b_.and_(b_.get_field(ir::StateField::FpuStatus),
                               b_.and_(b_.unary(Op::Not, b_.get_field(ir::StateField::FpuControl)), c64(0x3f)));
      raise_if(b_.cmp(Op::CmpNe, unmasked, c64(0)), Vector::MF);
    }
    translate_insn();
    if (unsupported_operand_) {  // drop what was emitted and fault instead
      block_.insts.resize(insn_begin);
      ended_ = false;
      raise(Vector::UD);
    } else if (!ended_ && uses_mmx()) {
      // Any MMX instruction (after its faulting accesses) switches the x87 unit to MMX use.
      b_.set_field(ir::StateField::FpuTop, c64(0));
      b_.set_field(ir::StateField::FpuTags, c64(0xff));
    }
    ++block_.guest_insns;
    block_.guest_bytes += insn_.length;
    pc = next_pc_;
  }
}

void Translator::alu(ZydisMnemonic m) {
  Loc d = loc(0);
  Value a = get(d);
  Value s = operand(1, d.type);
  Value r;
  switch (m) {
    case ZYDIS_MNEMONIC_ADD: r = b_.add(a, s); break;
    case ZYDIS_MNEMONIC_SUB: case ZYDIS_MNEMONIC_CMP: r = b_.sub(a, s); break;
    case ZYDIS_MNEMONIC_AND: case ZYDIS_MNEMONIC_TEST: r = b_.and_(a, s); break;
    case ZYDIS_MNEMONIC_OR: r = b_.or_(a, s); break;
    case ZYDIS_MNEMONIC_XOR: r = b_.xor_(a, s); break;
    case ZYDIS_MNEMONIC_ADC: case ZYDIS_MNEMONIC_SBB: {
      Value carry = bool_to(cc_cond(2), d.type);
      r = m == ZYDIS_MNEMONIC_ADC ? b_.add(b_.add(a, s), carry) : b_.sub(b_.sub(a, s), carry);
      if (m != ZYDIS_MNEMONIC_CMP && m != ZYDIS_MNEMONIC_TEST) put(d, r);
      cc_set(m == ZYDIS_MNEMONIC_ADC ? CcKind::Adc : CcKind::Sbb, r, a, s, carry);
      return;
    }
    default: break;
  }
  if (m != ZYDIS_MNEMONIC_CMP && m != ZYDIS_MNEMONIC_TEST) put(d, r);
  switch (m) {
    case ZYDIS_MNEMONIC_ADD: cc_set(CcKind::Add, r, a, s); break;
    case ZYDIS_MNEMONIC_SUB: case ZYDIS_MNEMONIC_CMP: cc_set(CcKind::Sub, r, a, s); break;
    default: cc_set(CcKind::Logic, r, r, r); break;
  }
}

void Translator::inc_dec(bool inc) {
  Loc d = loc(0);
  Value a = get(d);
  Value one = c(d.type, 1);
  Value r = inc ? b_.add(a, one) : b_.sub(a, one);
  Value cf = bool_to(cc_cond(2), d.type);
  put(d, r);
  cc_set(inc ? CcKind::Inc : CcKind::Dec, r, a, one, cf);
}

void Translator::neg_not(bool neg) {
  Loc d = loc(0);
  Value a = get(d);
  if (!neg) {
    put(d, b_.unary(Op::Not, a));
    return;
  }
  Value r = b_.unary(Op::Neg, a);
  put(d, r);
  cc_set(CcKind::Sub, r, c(d.type, 0), a);
}

// SHL/SAL/SHR/SAR: counts are masked to 5 bits (6 for 64-bit operands); a
// zero count changes neither the destination nor the flags.
void Translator::shift(ZydisMnemonic m) {
  Loc d = loc(0);
  const unsigned bits = ir::type_bits(d.type);
  const uint64_t count_mask = bits == 64 ? 63 : 31;
  Value a = get(d);
  // Shift in a type wide enough for counts up to 31 on 8/16-bit operands.
  const Type wide = bits < 32 ? Type::I32 : d.type;
  const CcKind kind = m == ZYDIS_MNEMONIC_SHR ? CcKind::Shr : m == ZYDIS_MNEMONIC_SAR ? CcKind::Sar : CcKind::Shl;
  const Op op = kind == CcKind::Shr ? Op::Shr : kind == CcKind::Sar ? Op::Sar : Op::Shl;
  Value wa = kind == CcKind::Sar ? b_.sext(a, wide) : b_.zext(a, wide);
  if (ops_[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
    uint64_t n = ops_[1].imm.value.u & count_mask;
    if (n == 0) {
      // Flags and value unchanged, but a 32-bit register is still written (zero-extended).
      if (!d.is_mem && d.type == Type::I32) write_gpr(d.reg, a);
      return;
    }
    Value r = b_.zext(b_.binary(op, wa, c(wide, n)), d.type);
    put(d, r);
    cc_set(kind, r, a, c(d.type, n));
    return;
  }
  Value count = b_.and_(b_.zext(read_gpr(reg_ref(RCX, Type::I8)), wide), c(wide, count_mask));
  // In the 32-bit-wide type, 8/16-bit counts >= width shift everything out (or fill with the sign).
  Value shifted = b_.binary(op, wa, count);
  Value r = b_.zext(shifted, d.type);
  Value nonzero = to_bool(count);
  Value result = b_.select(nonzero, r, a);
  // A register destination is written even for a zero count: 32-bit writes zero-extend.
  if (d.is_mem) put(d, result);
  else if (d.type == Type::I32) write_gpr(d.reg, result);
  else b_.set_reg(d.reg.index, b_.select(nonzero, merged_gpr(d.reg, r), full_reg(d.reg.index)));
  b_.emit(Op::CcSetIf, Type::Void, {nonzero, result, a, b_.zext(count, d.type)}, ir::cc_op(kind, d.type));
}

// ROL/ROR: only CF and OF change, and only for a non-zero masked count.
void Translator::rotate(bool left) {
  Loc d = loc(0);
  const unsigned bits = ir::type_bits(d.type);
  const uint64_t count_mask = bits == 64 ? 63 : 31;
  Value a = get(d);
  Value masked;
  if (ops_[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) masked = c(d.type, ops_[1].imm.value.u & count_mask);
  else masked = b_.and_(b_.zext(read_gpr(reg_ref(RCX, Type::I8)), d.type), c(d.type, count_mask));
  Value r = b_.binary(left ? Op::Rol : Op::Ror, a, masked);  // IR rotates modulo the width
  Value nonzero = to_bool(masked);
  Value msb = b_.emit(Op::Extract, Type::I64, {b_.zext(r, Type::I64)}, bits - 1);
  Value cf, of;
  if (left) {
    cf = b_.and_(b_.zext(r, Type::I64), c64(1));
    of = b_.xor_(msb, cf);
  } else {
    cf = msb;
    of = b_.and_(b_.xor_(msb, b_.emit(Op::Extract, Type::I64, {b_.zext(r, Type::I64)}, bits - 2)), c64(1));
  }
  Value old = cc_flags();
  Value updated = b_.or_(b_.and_(old, c64(~(rflags::CF | rflags::OF))),
                         b_.or_(cf, b_.binary(Op::Shl, of, c64(11))));
  if (d.is_mem) put(d, r);
  else if (d.type == Type::I32) write_gpr(d.reg, b_.select(nonzero, r, a));
  else write_gpr(d.reg, r);
  cc_load(b_.select(nonzero, updated, old));
}

void Translator::rotate_carry(bool left) {
  Loc d = loc(0);
  Value a = get(d);
  Value count = ops_[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? c64(ops_[1].imm.value.u)
                                                                 : b_.zext(read_gpr(reg_ref(RCX, Type::I8)), Type::I64);
  Value r = helper(left ? HelperId::Rcl : HelperId::Rcr, {b_.zext(a, Type::I64), count, c64(ir::type_bits(d.type))});
  put(d, b_.zext(r, d.type));
}

// SHLD/SHRD. Counts above the width of a 16-bit operand give undefined results; we
// shift through a 32-bit-wide concatenation (documented in the README).
void Translator::shift_double(bool left) {
  Loc d = loc(0);
  const unsigned bits = ir::type_bits(d.type);
  const uint64_t count_mask = bits == 64 ? 63 : 31;
  Value a = get(d);
  Value s = b_.zext(read_gpr(gpr(ops_[1].reg.value)), d.type);
  Value count;
  if (ops_[2].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) count = c(d.type, ops_[2].imm.value.u & count_mask);
  else count = b_.and_(b_.zext(read_gpr(reg_ref(RCX, Type::I8)), d.type), c(d.type, count_mask));
  Value nonzero = to_bool(count);
  // r = left ? (a << n) | (s >> (bits - n)) : (a >> n) | (s << (bits - n)), for n in 1..bits-1.
  Value inv = b_.sub(c(d.type, bits), count);
  Value r;
  if (bits == 16) {
    // Model 16-bit SHLD/SHRD as a 32-bit shift of a:s (counts 17..31 are architecturally undefined).
    Value cat = left ? b_.or_(b_.binary(Op::Shl, b_.zext(a, Type::I32), c(Type::I32, 16)), b_.zext(s, Type::I32))
                     : b_.or_(b_.binary(Op::Shl, b_.zext(s, Type::I32), c(Type::I32, 16)), b_.zext(a, Type::I32));
    Value n32 = b_.zext(count, Type::I32);
    r = left ? b_.zext(b_.binary(Op::Shr, b_.binary(Op::Shl, cat, n32), c(Type::I32, 16)), Type::I16)
             : b_.zext(b_.binary(Op::Shr, cat, n32), Type::I16);
  } else {
    r = left ? b_.or_(b_.binary(Op::Shl, a, count), b_.binary(Op::Shr, s, inv))
             : b_.or_(b_.binary(Op::Shr, a, count), b_.binary(Op::Shl, s, inv));
    r = b_.select(nonzero, r, a);
  }
  if (d.is_mem || d.type == Type::I32) put(d, r);
  else b_.set_reg(d.reg.index, b_.select(nonzero, merged_gpr(d.reg, r), full_reg(d.reg.index)));
  if (left) {
    b_.emit(Op::CcSetIf, Type::Void, {nonzero, r, a, count}, ir::cc_op(CcKind::Shl, d.type));
  } else {
    // SHRD: CF = last bit shifted out of a, OF = sign change; computed explicitly.
    Value cf = b_.and_(b_.zext(b_.binary(Op::Shr, a, b_.sub(count, c(d.type, 1))), Type::I64), c64(1));
    Value sign_change = b_.zext(b_.binary(Op::Shr, b_.xor_(a, r), c(d.type, bits - 1)), Type::I64);
    Value szp_src = r;
    b_.emit(Op::CcSetIf, Type::Void, {nonzero, szp_src, szp_src, szp_src}, ir::cc_op(CcKind::Logic, d.type));
    Value f = cc_flags();
    Value nf = b_.or_(f, b_.or_(cf, b_.binary(Op::Shl, sign_change, c64(11))));
    cc_load(b_.select(nonzero, nf, f));
  }
}

void Translator::mul_div(ZydisMnemonic m) {
  Loc src_loc = loc(0);
  const Type t = src_loc.type;
  Value s = get(src_loc);
  const unsigned bits = ir::type_bits(t);
  if (m == ZYDIS_MNEMONIC_DIV || m == ZYDIS_MNEMONIC_IDIV) {
    static constexpr HelperId kDivU[] = {HelperId::DivU8, HelperId::DivU16, HelperId::DivU32, HelperId::DivU64};
    static constexpr HelperId kDivS[] = {HelperId::DivS8, HelperId::DivS16, HelperId::DivS32, HelperId::DivS64};
    unsigned idx = std::countr_zero(bits / 8);
    helper(m == ZYDIS_MNEMONIC_DIV ? kDivU[idx] : kDivS[idx], {b_.zext(s, Type::I64)});
    return;
  }
  const bool is_signed = m == ZYDIS_MNEMONIC_IMUL;
  if (bits == 8) {
    Value al = read_gpr(reg_ref(RAX, Type::I8));
    Value p = is_signed ? b_.binary(Op::Mul, b_.sext(al, Type::I16), b_.sext(s, Type::I16))
                        : b_.binary(Op::Mul, b_.zext(al, Type::I16), b_.zext(s, Type::I16));
    Value lo = b_.zext(p, Type::I8);
    Value overflow = is_signed ? b_.cmp(Op::CmpNe, p, b_.sext(lo, Type::I16))
                               : b_.cmp(Op::CmpNe, b_.emit(Op::Extract, Type::I8, {b_.zext(p, Type::I64)}, 8), c(Type::I8, 0));
    write_gpr(reg_ref(RAX, Type::I16), p);
    cc_set(CcKind::Mul, lo, bool_to(overflow, Type::I8), c(Type::I8, 0));
    return;
  }
  Value a = read_gpr(reg_ref(RAX, t));
  Value lo = b_.binary(Op::Mul, a, s);
  Value hi = b_.binary(is_signed ? Op::MulHiS : Op::MulHiU, a, s);
  Value overflow = is_signed ? b_.cmp(Op::CmpNe, hi, b_.binary(Op::Sar, lo, c(t, bits - 1)))
                             : b_.cmp(Op::CmpNe, hi, c(t, 0));
  write_gpr(reg_ref(RAX, t), lo);
  write_gpr(reg_ref(RDX, t), hi);
  cc_set(CcKind::Mul, lo, bool_to(overflow, t), c(t, 0));
}

void Translator::imul_multi() {
  Loc d = loc(0);
  const Type t = d.type;
  Value a = insn_.operand_count_visible == 3 ? operand(1, t) : get(d);
  Value s = operand(insn_.operand_count_visible == 3 ? 2 : 1, t);
  Value lo = b_.binary(Op::Mul, a, s);
  Value hi = b_.binary(Op::MulHiS, a, s);
  Value overflow = b_.cmp(Op::CmpNe, hi, b_.binary(Op::Sar, lo, c(t, ir::type_bits(t) - 1)));
  put(d, lo);
  cc_set(CcKind::Mul, lo, bool_to(overflow, t), c(t, 0));
}

void Translator::bit_test(ZydisMnemonic m) {
  const ZydisDecodedOperand& base_op = ops_[0];
  const Type t = ir::int_type(base_op.size);
  const unsigned bits = ir::type_bits(t);
  Loc d;
  d.type = t;
  Value bit;
  if (base_op.type == ZYDIS_OPERAND_TYPE_MEMORY) {
    d.is_mem = true;
    Value ea = effective_address(base_op);
    if (ops_[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
      bit = c(t, ops_[1].imm.value.u & (bits - 1));
    } else {
      // Register bit offsets address memory beyond the operand: signed offset / width.
      Value off = b_.sext(read_gpr(gpr(ops_[1].reg.value)), Type::I64);
      Value words = b_.binary(Op::Sar, off, c64(std::countr_zero(bits)));
      ea = truncate_address(b_.add(ea, b_.binary(Op::Shl, words, c64(std::countr_zero(bits / 8)))), insn_.address_width);
      bit = b_.and_(b_.zext(off, t), c(t, bits - 1));
    }
    d.addr = linear(ea, base_op.mem.segment);
  } else {
    d = loc(0);
    bit = b_.and_(operand(1, t), c(t, bits - 1));
  }
  Value v = get(d);
  Value cf = b_.and_(b_.zext(b_.binary(Op::Shr, v, bit), Type::I64), c64(1));
  Value mask = b_.binary(Op::Shl, c(t, 1), bit);
  Value r;
  switch (m) {
    case ZYDIS_MNEMONIC_BTS: r = b_.or_(v, mask); break;
    case ZYDIS_MNEMONIC_BTR: r = b_.and_(v, b_.unary(Op::Not, mask)); break;
    case ZYDIS_MNEMONIC_BTC: r = b_.xor_(v, mask); break;
    default: break;
  }
  if (r) put(d, r);
  Value f = cc_flags();
  cc_load(b_.or_(b_.and_(f, c64(~rflags::CF)), cf));
}

// BSF/BSR: zero source sets ZF and leaves the destination unchanged.
// TZCNT/LZCNT: CF = source zero, ZF = result zero.  POPCNT: ZF = source zero.
// Flags the SDM leaves undefined (CF/OF/SF/AF/PF for BSF/BSR; OF/SF/AF/PF for
// TZCNT/LZCNT) are produced as 0.
void Translator::bit_scan(ZydisMnemonic m) {
  Loc d = loc(0);
  const Type t = d.type;
  const unsigned bits = ir::type_bits(t);
  Value s = operand(1, t);
  Value zero = b_.cmp(Op::CmpEq, s, c(t, 0));
  Value zf = b_.select(zero, c64(rflags::ZF), c64(0));
  switch (m) {
    case ZYDIS_MNEMONIC_BSF: case ZYDIS_MNEMONIC_BSR: {
      Value idx = m == ZYDIS_MNEMONIC_BSF ? b_.unary(Op::Ctz, s) : b_.sub(c(t, bits - 1), b_.unary(Op::Clz, s));
      if (t == Type::I32) b_.set_reg(d.reg.index, b_.select(zero, full_reg(d.reg.index), b_.zext(idx, Type::I64)));
      else write_gpr(d.reg, b_.select(zero, read_gpr(d.reg), idx));
      cc_load(zf);
      return;
    }
    case ZYDIS_MNEMONIC_TZCNT: case ZYDIS_MNEMONIC_LZCNT: {
      Value r = b_.unary(m == ZYDIS_MNEMONIC_TZCNT ? Op::Ctz : Op::Clz, s);
      write_gpr(d.reg, r);
      Value cf = b_.select(zero, c64(rflags::CF), c64(0));
      Value rz = b_.select(b_.cmp(Op::CmpEq, r, c(t, 0)), c64(rflags::ZF), c64(0));
      cc_load(b_.or_(cf, rz));
      return;
    }
    default: {  // POPCNT
      write_gpr(d.reg, b_.unary(Op::Popcnt, s));
      cc_load(zf);
      return;
    }
  }
}

Value Translator::df_delta(unsigned size) {
  Value df = b_.cmp(Op::CmpNe, b_.and_(b_.get_field(ir::StateField::RflagsOther), c64(rflags::DF)), c64(0));
  return b_.select(df, c64(static_cast<uint64_t>(-static_cast<int64_t>(size))), c64(size));
}

void Translator::string_op(ZydisMnemonic m) {
  const unsigned abits = insn_.address_width;
  const Type at = ir::int_type(abits);
  const Type t = op_type();
  const unsigned size = ir::type_bits(t) / 8;
  const bool rep = insn_.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE);
  const bool compare = m == ZYDIS_MNEMONIC_CMPSB || m == ZYDIS_MNEMONIC_CMPSW || m == ZYDIS_MNEMONIC_CMPSD ||
                       m == ZYDIS_MNEMONIC_CMPSQ || m == ZYDIS_MNEMONIC_SCASB || m == ZYDIS_MNEMONIC_SCASW ||
                       m == ZYDIS_MNEMONIC_SCASD || m == ZYDIS_MNEMONIC_SCASQ;
  Value count;
  if (rep) {
    count = read_gpr(reg_ref(RCX, at));
    b_.emit(Op::ExitIf, Type::Void, {b_.cmp(Op::CmpEq, count, c(at, 0))}, next_pc_);
  }
  // Source segment: DS unless overridden; destination always ES.
  ZydisRegister src_seg = ZYDIS_REGISTER_DS;
  for (unsigned i = 0; i < insn_.operand_count; ++i)
    if (ops_[i].type == ZYDIS_OPERAND_TYPE_MEMORY && ops_[i].mem.base != ZYDIS_REGISTER_NONE &&
        gpr(ops_[i].mem.base).index == RSI)
      src_seg = ops_[i].mem.segment;
  Value delta = df_delta(size);
  Value rsi = read_gpr(reg_ref(RSI, at)), rdi = read_gpr(reg_ref(RDI, at));
  // Only the segments the instruction uses are addressed (and, in system mode, checked).
  const bool stores_or_scans = m == ZYDIS_MNEMONIC_STOSB || m == ZYDIS_MNEMONIC_STOSW || m == ZYDIS_MNEMONIC_STOSD ||
                               m == ZYDIS_MNEMONIC_STOSQ || m == ZYDIS_MNEMONIC_SCASB || m == ZYDIS_MNEMONIC_SCASW ||
                               m == ZYDIS_MNEMONIC_SCASD || m == ZYDIS_MNEMONIC_SCASQ;
  const bool loads = m == ZYDIS_MNEMONIC_LODSB || m == ZYDIS_MNEMONIC_LODSW || m == ZYDIS_MNEMONIC_LODSD ||
                     m == ZYDIS_MNEMONIC_LODSQ;
  Value src = stores_or_scans ? Value{} : linear(b_.zext(rsi, Type::I64), src_seg);
  Value dst = loads ? Value{} : linear(b_.zext(rdi, Type::I64), ZYDIS_REGISTER_ES);
  Value new_rsi = b_.add(rsi, b_.zext(delta, at)), new_rdi = b_.add(rdi, b_.zext(delta, at));
  GprRef acc = reg_ref(RAX, t);
  switch (m) {
    case ZYDIS_MNEMONIC_MOVSB: case ZYDIS_MNEMONIC_MOVSW: case ZYDIS_MNEMONIC_MOVSD: case ZYDIS_MNEMONIC_MOVSQ:
      b_.store(dst, b_.load(t, src));
      write_gpr(reg_ref(RSI, at), new_rsi);
      write_gpr(reg_ref(RDI, at), new_rdi);
      break;
    case ZYDIS_MNEMONIC_STOSB: case ZYDIS_MNEMONIC_STOSW: case ZYDIS_MNEMONIC_STOSD: case ZYDIS_MNEMONIC_STOSQ:
      b_.store(dst, read_gpr(acc));
      write_gpr(reg_ref(RDI, at), new_rdi);
      break;
    case ZYDIS_MNEMONIC_LODSB: case ZYDIS_MNEMONIC_LODSW: case ZYDIS_MNEMONIC_LODSD: case ZYDIS_MNEMONIC_LODSQ:
      write_gpr(acc, b_.load(t, src));
      write_gpr(reg_ref(RSI, at), new_rsi);
      break;
    case ZYDIS_MNEMONIC_CMPSB: case ZYDIS_MNEMONIC_CMPSW: case ZYDIS_MNEMONIC_CMPSD: case ZYDIS_MNEMONIC_CMPSQ: {
      Value a = b_.load(t, src), bv = b_.load(t, dst);
      write_gpr(reg_ref(RSI, at), new_rsi);
      write_gpr(reg_ref(RDI, at), new_rdi);
      cc_set(CcKind::Sub, b_.sub(a, bv), a, bv);
      break;
    }
    default: {  // SCAS
      Value a = read_gpr(acc), bv = b_.load(t, dst);
      write_gpr(reg_ref(RDI, at), new_rdi);
      cc_set(CcKind::Sub, b_.sub(a, bv), a, bv);
      break;
    }
  }
  if (!rep) return;
  Value left = b_.sub(count, c(at, 1));
  write_gpr(reg_ref(RCX, at), left);
  Value done = b_.cmp(Op::CmpEq, left, c(at, 0));
  if (compare) {
    Value zf = cc_cond(4);
    Value stop = (insn_.attributes & ZYDIS_ATTRIB_HAS_REPNE) ? zf : b_.cmp(Op::CmpEq, zf, b_.constant(Type::I1, 0));
    done = b_.or_(done, stop);
  }
  b_.emit(Op::ExitIf, Type::Void, {done}, next_pc_);
  end_exit(pc_);  // next iteration
}

// IN/OUT/INS/OUTS through the port I/O helpers, which check IOPL and the TSS
// I/O bitmap. User-mode runs have no devices: there they stay #UD.
void Translator::port_io(ZydisMnemonic m) {
  if (!mode_.system) return raise(Vector::UD);
  if (m == ZYDIS_MNEMONIC_IN || m == ZYDIS_MNEMONIC_OUT) {
    const bool in = m == ZYDIS_MNEMONIC_IN;
    const ZydisDecodedOperand& port_op = ops_[in ? 1 : 0];
    const GprRef acc = gpr(ops_[in ? 0 : 1].reg.value);
    Value port = port_op.type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? c64(port_op.imm.value.u & 0xff)
                                                              : b_.zext(read_gpr(reg_ref(RDX, Type::I16)), Type::I64);
    Value size = c64(ir::type_bits(acc.type) / 8);
    if (in) return write_gpr(acc, b_.zext(helper(HelperId::PortIn, {port, size}), acc.type));
    helper(HelperId::PortOut, {port, size, b_.zext(read_gpr(acc), Type::I64)});
    return end_exit(next_pc_);  // device side effects (interrupts, exit requests) are seen at once
  }
  const bool in = m == ZYDIS_MNEMONIC_INSB || m == ZYDIS_MNEMONIC_INSW || m == ZYDIS_MNEMONIC_INSD;
  const unsigned size = (m == ZYDIS_MNEMONIC_INSB || m == ZYDIS_MNEMONIC_OUTSB) ? 1
                        : (m == ZYDIS_MNEMONIC_INSW || m == ZYDIS_MNEMONIC_OUTSW) ? 2 : 4;
  const Type t = ir::int_type(8 * size);
  const Type at = ir::int_type(insn_.address_width);
  // F3 and F2 both repeat INS/OUTS.
  const bool rep = insn_.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPNE);
  Value count;
  if (rep) {
    count = read_gpr(reg_ref(RCX, at));
    b_.emit(Op::ExitIf, Type::Void, {b_.cmp(Op::CmpEq, count, c(at, 0))}, next_pc_);
  }
  Value port = b_.zext(read_gpr(reg_ref(RDX, Type::I16)), Type::I64);
  Value delta = b_.zext(df_delta(size), at);
  if (in) {
    // INS writes ES:rDI (no override); the helper checks the destination before reading the port.
    Value rdi = read_gpr(reg_ref(RDI, at));
    helper(HelperId::PortInString, {port, c64(size), linear(b_.zext(rdi, Type::I64), ZYDIS_REGISTER_ES)});
    write_gpr(reg_ref(RDI, at), b_.add(rdi, delta));
  } else {
    ZydisRegister seg = ZYDIS_REGISTER_DS;  // OUTS reads DS:rSI, segment override allowed
    for (unsigned i = 0; i < insn_.operand_count; ++i)
      if (ops_[i].type == ZYDIS_OPERAND_TYPE_MEMORY) seg = ops_[i].mem.segment;
    helper(HelperId::PortCheck, {port, c64(size)});  // #GP for the port comes before a memory fault
    Value rsi = read_gpr(reg_ref(RSI, at));
    Value v = b_.load(t, linear(b_.zext(rsi, Type::I64), seg));
    helper(HelperId::PortOut, {port, c64(size), b_.zext(v, Type::I64)});
    write_gpr(reg_ref(RSI, at), b_.add(rsi, delta));
  }
  if (!rep) {
    if (!in) end_exit(next_pc_);
    return;
  }
  Value left = b_.sub(count, c(at, 1));
  write_gpr(reg_ref(RCX, at), left);
  b_.emit(Op::ExitIf, Type::Void, {b_.cmp(Op::CmpEq, left, c(at, 0))}, next_pc_);
  end_exit(pc_);  // next iteration (interruptible between iterations)
}

void Translator::cmpxchg() {
  Loc d = loc(0);
  const Type t = d.type;
  Value dest = get(d);
  Value src = b_.zext(read_gpr(gpr(ops_[1].reg.value)), t);
  GprRef acc = reg_ref(RAX, t);
  Value a = read_gpr(acc);
  Value eq = b_.cmp(Op::CmpEq, a, dest);
  // Memory is always written (locked read-modify-write); a register destination is
  // written only on success, so a failing 32-bit CMPXCHG leaves its upper half alone.
  if (d.is_mem) b_.store(d.addr, b_.select(eq, src, dest));
  else b_.set_reg(d.reg.index, b_.select(eq, merged_gpr(d.reg, src), full_reg(d.reg.index)));
  b_.set_reg(RAX, b_.select(eq, full_reg(RAX), merged_gpr(acc, dest)));
  cc_set(CcKind::Sub, b_.sub(a, dest), a, dest);
}

void Translator::cmpxchg_wide(bool is16b) {
  const Type half = is16b ? Type::I64 : Type::I32;
  const unsigned hb = is16b ? 8 : 4;
  Value addr = mem_address(ops_[0]);
  if (is16b) raise_if(b_.cmp(Op::CmpNe, b_.and_(addr, c64(15)), c64(0)), Vector::GP);
  Value lo = b_.load(half, addr), hi = b_.load(half, b_.add(addr, c64(hb)));
  Value eax = read_gpr(reg_ref(RAX, half)), edx = read_gpr(reg_ref(RDX, half));
  Value eq = b_.and_(b_.cmp(Op::CmpEq, lo, eax), b_.cmp(Op::CmpEq, hi, edx));
  Value nlo = b_.select(eq, read_gpr(reg_ref(RBX, half)), lo);
  Value nhi = b_.select(eq, read_gpr(reg_ref(RCX, half)), hi);
  Value hi_addr = b_.add(addr, c64(hb));
  // Probe both halves for writability before writing either.
  b_.store(hi_addr, hi);
  b_.store(addr, nlo);
  b_.store(hi_addr, nhi);
  // EDX:EAX are loaded only when the comparison fails (32-bit writes do not zero-extend on success).
  b_.set_reg(RAX, b_.select(eq, full_reg(RAX), merged_gpr(reg_ref(RAX, half), lo)));
  b_.set_reg(RDX, b_.select(eq, full_reg(RDX), merged_gpr(reg_ref(RDX, half), hi)));
  set_zf_only(eq);
}

void Translator::set_zf_only(Value zf_bool) {
  Value f = cc_flags();
  cc_load(b_.or_(b_.and_(f, c64(~rflags::ZF)), b_.select(zf_bool, c64(rflags::ZF), c64(0))));
}

void Translator::xadd() {
  Loc d = loc(0);
  GprRef s = gpr(ops_[1].reg.value);
  Value a = get(d);
  Value sv = read_gpr(s);
  Value r = b_.add(a, sv);
  if (d.is_mem) {
    b_.store(d.addr, r);
    write_gpr(s, a);
  } else {
    write_gpr(s, a);
    write_gpr(d.reg, r);
  }
  cc_set(CcKind::Add, r, a, sv);
}

void Translator::xchg() {
  Loc x = loc(0), y = loc(1);
  Value a = get(x), bv = get(y);
  if (x.is_mem) {
    b_.store(x.addr, bv);
    write_gpr(y.reg, a);
  } else if (y.is_mem) {
    b_.store(y.addr, a);
    write_gpr(x.reg, bv);
  } else {
    write_gpr(x.reg, bv);
    // merged_gpr re-reads the register, so XCHG of two halves of one register (AH, AL) sees the first write.
    write_gpr(y.reg, a);
  }
}

void Translator::push_pop(ZydisMnemonic m) {
  const Type t = op_type();
  switch (m) {
    case ZYDIS_MNEMONIC_PUSH: {
      Value v = operand(0, t);
      push(v);
      return;
    }
    case ZYDIS_MNEMONIC_POP: {
      auto [v, new_rsp] = pop_value(t);
      if (ops_[0].type == ZYDIS_OPERAND_TYPE_MEMORY) {
        // The destination address uses the incremented RSP; RSP is committed after the store.
        override_[RSP] = stack_bits() == 64 ? new_rsp : merged_gpr(reg_ref(RSP, ir::int_type(stack_bits())),
                                                                   b_.zext(new_rsp, ir::int_type(stack_bits())));
        Value addr = mem_address(ops_[0]);
        override_[RSP] = {};
        b_.store(addr, v);
        write_rsp(new_rsp);
      } else {
        write_rsp(new_rsp);
        write_gpr(gpr(ops_[0].reg.value), v);
      }
      return;
    }
    case ZYDIS_MNEMONIC_PUSHF: case ZYDIS_MNEMONIC_PUSHFD: case ZYDIS_MNEMONIC_PUSHFQ: {
      // Virtual-8086 mode: #GP(0) unless IOPL is 3. VM and RF read as 0 in the pushed image.
      if (mode_.system && mode_.vm86) system(SystemOp::Vm86Pushf);
      Value f = b_.or_(cc_flags(), b_.and_(b_.get_field(ir::StateField::RflagsOther), c64(~uint64_t{0x30000})));
      push(b_.zext(f, t));
      return;
    }
    case ZYDIS_MNEMONIC_POPF: case ZYDIS_MNEMONIC_POPFD: case ZYDIS_MNEMONIC_POPFQ: {
      auto [v, new_rsp] = pop_value(t);
      if (mode_.system) {  // IF/IOPL privilege rules; the TB ends so a newly enabled interrupt is seen
        system(SystemOp::Popf, b_.zext(v, Type::I64), c64(ir::type_bits(t)));
        write_rsp(new_rsp);
        return end_exit(next_pc_);
      }
      Value f = b_.zext(v, Type::I64);
      // User mode (CPL 3, IOPL 0): TF DF AC ID and the arithmetic flags change; IF/IOPL keep their values.
      uint64_t changeable = rflags::TF | rflags::DF | (t == Type::I16 ? 0 : rflags::AC | rflags::ID);
      Value other = b_.get_field(ir::StateField::RflagsOther);
      Value new_other = b_.or_(b_.and_(other, c64(~changeable)), b_.and_(f, c64(changeable)));
      write_rsp(new_rsp);
      b_.set_field(ir::StateField::RflagsOther, new_other);
      cc_load(f);
      return;
    }
    case ZYDIS_MNEMONIC_PUSHA: case ZYDIS_MNEMONIC_PUSHAD: {
      Value rsp = full_reg(RSP);
      const unsigned size = ir::type_bits(t) / 8;
      for (unsigned i = 0; i < 8; ++i) {
        Value v = read_gpr(reg_ref(i, t));
        if (i == RSP) v = b_.zext(rsp, t);
        b_.store(stack_address(stack_pointer_plus(rsp, -static_cast<int64_t>(size * (i + 1)))), v);
      }
      write_rsp(stack_pointer_plus(rsp, -static_cast<int64_t>(size * 8)));
      return;
    }
    case ZYDIS_MNEMONIC_POPA: case ZYDIS_MNEMONIC_POPAD: {
      Value rsp = full_reg(RSP);
      const unsigned size = ir::type_bits(t) / 8;
      Value vals[8];
      for (unsigned i = 0; i < 8; ++i)
        vals[i] = b_.load(t, stack_address(stack_pointer_plus(rsp, size * (7 - i))));
      for (unsigned i = 0; i < 8; ++i)
        if (i != RSP) write_gpr(reg_ref(i, t), vals[i]);
      write_rsp(stack_pointer_plus(rsp, size * 8));
      return;
    }
    default: raise(Vector::UD); return;
  }
}

void Translator::flags_insn(ZydisMnemonic m) {
  auto set_other_bit = [&](uint64_t bit, bool on) {
    Value other = b_.get_field(ir::StateField::RflagsOther);
    b_.set_field(ir::StateField::RflagsOther, on ? b_.or_(other, c64(bit)) : b_.and_(other, c64(~bit)));
  };
  switch (m) {
    case ZYDIS_MNEMONIC_CLC: cc_load(b_.and_(cc_flags(), c64(~rflags::CF))); break;
    case ZYDIS_MNEMONIC_STC: cc_load(b_.or_(cc_flags(), c64(rflags::CF))); break;
    case ZYDIS_MNEMONIC_CMC: cc_load(b_.xor_(cc_flags(), c64(rflags::CF))); break;
    case ZYDIS_MNEMONIC_CLD: set_other_bit(rflags::DF, false); break;
    case ZYDIS_MNEMONIC_STD: set_other_bit(rflags::DF, true); break;
    case ZYDIS_MNEMONIC_LAHF: {
      Value f = b_.or_(b_.and_(cc_flags(), c64(0xd5)), c64(2));
      write_gpr(GprRef{RAX, 8, Type::I8}, b_.zext(f, Type::I8));
      break;
    }
    case ZYDIS_MNEMONIC_SAHF: {
      Value ah = b_.zext(read_gpr(GprRef{RAX, 8, Type::I8}), Type::I64);
      Value f = b_.or_(b_.and_(cc_flags(), c64(rflags::OF)), b_.and_(ah, c64(0xd5)));
      cc_load(f);
      break;
    }
    default: break;
  }
}

void Translator::convert(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_CBW: write_gpr(reg_ref(RAX, Type::I16), b_.sext(read_gpr(reg_ref(RAX, Type::I8)), Type::I16)); break;
    case ZYDIS_MNEMONIC_CWDE: write_gpr(reg_ref(RAX, Type::I32), b_.sext(read_gpr(reg_ref(RAX, Type::I16)), Type::I32)); break;
    case ZYDIS_MNEMONIC_CDQE: write_gpr(reg_ref(RAX, Type::I64), b_.sext(read_gpr(reg_ref(RAX, Type::I32)), Type::I64)); break;
    default: {  // CWD/CDQ/CQO
      const Type t = op_type();
      Value a = read_gpr(reg_ref(RAX, t));
      write_gpr(reg_ref(RDX, t), b_.binary(Op::Sar, a, c(t, ir::type_bits(t) - 1)));
    }
  }
}

void Translator::branch(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_JMP:
      if (ops_[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) return end_exit(branch_target());
      if (ops_[0].type == ZYDIS_OPERAND_TYPE_POINTER || (insn_.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR))
        return mode_.system ? far_branch(m) : raise(Vector::UD);
      return end_indirect(operand(0, op_type()));
    case ZYDIS_MNEMONIC_CALL: {
      if (ops_[0].type == ZYDIS_OPERAND_TYPE_POINTER || (insn_.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR))
        return mode_.system ? far_branch(m) : raise(Vector::UD);
      const Type t = op_type();
      Value target = ops_[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? c(t, branch_target()) : operand(0, t);
      push(c(t, next_pc_));
      return end_indirect(target);
    }
    case ZYDIS_MNEMONIC_RET: {
      if (insn_.meta.branch_type == ZYDIS_BRANCH_TYPE_FAR) return mode_.system ? far_branch(m) : raise(Vector::UD);
      const Type t = op_type();
      auto [target, new_rsp] = pop_value(t);
      if (insn_.operand_count_visible > 0 && ops_[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE)
        new_rsp = b_.add(new_rsp, c64(ops_[0].imm.value.u & 0xffff));
      write_rsp(new_rsp);
      return end_indirect(target);
    }
    case ZYDIS_MNEMONIC_JCXZ: case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_JRCXZ: {
      Value cx = read_gpr(reg_ref(RCX, ir::int_type(insn_.address_width)));
      b_.emit(Op::ExitIf, Type::Void, {b_.cmp(Op::CmpEq, cx, c(cx.type, 0))}, branch_target());
      return end_exit(next_pc_);
    }
    case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE: case ZYDIS_MNEMONIC_LOOPNE: {
      const Type at = ir::int_type(insn_.address_width);
      Value cx = b_.sub(read_gpr(reg_ref(RCX, at)), c(at, 1));
      write_gpr(reg_ref(RCX, at), cx);
      Value take = b_.cmp(Op::CmpNe, cx, c(at, 0));
      if (m == ZYDIS_MNEMONIC_LOOPE) take = b_.and_(take, cc_cond(4));
      if (m == ZYDIS_MNEMONIC_LOOPNE) take = b_.and_(take, cc_cond(5));
      b_.emit(Op::ExitIf, Type::Void, {take}, branch_target());
      return end_exit(next_pc_);
    }
    default: {  // Jcc
      b_.emit(Op::ExitIf, Type::Void, {cc_cond(insn_.opcode & 15)}, branch_target());
      return end_exit(next_pc_);
    }
  }
}

void Translator::enter_leave(ZydisMnemonic m) {
  const Type t = op_type();
  const unsigned size = ir::type_bits(t) / 8;
  if (m == ZYDIS_MNEMONIC_LEAVE) {
    Value rbp = full_reg(RBP);
    Value v = b_.load(t, stack_address(rbp));
    write_rsp(stack_pointer_plus(rbp, size));
    write_gpr(reg_ref(RBP, t), v);
    return;
  }
  // ENTER alloc, level
  const uint64_t alloc = ops_[0].imm.value.u & 0xffff;
  const unsigned level = ops_[1].imm.value.u & 31;
  Value rsp = full_reg(RSP);
  Value rbp = full_reg(RBP);
  Value cursor = stack_pointer_plus(rsp, -static_cast<int64_t>(size));
  b_.store(stack_address(cursor), b_.zext(rbp, t));
  Value frame_temp = cursor;
  for (unsigned i = 1; i < level; ++i) {
    Value v = b_.load(t, stack_address(stack_pointer_plus(rbp, -static_cast<int64_t>(size * i))));
    cursor = stack_pointer_plus(cursor, -static_cast<int64_t>(size));
    b_.store(stack_address(cursor), v);
  }
  if (level > 0) {
    cursor = stack_pointer_plus(cursor, -static_cast<int64_t>(size));
    b_.store(stack_address(cursor), b_.zext(frame_temp, t));
  }
  Value new_rsp = b_.sub(cursor, c64(alloc));
  write_gpr(reg_ref(RBP, t), b_.zext(frame_temp, t));
  write_rsp(new_rsp);
}

void Translator::bmi(ZydisMnemonic m) {
  Loc d = loc(0);
  const Type t = d.type;
  const unsigned bits = ir::type_bits(t);
  switch (m) {
    case ZYDIS_MNEMONIC_ANDN: {
      Value r = b_.and_(b_.unary(Op::Not, operand(1, t)), operand(2, t));
      write_gpr(d.reg, r);
      cc_set(CcKind::Logic, r, r, r);
      return;
    }
    case ZYDIS_MNEMONIC_MOVBE: {
      if (d.is_mem) b_.store(d.addr, b_.unary(Op::Bswap, operand(1, t)));
      else write_gpr(d.reg, b_.unary(Op::Bswap, operand(1, t)));
      return;
    }
    case ZYDIS_MNEMONIC_SHLX: case ZYDIS_MNEMONIC_SHRX: case ZYDIS_MNEMONIC_SARX: case ZYDIS_MNEMONIC_RORX: {
      Value s = operand(1, t);
      Value n = m == ZYDIS_MNEMONIC_RORX ? c(t, ops_[2].imm.value.u & (bits - 1))
                                         : b_.and_(operand(2, t), c(t, bits - 1));
      Op op = m == ZYDIS_MNEMONIC_SHLX ? Op::Shl : m == ZYDIS_MNEMONIC_SHRX ? Op::Shr : m == ZYDIS_MNEMONIC_SARX ? Op::Sar : Op::Ror;
      write_gpr(d.reg, b_.binary(op, s, n));
      return;
    }
    case ZYDIS_MNEMONIC_ADCX: case ZYDIS_MNEMONIC_ADOX: {
      // Add with carry through CF (ADCX) or OF (ADOX) only; no other flag changes.
      const bool x = m == ZYDIS_MNEMONIC_ADCX;
      Value a = read_gpr(d.reg), s = operand(1, t);
      Value old = cc_flags();
      const uint64_t bit = x ? rflags::CF : rflags::OF;
      Value cin = b_.zext(b_.cmp(Op::CmpNe, b_.and_(old, c64(bit)), c64(0)), t);
      Value r = b_.add(b_.add(a, s), cin);
      Value cout = b_.or_(b_.cmp(Op::CmpLtU, r, a), b_.and_(b_.cmp(Op::CmpEq, r, a), b_.cmp(Op::CmpNe, cin, c(t, 0))));
      write_gpr(d.reg, r);
      cc_load(b_.or_(b_.and_(old, c64(~bit)), b_.select(cout, c64(bit), c64(0))));
      return;
    }
    case ZYDIS_MNEMONIC_MULX: {
      Value s = operand(2, t), a = read_gpr(reg_ref(RDX, t));
      Value lo = b_.binary(Op::Mul, a, s), hi = b_.binary(Op::MulHiU, a, s);
      write_gpr(gpr(ops_[1].reg.value), lo);
      write_gpr(d.reg, hi);  // written last: wins when both destinations are the same register
      return;
    }
    case ZYDIS_MNEMONIC_BZHI: {
      Value s = operand(1, t);
      Value n = b_.and_(b_.zext(operand(2, t), Type::I64), c64(0xff));
      Value in_range = b_.cmp(Op::CmpLtU, n, c64(bits));
      Value mask = b_.sub(b_.binary(Op::Shl, c64(1), n), c64(1));  // only used when n < bits <= 64
      Value r = b_.select(in_range, b_.zext(b_.and_(b_.zext(s, Type::I64), mask), t), s);
      write_gpr(d.reg, r);
      b_.emit(Op::CcSet, Type::Void, {r, r, r}, ir::cc_op(CcKind::Logic, t));
      Value f = cc_flags();
      cc_load(b_.or_(f, b_.select(in_range, c64(0), c64(rflags::CF))));
      return;
    }
    case ZYDIS_MNEMONIC_BEXTR: {
      Value s = b_.zext(operand(1, t), Type::I64);
      Value ctl = b_.zext(operand(2, t), Type::I64);
      Value start = b_.and_(ctl, c64(0xff)), len = b_.and_(b_.binary(Op::Shr, ctl, c64(8)), c64(0xff));
      Value shifted = b_.select(b_.cmp(Op::CmpLtU, start, c64(bits)), b_.binary(Op::Shr, s, start), c64(0));
      Value mask = b_.select(b_.cmp(Op::CmpLtU, len, c64(64)), b_.sub(b_.binary(Op::Shl, c64(1), len), c64(1)), c64(~uint64_t{0}));
      Value r = b_.zext(b_.and_(shifted, mask), t);
      write_gpr(d.reg, r);
      b_.emit(Op::CcSet, Type::Void, {r, r, r}, ir::cc_op(CcKind::Logic, t));  // ZF; CF = OF = 0
      return;
    }
    case ZYDIS_MNEMONIC_PDEP: case ZYDIS_MNEMONIC_PEXT: {
      Value r = helper(m == ZYDIS_MNEMONIC_PDEP ? HelperId::Pdep : HelperId::Pext,
                       {b_.zext(operand(1, t), Type::I64), b_.zext(operand(2, t), Type::I64)});
      write_gpr(d.reg, b_.zext(r, t));
      return;
    }
    case ZYDIS_MNEMONIC_CRC32: {
      Value src = operand(1, ir::int_type(ops_[1].size));
      Value r = helper(HelperId::Crc32, {b_.zext(read_gpr(d.reg), Type::I64), b_.zext(src, Type::I64), c64(ops_[1].size / 8)});
      write_gpr(d.reg, b_.zext(r, t));
      return;
    }
    default: {  // BLSI / BLSMSK / BLSR
      Value s = operand(1, t);
      Value r;
      if (m == ZYDIS_MNEMONIC_BLSI) r = b_.and_(s, b_.unary(Op::Neg, s));
      else if (m == ZYDIS_MNEMONIC_BLSMSK) r = b_.xor_(s, b_.sub(s, c(t, 1)));
      else r = b_.and_(s, b_.sub(s, c(t, 1)));
      write_gpr(d.reg, r);
      // ZF/SF from the result, OF = 0, CF: BLSI = source non-zero, BLSMSK/BLSR = source zero.
      Value src_zero = b_.cmp(Op::CmpEq, s, c(t, 0));
      Value cf = m == ZYDIS_MNEMONIC_BLSI ? b_.cmp(Op::CmpEq, src_zero, b_.constant(Type::I1, 0)) : src_zero;
      b_.emit(Op::CcSet, Type::Void, {r, r, r}, ir::cc_op(CcKind::Logic, t));
      Value f = cc_flags();
      cc_load(b_.or_(f, b_.select(cf, c64(rflags::CF), c64(0))));
      return;
    }
  }
}

// SSE/SSE2 integer operations and data movement. Returns false when `m` is not
// handled here (the caller raises #UD). MMX forms are not implemented yet.
bool Translator::sse(ZydisMnemonic m) {
  using ir::VecOp;
  if (m == ZYDIS_MNEMONIC_CVTPI2PS || m == ZYDIS_MNEMONIC_CVTPI2PD || m == ZYDIS_MNEMONIC_CVTPS2PI ||
      m == ZYDIS_MNEMONIC_CVTTPS2PI || m == ZYDIS_MNEMONIC_CVTPD2PI || m == ZYDIS_MNEMONIC_CVTTPD2PI)
    return mmx(m);  // MMX-register conversions, also with a memory source
  for (unsigned i = 0; i < insn_.operand_count_visible; ++i)
    if (is_mmx(i)) return mmx(m);
  static const std::pair<ZydisMnemonic, VecOp> kBinary[] = {
      {ZYDIS_MNEMONIC_PAND, VecOp::And},        {ZYDIS_MNEMONIC_PANDN, VecOp::Andn},
      {ZYDIS_MNEMONIC_POR, VecOp::Or},          {ZYDIS_MNEMONIC_PXOR, VecOp::Xor},
      {ZYDIS_MNEMONIC_ANDPS, VecOp::And},       {ZYDIS_MNEMONIC_ANDPD, VecOp::And},
      {ZYDIS_MNEMONIC_ANDNPS, VecOp::Andn},     {ZYDIS_MNEMONIC_ANDNPD, VecOp::Andn},
      {ZYDIS_MNEMONIC_ORPS, VecOp::Or},         {ZYDIS_MNEMONIC_ORPD, VecOp::Or},
      {ZYDIS_MNEMONIC_XORPS, VecOp::Xor},       {ZYDIS_MNEMONIC_XORPD, VecOp::Xor},
      {ZYDIS_MNEMONIC_PADDB, VecOp::AddB},      {ZYDIS_MNEMONIC_PADDW, VecOp::AddW},
      {ZYDIS_MNEMONIC_PADDD, VecOp::AddD},      {ZYDIS_MNEMONIC_PADDQ, VecOp::AddQ},
      {ZYDIS_MNEMONIC_PSUBB, VecOp::SubB},      {ZYDIS_MNEMONIC_PSUBW, VecOp::SubW},
      {ZYDIS_MNEMONIC_PSUBD, VecOp::SubD},      {ZYDIS_MNEMONIC_PSUBQ, VecOp::SubQ},
      {ZYDIS_MNEMONIC_PADDUSB, VecOp::AddUsB},  {ZYDIS_MNEMONIC_PADDUSW, VecOp::AddUsW},
      {ZYDIS_MNEMONIC_PADDSB, VecOp::AddSsB},   {ZYDIS_MNEMONIC_PADDSW, VecOp::AddSsW},
      {ZYDIS_MNEMONIC_PSUBUSB, VecOp::SubUsB},  {ZYDIS_MNEMONIC_PSUBUSW, VecOp::SubUsW},
      {ZYDIS_MNEMONIC_PSUBSB, VecOp::SubSsB},   {ZYDIS_MNEMONIC_PSUBSW, VecOp::SubSsW},
      {ZYDIS_MNEMONIC_PCMPEQB, VecOp::CmpEqB},  {ZYDIS_MNEMONIC_PCMPEQW, VecOp::CmpEqW},
      {ZYDIS_MNEMONIC_PCMPEQD, VecOp::CmpEqD},  {ZYDIS_MNEMONIC_PCMPGTB, VecOp::CmpGtB},
      {ZYDIS_MNEMONIC_PCMPGTW, VecOp::CmpGtW},  {ZYDIS_MNEMONIC_PCMPGTD, VecOp::CmpGtD},
      {ZYDIS_MNEMONIC_PMINUB, VecOp::MinUB},    {ZYDIS_MNEMONIC_PMAXUB, VecOp::MaxUB},
      {ZYDIS_MNEMONIC_PMINSW, VecOp::MinSW},    {ZYDIS_MNEMONIC_PMAXSW, VecOp::MaxSW},
      {ZYDIS_MNEMONIC_PMULLW, VecOp::MulLoW},   {ZYDIS_MNEMONIC_PMULHW, VecOp::MulHiW},
      {ZYDIS_MNEMONIC_PMULHUW, VecOp::MulHiUW}, {ZYDIS_MNEMONIC_PMULUDQ, VecOp::MulUDQ},
      {ZYDIS_MNEMONIC_PAVGB, VecOp::AvgB},      {ZYDIS_MNEMONIC_PAVGW, VecOp::AvgW},
      {ZYDIS_MNEMONIC_PSADBW, VecOp::SadBW},    {ZYDIS_MNEMONIC_PMADDWD, VecOp::MAddWD},
      {ZYDIS_MNEMONIC_PUNPCKLBW, VecOp::UnpackLoB}, {ZYDIS_MNEMONIC_PUNPCKLWD, VecOp::UnpackLoW},
      {ZYDIS_MNEMONIC_PUNPCKLDQ, VecOp::UnpackLoD}, {ZYDIS_MNEMONIC_PUNPCKLQDQ, VecOp::UnpackLoQ},
      {ZYDIS_MNEMONIC_PUNPCKHBW, VecOp::UnpackHiB}, {ZYDIS_MNEMONIC_PUNPCKHWD, VecOp::UnpackHiW},
      {ZYDIS_MNEMONIC_PUNPCKHDQ, VecOp::UnpackHiD}, {ZYDIS_MNEMONIC_PUNPCKHQDQ, VecOp::UnpackHiQ},
      {ZYDIS_MNEMONIC_UNPCKLPS, VecOp::UnpackLoPS}, {ZYDIS_MNEMONIC_UNPCKHPS, VecOp::UnpackHiPS},
      {ZYDIS_MNEMONIC_UNPCKLPD, VecOp::UnpackLoQ},  {ZYDIS_MNEMONIC_UNPCKHPD, VecOp::UnpackHiQ},
      {ZYDIS_MNEMONIC_PACKSSWB, VecOp::PackSsWB},   {ZYDIS_MNEMONIC_PACKSSDW, VecOp::PackSsDW},
      {ZYDIS_MNEMONIC_PACKUSWB, VecOp::PackUsWB},
      {ZYDIS_MNEMONIC_PSHUFB, VecOp::ShufB},     {ZYDIS_MNEMONIC_PSIGNB, VecOp::SignB},
      {ZYDIS_MNEMONIC_PSIGNW, VecOp::SignW},     {ZYDIS_MNEMONIC_PSIGND, VecOp::SignD},
      {ZYDIS_MNEMONIC_PMINSB, VecOp::MinSB},     {ZYDIS_MNEMONIC_PMAXSB, VecOp::MaxSB},
      {ZYDIS_MNEMONIC_PMINUW, VecOp::MinUW},     {ZYDIS_MNEMONIC_PMAXUW, VecOp::MaxUW},
      {ZYDIS_MNEMONIC_PMINSD, VecOp::MinSD},     {ZYDIS_MNEMONIC_PMAXSD, VecOp::MaxSD},
      {ZYDIS_MNEMONIC_PMINUD, VecOp::MinUD},     {ZYDIS_MNEMONIC_PMAXUD, VecOp::MaxUD},
      {ZYDIS_MNEMONIC_PMULLD, VecOp::MulLoD},    {ZYDIS_MNEMONIC_PMULDQ, VecOp::MulDQ},
      {ZYDIS_MNEMONIC_PCMPEQQ, VecOp::CmpEqQ},   {ZYDIS_MNEMONIC_PCMPGTQ, VecOp::CmpGtQ},
      {ZYDIS_MNEMONIC_PACKUSDW, VecOp::PackUsDW}, {ZYDIS_MNEMONIC_PMULHRSW, VecOp::MulHRSW},
      {ZYDIS_MNEMONIC_PMADDUBSW, VecOp::MAddUBSW}, {ZYDIS_MNEMONIC_PHADDW, VecOp::HAddW},
      {ZYDIS_MNEMONIC_PHADDD, VecOp::HAddD},     {ZYDIS_MNEMONIC_PHSUBW, VecOp::HSubW},
      {ZYDIS_MNEMONIC_PHSUBD, VecOp::HSubD},
  };
  for (const auto& [mn, op] : kBinary) {
    if (mn != m) continue;
    if (!is_xmm(0)) return false;
    Value src = vec_source(1, true);
    set_xmm(xmm_index(0), vec(op, get_xmm(xmm_index(0)), src));
    return true;
  }
  static const std::pair<ZydisMnemonic, std::pair<VecOp, VecOp>> kShifts[] = {
      {ZYDIS_MNEMONIC_PSLLW, {VecOp::SllW, VecOp::SllW}}, {ZYDIS_MNEMONIC_PSLLD, {VecOp::SllD, VecOp::SllD}},
      {ZYDIS_MNEMONIC_PSLLQ, {VecOp::SllQ, VecOp::SllQ}}, {ZYDIS_MNEMONIC_PSRLW, {VecOp::SrlW, VecOp::SrlW}},
      {ZYDIS_MNEMONIC_PSRLD, {VecOp::SrlD, VecOp::SrlD}}, {ZYDIS_MNEMONIC_PSRLQ, {VecOp::SrlQ, VecOp::SrlQ}},
      {ZYDIS_MNEMONIC_PSRAW, {VecOp::SraW, VecOp::SraW}}, {ZYDIS_MNEMONIC_PSRAD, {VecOp::SraD, VecOp::SraD}},
  };
  for (const auto& [mn, ops] : kShifts) {
    if (mn != m) continue;
    if (!is_xmm(0)) return false;
    Value count = ops_[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? vec_from(c64(ops_[1].imm.value.u & 0xff), c64(0))
                                                                : vec_source(1, true);
    set_xmm(xmm_index(0), vec(ops.first, get_xmm(xmm_index(0)), count));
    return true;
  }
  const bool aligned_move = m == ZYDIS_MNEMONIC_MOVDQA || m == ZYDIS_MNEMONIC_MOVAPS || m == ZYDIS_MNEMONIC_MOVAPD ||
                            m == ZYDIS_MNEMONIC_MOVNTDQ || m == ZYDIS_MNEMONIC_MOVNTPS || m == ZYDIS_MNEMONIC_MOVNTPD ||
                            m == ZYDIS_MNEMONIC_MOVNTDQA;
  static const std::pair<ZydisMnemonic, VecOp> kUnarySource[] = {
      {ZYDIS_MNEMONIC_PABSB, VecOp::AbsB},     {ZYDIS_MNEMONIC_PABSW, VecOp::AbsW},     {ZYDIS_MNEMONIC_PABSD, VecOp::AbsD},
      {ZYDIS_MNEMONIC_PMOVZXBW, VecOp::ZxBW}, {ZYDIS_MNEMONIC_PMOVZXBD, VecOp::ZxBD}, {ZYDIS_MNEMONIC_PMOVZXBQ, VecOp::ZxBQ},
      {ZYDIS_MNEMONIC_PMOVZXWD, VecOp::ZxWD}, {ZYDIS_MNEMONIC_PMOVZXWQ, VecOp::ZxWQ}, {ZYDIS_MNEMONIC_PMOVZXDQ, VecOp::ZxDQ},
      {ZYDIS_MNEMONIC_PMOVSXBW, VecOp::SxBW}, {ZYDIS_MNEMONIC_PMOVSXBD, VecOp::SxBD}, {ZYDIS_MNEMONIC_PMOVSXBQ, VecOp::SxBQ},
      {ZYDIS_MNEMONIC_PMOVSXWD, VecOp::SxWD}, {ZYDIS_MNEMONIC_PMOVSXWQ, VecOp::SxWQ}, {ZYDIS_MNEMONIC_PMOVSXDQ, VecOp::SxDQ},
  };
  for (const auto& [mn, op] : kUnarySource) {
    if (mn != m) continue;
    if (!is_xmm(0)) return false;
    Value src = fp_source(1);  // PMOVZX/SX read m16/m32/m64 without alignment
    set_xmm(xmm_index(0), vec(op, src, src));
    return true;
  }
  switch (m) {
    case ZYDIS_MNEMONIC_PALIGNR: case ZYDIS_MNEMONIC_PBLENDW: {
      if (!is_xmm(0)) return false;
      Value src = vec_source(1, true);
      uint32_t imm = static_cast<uint32_t>(ops_[2].imm.value.u & 0xff);
      set_xmm(xmm_index(0), vec(m == ZYDIS_MNEMONIC_PALIGNR ? VecOp::AlignR : VecOp::BlendW, get_xmm(xmm_index(0)), src, imm));
      return true;
    }
    case ZYDIS_MNEMONIC_PTEST: {
      Value a = get_xmm(xmm_index(0)), src = vec_source(1, true);
      Value both = vec(VecOp::And, a, src), only_src = vec(VecOp::Andn, a, src);
      Value zf = b_.cmp(Op::CmpEq, b_.or_(vec_lo(both), vec_hi(both)), c64(0));
      Value cf = b_.cmp(Op::CmpEq, b_.or_(vec_lo(only_src), vec_hi(only_src)), c64(0));
      cc_load(b_.or_(b_.select(zf, c64(rflags::ZF), c64(0)), b_.select(cf, c64(rflags::CF), c64(0))));
      return true;
    }
    case ZYDIS_MNEMONIC_PEXTRB: case ZYDIS_MNEMONIC_PEXTRW: case ZYDIS_MNEMONIC_PEXTRD: case ZYDIS_MNEMONIC_PEXTRQ: {
      const unsigned size = m == ZYDIS_MNEMONIC_PEXTRB ? 8 : m == ZYDIS_MNEMONIC_PEXTRW ? 16 : m == ZYDIS_MNEMONIC_PEXTRD ? 32 : 64;
      if (!is_xmm(1)) return false;
      const unsigned lane = static_cast<unsigned>(ops_[2].imm.value.u) & (128 / size - 1);
      const unsigned bit = lane * size;
      Value v = get_xmm(xmm_index(1));
      Value half = bit >= 64 ? vec_hi(v) : vec_lo(v);
      Value elem = b_.emit(Op::Extract, ir::int_type(size), {half}, bit % 64);
      if (ops_[0].type == ZYDIS_OPERAND_TYPE_MEMORY) b_.store(mem_address(ops_[0]), elem);
      else write_gpr(gpr(ops_[0].reg.value), b_.zext(elem, ir::int_type(ops_[0].size)));
      return true;
    }
    case ZYDIS_MNEMONIC_PINSRB: case ZYDIS_MNEMONIC_PINSRW: case ZYDIS_MNEMONIC_PINSRD: case ZYDIS_MNEMONIC_PINSRQ: {
      const unsigned size = m == ZYDIS_MNEMONIC_PINSRB ? 8 : m == ZYDIS_MNEMONIC_PINSRW ? 16 : m == ZYDIS_MNEMONIC_PINSRD ? 32 : 64;
      if (!is_xmm(0)) return false;
      const unsigned lane = static_cast<unsigned>(ops_[2].imm.value.u) & (128 / size - 1);
      const unsigned bit = lane * size;
      Value elem = ops_[1].type == ZYDIS_OPERAND_TYPE_MEMORY ? b_.load(ir::int_type(size), mem_address(ops_[1]))
                                                             : b_.zext(read_gpr(gpr(ops_[1].reg.value)), ir::int_type(size));
      Value d = get_xmm(xmm_index(0));
      Value half = bit >= 64 ? vec_hi(d) : vec_lo(d);
      Value merged = b_.emit(Op::Deposit, Type::I64, {half, elem}, (bit % 64) | (size << 8));
      set_xmm(xmm_index(0), bit >= 64 ? vec_from(vec_lo(d), merged) : vec_from(merged, vec_hi(d)));
      return true;
    }
    case ZYDIS_MNEMONIC_LDMXCSR: {
      Value v = b_.zext(b_.load(Type::I32, mem_address(ops_[0])), Type::I64);
      raise_if(b_.cmp(Op::CmpNe, b_.and_(v, c64(~uint64_t{0xffff})), c64(0)), Vector::GP);  // reserved bits
      b_.set_field(ir::StateField::Mxcsr, v);
      return true;
    }
    case ZYDIS_MNEMONIC_STMXCSR:
      b_.store(mem_address(ops_[0]), b_.zext(b_.get_field(ir::StateField::Mxcsr), Type::I32));
      return true;
    case ZYDIS_MNEMONIC_MOVDQA: case ZYDIS_MNEMONIC_MOVAPS: case ZYDIS_MNEMONIC_MOVAPD:
    case ZYDIS_MNEMONIC_MOVDQU: case ZYDIS_MNEMONIC_MOVUPS: case ZYDIS_MNEMONIC_MOVUPD:
    case ZYDIS_MNEMONIC_MOVNTDQ: case ZYDIS_MNEMONIC_MOVNTPS: case ZYDIS_MNEMONIC_MOVNTPD: case ZYDIS_MNEMONIC_LDDQU:
    case ZYDIS_MNEMONIC_MOVNTDQA: {
      if (is_xmm(0)) {
        set_xmm(xmm_index(0), vec_source(1, aligned_move));
      } else {
        Value v = get_xmm(xmm_index(1));
        Value addr = mem_address(ops_[0]);
        if (aligned_move) raise_if(b_.cmp(Op::CmpNe, b_.and_(addr, c64(15)), c64(0)), Vector::GP);
        b_.store(addr, v);
      }
      return true;
    }
    case ZYDIS_MNEMONIC_MOVD: case ZYDIS_MNEMONIC_MOVQ: {
      if (is_xmm(0)) {
        // MOVD/MOVQ xmm, r/m or MOVQ xmm, xmm/m64: zero the upper part.
        Value lo = is_xmm(1) ? vec_lo(get_xmm(xmm_index(1))) : b_.zext(operand(1, ir::int_type(ops_[1].size)), Type::I64);
        set_xmm(xmm_index(0), vec_from(lo, c64(0)));
      } else {
        Value lo = vec_lo(get_xmm(xmm_index(1)));
        Type t = ir::int_type(ops_[0].size);
        put(loc(0), b_.zext(lo, t));
      }
      return true;
    }
    case ZYDIS_MNEMONIC_MOVSS: case ZYDIS_MNEMONIC_MOVSD: {
      const Type t = m == ZYDIS_MNEMONIC_MOVSS ? Type::I32 : Type::I64;
      if (!is_xmm(0)) {  // store the low element
        b_.store(mem_address(ops_[0]), b_.zext(vec_lo(get_xmm(xmm_index(1))), t));
      } else if (!is_xmm(1)) {  // load: upper part zeroed
        set_xmm(xmm_index(0), vec_from(b_.zext(b_.load(t, mem_address(ops_[1])), Type::I64), c64(0)));
      } else {  // register to register: merge the low element
        Value d = get_xmm(xmm_index(0)), sv = get_xmm(xmm_index(1));
        Value lo = t == Type::I64 ? vec_lo(sv)
                                  : b_.emit(Op::Deposit, Type::I64, {vec_lo(d), b_.zext(vec_lo(sv), Type::I32)}, 32 << 8);
        set_xmm(xmm_index(0), vec_from(lo, vec_hi(d)));
      }
      return true;
    }
    case ZYDIS_MNEMONIC_MOVLPS: case ZYDIS_MNEMONIC_MOVLPD: case ZYDIS_MNEMONIC_MOVHPS: case ZYDIS_MNEMONIC_MOVHPD: {
      const bool high = m == ZYDIS_MNEMONIC_MOVHPS || m == ZYDIS_MNEMONIC_MOVHPD;
      if (!is_xmm(0)) {
        Value v = get_xmm(xmm_index(1));
        b_.store(mem_address(ops_[0]), high ? vec_hi(v) : vec_lo(v));
      } else {
        if (is_xmm(1)) return false;  // MOVHLPS/MOVLHPS share the opcode; Zydis names them apart
        Value d = get_xmm(xmm_index(0));
        Value v = b_.load(Type::I64, mem_address(ops_[1]));
        set_xmm(xmm_index(0), high ? vec_from(vec_lo(d), v) : vec_from(v, vec_hi(d)));
      }
      return true;
    }
    case ZYDIS_MNEMONIC_MOVHLPS: case ZYDIS_MNEMONIC_MOVLHPS: {
      Value d = get_xmm(xmm_index(0)), sv = get_xmm(xmm_index(1));
      set_xmm(xmm_index(0), m == ZYDIS_MNEMONIC_MOVHLPS ? vec_from(vec_hi(sv), vec_hi(d)) : vec_from(vec_lo(d), vec_lo(sv)));
      return true;
    }
    case ZYDIS_MNEMONIC_PSHUFD: case ZYDIS_MNEMONIC_PSHUFLW: case ZYDIS_MNEMONIC_PSHUFHW: {
      Value src = vec_source(1, true);
      VecOp op = m == ZYDIS_MNEMONIC_PSHUFD ? VecOp::ShufD : m == ZYDIS_MNEMONIC_PSHUFLW ? VecOp::ShufLW : VecOp::ShufHW;
      set_xmm(xmm_index(0), vec(op, src, src, static_cast<uint32_t>(ops_[2].imm.value.u & 0xff)));
      return true;
    }
    case ZYDIS_MNEMONIC_SHUFPD: {
      Value src = vec_source(1, true);
      set_xmm(xmm_index(0), vec(VecOp::ShufPD, get_xmm(xmm_index(0)), src, static_cast<uint32_t>(ops_[2].imm.value.u & 3)));
      return true;
    }
    case ZYDIS_MNEMONIC_SHUFPS: {
      Value src = vec_source(1, true);
      set_xmm(xmm_index(0), vec(VecOp::ShufPS, get_xmm(xmm_index(0)), src, static_cast<uint32_t>(ops_[2].imm.value.u & 0xff)));
      return true;
    }
    case ZYDIS_MNEMONIC_PSLLDQ: case ZYDIS_MNEMONIC_PSRLDQ: {
      uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(ops_[1].imm.value.u & 0xff, 16));
      Value d = get_xmm(xmm_index(0));
      set_xmm(xmm_index(0), vec(m == ZYDIS_MNEMONIC_PSLLDQ ? VecOp::SllDQ : VecOp::SrlDQ, d, d, n));
      return true;
    }
    case ZYDIS_MNEMONIC_PMOVMSKB: case ZYDIS_MNEMONIC_MOVMSKPS: case ZYDIS_MNEMONIC_MOVMSKPD: {
      if (!is_xmm(1)) return false;
      Value sv = get_xmm(xmm_index(1));
      VecOp op = m == ZYDIS_MNEMONIC_PMOVMSKB ? VecOp::MovMskB : m == ZYDIS_MNEMONIC_MOVMSKPS ? VecOp::MovMskPS : VecOp::MovMskPD;
      Loc d = loc(0);
      write_gpr(d.reg, b_.zext(vec_lo(vec(op, sv, sv)), d.type));
      return true;
    }
    default: return sse_fp(m);
  }
}

bool Translator::sse_fp(ZydisMnemonic m) {
  using ir::FpOp;
  static const std::pair<ZydisMnemonic, FpOp> kArith[] = {
      {ZYDIS_MNEMONIC_ADDPS, FpOp::AddPS}, {ZYDIS_MNEMONIC_SUBPS, FpOp::SubPS}, {ZYDIS_MNEMONIC_MULPS, FpOp::MulPS},
      {ZYDIS_MNEMONIC_DIVPS, FpOp::DivPS}, {ZYDIS_MNEMONIC_MINPS, FpOp::MinPS}, {ZYDIS_MNEMONIC_MAXPS, FpOp::MaxPS},
      {ZYDIS_MNEMONIC_SQRTPS, FpOp::SqrtPS}, {ZYDIS_MNEMONIC_ADDSS, FpOp::AddSS}, {ZYDIS_MNEMONIC_SUBSS, FpOp::SubSS},
      {ZYDIS_MNEMONIC_MULSS, FpOp::MulSS}, {ZYDIS_MNEMONIC_DIVSS, FpOp::DivSS}, {ZYDIS_MNEMONIC_MINSS, FpOp::MinSS},
      {ZYDIS_MNEMONIC_MAXSS, FpOp::MaxSS}, {ZYDIS_MNEMONIC_SQRTSS, FpOp::SqrtSS}, {ZYDIS_MNEMONIC_ADDPD, FpOp::AddPD},
      {ZYDIS_MNEMONIC_SUBPD, FpOp::SubPD}, {ZYDIS_MNEMONIC_MULPD, FpOp::MulPD}, {ZYDIS_MNEMONIC_DIVPD, FpOp::DivPD},
      {ZYDIS_MNEMONIC_MINPD, FpOp::MinPD}, {ZYDIS_MNEMONIC_MAXPD, FpOp::MaxPD}, {ZYDIS_MNEMONIC_SQRTPD, FpOp::SqrtPD},
      {ZYDIS_MNEMONIC_ADDSD, FpOp::AddSD}, {ZYDIS_MNEMONIC_SUBSD, FpOp::SubSD}, {ZYDIS_MNEMONIC_MULSD, FpOp::MulSD},
      {ZYDIS_MNEMONIC_DIVSD, FpOp::DivSD}, {ZYDIS_MNEMONIC_MINSD, FpOp::MinSD}, {ZYDIS_MNEMONIC_MAXSD, FpOp::MaxSD},
      {ZYDIS_MNEMONIC_SQRTSD, FpOp::SqrtSD}, {ZYDIS_MNEMONIC_CMPPS, FpOp::CmpPS}, {ZYDIS_MNEMONIC_CMPSS, FpOp::CmpSS},
      {ZYDIS_MNEMONIC_CMPPD, FpOp::CmpPD}, {ZYDIS_MNEMONIC_CMPSD, FpOp::CmpSD},
      {ZYDIS_MNEMONIC_CVTDQ2PS, FpOp::CvtDQ2PS}, {ZYDIS_MNEMONIC_CVTPS2DQ, FpOp::CvtPS2DQ},
      {ZYDIS_MNEMONIC_CVTTPS2DQ, FpOp::CvtTPS2DQ}, {ZYDIS_MNEMONIC_CVTPS2PD, FpOp::CvtPS2PD},
      {ZYDIS_MNEMONIC_CVTPD2PS, FpOp::CvtPD2PS}, {ZYDIS_MNEMONIC_CVTSS2SD, FpOp::CvtSS2SD},
      {ZYDIS_MNEMONIC_CVTSD2SS, FpOp::CvtSD2SS}, {ZYDIS_MNEMONIC_CVTDQ2PD, FpOp::CvtDQ2PD},
      {ZYDIS_MNEMONIC_CVTPD2DQ, FpOp::CvtPD2DQ}, {ZYDIS_MNEMONIC_CVTTPD2DQ, FpOp::CvtTPD2DQ},
      {ZYDIS_MNEMONIC_RCPPS, FpOp::RcpPS},       {ZYDIS_MNEMONIC_RCPSS, FpOp::RcpSS},
      {ZYDIS_MNEMONIC_RSQRTPS, FpOp::RsqrtPS},   {ZYDIS_MNEMONIC_RSQRTSS, FpOp::RsqrtSS},
  };
  for (const auto& [mn, op] : kArith) {
    if (mn != m) continue;
    if (!is_xmm(0)) return false;
    Value src = fp_source(1);
    uint32_t aux = insn_.operand_count_visible > 2 && ops_[2].type == ZYDIS_OPERAND_TYPE_IMMEDIATE
                       ? static_cast<uint32_t>(ops_[2].imm.value.u & 7) : 0;
    if (insn_.operand_count_visible > 2 && (ops_[2].imm.value.u & 0xff) > 7) return false;  // AVX predicates
    set_xmm(xmm_index(0), fp(op, get_xmm(xmm_index(0)), src, aux));
    return true;
  }
  static const std::pair<ZydisMnemonic, FpOp> kSse3[] = {
      {ZYDIS_MNEMONIC_ADDSUBPS, FpOp::AddSubPS}, {ZYDIS_MNEMONIC_ADDSUBPD, FpOp::AddSubPD},
      {ZYDIS_MNEMONIC_HADDPS, FpOp::HAddPS},     {ZYDIS_MNEMONIC_HADDPD, FpOp::HAddPD},
      {ZYDIS_MNEMONIC_HSUBPS, FpOp::HSubPS},     {ZYDIS_MNEMONIC_HSUBPD, FpOp::HSubPD},
      {ZYDIS_MNEMONIC_ROUNDPS, FpOp::RoundPS},   {ZYDIS_MNEMONIC_ROUNDPD, FpOp::RoundPD},
      {ZYDIS_MNEMONIC_ROUNDSS, FpOp::RoundSS},   {ZYDIS_MNEMONIC_ROUNDSD, FpOp::RoundSD},
  };
  for (const auto& [mn, op] : kSse3) {
    if (mn != m) continue;
    if (!is_xmm(0) || !ir::host_has_sse41()) return false;
    Value src = fp_source(1);
    uint32_t aux = insn_.operand_count_visible > 2 ? static_cast<uint32_t>(ops_[2].imm.value.u & 15) : 0;
    set_xmm(xmm_index(0), fp(op, get_xmm(xmm_index(0)), src, aux));
    return true;
  }
  switch (m) {
    case ZYDIS_MNEMONIC_MOVDDUP: case ZYDIS_MNEMONIC_MOVSHDUP: case ZYDIS_MNEMONIC_MOVSLDUP: {
      // MOVDDUP reads m64 (no alignment); MOVSHDUP/MOVSLDUP m128 (aligned).
      Value src = m == ZYDIS_MNEMONIC_MOVDDUP ? fp_source(1) : vec_source(1, true);
      ir::VecOp op = m == ZYDIS_MNEMONIC_MOVDDUP ? ir::VecOp::DupLoQ
                   : m == ZYDIS_MNEMONIC_MOVSHDUP ? ir::VecOp::DupOddD : ir::VecOp::DupEvenD;
      set_xmm(xmm_index(0), vec(op, src, src));
      return true;
    }
    case ZYDIS_MNEMONIC_BLENDPS: case ZYDIS_MNEMONIC_BLENDPD: {
      Value src = vec_source(1, true);
      set_xmm(xmm_index(0), vec(m == ZYDIS_MNEMONIC_BLENDPS ? ir::VecOp::BlendD : ir::VecOp::BlendQ,
                                get_xmm(xmm_index(0)), src, static_cast<uint32_t>(ops_[2].imm.value.u & 0xff)));
      return true;
    }
    case ZYDIS_MNEMONIC_BLENDVPS: case ZYDIS_MNEMONIC_BLENDVPD: case ZYDIS_MNEMONIC_PBLENDVB: {
      // Select by the sign bit of each element of XMM0: mask = sign-extended sign bits.
      Value src = vec_source(1, true), d = get_xmm(xmm_index(0)), x0 = get_xmm(0);
      Value zero = vec_from(c64(0), c64(0));
      ir::VecOp gt = m == ZYDIS_MNEMONIC_BLENDVPS ? ir::VecOp::CmpGtD : m == ZYDIS_MNEMONIC_PBLENDVB ? ir::VecOp::CmpGtB
                                                                                                      : ir::VecOp::CmpGtQ;
      Value mask = vec(gt, zero, x0);  // 0 > x  ⇔  sign bit set
      set_xmm(xmm_index(0), vec(ir::VecOp::Or, vec(ir::VecOp::And, mask, src), vec(ir::VecOp::Andn, mask, d)));
      return true;
    }
    case ZYDIS_MNEMONIC_INSERTPS: {
      uint32_t imm = static_cast<uint32_t>(ops_[2].imm.value.u & 0xff);
      Value src;
      if (is_xmm(1)) {
        src = get_xmm(xmm_index(1));
      } else {  // m32 goes to the lane the immediate names; the source-lane field is ignored
        src = vec_from(b_.zext(b_.load(Type::I32, mem_address(ops_[1])), Type::I64), c64(0));
        imm &= 0x3f;
      }
      set_xmm(xmm_index(0), vec(ir::VecOp::InsertPS, get_xmm(xmm_index(0)), src, imm));
      return true;
    }
    case ZYDIS_MNEMONIC_EXTRACTPS: {
      const unsigned lane = static_cast<unsigned>(ops_[2].imm.value.u & 3);
      Value v = get_xmm(xmm_index(1));
      Value elem = b_.emit(Op::Extract, Type::I32, {lane >= 2 ? vec_hi(v) : vec_lo(v)}, (lane & 1) * 32);
      if (ops_[0].type == ZYDIS_OPERAND_TYPE_MEMORY) b_.store(mem_address(ops_[0]), elem);
      else write_gpr(gpr(ops_[0].reg.value), b_.zext(elem, ir::int_type(ops_[0].size)));
      return true;
    }
    case ZYDIS_MNEMONIC_PHMINPOSUW: {
      Value src = vec_source(1, true);
      set_xmm(xmm_index(0), vec(ir::VecOp::MinPosUW, src, src));
      return true;
    }
    case ZYDIS_MNEMONIC_MPSADBW: {
      if (!is_xmm(0)) return false;
      Value src = vec_source(1, true);
      const uint32_t imm = static_cast<uint32_t>(ops_[2].imm.value.u & 7);
      set_xmm(xmm_index(0), vec(ir::VecOp::MpsadBW, get_xmm(xmm_index(0)), src, imm));
      return true;
    }
    case ZYDIS_MNEMONIC_DPPS: case ZYDIS_MNEMONIC_DPPD: {
      if (!is_xmm(0) || !ir::host_has_sse41()) return false;
      Value src = vec_source(1, true);
      set_xmm(xmm_index(0), fp(m == ZYDIS_MNEMONIC_DPPS ? FpOp::DpPS : FpOp::DpPD, get_xmm(xmm_index(0)), src,
                               static_cast<uint32_t>(ops_[2].imm.value.u & 0xff)));
      return true;
    }
    case ZYDIS_MNEMONIC_PCMPESTRI: case ZYDIS_MNEMONIC_PCMPESTRM: case ZYDIS_MNEMONIC_PCMPISTRI:
    case ZYDIS_MNEMONIC_PCMPISTRM: {
      // A helper runs the host's SSE4.2 instruction: a = first operand's register | imm << 8 |
      // form << 16 | REX.W << 18; b, c = the second operand (no alignment requirement).
      if (!is_xmm(0) || !ir::host_has_sse42()) return false;
      Value src = vec_source(1, false);
      const uint64_t form = m == ZYDIS_MNEMONIC_PCMPESTRI ? 0 : m == ZYDIS_MNEMONIC_PCMPESTRM ? 1
                          : m == ZYDIS_MNEMONIC_PCMPISTRI ? 2 : 3;
      const bool rex_w = (insn_.attributes & ZYDIS_ATTRIB_HAS_REX) && insn_.raw.rex.W;
      helper(HelperId::StringCompare, {c64(xmm_index(0) | ((ops_[2].imm.value.u & 0xff) << 8) | (form << 16) |
                                           (uint64_t{rex_w} << 18)), vec_lo(src), vec_hi(src)});
      return true;
    }
    case ZYDIS_MNEMONIC_COMISS: case ZYDIS_MNEMONIC_UCOMISS: case ZYDIS_MNEMONIC_COMISD: case ZYDIS_MNEMONIC_UCOMISD: {
      FpOp op = m == ZYDIS_MNEMONIC_COMISS ? FpOp::ComiSS : m == ZYDIS_MNEMONIC_UCOMISS ? FpOp::UcomiSS
              : m == ZYDIS_MNEMONIC_COMISD ? FpOp::ComiSD : FpOp::UcomiSD;
      Value src = fp_source(1);
      cc_load(vec_lo(fp(op, get_xmm(xmm_index(0)), src)));
      return true;
    }
    case ZYDIS_MNEMONIC_CVTSI2SS: case ZYDIS_MNEMONIC_CVTSI2SD: {
      const bool wide = ops_[1].size == 64;
      FpOp op = m == ZYDIS_MNEMONIC_CVTSI2SS ? (wide ? FpOp::CvtSI2SS64 : FpOp::CvtSI2SS32)
                                             : (wide ? FpOp::CvtSI2SD64 : FpOp::CvtSI2SD32);
      Value src = fp_source(1);
      set_xmm(xmm_index(0), fp(op, get_xmm(xmm_index(0)), src));
      return true;
    }
    case ZYDIS_MNEMONIC_CVTSS2SI: case ZYDIS_MNEMONIC_CVTTSS2SI: case ZYDIS_MNEMONIC_CVTSD2SI:
    case ZYDIS_MNEMONIC_CVTTSD2SI: {
      const bool wide = ops_[0].size == 64;
      FpOp op;
      if (m == ZYDIS_MNEMONIC_CVTSS2SI) op = wide ? FpOp::CvtSS2SI64 : FpOp::CvtSS2SI32;
      else if (m == ZYDIS_MNEMONIC_CVTTSS2SI) op = wide ? FpOp::CvtTSS2SI64 : FpOp::CvtTSS2SI32;
      else if (m == ZYDIS_MNEMONIC_CVTSD2SI) op = wide ? FpOp::CvtSD2SI64 : FpOp::CvtSD2SI32;
      else op = wide ? FpOp::CvtTSD2SI64 : FpOp::CvtTSD2SI32;
      Value src = fp_source(1);
      Value r = vec_lo(fp(op, src, src));
      Loc d = loc(0);
      write_gpr(d.reg, b_.zext(r, d.type));
      return true;
    }
    default: return false;
  }
}

// MMX forms, evaluated with the 128-bit vector ops on zero-extended operands
// (rearranged where the 64-bit layout differs: high unpacks, packs, PSHUFB, PALIGNR).
bool Translator::mmx(ZydisMnemonic m) {
  using ir::VecOp;
  static const std::pair<ZydisMnemonic, VecOp> kLaneOps[] = {
      {ZYDIS_MNEMONIC_PAND, VecOp::And},        {ZYDIS_MNEMONIC_PANDN, VecOp::Andn},
      {ZYDIS_MNEMONIC_POR, VecOp::Or},          {ZYDIS_MNEMONIC_PXOR, VecOp::Xor},
      {ZYDIS_MNEMONIC_PADDB, VecOp::AddB},      {ZYDIS_MNEMONIC_PADDW, VecOp::AddW},
      {ZYDIS_MNEMONIC_PADDD, VecOp::AddD},      {ZYDIS_MNEMONIC_PADDQ, VecOp::AddQ},
      {ZYDIS_MNEMONIC_PSUBB, VecOp::SubB},      {ZYDIS_MNEMONIC_PSUBW, VecOp::SubW},
      {ZYDIS_MNEMONIC_PSUBD, VecOp::SubD},      {ZYDIS_MNEMONIC_PSUBQ, VecOp::SubQ},
      {ZYDIS_MNEMONIC_PADDUSB, VecOp::AddUsB},  {ZYDIS_MNEMONIC_PADDUSW, VecOp::AddUsW},
      {ZYDIS_MNEMONIC_PADDSB, VecOp::AddSsB},   {ZYDIS_MNEMONIC_PADDSW, VecOp::AddSsW},
      {ZYDIS_MNEMONIC_PSUBUSB, VecOp::SubUsB},  {ZYDIS_MNEMONIC_PSUBUSW, VecOp::SubUsW},
      {ZYDIS_MNEMONIC_PSUBSB, VecOp::SubSsB},   {ZYDIS_MNEMONIC_PSUBSW, VecOp::SubSsW},
      {ZYDIS_MNEMONIC_PCMPEQB, VecOp::CmpEqB},  {ZYDIS_MNEMONIC_PCMPEQW, VecOp::CmpEqW},
      {ZYDIS_MNEMONIC_PCMPEQD, VecOp::CmpEqD},  {ZYDIS_MNEMONIC_PCMPGTB, VecOp::CmpGtB},
      {ZYDIS_MNEMONIC_PCMPGTW, VecOp::CmpGtW},  {ZYDIS_MNEMONIC_PCMPGTD, VecOp::CmpGtD},
      {ZYDIS_MNEMONIC_PMINUB, VecOp::MinUB},    {ZYDIS_MNEMONIC_PMAXUB, VecOp::MaxUB},
      {ZYDIS_MNEMONIC_PMINSW, VecOp::MinSW},    {ZYDIS_MNEMONIC_PMAXSW, VecOp::MaxSW},
      {ZYDIS_MNEMONIC_PMULLW, VecOp::MulLoW},   {ZYDIS_MNEMONIC_PMULHW, VecOp::MulHiW},
      {ZYDIS_MNEMONIC_PMULHUW, VecOp::MulHiUW}, {ZYDIS_MNEMONIC_PMULUDQ, VecOp::MulUDQ},
      {ZYDIS_MNEMONIC_PAVGB, VecOp::AvgB},      {ZYDIS_MNEMONIC_PAVGW, VecOp::AvgW},
      {ZYDIS_MNEMONIC_PSADBW, VecOp::SadBW},    {ZYDIS_MNEMONIC_PMADDWD, VecOp::MAddWD},
      {ZYDIS_MNEMONIC_PUNPCKLBW, VecOp::UnpackLoB}, {ZYDIS_MNEMONIC_PUNPCKLWD, VecOp::UnpackLoW},
      {ZYDIS_MNEMONIC_PUNPCKLDQ, VecOp::UnpackLoD}, {ZYDIS_MNEMONIC_PSIGNB, VecOp::SignB},
      {ZYDIS_MNEMONIC_PSIGNW, VecOp::SignW},    {ZYDIS_MNEMONIC_PSIGND, VecOp::SignD},
      {ZYDIS_MNEMONIC_PMULHRSW, VecOp::MulHRSW}, {ZYDIS_MNEMONIC_PMADDUBSW, VecOp::MAddUBSW},
      {ZYDIS_MNEMONIC_PSLLW, VecOp::SllW},      {ZYDIS_MNEMONIC_PSLLD, VecOp::SllD},
      {ZYDIS_MNEMONIC_PSLLQ, VecOp::SllQ},      {ZYDIS_MNEMONIC_PSRLW, VecOp::SrlW},
      {ZYDIS_MNEMONIC_PSRLD, VecOp::SrlD},      {ZYDIS_MNEMONIC_PSRLQ, VecOp::SrlQ},
      {ZYDIS_MNEMONIC_PSRAW, VecOp::SraW},      {ZYDIS_MNEMONIC_PSRAD, VecOp::SraD},
  };
  const Value zero = c64(0);
  for (const auto& [mn, op] : kLaneOps) {
    if (mn != m) continue;
    if (!is_mmx(0)) return false;
    Value src = ops_[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE ? c64(ops_[1].imm.value.u & 0xff) : mmx_source(1);
    Value r = vec(op, vec_from(get_mmx(mmx_index(0)), zero), vec_from(src, zero));
    set_mmx(mmx_index(0), vec_lo(r));
    return true;
  }
  switch (m) {
    case ZYDIS_MNEMONIC_PUNPCKHBW: case ZYDIS_MNEMONIC_PUNPCKHWD: case ZYDIS_MNEMONIC_PUNPCKHDQ: {
      // The high halves of the 64-bit operands, interleaved like a low unpack.
      VecOp op = m == ZYDIS_MNEMONIC_PUNPCKHBW ? VecOp::UnpackLoB : m == ZYDIS_MNEMONIC_PUNPCKHWD ? VecOp::UnpackLoW : VecOp::UnpackLoD;
      Value src = mmx_source(1), d = get_mmx(mmx_index(0));
      Value r = vec(op, vec_from(b_.binary(Op::Shr, d, c64(32)), zero), vec_from(b_.binary(Op::Shr, src, c64(32)), zero));
      set_mmx(mmx_index(0), vec_lo(r));
      return true;
    }
    case ZYDIS_MNEMONIC_PACKSSWB: case ZYDIS_MNEMONIC_PACKSSDW: case ZYDIS_MNEMONIC_PACKUSWB:
    case ZYDIS_MNEMONIC_PHADDW: case ZYDIS_MNEMONIC_PHADDD: case ZYDIS_MNEMONIC_PHSUBW: case ZYDIS_MNEMONIC_PHSUBD: {
      VecOp op = m == ZYDIS_MNEMONIC_PACKSSWB ? VecOp::PackSsWB : m == ZYDIS_MNEMONIC_PACKSSDW ? VecOp::PackSsDW
               : m == ZYDIS_MNEMONIC_PACKUSWB ? VecOp::PackUsWB : m == ZYDIS_MNEMONIC_PHADDW ? VecOp::HAddW
               : m == ZYDIS_MNEMONIC_PHADDD ? VecOp::HAddD : m == ZYDIS_MNEMONIC_PHSUBW ? VecOp::HSubW : VecOp::HSubD;
      Value src = mmx_source(1);
      Value both = vec_from(get_mmx(mmx_index(0)), src);  // the low result half comes from the first operand
      set_mmx(mmx_index(0), vec_lo(vec(op, both, both)));
      return true;
    }
    case ZYDIS_MNEMONIC_PSHUFB: {
      Value idx = b_.and_(mmx_source(1), c64(0x8787878787878787));  // indices modulo 8
      set_mmx(mmx_index(0), vec_lo(vec(VecOp::ShufB, vec_from(get_mmx(mmx_index(0)), zero), vec_from(idx, zero))));
      return true;
    }
    case ZYDIS_MNEMONIC_PALIGNR: {
      Value src = mmx_source(1), d = get_mmx(mmx_index(0));
      uint32_t n = static_cast<uint32_t>(ops_[2].imm.value.u & 0xff);
      set_mmx(mmx_index(0), vec_lo(vec(VecOp::AlignR, vec_from(zero, zero), vec_from(src, d), n)));
      return true;
    }
    case ZYDIS_MNEMONIC_PABSB: case ZYDIS_MNEMONIC_PABSW: case ZYDIS_MNEMONIC_PABSD: {
      VecOp op = m == ZYDIS_MNEMONIC_PABSB ? VecOp::AbsB : m == ZYDIS_MNEMONIC_PABSW ? VecOp::AbsW : VecOp::AbsD;
      Value src = vec_from(mmx_source(1), zero);
      set_mmx(mmx_index(0), vec_lo(vec(op, src, src)));
      return true;
    }
    case ZYDIS_MNEMONIC_PSHUFW: {
      Value src = vec_from(mmx_source(1), zero);
      set_mmx(mmx_index(0), vec_lo(vec(VecOp::ShufLW, src, src, static_cast<uint32_t>(ops_[2].imm.value.u & 0xff))));
      return true;
    }
    case ZYDIS_MNEMONIC_PMOVMSKB: {
      Value src = vec_from(get_mmx(mmx_index(1)), zero);
      Loc d = loc(0);
      write_gpr(d.reg, b_.zext(vec_lo(vec(VecOp::MovMskB, src, src)), d.type));
      return true;
    }
    case ZYDIS_MNEMONIC_PEXTRW: {
      unsigned lane = static_cast<unsigned>(ops_[2].imm.value.u & 3);
      Loc d = loc(0);
      write_gpr(d.reg, b_.zext(b_.emit(Op::Extract, Type::I16, {get_mmx(mmx_index(1))}, lane * 16), d.type));
      return true;
    }
    case ZYDIS_MNEMONIC_PINSRW: {
      unsigned lane = static_cast<unsigned>(ops_[2].imm.value.u & 3);
      Value elem = ops_[1].type == ZYDIS_OPERAND_TYPE_MEMORY ? b_.load(Type::I16, mem_address(ops_[1]))
                                                             : b_.zext(read_gpr(gpr(ops_[1].reg.value)), Type::I16);
      set_mmx(mmx_index(0), b_.emit(Op::Deposit, Type::I64, {get_mmx(mmx_index(0)), elem}, (lane * 16) | (16 << 8)));
      return true;
    }
    case ZYDIS_MNEMONIC_MOVD: case ZYDIS_MNEMONIC_MOVQ: case ZYDIS_MNEMONIC_MOVNTQ: {
      if (is_mmx(0)) {
        set_mmx(mmx_index(0), mmx_source(1));  // MOVD zero-extends
      } else {
        Value v = get_mmx(mmx_index(1));
        Type t = ir::int_type(ops_[0].size);
        put(loc(0), b_.zext(v, t));
      }
      return true;
    }
    case ZYDIS_MNEMONIC_MOVQ2DQ:
      set_xmm(xmm_index(0), vec_from(get_mmx(mmx_index(1)), zero));
      return true;
    case ZYDIS_MNEMONIC_CVTPI2PS: {  // two int32 → low two floats; the high half of the destination is kept
      Value d = get_xmm(xmm_index(0));
      Value conv = fp(ir::FpOp::CvtDQ2PS, d, vec_from(mmx_source(1), zero));
      set_xmm(xmm_index(0), vec_from(vec_lo(conv), vec_hi(d)));
      return true;
    }
    case ZYDIS_MNEMONIC_CVTPI2PD: {
      Value d = get_xmm(xmm_index(0));
      set_xmm(xmm_index(0), fp(ir::FpOp::CvtDQ2PD, d, vec_from(mmx_source(1), zero)));
      return true;
    }
    case ZYDIS_MNEMONIC_CVTPS2PI: case ZYDIS_MNEMONIC_CVTTPS2PI: {
      // The two low floats (an m64 source is not aligned); zero upper lanes convert without flags.
      Value src = is_xmm(1) ? vec_lo(get_xmm(xmm_index(1))) : b_.load(Type::I64, mem_address(ops_[1]));
      ir::FpOp op = m == ZYDIS_MNEMONIC_CVTPS2PI ? ir::FpOp::CvtPS2DQ : ir::FpOp::CvtTPS2DQ;
      Value v = vec_from(src, zero);
      set_mmx(mmx_index(0), vec_lo(fp(op, v, v)));
      return true;
    }
    case ZYDIS_MNEMONIC_CVTPD2PI: case ZYDIS_MNEMONIC_CVTTPD2PI: {
      Value src = vec_source(1, true);
      ir::FpOp op = m == ZYDIS_MNEMONIC_CVTPD2PI ? ir::FpOp::CvtPD2DQ : ir::FpOp::CvtTPD2DQ;
      set_mmx(mmx_index(0), vec_lo(fp(op, src, src)));
      return true;
    }
    case ZYDIS_MNEMONIC_MOVDQ2Q:
      set_mmx(mmx_index(0), vec_lo(get_xmm(xmm_index(1))));
      return true;
    default: return false;
  }
}

// x87 (escape bytes D8..DF): one helper call that runs the instruction on the
// host's x87 unit (x87.cpp); the helper performs the memory accesses itself.
void Translator::x87() {
  const unsigned modrm = (insn_.raw.modrm.mod << 6) | (insn_.raw.modrm.reg << 3) | insn_.raw.modrm.rm;
  const unsigned fop = ((insn_.opcode & 7u) << 8) | modrm;
  if (!x87_encoding_supported(fop)) return raise(Vector::UD);
  if (insn_.raw.modrm.mod == 3) {
    helper(HelperId::X87, {c64(fop)});
    return;
  }
  int mem = -1;
  for (unsigned i = 0; i < insn_.operand_count; ++i)
    if (ops_[i].type == ZYDIS_OPERAND_TYPE_MEMORY) mem = static_cast<int>(i);
  if (mem < 0) return raise(Vector::UD);
  const bool has66 = insn_.attributes & ZYDIS_ATTRIB_HAS_OPERANDSIZE;
  const bool rex_w = insn_.attributes & ZYDIS_ATTRIB_HAS_REX && insn_.raw.rex.W;
  const bool operand16 = mode_.code == CodeSize::Bits16 ? !has66 : has66 && !rex_w;
  const ZydisDecodedOperand& op = ops_[mem];
  const uint64_t seg = op.mem.segment >= ZYDIS_REGISTER_ES && op.mem.segment <= ZYDIS_REGISTER_GS
                           ? static_cast<uint64_t>(op.mem.segment - ZYDIS_REGISTER_ES) : static_cast<uint64_t>(DS);
  const uint64_t insn = fop | (operand16 ? uint64_t{kX87Operand16} : uint64_t{0}) | (seg << kX87SegmentShift);
  Value ea = effective_address(op);
  helper(HelperId::X87, {c64(insn), operand_linear(op, ea), ea});
}

// ---- System mode (SYS-B): privileged instructions, see privileged.h ----

// x87 and FXSAVE/FXRSTOR: #NM with CR0.EM or TS; WAIT: #NM with MP and TS; MMX: #UD with EM,
// else #NM with TS; SSE: #UD with EM or without CR4.OSFXSR, else #NM with TS.
bool Translator::fpu_unavailable(Vector& vector) const {
  const uint8_t f = mode_.fpu;
  const ZydisMnemonic m = insn_.mnemonic;
  const bool x87 = insn_.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT && insn_.opcode >= 0xd8 && insn_.opcode <= 0xdf;
  if (x87 || m == ZYDIS_MNEMONIC_FXSAVE || m == ZYDIS_MNEMONIC_FXSAVE64 || m == ZYDIS_MNEMONIC_FXRSTOR ||
      m == ZYDIS_MNEMONIC_FXRSTOR64) {
    vector = Vector::NM;
    return f & (fpu_mode::EM | fpu_mode::TS);
  }
  if (m == ZYDIS_MNEMONIC_FWAIT) {
    vector = Vector::NM;
    return (f & fpu_mode::MP) && (f & fpu_mode::TS);
  }
  bool sse = m == ZYDIS_MNEMONIC_LDMXCSR || m == ZYDIS_MNEMONIC_STMXCSR;
  bool mmx = m == ZYDIS_MNEMONIC_EMMS;
  for (unsigned i = 0; i < insn_.operand_count; ++i) {
    sse = sse || is_xmm(i);
    mmx = mmx || is_mmx(i);
  }
  if (!sse && !mmx) return false;
  if ((f & fpu_mode::EM) || (sse && !(f & fpu_mode::OSFXSR))) {
    vector = Vector::UD;
    return true;
  }
  vector = Vector::NM;
  return f & fpu_mode::TS;
}

// MOV to/from CR0/2/3/4/8 and DR0-7 (the GPR operand is 32 or 64 bits by mode).
void Translator::move_system_register() {
  if (!mode_.system) return raise(Vector::UD);
  const bool to_system = is_system_register(0);
  const ZydisRegister r = ops_[to_system ? 0 : 1].reg.value;
  const bool control = ZydisRegisterGetClass(r) == ZYDIS_REGCLASS_CONTROL;
  const unsigned n = static_cast<unsigned>(r - (control ? ZYDIS_REGISTER_CR0 : ZYDIS_REGISTER_DR0));
  if (control ? (n != 0 && n != 2 && n != 3 && n != 4 && n != 8) : n > 7) return raise(Vector::UD);
  const GprRef g = gpr(ops_[to_system ? 1 : 0].reg.value);
  if (to_system) {
    system(control ? SystemOp::MovToCr : SystemOp::MovToDr, c64(n), b_.zext(read_gpr(g), Type::I64));
    return end_exit(next_pc_);  // paging, long mode or the TB key's FPU bits may have changed
  }
  write_gpr(g, b_.zext(system(control ? SystemOp::MovFromCr : SystemOp::MovFromDr, c64(n)), g.type));
}

// Returns false for what is not a system-mode privileged instruction (the caller raises #UD);
// in user mode all of them are #UD.
bool Translator::system_insn(ZydisMnemonic m) {
  if (!mode_.system) return false;
  auto store_selector_like = [&](SystemOp op) {  // SMSW/SLDT/STR: m16, or a register zero-extended
    Loc d = loc(0);
    put(d, b_.zext(system(op), d.type));
  };
  auto change_flow = [&](Value target) { end_indirect(target); };
  switch (m) {
    case ZYDIS_MNEMONIC_CLTS: system(SystemOp::Clts); end_exit(next_pc_); return true;
    case ZYDIS_MNEMONIC_LMSW:
      system(SystemOp::Lmsw, b_.zext(operand(0, Type::I16), Type::I64));
      end_exit(next_pc_);
      return true;
    case ZYDIS_MNEMONIC_SMSW: store_selector_like(SystemOp::Smsw); return true;
    case ZYDIS_MNEMONIC_LGDT: case ZYDIS_MNEMONIC_LIDT:
      if (ops_[0].type != ZYDIS_OPERAND_TYPE_MEMORY) return false;
      system(SystemOp::LoadTable, mem_address(ops_[0]), c64(m == ZYDIS_MNEMONIC_LIDT), c64(insn_.operand_width));
      return true;
    case ZYDIS_MNEMONIC_SGDT: case ZYDIS_MNEMONIC_SIDT:
      if (ops_[0].type != ZYDIS_OPERAND_TYPE_MEMORY) return false;
      system(SystemOp::StoreTable, mem_address(ops_[0]), c64(m == ZYDIS_MNEMONIC_SIDT));
      return true;
    case ZYDIS_MNEMONIC_LLDT: case ZYDIS_MNEMONIC_LTR:
      system(m == ZYDIS_MNEMONIC_LLDT ? SystemOp::Lldt : SystemOp::Ltr, b_.zext(operand(0, Type::I16), Type::I64));
      return true;
    case ZYDIS_MNEMONIC_SLDT: store_selector_like(SystemOp::Sldt); return true;
    case ZYDIS_MNEMONIC_STR: store_selector_like(SystemOp::Str); return true;
    case ZYDIS_MNEMONIC_RDMSR: system(SystemOp::Rdmsr); return true;
    case ZYDIS_MNEMONIC_WRMSR: system(SystemOp::Wrmsr); end_exit(next_pc_); return true;  // EFER, bases
    case ZYDIS_MNEMONIC_RDTSCP: system(SystemOp::Rdtscp); return true;
    case ZYDIS_MNEMONIC_RDPID: {
      const GprRef g = gpr(ops_[0].reg.value);
      write_gpr(g, b_.zext(system(SystemOp::Rdpid), g.type));
      return true;
    }
    case ZYDIS_MNEMONIC_INVLPG:
      system(SystemOp::Invlpg, mem_address(ops_[0]));
      end_exit(next_pc_);
      return true;
    case ZYDIS_MNEMONIC_WBINVD: case ZYDIS_MNEMONIC_INVD: system(SystemOp::RequireCpl0); return true;
    case ZYDIS_MNEMONIC_SYSCALL: change_flow(system(SystemOp::Syscall, c64(next_pc_))); return true;
    case ZYDIS_MNEMONIC_SYSRET:
      change_flow(system(SystemOp::Sysret, c64(insn_.operand_width == 64)));
      return true;
    case ZYDIS_MNEMONIC_SYSENTER: change_flow(system(SystemOp::Sysenter)); return true;
    case ZYDIS_MNEMONIC_SYSEXIT:
      change_flow(system(SystemOp::Sysexit, c64(insn_.operand_width == 64)));
      return true;
    case ZYDIS_MNEMONIC_SWAPGS: system(SystemOp::Swapgs); return true;
    case ZYDIS_MNEMONIC_CLI: system(SystemOp::Cli); return true;
    case ZYDIS_MNEMONIC_STI: system(SystemOp::Sti); end_exit(next_pc_); return true;  // interrupts at the boundary
    case ZYDIS_MNEMONIC_RDPMC: raise(Vector::GP); return true;  // no performance counters: every index is invalid
    case ZYDIS_MNEMONIC_STAC: system(SystemOp::Stac); return true;
    case ZYDIS_MNEMONIC_CLAC: system(SystemOp::Clac); return true;
    default: return false;
  }
}

void Translator::segment_insn(ZydisMnemonic m) {
  switch (m) {
    case ZYDIS_MNEMONIC_MOV: {
      if (is_segment(1)) {  // MOV r/m, Sreg
        Value selector = helper(HelperId::ReadSelector, {c64(segment_index(1))});
        Loc d = loc(0);
        return put(d, b_.zext(selector, d.type));
      }
      if (ops_[0].reg.value == ZYDIS_REGISTER_CS) return raise(Vector::UD);
      Value selector = operand(1, Type::I16);
      helper(HelperId::LoadSegment, {c64(segment_index(0)), b_.zext(selector, Type::I64)});
      return end_exit(next_pc_);  // bases (flat) and the MOV SS interrupt shadow take effect at a TB boundary
    }
    case ZYDIS_MNEMONIC_PUSH: {
      // A 32/64-bit push of a segment register writes only the 16-bit selector (recent Intel parts).
      Value selector = helper(HelperId::ReadSelector, {c64(segment_index(0))});
      Value rsp = full_reg(RSP);
      Value new_rsp = stack_pointer_plus(rsp, -static_cast<int64_t>(insn_.operand_width / 8));
      b_.store(stack_address(new_rsp), b_.zext(selector, Type::I16));
      write_rsp(new_rsp);
      return;
    }
    case ZYDIS_MNEMONIC_POP: {
      auto [v, new_rsp] = pop_value(op_type());
      helper(HelperId::LoadSegment, {c64(segment_index(0)), b_.zext(b_.zext(v, Type::I16), Type::I64)});
      write_rsp(new_rsp);
      return end_exit(next_pc_);
    }
    case ZYDIS_MNEMONIC_LDS: case ZYDIS_MNEMONIC_LES: case ZYDIS_MNEMONIC_LFS: case ZYDIS_MNEMONIC_LGS:
    case ZYDIS_MNEMONIC_LSS: {
      if (ops_[1].type != ZYDIS_OPERAND_TYPE_MEMORY) return raise(Vector::UD);
      static constexpr Seg kSegs[] = {DS, ES, FS, GS, SS};
      const Seg seg = kSegs[m == ZYDIS_MNEMONIC_LDS ? 0 : m == ZYDIS_MNEMONIC_LES ? 1 : m == ZYDIS_MNEMONIC_LFS ? 2
                              : m == ZYDIS_MNEMONIC_LGS ? 3 : 4];
      const Type t = op_type();
      Value addr = mem_address(ops_[1]);
      Value offset = b_.load(t, addr);
      Value selector = b_.load(Type::I16, b_.add(addr, c64(ir::type_bits(t) / 8)));
      helper(HelperId::LoadSegment, {c64(seg), b_.zext(selector, Type::I64), c64(1)});
      write_gpr(gpr(ops_[0].reg.value), offset);
      return end_exit(next_pc_);
    }
    case ZYDIS_MNEMONIC_LAR: case ZYDIS_MNEMONIC_LSL: {
      Value selector = operand(1, Type::I16);
      Value r = helper(HelperId::CheckSelector, {b_.zext(selector, Type::I64), c64(m == ZYDIS_MNEMONIC_LAR ? 0 : 1)});
      GprRef d = gpr(ops_[0].reg.value);
      // The destination is written (32-bit: zero-extended) only when ZF reports success.
      b_.set_reg(d.index, b_.select(cc_cond(4), merged_gpr(d, b_.zext(r, d.type)), full_reg(d.index)));
      return;
    }
    case ZYDIS_MNEMONIC_VERR: case ZYDIS_MNEMONIC_VERW: {
      Value selector = operand(0, Type::I16);
      helper(HelperId::CheckSelector, {b_.zext(selector, Type::I64), c64(m == ZYDIS_MNEMONIC_VERR ? 2 : 3)});
      return;
    }
    case ZYDIS_MNEMONIC_ARPL: {
      Loc d = loc(0);
      Value dst = get(d);
      if (d.is_mem) b_.store(d.addr, dst);  // the destination must be writable before flags change
      Value r = helper(HelperId::CheckSelector, {b_.zext(dst, Type::I64), c64(4), b_.zext(operand(1, Type::I16), Type::I64)});
      return put(d, b_.zext(r, Type::I16));
    }
    default: return raise(Vector::UD);
  }
}

void Translator::far_branch(ZydisMnemonic m) {
  unsigned bits = insn_.operand_width;
  if (m == ZYDIS_MNEMONIC_IRET || m == ZYDIS_MNEMONIC_IRETD || m == ZYDIS_MNEMONIC_IRETQ)
    return end_indirect(helper(HelperId::Iret, {c64(bits), c64(next_pc_)}));
  if (m == ZYDIS_MNEMONIC_RET) {
    const uint64_t pop = insn_.operand_count_visible > 0 && ops_[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE
                             ? ops_[0].imm.value.u & 0xffff : 0;
    return end_indirect(helper(HelperId::FarReturn, {c64(bits), c64(pop)}));
  }
  Value selector, offset;
  if (ops_[0].type == ZYDIS_OPERAND_TYPE_POINTER) {
    selector = c64(ops_[0].ptr.segment);
    offset = c64(ops_[0].ptr.offset);
  } else {
    if (ops_[0].type != ZYDIS_OPERAND_TYPE_MEMORY) return raise(Vector::UD);
    // m16:16, m16:32 or m16:64: the operand size is the offset's plus the selector's.
    const unsigned offset_bits = ops_[0].size - 16;
    Value addr = mem_address(ops_[0]);
    offset = b_.zext(b_.load(ir::int_type(offset_bits), addr), Type::I64);
    selector = b_.zext(b_.load(Type::I16, b_.add(addr, c64(offset_bits / 8))), Type::I64);
    bits = offset_bits;
  }
  if (m == ZYDIS_MNEMONIC_JMP)
    return end_indirect(helper(HelperId::FarJump, {selector, offset, c64(bits), c64(next_pc_)}));
  return end_indirect(helper(HelperId::FarCall, {selector, offset, c64(bits), c64(next_pc_)}));
}

void Translator::software_interrupt(uint8_t vector, uint64_t kind) {
  end_indirect(helper(HelperId::SoftwareInterrupt, {c64(vector), c64(insn_.length), c64(kind)}));
}

void Translator::translate_insn() {
  const ZydisMnemonic m = insn_.mnemonic;
  switch (m) {
    case ZYDIS_MNEMONIC_ADD: case ZYDIS_MNEMONIC_OR: case ZYDIS_MNEMONIC_ADC: case ZYDIS_MNEMONIC_SBB:
    case ZYDIS_MNEMONIC_AND: case ZYDIS_MNEMONIC_SUB: case ZYDIS_MNEMONIC_XOR: case ZYDIS_MNEMONIC_CMP:
    case ZYDIS_MNEMONIC_TEST:
      return alu(m);
    case ZYDIS_MNEMONIC_INC: return inc_dec(true);
    case ZYDIS_MNEMONIC_DEC: return inc_dec(false);
    case ZYDIS_MNEMONIC_NEG: return neg_not(true);
    case ZYDIS_MNEMONIC_NOT: return neg_not(false);
    case ZYDIS_MNEMONIC_SHL: case ZYDIS_MNEMONIC_SHR: case ZYDIS_MNEMONIC_SAR:
      return shift(m);
    case ZYDIS_MNEMONIC_ROL: return rotate(true);
    case ZYDIS_MNEMONIC_ROR: return rotate(false);
    case ZYDIS_MNEMONIC_RCL: return rotate_carry(true);
    case ZYDIS_MNEMONIC_RCR: return rotate_carry(false);
    case ZYDIS_MNEMONIC_SHLD: return shift_double(true);
    case ZYDIS_MNEMONIC_SHRD: return shift_double(false);
    case ZYDIS_MNEMONIC_MUL: case ZYDIS_MNEMONIC_DIV: case ZYDIS_MNEMONIC_IDIV: return mul_div(m);
    case ZYDIS_MNEMONIC_IMUL:
      return insn_.operand_count_visible == 1 ? mul_div(m) : imul_multi();
    case ZYDIS_MNEMONIC_MOV: {
      if (is_system_register(0) || is_system_register(1)) return move_system_register();
      if (is_reg(1) && ZydisRegisterGetClass(ops_[1].reg.value) == ZYDIS_REGCLASS_SEGMENT) {
        // MOV r/m, Sreg: 16-bit selector; a register destination of 32/64 bits is zero-extended.
        if (mode_.system) return segment_insn(m);
        return raise(Vector::UD);  // user mode does not model selectors
      }
      if (mode_.system && is_segment(0)) return segment_insn(m);
      if (!is_gpr(0) && ops_[0].type != ZYDIS_OPERAND_TYPE_MEMORY) return raise(Vector::UD);
      Loc d = loc(0);
      Value v = operand(1, d.type);
      return put(d, v);
    }
    case ZYDIS_MNEMONIC_MOVZX: {
      Loc d = loc(0);
      return put(d, b_.zext(operand(1, ir::int_type(ops_[1].size)), d.type));
    }
    case ZYDIS_MNEMONIC_MOVSX: case ZYDIS_MNEMONIC_MOVSXD: {
      Loc d = loc(0);
      return put(d, b_.sext(operand(1, ir::int_type(ops_[1].size)), d.type));
    }
    case ZYDIS_MNEMONIC_LEA: {
      Loc d = loc(0);
      return write_gpr(d.reg, b_.zext(effective_address(ops_[1]), d.type));
    }
    case ZYDIS_MNEMONIC_XCHG: return xchg();
    case ZYDIS_MNEMONIC_XADD: return xadd();
    case ZYDIS_MNEMONIC_CMPXCHG: return cmpxchg();
    case ZYDIS_MNEMONIC_CMPXCHG8B: return cmpxchg_wide(false);
    case ZYDIS_MNEMONIC_CMPXCHG16B: return cmpxchg_wide(true);
    case ZYDIS_MNEMONIC_BSWAP: {
      Loc d = loc(0);
      // BSWAP of a 16-bit register is undefined; we produce 0 like current Intel parts.
      if (d.type == Type::I16) return write_gpr(d.reg, c(Type::I16, 0));
      return write_gpr(d.reg, b_.unary(Op::Bswap, get(d)));
    }
    case ZYDIS_MNEMONIC_PUSH: case ZYDIS_MNEMONIC_POP: case ZYDIS_MNEMONIC_PUSHF: case ZYDIS_MNEMONIC_PUSHFD:
    case ZYDIS_MNEMONIC_PUSHFQ: case ZYDIS_MNEMONIC_POPF: case ZYDIS_MNEMONIC_POPFD: case ZYDIS_MNEMONIC_POPFQ:
    case ZYDIS_MNEMONIC_PUSHA: case ZYDIS_MNEMONIC_PUSHAD: case ZYDIS_MNEMONIC_POPA: case ZYDIS_MNEMONIC_POPAD:
      if ((m == ZYDIS_MNEMONIC_PUSH || m == ZYDIS_MNEMONIC_POP) && is_reg(0) &&
          ZydisRegisterGetClass(ops_[0].reg.value) == ZYDIS_REGCLASS_SEGMENT)
        return mode_.system ? segment_insn(m) : raise(Vector::UD);  // user mode does not model selectors
      return push_pop(m);
    case ZYDIS_MNEMONIC_CLC: case ZYDIS_MNEMONIC_STC: case ZYDIS_MNEMONIC_CMC: case ZYDIS_MNEMONIC_CLD:
    case ZYDIS_MNEMONIC_STD: case ZYDIS_MNEMONIC_LAHF: case ZYDIS_MNEMONIC_SAHF:
      return flags_insn(m);
    case ZYDIS_MNEMONIC_CBW: case ZYDIS_MNEMONIC_CWDE: case ZYDIS_MNEMONIC_CDQE: case ZYDIS_MNEMONIC_CWD:
    case ZYDIS_MNEMONIC_CDQ: case ZYDIS_MNEMONIC_CQO:
      return convert(m);
    case ZYDIS_MNEMONIC_JMP: case ZYDIS_MNEMONIC_CALL: case ZYDIS_MNEMONIC_RET: case ZYDIS_MNEMONIC_JCXZ:
    case ZYDIS_MNEMONIC_JECXZ: case ZYDIS_MNEMONIC_JRCXZ: case ZYDIS_MNEMONIC_LOOP: case ZYDIS_MNEMONIC_LOOPE:
    case ZYDIS_MNEMONIC_LOOPNE: case ZYDIS_MNEMONIC_JO: case ZYDIS_MNEMONIC_JNO: case ZYDIS_MNEMONIC_JB:
    case ZYDIS_MNEMONIC_JNB: case ZYDIS_MNEMONIC_JZ: case ZYDIS_MNEMONIC_JNZ: case ZYDIS_MNEMONIC_JBE:
    case ZYDIS_MNEMONIC_JNBE: case ZYDIS_MNEMONIC_JS: case ZYDIS_MNEMONIC_JNS: case ZYDIS_MNEMONIC_JP:
    case ZYDIS_MNEMONIC_JNP: case ZYDIS_MNEMONIC_JL: case ZYDIS_MNEMONIC_JNL: case ZYDIS_MNEMONIC_JLE:
    case ZYDIS_MNEMONIC_JNLE:
      return branch(m);
    case ZYDIS_MNEMONIC_SETO: case ZYDIS_MNEMONIC_SETNO: case ZYDIS_MNEMONIC_SETB: case ZYDIS_MNEMONIC_SETNB:
    case ZYDIS_MNEMONIC_SETZ: case ZYDIS_MNEMONIC_SETNZ: case ZYDIS_MNEMONIC_SETBE: case ZYDIS_MNEMONIC_SETNBE:
    case ZYDIS_MNEMONIC_SETS: case ZYDIS_MNEMONIC_SETNS: case ZYDIS_MNEMONIC_SETP: case ZYDIS_MNEMONIC_SETNP:
    case ZYDIS_MNEMONIC_SETL: case ZYDIS_MNEMONIC_SETNL: case ZYDIS_MNEMONIC_SETLE: case ZYDIS_MNEMONIC_SETNLE: {
      Loc d = loc(0);
      return put(d, bool_to(cc_cond(insn_.opcode & 15), Type::I8));
    }
    case ZYDIS_MNEMONIC_CMOVO: case ZYDIS_MNEMONIC_CMOVNO: case ZYDIS_MNEMONIC_CMOVB: case ZYDIS_MNEMONIC_CMOVNB:
    case ZYDIS_MNEMONIC_CMOVZ: case ZYDIS_MNEMONIC_CMOVNZ: case ZYDIS_MNEMONIC_CMOVBE: case ZYDIS_MNEMONIC_CMOVNBE:
    case ZYDIS_MNEMONIC_CMOVS: case ZYDIS_MNEMONIC_CMOVNS: case ZYDIS_MNEMONIC_CMOVP: case ZYDIS_MNEMONIC_CMOVNP:
    case ZYDIS_MNEMONIC_CMOVL: case ZYDIS_MNEMONIC_CMOVNL: case ZYDIS_MNEMONIC_CMOVLE: case ZYDIS_MNEMONIC_CMOVNLE: {
      Loc d = loc(0);
      Value s = operand(1, d.type);  // the source is read (and may fault) whatever the condition
      // A 32-bit destination is zero-extended even when the condition is false.
      return write_gpr(d.reg, b_.select(cc_cond(insn_.opcode & 15), s, read_gpr(d.reg)));
    }
    case ZYDIS_MNEMONIC_BT: case ZYDIS_MNEMONIC_BTS: case ZYDIS_MNEMONIC_BTR: case ZYDIS_MNEMONIC_BTC:
      return bit_test(m);
    case ZYDIS_MNEMONIC_BSF: case ZYDIS_MNEMONIC_BSR: case ZYDIS_MNEMONIC_TZCNT: case ZYDIS_MNEMONIC_LZCNT:
    case ZYDIS_MNEMONIC_POPCNT:
      return bit_scan(m);
    case ZYDIS_MNEMONIC_ANDN: case ZYDIS_MNEMONIC_MOVBE: case ZYDIS_MNEMONIC_SHLX: case ZYDIS_MNEMONIC_SHRX:
    case ZYDIS_MNEMONIC_SARX: case ZYDIS_MNEMONIC_RORX: case ZYDIS_MNEMONIC_BLSI: case ZYDIS_MNEMONIC_BLSMSK:
    case ZYDIS_MNEMONIC_BLSR: case ZYDIS_MNEMONIC_ADCX: case ZYDIS_MNEMONIC_ADOX: case ZYDIS_MNEMONIC_MULX:
    case ZYDIS_MNEMONIC_BZHI: case ZYDIS_MNEMONIC_BEXTR: case ZYDIS_MNEMONIC_PDEP: case ZYDIS_MNEMONIC_PEXT:
    case ZYDIS_MNEMONIC_CRC32:
      return bmi(m);
    case ZYDIS_MNEMONIC_MOVSB: case ZYDIS_MNEMONIC_MOVSW: case ZYDIS_MNEMONIC_MOVSQ: case ZYDIS_MNEMONIC_STOSB:
    case ZYDIS_MNEMONIC_STOSW: case ZYDIS_MNEMONIC_STOSD: case ZYDIS_MNEMONIC_STOSQ: case ZYDIS_MNEMONIC_LODSB:
    case ZYDIS_MNEMONIC_LODSW: case ZYDIS_MNEMONIC_LODSD: case ZYDIS_MNEMONIC_LODSQ: case ZYDIS_MNEMONIC_CMPSB:
    case ZYDIS_MNEMONIC_CMPSW: case ZYDIS_MNEMONIC_CMPSQ: case ZYDIS_MNEMONIC_SCASB:
    case ZYDIS_MNEMONIC_SCASW: case ZYDIS_MNEMONIC_SCASD: case ZYDIS_MNEMONIC_SCASQ:
      return string_op(m);
    case ZYDIS_MNEMONIC_MOVSD: case ZYDIS_MNEMONIC_CMPSD:
      // Also SSE2 mnemonics; the string forms have no explicit operands.
      if (insn_.operand_count_visible == 0) return string_op(m);
      if (sse(m)) return;
      return raise(Vector::UD);
    case ZYDIS_MNEMONIC_XLAT: {
      const Type at = ir::int_type(insn_.address_width);
      Value ea = b_.add(read_gpr(reg_ref(RBX, at)), b_.zext(read_gpr(reg_ref(RAX, Type::I8)), at));
      ZydisRegister seg = ZYDIS_REGISTER_DS;
      for (unsigned i = 0; i < insn_.operand_count; ++i)
        if (ops_[i].type == ZYDIS_OPERAND_TYPE_MEMORY) seg = ops_[i].mem.segment;
      return write_gpr(reg_ref(RAX, Type::I8), b_.load(Type::I8, linear(b_.zext(ea, Type::I64), seg)));
    }
    case ZYDIS_MNEMONIC_ENTER: case ZYDIS_MNEMONIC_LEAVE: return enter_leave(m);
    case ZYDIS_MNEMONIC_DAA: helper(HelperId::Daa, {}); return;
    case ZYDIS_MNEMONIC_DAS: helper(HelperId::Das, {}); return;
    case ZYDIS_MNEMONIC_AAA: helper(HelperId::Aaa, {}); return;
    case ZYDIS_MNEMONIC_AAS: helper(HelperId::Aas, {}); return;
    case ZYDIS_MNEMONIC_AAM: helper(HelperId::Aam, {c64(ops_[0].imm.value.u)}); return;
    case ZYDIS_MNEMONIC_AAD: helper(HelperId::Aad, {c64(ops_[0].imm.value.u)}); return;
    case ZYDIS_MNEMONIC_CPUID: helper(HelperId::Cpuid, {}); return;
    case ZYDIS_MNEMONIC_EMMS: return b_.set_field(ir::StateField::FpuTags, c64(0));
    case ZYDIS_MNEMONIC_FWAIT: helper(HelperId::Fwait, {}); return;
    case ZYDIS_MNEMONIC_FXSAVE: case ZYDIS_MNEMONIC_FXSAVE64: case ZYDIS_MNEMONIC_FXRSTOR:
    case ZYDIS_MNEMONIC_FXRSTOR64: {
      const bool save = m == ZYDIS_MNEMONIC_FXSAVE || m == ZYDIS_MNEMONIC_FXSAVE64;
      const bool wide = m == ZYDIS_MNEMONIC_FXSAVE64 || m == ZYDIS_MNEMONIC_FXRSTOR64;
      helper(save ? HelperId::Fxsave : HelperId::Fxrstor,
             {mem_address(ops_[0]), c64(wide), c64(mode_.code == CodeSize::Bits64)});
      return;
    }
    case ZYDIS_MNEMONIC_MASKMOVDQU: case ZYDIS_MNEMONIC_MASKMOVQ: {
      // Byte-masked store to DS:rDI (hidden memory operand) in a helper: unselected bytes are not written.
      const bool mm = m == ZYDIS_MNEMONIC_MASKMOVQ;
      const unsigned base = mm ? ZYDIS_REGISTER_MM0 : ZYDIS_REGISTER_XMM0;
      int mem = -1;
      for (unsigned i = 0; i < insn_.operand_count; ++i)
        if (ops_[i].type == ZYDIS_OPERAND_TYPE_MEMORY) mem = static_cast<int>(i);
      if (mem < 0 || !is_reg(0) || !is_reg(1)) return raise(Vector::UD);
      const uint64_t regs = (ops_[0].reg.value - base) | ((ops_[1].reg.value - base) << 8) | (mm ? 1u << 16 : 0u);
      if (mm) {  // MASKMOVQ enters MMX use even when its store faults (as observed on hardware)
        b_.set_field(ir::StateField::FpuTop, c64(0));
        b_.set_field(ir::StateField::FpuTags, c64(0xff));
      }
      helper(HelperId::MaskMove, {mem_address(ops_[mem]), c64(regs)});
      return;
    }
    case ZYDIS_MNEMONIC_RDTSC: helper(HelperId::Rdtsc, {}); return;
    case ZYDIS_MNEMONIC_MOVNTI: {
      Loc d = loc(0);
      return put(d, operand(1, d.type));
    }
    case ZYDIS_MNEMONIC_CLFLUSH: case ZYDIS_MNEMONIC_CLFLUSHOPT:
      // No caches to flush, but the address must be valid: a read probe faults like hardware.
      b_.load(Type::I8, mem_address(ops_[0]));
      return;
    case ZYDIS_MNEMONIC_NOP: case ZYDIS_MNEMONIC_PAUSE: case ZYDIS_MNEMONIC_LFENCE: case ZYDIS_MNEMONIC_SFENCE:
    case ZYDIS_MNEMONIC_MFENCE: case ZYDIS_MNEMONIC_PREFETCH: case ZYDIS_MNEMONIC_PREFETCHNTA:
    case ZYDIS_MNEMONIC_PREFETCHT0: case ZYDIS_MNEMONIC_PREFETCHT1: case ZYDIS_MNEMONIC_PREFETCHT2:
    case ZYDIS_MNEMONIC_PREFETCHW: case ZYDIS_MNEMONIC_ENDBR32: case ZYDIS_MNEMONIC_ENDBR64:
      return;
    case ZYDIS_MNEMONIC_INT3:
      if (mode_.system) return software_interrupt(3, static_cast<uint64_t>(EventKind::SoftwareException));
      return raise(Vector::BP, 0, insn_.length);
    case ZYDIS_MNEMONIC_INTO: {
      if (mode_.system)
        return software_interrupt(4, static_cast<uint64_t>(EventKind::SoftwareException) | kSoftwareInterruptInto);
      b_.emit(Op::RaiseIf, Type::Void, {cc_cond(0)}, static_cast<uint64_t>(Vector::OF) | (uint64_t{insn_.length} << 40));
      return;
    }
    case ZYDIS_MNEMONIC_INT:
      if (mode_.system) return software_interrupt(static_cast<uint8_t>(ops_[0].imm.value.u), 
                                                  static_cast<uint64_t>(EventKind::Software));
      // Without an IDT (user mode) a software interrupt is reported as its vector, as a trap.
      return raise(static_cast<Vector>(ops_[0].imm.value.u & 0xff), 0, insn_.length);
    case ZYDIS_MNEMONIC_UD0: case ZYDIS_MNEMONIC_UD1: case ZYDIS_MNEMONIC_UD2: return raise(Vector::UD);
    case ZYDIS_MNEMONIC_IN: case ZYDIS_MNEMONIC_OUT: case ZYDIS_MNEMONIC_INSB: case ZYDIS_MNEMONIC_INSW:
    case ZYDIS_MNEMONIC_INSD: case ZYDIS_MNEMONIC_OUTSB: case ZYDIS_MNEMONIC_OUTSW: case ZYDIS_MNEMONIC_OUTSD:
      return port_io(m);
    case ZYDIS_MNEMONIC_HLT:
      if (mode_.system) system(SystemOp::RequireCpl0);
      helper(HelperId::Halt, {});
      return end_exit(next_pc_);
    case ZYDIS_MNEMONIC_SYSCALL:
      if (system_insn(m)) return;
      helper(HelperId::Syscall, {});
      return end_exit(next_pc_);
    case ZYDIS_MNEMONIC_LDS: case ZYDIS_MNEMONIC_LES: case ZYDIS_MNEMONIC_LFS: case ZYDIS_MNEMONIC_LGS:
    case ZYDIS_MNEMONIC_LSS: case ZYDIS_MNEMONIC_LAR: case ZYDIS_MNEMONIC_LSL: case ZYDIS_MNEMONIC_VERR:
    case ZYDIS_MNEMONIC_VERW: case ZYDIS_MNEMONIC_ARPL:
      if (mode_.system) return segment_insn(m);
      return raise(Vector::UD);
    case ZYDIS_MNEMONIC_IRET: case ZYDIS_MNEMONIC_IRETD: case ZYDIS_MNEMONIC_IRETQ:
      if (mode_.system) return far_branch(m);
      return raise(Vector::UD);
    case ZYDIS_MNEMONIC_INT1:  // ICEBP: #DB as a trap, without the gate DPL check
      if (mode_.system) return software_interrupt(1, static_cast<uint64_t>(EventKind::Exception));
      return raise(Vector::UD);
    default:
      if (insn_.opcode_map == ZYDIS_OPCODE_MAP_DEFAULT && insn_.opcode >= 0xd8 && insn_.opcode <= 0xdf) return x87();
      if (sse(m)) return;
      if (system_insn(m)) return;
      // A valid encoding the translator does not implement yet: #UD in the guest.
      return raise(Vector::UD);
  }
}

}  // namespace

ir::Block translate_block(Memory& memory, uint64_t pc, CpuMode mode, const TranslateOptions& options,
                          ir::Block* unoptimised) {
  ir::Block block;
  Translator(memory, mode, block, options).translate(pc);
  if (unoptimised) *unoptimised = block;
  if (options.verify) {
    std::string problem = ir::verify(block);
    if (!problem.empty())
      throw Error(EINVAL, fmt::format("internal error: invalid IR for guest block at 0x{:x}: {}", pc, problem));
  }
  if (options.optimise) ir::optimise(block);
  return block;
}

std::string disassemble(Memory& memory, uint64_t pc, CpuMode mode, uint32_t count) {
  std::string out;
  for (uint32_t i = 0; i < count; ++i) {
    uint8_t bytes[kMaxInsnLength];
    uint64_t fault = 0;
    size_t got = fetch_code(memory, pc, bytes, kMaxInsnLength, fault);
    ZydisDisassembledInstruction insn;
    if (!ZYAN_SUCCESS(ZydisDisassembleIntel(machine_mode(mode), pc, bytes, got, &insn))) {
      out += fmt::format("0x{:016x}:  (bad)\n", pc);
      break;
    }
    out += fmt::format("0x{:016x}:  {}\n", pc, insn.text);
    pc += insn.info.length;
  }
  return out;
}

}  // namespace kiln::emu
