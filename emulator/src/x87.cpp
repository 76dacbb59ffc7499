// x87 FPU, FXSAVE/FXRSTOR and the byte-masked stores (MASKMOVDQU/MASKMOVQ).
//
// x87 arithmetic runs on the host's own x87 unit, like SSE floating point runs
// on the host's SSE unit (fp_eval.cpp): the guest FPU state is turned into an
// FSAVE image, the host executes FRSTOR, the guest's own instruction (the same
// escape byte and ModRM, with memory operands redirected to a host buffer) and
// FNSAVE. Rounding, precision control, NaN propagation, denormal and unnormal
// handling, the transcendental results, the condition codes (including the
// ones the SDM leaves undefined) and the masked/unmasked exception behaviour
// are therefore exactly the host CPU's. Unmasked exceptions only set ES: the
// host never traps because FNSAVE does not wait, and the next waiting guest
// instruction raises #MF from the helper, as hardware does.
#include <array>
#include <cstring>
#include <utility>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/helpers.h"
#include "kiln/emulator/ir.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu {

namespace {

// ---------------------------------------------------------------- host stubs

// Runs one x87 instruction on the host: `image` is a 108-byte FSAVE image
// (32-bit protected-mode format) loaded before and stored after; `operand` is
// the memory operand ([rcx]); AH carries the guest's SF ZF AF PF CF in (for
// FCMOVcc) and out (FCOMI). Returns AX right after the instruction (FNSTSW AX)
// in bits 0-15, the flags byte in bits 16-23 and OF in bit 24.
using Stub = uint64_t (*)(uint8_t* image, uint8_t* operand, uint64_t ah_flags);

template <unsigned Esc, unsigned ModRm, bool Prefix66>
uint64_t stub(uint8_t* image, uint8_t* operand, uint64_t ah_flags) {
  uint64_t ax = ah_flags << 8;
  uint32_t ax_after;
  bool overflow;  // OF after the instruction (neither LAHF nor FNSAVE changes it)
  if constexpr (Prefix66) {
    asm volatile(
        "frstor (%[img])\n\t"
        "sahf\n\t"
        ".byte 0x66, %c[esc], %c[modrm]\n\t"
        "mov %%eax, %[after]\n\t"
        "lahf\n\t"
        "fnsave (%[img])"
        : "+a"(ax), [after] "=&r"(ax_after), "=@cco"(overflow)
        : [img] "r"(image), "c"(operand), [esc] "i"(0xd8 + Esc), [modrm] "i"(ModRm)
        : "memory", "cc");
  } else {
    asm volatile(
        "frstor (%[img])\n\t"
        "sahf\n\t"
        ".byte %c[esc], %c[modrm]\n\t"
        "mov %%eax, %[after]\n\t"
        "lahf\n\t"
        "fnsave (%[img])"
        : "+a"(ax), [after] "=&r"(ax_after), "=@cco"(overflow)
        : [img] "r"(image), "c"(operand), [esc] "i"(0xd8 + Esc), [modrm] "i"(ModRm)
        : "memory", "cc");
  }
  return (ax_after & 0xffffu) | (((ax >> 8) & 0xff) << 16) | (uint64_t{overflow} << 24);
}

// Register forms: index = escape * 64 + (ModRM & 63), ModRM = 0xC0 | that.
template <size_t... I>
constexpr std::array<Stub, sizeof...(I)> register_stubs(std::index_sequence<I...>) {
  return {&stub<I / 64, 0xc0 | (I % 64), false>...};
}
// Memory forms: index = escape * 8 + reg; ModRM mod 00, r/m 001 = [rcx].
template <bool P66, size_t... I>
constexpr std::array<Stub, sizeof...(I)> memory_stubs(std::index_sequence<I...>) {
  return {&stub<I / 8, ((I % 8) << 3) | 1, P66>...};
}
constexpr auto kRegisterStubs = register_stubs(std::make_index_sequence<512>());
constexpr auto kMemoryStubs = memory_stubs<false>(std::make_index_sequence<64>());
constexpr auto kMemoryStubs16 = memory_stubs<true>(std::make_index_sequence<64>());

// ---------------------------------------------------------------- encodings

struct MemoryOperand {
  unsigned size = 0;
  bool read = false, write = false;
};

// Size and direction of the memory operand of escape `esc` (0..7) with ModRM.reg `reg`.
MemoryOperand memory_operand(unsigned esc, unsigned reg, bool operand16) {
  const unsigned env = operand16 ? 14 : 28, state = operand16 ? 94 : 108;
  switch (esc) {
    case 0: return {4, true, false};   // arithmetic with m32fp
    case 2: return {4, true, false};   // arithmetic with m32int
    case 4: return {8, true, false};   // arithmetic with m64fp
    case 6: return {2, true, false};   // arithmetic with m16int
    case 1:
      switch (reg) {
        case 0: return {4, true, false};      // FLD m32fp
        case 2: case 3: return {4, false, true};  // FST/FSTP m32fp
        case 4: return {env, true, false};    // FLDENV
        case 5: return {2, true, false};      // FLDCW
        case 6: return {env, false, true};    // FNSTENV
        case 7: return {2, false, true};      // FNSTCW
        default: return {};
      }
    case 3:
      switch (reg) {
        case 0: return {4, true, false};            // FILD m32int
        case 1: case 2: case 3: return {4, false, true};  // FISTTP/FIST/FISTP m32int
        case 5: return {10, true, false};           // FLD m80fp
        case 7: return {10, false, true};           // FSTP m80fp
        default: return {};
      }
    case 5:
      switch (reg) {
        case 0: return {8, true, false};            // FLD m64fp
        case 1: case 2: case 3: return {8, false, true};  // FISTTP m64int, FST/FSTP m64fp
        case 4: return {state, true, false};        // FRSTOR
        case 6: return {state, false, true};        // FNSAVE
        case 7: return {2, false, true};            // FNSTSW m16
        default: return {};
      }
    default:  // 7
      switch (reg) {
        case 0: return {2, true, false};            // FILD m16int
        case 1: case 2: case 3: return {2, false, true};  // FISTTP/FIST/FISTP m16int
        case 4: return {10, true, false};           // FBLD
        case 5: return {8, true, false};            // FILD m64int
        case 6: return {10, false, true};           // FBSTP
        default: return {8, false, true};           // FISTP m64int
      }
  }
}

// Instructions that do not check for a pending unmasked exception first.
bool is_no_wait(unsigned fop) {
  const unsigned esc = fop >> 8, modrm = fop & 0xff, reg = (modrm >> 3) & 7;
  // FNENI FNDISI FNCLEX FNINIT FNSETPM, FNSTSW AX
  if (modrm >= 0xc0) return (fop >= 0x3e0 && fop <= 0x3e4) || fop == 0x7e0;
  return (esc == 1 && reg >= 6) || (esc == 5 && reg >= 6);  // FNSTENV FNSTCW FNSAVE FNSTSW m16
}

// Control instructions leave FOP/FIP/FDP alone (FLDENV/FRSTOR load them, FNINIT/FNSAVE clear them).
enum class PointerUpdate { Set, Keep, FromImage };
PointerUpdate pointer_update(unsigned fop) {
  const unsigned esc = fop >> 8, modrm = fop & 0xff, reg = (modrm >> 3) & 7;
  if (modrm >= 0xc0) {
    if (fop == 0x3e3) return PointerUpdate::FromImage;  // FNINIT
    if ((fop >= 0x3e0 && fop <= 0x3e4) || fop == 0x7e0) return PointerUpdate::Keep;
    return PointerUpdate::Set;
  }
  if (esc == 1 && reg >= 4) return reg == 4 ? PointerUpdate::FromImage : PointerUpdate::Keep;
  if (esc == 5 && reg >= 4) return reg == 7 ? PointerUpdate::Keep : PointerUpdate::FromImage;
  return PointerUpdate::Set;
}

// ---------------------------------------------------------------- state <-> image

unsigned full_tag(const X87State& f, unsigned phys) {
  if (!(f.tags & (1u << phys))) return 3;  // empty
  const X87Reg& r = f.regs[phys];
  const unsigned exp = r.sign_exponent & 0x7fff;
  if (exp == 0x7fff) return 2;                    // NaN, infinity
  if (exp == 0) return r.significand == 0 ? 1 : 2;  // zero; denormal
  return (r.significand >> 63) ? 0 : 2;           // valid; unnormal
}

uint16_t full_tag_word(const X87State& f) {
  uint16_t tw = 0;
  for (unsigned i = 0; i < 8; ++i) tw = static_cast<uint16_t>(tw | (full_tag(f, i) << (2 * i)));
  return tw;
}

void put16(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 2); }
void put32(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 4); }
uint16_t get16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
uint32_t get32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
uint64_t get64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

