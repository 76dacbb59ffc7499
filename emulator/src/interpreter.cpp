#include "kiln/emulator/interpreter.h"

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/helpers.h"
#include "kiln/emulator/ir_eval.h"
#include "kiln/emulator/lazy_flags.h"
#include "kiln/emulator/fp_eval.h"
#include "kiln/emulator/vec_eval.h"

namespace kiln::emu {

using ir::Op;
using ir::Type;

ExecBlock compile_for_interpreter(const ir::Block& block) {
  ExecBlock out;
  std::vector<uint32_t> slot(block.insts.size(), 0);
  uint32_t next = 0;
  for (size_t i = 0; i < block.insts.size(); ++i) {
    const ir::Inst& inst = block.insts[i];
    slot[i] = next;
    if (inst.type != Type::Void) next += inst.type == Type::I128 ? 2 : 1;
  }
  out.frame_template.assign(next + 1, 0);
  auto arg = [&](ir::ValueId v) { return v == ir::kNoValue ? next : slot[v]; };  // `next` is a zero slot
  for (size_t i = 0; i < block.insts.size(); ++i) {
    const ir::Inst& inst = block.insts[i];
    if (inst.op == Op::Const) {
      out.frame_template[slot[i]] = inst.imm;
      continue;
    }
    ExecInst e{.op = inst.op,
               .type = inst.type,
               .arg_type = inst.args[0] == ir::kNoValue ? Type::Void : block.insts[inst.args[0]].type,
               .dst = slot[i],
               .a = arg(inst.args[0]),
               .b = arg(inst.args[1]),
               .c = arg(inst.args[2]),
               .d = arg(inst.args[3]),
               .imm = inst.imm,
               .mask = ir::type_mask(inst.type)};
    if (inst.op == Op::Store) {  // the interpreter dispatches stores on the stored value's type
      e.type = block.insts[inst.args[1]].type;
      e.mask = ir::type_mask(e.type);
    }
    out.code.push_back(e);
  }
  return out;
}

namespace {

bool raise_exception(CpuState& cpu, uint64_t imm, uint64_t fault_address) {
  cpu.exception = PendingException{.raised = true,
                                   .vector = static_cast<Vector>(imm & 0xff),
                                   .error_code = static_cast<uint32_t>((imm >> 8) & 0xffffffff),
                                   .fault_address = fault_address};
  cpu.rip += (imm >> 40) & 0xff;  // traps report the next instruction
  return true;
}

bool is_trap(Vector v) { return v == Vector::BP || v == Vector::OF; }

}  // namespace

ExecResult interpret(Cpu& cpu, const ExecBlock& block, std::vector<uint64_t>& frame) {
  CpuState& st = cpu.state;
  frame = block.frame_template;
  uint64_t* s = frame.data();
  uint32_t insns = 0;
  auto fault = [&]() {
    if (!is_trap(st.exception.vector) && insns > 0) --insns;
    return ExecResult{.exception = true, .next_pc = st.rip, .insns = insns};
  };
  for (const ExecInst& e : block.code) {
    switch (e.op) {
      case Op::InsnStart:
        st.rip = e.imm;
        ++insns;
        break;
      case Op::GetReg: s[e.dst] = st.regs[e.imm]; break;
      case Op::SetReg: st.regs[e.imm] = s[e.a]; break;
      case Op::GetField:
        switch (static_cast<ir::StateField>(e.imm)) {
          case ir::StateField::RflagsOther: s[e.dst] = st.rflags_other; break;
          case ir::StateField::Mxcsr: s[e.dst] = st.mxcsr; break;
          case ir::StateField::FpuTop: s[e.dst] = st.fpu.top; break;
          case ir::StateField::FpuTags: s[e.dst] = st.fpu.tags; break;
          case ir::StateField::FpuStatus: s[e.dst] = st.fpu.fsw; break;
          case ir::StateField::FpuControl: s[e.dst] = st.fpu.fcw; break;
          default: s[e.dst] = st.seg_base[e.imm - 1]; break;
        }
        break;
      case Op::SetField:
        switch (static_cast<ir::StateField>(e.imm)) {
          case ir::StateField::RflagsOther: st.rflags_other = s[e.a]; break;
          case ir::StateField::Mxcsr: st.mxcsr = static_cast<uint32_t>(s[e.a]); break;
          case ir::StateField::FpuTop: st.fpu.top = static_cast<uint8_t>(s[e.a] & 7); break;
          case ir::StateField::FpuTags: st.fpu.tags = static_cast<uint8_t>(s[e.a]); break;
          case ir::StateField::FpuStatus: st.fpu.fsw = static_cast<uint16_t>(s[e.a] & ~uint64_t{0x3800}); break;
          case ir::StateField::FpuControl: st.fpu.fcw = static_cast<uint16_t>(s[e.a]); break;
          default: st.seg_base[e.imm - 1] = s[e.a]; break;
        }
        break;
      case Op::GetXmm:
        s[e.dst] = st.xmm[e.imm].lo;
        s[e.dst + 1] = st.xmm[e.imm].hi;
        break;
      case Op::SetXmm:
        st.xmm[e.imm].lo = s[e.a];
        st.xmm[e.imm].hi = s[e.a + 1];
        break;
      case Op::GetMmx: s[e.dst] = st.fpu.regs[e.imm].significand; break;
      case Op::SetMmx:
        st.fpu.regs[e.imm].significand = s[e.a];
        st.fpu.regs[e.imm].sign_exponent = 0xffff;
        break;
      case Op::Add: s[e.dst] = (s[e.a] + s[e.b]) & e.mask; break;
      case Op::Sub: s[e.dst] = (s[e.a] - s[e.b]) & e.mask; break;
      case Op::And: s[e.dst] = s[e.a] & s[e.b]; break;
      case Op::Or: s[e.dst] = s[e.a] | s[e.b]; break;
      case Op::Xor: s[e.dst] = s[e.a] ^ s[e.b]; break;
      case Op::Zext: s[e.dst] = s[e.a] & e.mask; break;
      case Op::Trunc: s[e.dst] = s[e.a] & e.mask; break;
      case Op::Extract: s[e.dst] = (s[e.a] >> e.imm) & e.mask; break;
      case Op::CmpEq: s[e.dst] = s[e.a] == s[e.b]; break;
      case Op::CmpNe: s[e.dst] = s[e.a] != s[e.b]; break;
      case Op::CmpLtU: s[e.dst] = s[e.a] < s[e.b]; break;
      case Op::Select: s[e.dst] = s[e.a] ? s[e.b] : s[e.c]; break;
      case Op::Load: {
        uint64_t addr = s[e.a], v = 0;
        bool ok;
        switch (e.type) {
          case Type::I8: ok = cpu.read<1>(addr, v); break;
          case Type::I16: ok = cpu.read<2>(addr, v); break;
          case Type::I32: ok = cpu.read<4>(addr, v); break;
          case Type::I64: ok = cpu.read<8>(addr, v); break;
          default: {
            uint64_t hi = 0;
            ok = cpu.read<8>(addr, v) && cpu.read<8>(addr + 8, hi);
            s[e.dst + 1] = hi;
          }
        }
        if (!ok) return fault();
        s[e.dst] = v;
        break;
      }
      case Op::Store: {
        uint64_t addr = s[e.a], v = s[e.b];
        bool ok;
        switch (e.type) {
          case Type::I8: ok = cpu.write<1>(addr, v); break;
          case Type::I16: ok = cpu.write<2>(addr, v); break;
          case Type::I32: ok = cpu.write<4>(addr, v); break;
          case Type::I64: ok = cpu.write<8>(addr, v); break;
          default:
            // Both pages must be writable before either half is stored.
            ok = cpu.probe(addr, Access::Write) &&
                 ((addr & ~kPageMask) <= kPageSize - 16 || cpu.probe((addr + 15) & kPageMask, Access::Write)) &&
                 cpu.write<8>(addr, v) && cpu.write<8>(addr + 8, s[e.b + 1]);
        }
        if (!ok) return fault();
        break;
      }
      case Op::Vec:
        ir::eval_vec(static_cast<ir::VecOp>(e.imm & 0xffff), static_cast<uint32_t>(e.imm >> 16), s + e.a, s + e.b,
                     s + e.dst);
        break;
      case Op::VecFp:
        if (!ir::eval_fp(static_cast<ir::FpOp>(e.imm & 0xffff), static_cast<uint32_t>(e.imm >> 16), s + e.a, s + e.b,
                         s + e.dst, st.mxcsr)) {
          // With CR4.OSXMMEXCPT clear an unmasked SIMD FP exception is #UD (system mode).
          const bool xm = !st.mode.system || (st.sys.cr4 & cr4::OSXMMEXCPT);
          st.exception = PendingException{.raised = true, .vector = xm ? Vector::XM : Vector::UD};
          return fault();
        }
        break;
      case Op::VecFrom:
        s[e.dst] = s[e.a];
        s[e.dst + 1] = s[e.b];
        break;
      case Op::VecLow: s[e.dst] = s[e.a]; break;
      case Op::VecHigh: s[e.dst] = s[e.a + 1]; break;
      case Op::CcSet:
        st.cc_op = static_cast<uint32_t>(e.imm);
        st.cc_dst = s[e.a];
        st.cc_src1 = s[e.b];
        st.cc_src2 = s[e.c];
        st.cc_aux = s[e.d];
        break;
      case Op::CcSetIf:
        if (s[e.a]) {
          st.cc_op = static_cast<uint32_t>(e.imm);
          st.cc_dst = s[e.b];
          st.cc_src1 = s[e.c];
          st.cc_src2 = s[e.d];
          st.cc_aux = 0;
        }
        break;
      case Op::CcLoad:
        st.cc_op = ir::cc_op(ir::CcKind::Eflags, Type::I64);
        st.cc_dst = s[e.a] & rflags::kArith;
        break;
      case Op::CcCond: s[e.dst] = evaluate_condition(st, static_cast<unsigned>(e.imm)); break;
      case Op::CcFlags: s[e.dst] = compute_flags(st); break;
      case Op::ExitIf:
        if (s[e.a]) return ExecResult{.next_pc = e.imm, .insns = insns};
        break;
      case Op::Exit: return ExecResult{.next_pc = e.imm, .insns = insns};
      case Op::ExitIndirect: return ExecResult{.next_pc = s[e.a], .insns = insns};
      case Op::Raise:
        raise_exception(st, e.imm, s[e.a]);
        return fault();
      case Op::RaiseIf:
        if (s[e.a]) {
          raise_exception(st, e.imm, 0);
          return fault();
        }
        break;
      case Op::CallHelper: {
        const HelperInfo& h = helper_info(static_cast<HelperId>(e.imm));
        uint64_t r = h.fn(cpu, s[e.a], s[e.b], s[e.c], s[e.d]);
        if (st.exception.raised) return fault();
        if (e.type != Type::Void) s[e.dst] = r;
        break;
      }
      default:
        s[e.dst] = ir::eval_pure(e.op, e.type, e.arg_type, s[e.a], s[e.b], s[e.c], e.imm);
        break;
    }
  }
  return ExecResult{.next_pc = st.rip, .insns = insns};
}

}  // namespace kiln::emu
