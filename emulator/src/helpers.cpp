#include "kiln/emulator/helpers.h"

#include <cstring>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/fp_eval.h"
#include "kiln/emulator/ir_eval.h"
#include "kiln/emulator/lazy_flags.h"
#include "kiln/emulator/privileged.h"
#include "kiln/emulator/system.h"

namespace kiln::emu {

namespace {

void raise(CpuState& cpu, Vector v) {
  cpu.exception = PendingException{.raised = true, .vector = v};
}

uint64_t arith_flags(const CpuState& cpu) { return compute_flags(cpu); }

void set_arith_flags(CpuState& cpu, uint64_t f) {
  cpu.cc_op = ir::cc_op(ir::CcKind::Eflags, ir::Type::I64);
  cpu.cc_dst = f & rflags::kArith;
}

uint64_t szp8(uint8_t v) {
  uint64_t f = 0;
  if (v == 0) f |= rflags::ZF;
  if (v & 0x80) f |= rflags::SF;
  if (!(__builtin_popcount(v) & 1)) f |= rflags::PF;
  return f;
}

void set_low(uint64_t& reg, uint64_t value, unsigned bits) {
  if (bits == 32) reg = value & 0xffffffffu;
  else if (bits == 64) reg = value;
  else {
    uint64_t mask = (uint64_t{1} << bits) - 1;
    reg = (reg & ~mask) | (value & mask);
  }
}

template <unsigned Bits>
uint64_t div_unsigned(CpuState& cpu, uint64_t divisor, uint64_t, uint64_t, uint64_t) {
  if (divisor == 0) return raise(cpu, Vector::DE), 0;
  if constexpr (Bits == 8) {
    uint16_t dividend = static_cast<uint16_t>(cpu.regs[RAX]);
    uint32_t q = dividend / divisor, r = dividend % divisor;
    if (q > 0xff) return raise(cpu, Vector::DE), 0;
    set_low(cpu.regs[RAX], (r << 8) | q, 16);
  } else if constexpr (Bits == 64) {
    unsigned __int128 dividend = (static_cast<unsigned __int128>(cpu.regs[RDX]) << 64) | cpu.regs[RAX];
    unsigned __int128 q = dividend / divisor;
    if (q >> 64) return raise(cpu, Vector::DE), 0;
    cpu.regs[RAX] = static_cast<uint64_t>(q);
    cpu.regs[RDX] = static_cast<uint64_t>(dividend % divisor);
  } else {
    constexpr uint64_t mask = (uint64_t{1} << Bits) - 1;
    uint64_t dividend = ((cpu.regs[RDX] & mask) << Bits) | (cpu.regs[RAX] & mask);
    uint64_t q = dividend / divisor;
    if (q > mask) return raise(cpu, Vector::DE), 0;
    set_low(cpu.regs[RAX], q, Bits);
    set_low(cpu.regs[RDX], dividend % divisor, Bits);
  }
  return 0;
}

template <unsigned Bits>
uint64_t div_signed(CpuState& cpu, uint64_t divisor_bits, uint64_t, uint64_t, uint64_t) {
  __int128 divisor = ir::sign_extend(divisor_bits, Bits);
  if (divisor == 0) return raise(cpu, Vector::DE), 0;
  __int128 dividend;
  if constexpr (Bits == 8) dividend = static_cast<int16_t>(cpu.regs[RAX]);
  else if constexpr (Bits == 64)
    dividend = static_cast<__int128>((static_cast<unsigned __int128>(cpu.regs[RDX]) << 64) | cpu.regs[RAX]);
  else {
    constexpr uint64_t mask = (uint64_t{1} << Bits) - 1;
    dividend = ir::sign_extend(((cpu.regs[RDX] & mask) << Bits) | (cpu.regs[RAX] & mask), 2 * Bits);
  }
  // Division of the most negative 128-bit value by -1 would overflow the host type.
  if (Bits == 64 && divisor == -1 && dividend == static_cast<__int128>(static_cast<unsigned __int128>(1) << 127))
    return raise(cpu, Vector::DE), 0;
  __int128 q = dividend / divisor, r = dividend % divisor;
  const __int128 lo = -(static_cast<__int128>(1) << (Bits - 1)), hi = (static_cast<__int128>(1) << (Bits - 1)) - 1;
  if (q < lo || q > hi) return raise(cpu, Vector::DE), 0;
  if constexpr (Bits == 8) {
    set_low(cpu.regs[RAX], ((static_cast<uint64_t>(r) & 0xff) << 8) | (static_cast<uint64_t>(q) & 0xff), 16);
  } else {
    set_low(cpu.regs[RAX], static_cast<uint64_t>(q), Bits);
    set_low(cpu.regs[RDX], static_cast<uint64_t>(r), Bits);
  }
  return 0;
}

// RCL/RCR: a = value, b = count (unmasked), c = operand bits. Returns the result.
uint64_t rotate_through_carry(CpuState& cpu, uint64_t value, uint64_t count, uint64_t bits, bool left) {
  unsigned masked = static_cast<unsigned>(count & (bits == 64 ? 63 : 31));
  if (masked == 0) return value;
  unsigned n = masked % (bits + 1);
  uint64_t flags = arith_flags(cpu);
  uint64_t cf = flags & rflags::CF ? 1 : 0;
  const uint64_t msb_shift = bits - 1;
  const uint64_t mask = bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
  uint64_t v = value & mask;
  uint64_t of;
  if (left) {
    for (unsigned i = 0; i < n; ++i) {
      uint64_t out = (v >> msb_shift) & 1;
      v = ((v << 1) | cf) & mask;
      cf = out;
    }
    of = ((v >> msb_shift) & 1) ^ cf;
  } else {
    of = ((v >> msb_shift) & 1) ^ cf;
    for (unsigned i = 0; i < n; ++i) {
      uint64_t out = v & 1;
      v = (v >> 1) | (cf << msb_shift);
      cf = out;
    }
  }
  flags = (flags & ~(rflags::CF | rflags::OF)) | (cf ? rflags::CF : 0) | (of ? rflags::OF : 0);
  set_arith_flags(cpu, flags);
  return v;
}

uint64_t h_rcl(CpuState& cpu, uint64_t a, uint64_t b, uint64_t c, uint64_t) { return rotate_through_carry(cpu, a, b, c, true); }
uint64_t h_rcr(CpuState& cpu, uint64_t a, uint64_t b, uint64_t c, uint64_t) { return rotate_through_carry(cpu, a, b, c, false); }

// BCD adjustments follow the SDM pseudocode; undefined flags (OF for DAA/DAS,
// OF/SF/ZF/PF for AAA/AAS, OF/AF/CF for AAM/AAD) are produced as 0.
uint64_t h_daa(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  uint64_t f = arith_flags(cpu);
  uint8_t al = static_cast<uint8_t>(cpu.regs[RAX]), old_al = al;
  bool old_cf = f & rflags::CF, cf = false, af = false;
  if ((al & 0xf) > 9 || (f & rflags::AF)) {
    cf = old_cf || al > 0xf9;
    al = static_cast<uint8_t>(al + 6);
    af = true;
  }
  if (old_al > 0x99 || old_cf) {
    al = static_cast<uint8_t>(al + 0x60);
    cf = true;
  } else {
    cf = false;
  }
  set_low(cpu.regs[RAX], al, 8);
  set_arith_flags(cpu, szp8(al) | (cf ? rflags::CF : 0) | (af ? rflags::AF : 0));
  return 0;
}

uint64_t h_das(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  uint64_t f = arith_flags(cpu);
  uint8_t al = static_cast<uint8_t>(cpu.regs[RAX]), old_al = al;
  bool old_cf = f & rflags::CF, cf = false, af = false;
  if ((al & 0xf) > 9 || (f & rflags::AF)) {
    cf = old_cf || al < 6;
    al = static_cast<uint8_t>(al - 6);
    af = true;
  }
  if (old_al > 0x99 || old_cf) {
    al = static_cast<uint8_t>(al - 0x60);
    cf = true;
  }
  set_low(cpu.regs[RAX], al, 8);
  set_arith_flags(cpu, szp8(al) | (cf ? rflags::CF : 0) | (af ? rflags::AF : 0));
  return 0;
}

uint64_t ascii_adjust(CpuState& cpu, bool add) {
  uint64_t f = arith_flags(cpu);
  uint16_t ax = static_cast<uint16_t>(cpu.regs[RAX]);
  bool adjust = (ax & 0xf) > 9 || (f & rflags::AF);
  if (adjust) {
    if (add) ax = static_cast<uint16_t>(ax + 0x106);
    else {
      ax = static_cast<uint16_t>(ax - 6);  // the borrow reaches AH, which is then decremented again
      ax = static_cast<uint16_t>(ax - 0x100);
    }
  }
  ax = static_cast<uint16_t>(ax & 0xff0f);
  set_low(cpu.regs[RAX], ax, 16);
  set_arith_flags(cpu, adjust ? rflags::AF | rflags::CF : 0);
  return 0;
}
uint64_t h_aaa(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) { return ascii_adjust(cpu, true); }
uint64_t h_aas(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) { return ascii_adjust(cpu, false); }

uint64_t h_aam(CpuState& cpu, uint64_t base, uint64_t, uint64_t, uint64_t) {
  base &= 0xff;
  if (base == 0) return raise(cpu, Vector::DE), 0;
  uint8_t al = static_cast<uint8_t>(cpu.regs[RAX]);
  uint8_t q = static_cast<uint8_t>(al / base), r = static_cast<uint8_t>(al % base);
  set_low(cpu.regs[RAX], (uint64_t{q} << 8) | r, 16);
  set_arith_flags(cpu, szp8(r));
  return 0;
}

uint64_t h_aad(CpuState& cpu, uint64_t base, uint64_t, uint64_t, uint64_t) {
  uint16_t ax = static_cast<uint16_t>(cpu.regs[RAX]);
  uint8_t al = static_cast<uint8_t>((ax & 0xff) + (ax >> 8) * (base & 0xff));
  set_low(cpu.regs[RAX], al, 16);
  set_arith_flags(cpu, szp8(al));
  return 0;
}

// The CPUID model advertises only what the translator implements.
uint64_t h_cpuid(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  uint32_t leaf = static_cast<uint32_t>(cpu.regs[RAX]), sub = static_cast<uint32_t>(cpu.regs[RCX]);
  if (cpu.mode.system) {  // the whole-machine CPU model (privileged.cpp)
    uint32_t r[4];
    system_cpuid(cpu, leaf, sub, r);
    cpu.regs[RAX] = r[0];
    cpu.regs[RBX] = r[1];
    cpu.regs[RCX] = r[2];
    cpu.regs[RDX] = r[3];
    return 0;
  }
  uint32_t a = 0, b = 0, c = 0, d = 0;
  auto vendor = [&](const char* s) {
    std::memcpy(&b, s, 4);
    std::memcpy(&d, s + 4, 4);
    std::memcpy(&c, s + 8, 4);
  };
  switch (leaf) {
    case 0: a = 7; vendor("GenuineIntel"); break;
    case 1:
      a = 0x000306a9;                      // family 6 model 58 stepping 9
      // FPU, TSC, CX8, CMOV, MMX, FXSR, SSE, SSE2
      d = (1u << 0) | (1u << 4) | (1u << 8) | (1u << 15) | (1u << 23) | (1u << 24) | (1u << 25) | (1u << 26);
      c = (1u << 13) | (1u << 23);         // CMPXCHG16B, POPCNT
      // SSE3 and SSSE3 are complete but their FP ops run on the host's SSE4.1-era units.
      if (ir::host_has_sse41()) c |= (1u << 0) | (1u << 9) | (1u << 19);  // + SSE4.1
      if (ir::host_has_sse42()) c |= 1u << 20;                              // SSE4.2 (PCMPxSTRx on the host)
      break;
    case 7:
      if (sub == 0) b = (1u << 3);  // BMI1 (TZCNT)
      break;
    case 0x80000000: a = 0x80000001; break;
    case 0x80000001:
      c = (1u << 0) | (1u << 5);   // LAHF/SAHF in 64-bit mode, LZCNT
      d = (1u << 11) | (1u << 29); // SYSCALL, long mode
      break;
    default: break;
  }
  cpu.regs[RAX] = a;
  cpu.regs[RBX] = b;
  cpu.regs[RCX] = c;
  cpu.regs[RDX] = d;
  return 0;
}

uint64_t h_rdtsc(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  // The TSC counts retired instructions (advanced per block); reads themselves tick it
  // so that two reads in one block still differ.
  if (cpu.mode.system && (cpu.sys.cr0 & cr0::PE) && (cpu.sys.cr4 & cr4::TSD) &&
      (cpu.sys.cpl != 0 || (cpu.rflags_other & (1u << 17)))) {
    raise(cpu, Vector::GP);  // CR4.TSD: RDTSC only at CPL 0
    return 0;
  }
  ++cpu.tsc;
  cpu.regs[RAX] = cpu.tsc & 0xffffffffu;
  cpu.regs[RDX] = cpu.tsc >> 32;
  return 0;
}

uint64_t h_halt(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  if (cpu.mode.system) {  // privileged; the execution loop resumes a halted CPU with an interrupt
    if (cpu.sys.cpl != 0) return raise(cpu, Vector::GP), 0;
    cpu.sys.halted = true;
  }
  cpu.stop_request |= kStopHalt;
  return 0;
}

uint64_t h_syscall(CpuState& cpu, uint64_t, uint64_t, uint64_t, uint64_t) {
  cpu.stop_request |= kStopSyscall;
  return 0;
}

uint64_t h_pdep(CpuState&, uint64_t src, uint64_t mask, uint64_t, uint64_t) {
  uint64_t r = 0;
  for (uint64_t bit = 1; mask; mask &= mask - 1, bit <<= 1)
    if (src & bit) r |= mask & (0 - mask);
  return r;
}

uint64_t h_pext(CpuState&, uint64_t src, uint64_t mask, uint64_t, uint64_t) {
  uint64_t r = 0, bit = 1;
  for (; mask; mask &= mask - 1, bit <<= 1)
    if (src & mask & (0 - mask)) r |= bit;
  return r;
}

// CRC-32C (Castagnoli, reflected 0x82F63B78) over `bytes` bytes of value, as SSE4.2 CRC32.
uint64_t h_crc32(CpuState&, uint64_t crc, uint64_t value, uint64_t bytes, uint64_t) {
  uint32_t c = static_cast<uint32_t>(crc);
  for (uint64_t i = 0; i < bytes; ++i) {
    c ^= static_cast<uint8_t>(value >> (8 * i));
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82f63b78u & (0u - (c & 1)));
  }
  return c;
}

// Most helpers only need the architectural state.
template <uint64_t (*F)(CpuState&, uint64_t, uint64_t, uint64_t, uint64_t)>
uint64_t on_state(Cpu& cpu, uint64_t a, uint64_t b, uint64_t c, uint64_t d) {
  return F(cpu.state, a, b, c, d);
}

constexpr HelperInfo kHelpers[] = {
    {"div_u8", ir::Type::Void, on_state<div_unsigned<8>>},   {"div_u16", ir::Type::Void, on_state<div_unsigned<16>>},
    {"div_u32", ir::Type::Void, on_state<div_unsigned<32>>}, {"div_u64", ir::Type::Void, on_state<div_unsigned<64>>},
    {"div_s8", ir::Type::Void, on_state<div_signed<8>>},     {"div_s16", ir::Type::Void, on_state<div_signed<16>>},
    {"div_s32", ir::Type::Void, on_state<div_signed<32>>},   {"div_s64", ir::Type::Void, on_state<div_signed<64>>},
    {"rcl", ir::Type::I64, on_state<h_rcl>},                 {"rcr", ir::Type::I64, on_state<h_rcr>},
    {"daa", ir::Type::Void, on_state<h_daa>},                {"das", ir::Type::Void, on_state<h_das>},
    {"aaa", ir::Type::Void, on_state<h_aaa>},                {"aas", ir::Type::Void, on_state<h_aas>},
    {"aam", ir::Type::Void, on_state<h_aam>},                {"aad", ir::Type::Void, on_state<h_aad>},
    {"cpuid", ir::Type::Void, on_state<h_cpuid>},            {"rdtsc", ir::Type::Void, on_state<h_rdtsc>},
    {"halt", ir::Type::Void, on_state<h_halt>},              {"syscall", ir::Type::Void, on_state<h_syscall>},
    {"pdep", ir::Type::I64, on_state<h_pdep>},               {"pext", ir::Type::I64, on_state<h_pext>},
    {"crc32", ir::Type::I64, on_state<h_crc32>},
    {"x87", ir::Type::Void, helper_x87},           {"fwait", ir::Type::Void, helper_fwait},           {"fxsave", ir::Type::Void, helper_fxsave},
    {"fxrstor", ir::Type::Void, helper_fxrstor},   {"maskmove", ir::Type::Void, helper_maskmove},
    {"pcmpstr", ir::Type::Void, helper_string_compare},
    {"system", ir::Type::I64, helper_system},
    {"port_check", ir::Type::Void, helper_port_check}, {"port_in", ir::Type::I64, helper_port_in},
    {"port_out", ir::Type::Void, helper_port_out},     {"port_in_string", ir::Type::Void, helper_port_in_string},
    // Segmentation and control transfers (system.cpp).
    {"load_segment", ir::Type::Void, helper_load_segment},  {"read_selector", ir::Type::I64, helper_read_selector},
    {"far_jump", ir::Type::I64, helper_far_jump},            {"far_call", ir::Type::I64, helper_far_call},
    {"far_return", ir::Type::I64, helper_far_return},        {"iret", ir::Type::I64, helper_iret},
    {"software_interrupt", ir::Type::I64, helper_software_interrupt},
    {"check_selector", ir::Type::I64, helper_check_selector},
    {"segment_check", ir::Type::Void, helper_segment_check},
};
static_assert(std::size(kHelpers) == static_cast<size_t>(HelperId::Count));

}  // namespace

const HelperInfo& helper_info(HelperId id) { return kHelpers[static_cast<size_t>(id)]; }

}  // namespace kiln::emu