void put_reg(uint8_t* p, const X87Reg& r) {
  std::memcpy(p, &r.significand, 8);
  put16(p + 8, r.sign_exponent);
}
X87Reg get_reg(const uint8_t* p) { return X87Reg{get64(p), get16(p + 8)}; }

// 32-bit protected-mode FSAVE image (108 bytes).
void to_image(const X87State& f, uint8_t* img) {
  std::memset(img, 0, 108);
  put16(img, f.fcw);
  put16(img + 4, f.status());
  put16(img + 8, full_tag_word(f));
  put32(img + 12, f.fip);
  put16(img + 16, f.fcs);
  put16(img + 18, f.fop);
  put32(img + 20, f.fdp);
  put16(img + 24, f.fds);
  for (unsigned i = 0; i < 8; ++i) put_reg(img + 28 + 10 * i, f.regs[(f.top + i) & 7]);
}

void from_image(X87State& f, const uint8_t* img, bool pointers) {
  f.fcw = get16(img);
  f.set_status(get16(img + 4));
  const uint16_t tw = get16(img + 8);
  f.tags = 0;
  for (unsigned i = 0; i < 8; ++i)
    if (((tw >> (2 * i)) & 3) != 3) f.tags = static_cast<uint8_t>(f.tags | (1u << i));
  for (unsigned i = 0; i < 8; ++i) f.regs[(f.top + i) & 7] = get_reg(img + 28 + 10 * i);
  if (pointers) {
    f.fip = get32(img + 12);
    f.fcs = get16(img + 16);
    f.fop = get16(img + 18) & 0x7ff;
    f.fdp = get32(img + 20);
    f.fds = get16(img + 24);
  }
}

// Real-address mode (and virtual-8086 mode) use their own FSTENV/FSAVE
// environment layout: 20/32-bit linear instruction and operand pointers split
// across two fields, FOP beside the pointer's high bits, no selectors (SDM
// vol. 1, "x87 FPU environment in memory"). The host always runs the
// protected-mode layout, so the helper converts. Reserved bits store 0.
bool real_mode_layout(const CpuState& st) {
  return st.mode.system && (!(st.sys.cr0 & cr0::PE) || (st.rflags_other & (1u << 17)));
}

// An environment (FLDENV/FNSTENV) or state (FRSTOR/FNSAVE) operand.
bool has_environment(unsigned esc, unsigned reg) { return (esc == 1 || esc == 5) && (reg == 4 || reg == 6); }

void environment_to_real(uint8_t* env, const X87State& f, bool operand16) {
  const uint32_t ip = (uint32_t{f.fcs} << 4) + static_cast<uint32_t>(f.fip);
  const uint32_t dp = (uint32_t{f.fds} << 4) + static_cast<uint32_t>(f.fdp);
  const uint32_t fop = f.fop & 0x7ffu;
  if (operand16) {
    put16(env + 6, static_cast<uint16_t>(ip));
    put16(env + 8, static_cast<uint16_t>(fop | ((ip >> 16) & 0xf) << 12));
    put16(env + 10, static_cast<uint16_t>(dp));
    put16(env + 12, static_cast<uint16_t>(((dp >> 16) & 0xf) << 12));
  } else {
    put32(env + 12, ip & 0xffff);
    put32(env + 16, fop | (ip >> 16) << 12);
    put32(env + 20, dp & 0xffff);
    put32(env + 24, (dp >> 16) << 12);
  }
}

struct RealPointers {
  uint32_t ip = 0, dp = 0;
  uint16_t fop = 0;
};

RealPointers environment_from_real(const uint8_t* env, bool operand16) {
  if (operand16) {
    const uint16_t mixed = get16(env + 8);
    return {uint32_t{get16(env + 6)} | uint32_t(mixed >> 12) << 16, uint32_t{get16(env + 10)} | uint32_t(get16(env + 12) >> 12) << 16,
            static_cast<uint16_t>(mixed & 0x7ff)};
  }
  const uint32_t mixed = get32(env + 16);
  return {(get32(env + 12) & 0xffff) | ((mixed >> 12) & 0xffff) << 16, (get32(env + 20) & 0xffff) | ((get32(env + 24) >> 12) & 0xffff) << 16,
          static_cast<uint16_t>(mixed & 0x7ff)};
}

bool exception_pending(const X87State& f) { return (f.fsw & ~f.fcw & 0x3f) != 0; }

void raise(CpuState& st, Vector v) { st.exception = PendingException{.raised = true, .vector = v}; }

// ---------------------------------------------------------------- guest memory

bool read_guest(Cpu& cpu, uint64_t address, uint8_t* out, unsigned size) {
  for (unsigned i = 0; i < size;) {
    uint64_t v = 0;
    const unsigned left = size - i;
    bool ok;
    unsigned n;
    if (left >= 8) ok = cpu.read<8>(address + i, v), n = 8;
    else if (left >= 4) ok = cpu.read<4>(address + i, v), n = 4;
    else if (left >= 2) ok = cpu.read<2>(address + i, v), n = 2;
    else ok = cpu.read<1>(address + i, v), n = 1;
    if (!ok) return false;
    std::memcpy(out + i, &v, n);
    i += n;
  }
  return true;
}

// Checks that both ends of [address, address + size) are writable (size <= one page);
// otherwise reports the fault of the first failing byte (#PF with its address, or #GP).
bool probe_write(Cpu& cpu, uint64_t address, unsigned size) {
  for (uint64_t a : {address, address + size - 1})
    if (!cpu.probe(a, Access::Write)) return cpu.write<1>(a, 0);
  return true;
}
bool probe_read(Cpu& cpu, uint64_t address, unsigned size) {
  uint64_t v;
  return cpu.read<1>(address, v) && cpu.read<1>(address + size - 1, v);
}

// Both ends are checked first so that a fault leaves memory untouched.
bool write_guest(Cpu& cpu, uint64_t address, const uint8_t* in, unsigned size) {
  if (!probe_write(cpu, address, size)) return false;
  for (unsigned i = 0; i < size;) {
    uint64_t v = 0;
    const unsigned left = size - i;
    const unsigned n = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    std::memcpy(&v, in + i, n);
    bool ok = n == 8 ? cpu.write<8>(address + i, v) : n == 4 ? cpu.write<4>(address + i, v)
              : n == 2 ? cpu.write<2>(address + i, v) : cpu.write<1>(address + i, v);
    if (!ok) return false;
    i += n;
  }
  return true;
}

}  // namespace

bool x87_encoding_supported(unsigned fop) {
  const unsigned esc = (fop >> 8) & 7, modrm = fop & 0xff;
  if (modrm < 0xc0) {
    // FISTTP (SSE3) runs on the host's unit too: only where the host has it.
    static const bool host_sse3 = __builtin_cpu_supports("sse3");
    if ((modrm & 0x38) == 0x08 && (esc == 3 || esc == 5 || esc == 7) && !host_sse3) return false;
    return memory_operand(esc, (modrm >> 3) & 7, false).size != 0;
  }
  const unsigned row = modrm & 0xf8;
  switch (esc) {
    case 0: return true;  // FADD FMUL FCOM FCOMP FSUB FSUBR FDIV FDIVR st, st(i)
    case 1:
      if (row == 0xc0 || row == 0xc8 || row == 0xd8) return true;  // FLD, FXCH, FSTP1 alias
      if (modrm == 0xd0) return true;                              // FNOP
      if (modrm == 0xe0 || modrm == 0xe1 || modrm == 0xe4 || modrm == 0xe5) return true;  // FCHS FABS FTST FXAM
      if (modrm >= 0xe8 && modrm <= 0xee) return true;             // FLD1 .. FLDZ
      return modrm >= 0xf0;                                        // F2XM1 .. FCOS
    case 2: return row != 0xe0 && row != 0xf0 && row != 0xf8 && (row != 0xe8 || modrm == 0xe9);  // FCMOV*, FUCOMPP
    case 3:
      // FNENI FNDISI (no-ops since the 80387), FNCLEX, FNINIT, FNSETPM (no-op)
      if (row == 0xe0) return modrm <= 0xe4;
      return row != 0xf8;                                      // FCMOVN*, FUCOMI, FCOMI
    case 4: return true;  // FADD .. FDIV st(i), st; FCOM2/FCOMP3 aliases
    case 5: return row != 0xf0 && row != 0xf8;  // FFREE FXCH4 FST FSTP FUCOM FUCOMP
    case 6: return row != 0xd8 || modrm == 0xd9;  // arithmetic-and-pop, FCOMP5 alias, FCOMPP
    default:
      if (row == 0xe0) return modrm == 0xe0;  // FNSTSW AX
      return row != 0xf8;                     // FFREEP, FXCH7, FSTP8/9, FUCOMIP, FCOMIP
  }
}

uint64_t helper_x87(Cpu& cpu, uint64_t insn, uint64_t address, uint64_t offset, uint64_t) {
  CpuState& st = cpu.state;
  X87State& f = st.fpu;
  const unsigned fop = static_cast<unsigned>(insn & kX87OpMask);
  const unsigned esc = fop >> 8, modrm = fop & 0xff, reg = (modrm >> 3) & 7;
  const bool is_register = modrm >= 0xc0;
  if (!is_no_wait(fop) && exception_pending(f)) {
    raise(st, Vector::MF);
    return 0;
  }
  MemoryOperand mem;
  alignas(16) uint8_t operand[112] = {};
  if (!is_register) {
    mem = memory_operand(esc, reg, insn & kX87Operand16);
    if (mem.read && !read_guest(cpu, address, operand, mem.size)) return 0;
    // A store suppressed by an unmasked exception must leave memory as it was: start
    // from the current contents (after checking writability, so faults report a write).
    if (mem.write && (!probe_write(cpu, address, mem.size) || !read_guest(cpu, address, operand, mem.size))) return 0;
  }
  const bool real_environment = !is_register && real_mode_layout(st) && has_environment(esc, reg);
  RealPointers loaded_pointers;
  if (real_environment && mem.read) loaded_pointers = environment_from_real(operand, insn & kX87Operand16);
  alignas(16) uint8_t image[108];
  to_image(f, image);
  const uint64_t guest_flags = compute_flags(st) & (rflags::SF | rflags::ZF | rflags::AF | rflags::PF | rflags::CF);
  const Stub run = is_register ? kRegisterStubs[esc * 64 + (modrm & 63)]
                               : (insn & kX87Operand16 ? kMemoryStubs16 : kMemoryStubs)[esc * 8 + reg];
  const uint64_t out = run(image, operand, guest_flags | 2);
  if (real_environment && mem.write) environment_to_real(operand, f, insn & kX87Operand16);
  if (mem.write && !write_guest(cpu, address, operand, mem.size)) return 0;

  const uint64_t fip = f.fip, fdp = f.fdp;
  const uint16_t fop_old = f.fop, fcs = f.fcs, fds = f.fds;
  const PointerUpdate update = pointer_update(fop);
  from_image(f, image, update == PointerUpdate::FromImage);
  if (update == PointerUpdate::Keep) {
    f.fip = fip, f.fdp = fdp, f.fop = fop_old, f.fcs = fcs, f.fds = fds;
  } else if (update == PointerUpdate::Set) {
    f.fop = static_cast<uint16_t>(fop);
    f.fip = st.rip;
    f.fcs = st.seg_selector[CS];
    if (!is_register) {
      f.fdp = offset;
      const unsigned seg = (insn >> kX87SegmentShift) & 7;
      f.fds = seg < 6 ? st.seg_selector[seg] : 0;
    }
  }
  if (real_environment && mem.read) {
    // Linear pointers: kept as offsets with null selectors, so storing them again gives the same values.
    f.fip = loaded_pointers.ip, f.fdp = loaded_pointers.dp, f.fop = loaded_pointers.fop, f.fcs = 0, f.fds = 0;
  }
  if (fop == 0x7e0) st.regs[RAX] = (st.regs[RAX] & ~uint64_t{0xffff}) | (out & 0xffff);  // FNSTSW AX
  if ((esc == 3 || esc == 7) && modrm >= 0xe8 && modrm < 0xf8) {  // FCOMI FUCOMI (+P): ZF PF CF, OF SF AF cleared
    const uint64_t host = (out >> 16) & 0xff;
    const uint64_t low = rflags::ZF | rflags::PF | rflags::CF | rflags::SF | rflags::AF;
    uint64_t flags = host & low;
    // With an unmasked invalid operand the SDM has the flags left alone (some parts set
    // them anyway): if the host did not touch them, OF stays the guest's too.
    if ((f.fsw & ~f.fcw & 1) && flags == (guest_flags & low)) flags |= compute_flags(st) & rflags::OF;
    else if ((out >> 24) & 1) flags |= rflags::OF;
    st.cc_op = ir::cc_op(ir::CcKind::Eflags, ir::Type::I64);
    st.cc_dst = flags;
  }
  return 0;
}

uint64_t helper_fwait(Cpu& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  if (exception_pending(cpu.state.fpu)) raise(cpu.state, Vector::MF);
  return 0;
}

// ---------------------------------------------------------------- FXSAVE / FXRSTOR

namespace {
constexpr uint32_t kMxcsrMask = 0xffff;  // DAZ supported; bits 16-31 reserved
}

uint64_t helper_fxsave(Cpu& cpu, uint64_t address, uint64_t rex_w, uint64_t long_mode, uint64_t) {
  CpuState& st = cpu.state;
  if (address & 15) {
    raise(st, Vector::GP);
    return 0;
  }
  const X87State& f = st.fpu;
  alignas(16) uint8_t img[416] = {};
  put16(img, f.fcw);
  put16(img + 2, f.status());
  img[4] = f.tags;
  put16(img + 6, f.fop);
  if (rex_w) {
    std::memcpy(img + 8, &f.fip, 8);
    std::memcpy(img + 16, &f.fdp, 8);
  } else {
    put32(img + 8, f.fip);
    put16(img + 12, f.fcs);
    put32(img + 16, f.fdp);
    put16(img + 20, f.fds);
  }
  put32(img + 24, st.mxcsr);
  put32(img + 28, kMxcsrMask);
  for (unsigned i = 0; i < 8; ++i) put_reg(img + 32 + 16 * i, f.regs[(f.top + i) & 7]);
  const unsigned nxmm = long_mode ? 16 : 8;
  for (unsigned i = 0; i < nxmm; ++i) {
    std::memcpy(img + 160 + 16 * i, &st.xmm[i].lo, 8);
    std::memcpy(img + 168 + 16 * i, &st.xmm[i].hi, 8);
  }
  // The whole 512-byte area must be writable even though the last 96 bytes are not stored.
  if (!probe_write(cpu, address, 512)) return 0;
  write_guest(cpu, address, img, 160 + 16 * nxmm);
  return 0;
}

uint64_t helper_fxrstor(Cpu& cpu, uint64_t address, uint64_t rex_w, uint64_t long_mode, uint64_t) {
  CpuState& st = cpu.state;
  if (address & 15) {
    raise(st, Vector::GP);
    return 0;
  }
  const unsigned nxmm = long_mode ? 16 : 8;
  alignas(16) uint8_t img[416];
  if (!probe_read(cpu, address, 512) || !read_guest(cpu, address, img, 160 + 16 * nxmm)) return 0;
  const uint32_t mxcsr = get32(img + 24);
  if (mxcsr & ~kMxcsrMask) {
    raise(st, Vector::GP);
    return 0;
  }
  X87State& f = st.fpu;
  // Reserved control bits read back as hardware has them; ES and B are recomputed.
  f.fcw = static_cast<uint16_t>((get16(img) & 0x1f3f) | 0x40);
  uint16_t fsw = static_cast<uint16_t>(get16(img + 2) & ~0x8080u);
  if (fsw & ~f.fcw & 0x3f) fsw |= 0x8080;
  f.set_status(fsw);
  f.tags = img[4];
  f.fop = get16(img + 6) & 0x7ff;
  if (rex_w) {  // the 64-bit format has no selectors: they read as 0 afterwards
    f.fip = get64(img + 8);
    f.fdp = get64(img + 16);
    f.fcs = f.fds = 0;
  } else {
    f.fip = get32(img + 8);
    f.fcs = get16(img + 12);
    f.fdp = get32(img + 16);
    f.fds = get16(img + 20);
  }
  st.mxcsr = mxcsr;
  for (unsigned i = 0; i < 8; ++i) f.regs[(f.top + i) & 7] = get_reg(img + 32 + 16 * i);
  for (unsigned i = 0; i < nxmm; ++i) st.xmm[i] = Xmm{get64(img + 160 + 16 * i), get64(img + 168 + 16 * i)};
  return 0;
}

// ---------------------------------------------------------------- MASKMOVDQU / MASKMOVQ

uint64_t helper_maskmove(Cpu& cpu, uint64_t address, uint64_t regs, uint64_t, uint64_t) {
  CpuState& st = cpu.state;
  const unsigned src = regs & 0xff, mask_reg = (regs >> 8) & 0xff;
  const bool mmx = regs & (1u << 16);
  uint8_t data[16], mask[16];
  unsigned n = 16;
  if (mmx) {
    n = 8;
    std::memcpy(data, &st.fpu.regs[src].significand, 8);
    std::memcpy(mask, &st.fpu.regs[mask_reg].significand, 8);
  } else {
    std::memcpy(data, &st.xmm[src].lo, 8);
    std::memcpy(data + 8, &st.xmm[src].hi, 8);
    std::memcpy(mask, &st.xmm[mask_reg].lo, 8);
    std::memcpy(mask + 8, &st.xmm[mask_reg].hi, 8);
  }
  // Unselected bytes are neither read nor written, but like the hardware we know
  // (the SDM leaves it implementation-dependent) the whole 16/8-byte destination
  // must be writable, even with an all-zero mask; checked before any byte is stored.
  if (!probe_write(cpu, address, n)) return 0;
  for (unsigned i = 0; i < n; ++i)
    if (mask[i] & 0x80) cpu.write<1>(address + i, data[i]);
  return 0;
}

}  // namespace kiln::emu
