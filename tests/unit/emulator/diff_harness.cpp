#include "diff_harness.h"

#include <Zydis/Zydis.h>
#include <cpuid.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kiln/common/error.h"
#include "kiln/emulator/cpu.h"
#include "kiln/emulator/ir_eval.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu::difftest {

std::string outcome_name(Outcome o) {
  switch (o) {
    case Outcome::Trap: return "trap(#BP)";
    case Outcome::Segv: return "segv(#PF/#GP)";
    case Outcome::DivideError: return "#DE";
    case Outcome::Illegal: return "#UD";
    case Outcome::Bus: return "bus";
    case Outcome::Timeout: return "timeout";
    default: return "other";
  }
}

namespace {

constexpr uint64_t kSequenceOffset = 0x200;  // the prologue sits before it
constexpr uint64_t kXmmInit = kCodeBase + 0x8000;  // initial XMM values for the native prologue
constexpr uint64_t kArithFlags = rflags::kArith;

// ---------------------------------------------------------------- generator

struct Asm {
  std::vector<uint8_t> bytes;
  uint64_t base = 0;  // guest address of bytes[0]
  uint64_t here() const { return base + bytes.size(); }
  void raw(std::initializer_list<uint8_t> b) { bytes.insert(bytes.end(), b); }
  void append(const std::vector<uint8_t>& b) { bytes.insert(bytes.end(), b.begin(), b.end()); }
};

class Gen {
 public:
  Gen(std::mt19937_64& rng, bool bits32) : rng_(rng), bits32_(bits32) {}

  void build(Sequence& seq, unsigned units);

 private:
  uint64_t rand(uint64_t n) { return n == 0 ? 0 : rng_() % n; }
  int64_t range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(rand(static_cast<uint64_t>(hi - lo + 1))); }
  bool chance(unsigned percent) { return rand(100) < percent; }
  unsigned nregs() const { return bits32_ ? 8 : 16; }
  ZydisMachineMode zmode() const { return bits32_ ? ZYDIS_MACHINE_MODE_LEGACY_32 : ZYDIS_MACHINE_MODE_LONG_64; }

  // Immediates as sign-extended values (what the encoder expects for every width).
  uint64_t interesting(unsigned bits) { return static_cast<uint64_t>(kiln::emu::ir::sign_extend(interesting_raw(bits), bits)); }
  uint64_t interesting_raw(unsigned bits) {
    uint64_t mask = bits == 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1;
    uint64_t sign = uint64_t{1} << (bits - 1);
    switch (rand(10)) {
      case 0: return 0;
      case 1: return 1;
      case 2: return mask;
      case 3: return sign;
      case 4: return sign - 1;
      case 5: return rand(64);
      case 6: return (0 - rand(64)) & mask;
      default: return rng_() & mask;
    }
  }
  unsigned pick_reg() {
    unsigned r;
    do r = static_cast<unsigned>(rand(nregs()));
    while (r == RSP);
    return r;
  }
  static ZydisRegister reg(unsigned index, unsigned bits, bool high = false) {
    switch (bits) {
      case 64: return static_cast<ZydisRegister>(ZYDIS_REGISTER_RAX + index);
      case 32: return static_cast<ZydisRegister>(ZYDIS_REGISTER_EAX + index);
      case 16: return static_cast<ZydisRegister>(ZYDIS_REGISTER_AX + index);
      default:
        if (high) return static_cast<ZydisRegister>(ZYDIS_REGISTER_AH + index);
        if (index < 4) return static_cast<ZydisRegister>(ZYDIS_REGISTER_AL + index);
        if (index < 8) return static_cast<ZydisRegister>(ZYDIS_REGISTER_SPL + index - 4);
        return static_cast<ZydisRegister>(ZYDIS_REGISTER_R8B + index - 8);
    }
  }
  ZydisRegister pick_reg_op(unsigned bits) {
    unsigned r = pick_reg();
    if (bits == 8 && r < 4 && chance(25)) return reg(r, 8, true);
    if (bits == 8 && bits32_ && r >= 4) return reg(r - 4, 8, true);  // no SPL..DIL outside 64-bit mode
    return reg(r, bits);
  }
  unsigned pick_size(unsigned mask) {  // mask bits: 1=8, 2=16, 4=32, 8=64
    if (bits32_) mask &= 7;
    unsigned sizes[4], n = 0;
    for (unsigned i = 0; i < 4; ++i)
      if (mask & (1u << i)) sizes[n++] = 8u << i;
    return n ? sizes[rand(n)] : 32;
  }

  static ZydisEncoderOperand r_op(ZydisRegister r) {
    ZydisEncoderOperand o{};
    o.type = ZYDIS_OPERAND_TYPE_REGISTER;
    o.reg.value = r;
    return o;
  }
  static ZydisEncoderOperand i_op(uint64_t v) {
    ZydisEncoderOperand o{};
    o.type = ZYDIS_OPERAND_TYPE_IMMEDIATE;
    o.imm.u = v;
    return o;
  }

  // mov reg64/32, value (no flags change).
  void set_reg(Asm& a, unsigned index, uint64_t value) {
    ZydisEncoderRequest req{};
    req.machine_mode = zmode();
    req.mnemonic = ZYDIS_MNEMONIC_MOV;
    req.operand_count = 2;
    req.operands[0] = r_op(reg(index, bits32_ ? 32 : 64));
    req.operands[1] = i_op(bits32_ ? static_cast<uint64_t>(static_cast<int64_t>(static_cast<int32_t>(value))) : value);
    if (!encode(a, req)) setup_failed_ = true;
  }

  bool encode(Asm& a, const ZydisEncoderRequest& req) {
    uint8_t buf[ZYDIS_MAX_INSTRUCTION_LENGTH];
    ZyanUSize len = sizeof(buf);
    if (!ZYAN_SUCCESS(ZydisEncoderEncodeInstruction(&req, buf, &len))) return false;
    a.bytes.insert(a.bytes.end(), buf, buf + len);
    return true;
  }

  // Builds a memory operand of `size_bytes` pointing into the data area (or, rarely,
  // at an unmapped or page-crossing address), appending the register setup to `setup`.
  ZydisEncoderOperand mem_op(Asm& setup, unsigned size_bytes, bool& rip_relative, unsigned avoid_reg = 99) {
    rip_relative = false;
    uint64_t target = kDataBase + rand(kDataSize - 16);
    if (align16_ && !chance(5)) target &= ~uint64_t{15};  // aligned SSE operands, sometimes not (#GP)
    unsigned fault = static_cast<unsigned>(rand(100));
    if (fault == 0) target = kDataBase + kDataSize - 1 - rand(size_bytes);  // crosses into an unmapped page
    else if (fault == 1) target = 0x20000000 + rand(0x1000);                 // unmapped
    ZydisEncoderOperand o{};
    o.type = ZYDIS_OPERAND_TYPE_MEMORY;
    o.mem.size = static_cast<ZyanU16>(size_bytes);
    o.mem.base = ZYDIS_REGISTER_NONE;
    o.mem.index = ZYDIS_REGISTER_NONE;
    const unsigned form = static_cast<unsigned>(rand(bits32_ ? 4 : 6));
    if (form == 4) {  // RIP-relative: displacement fixed up by the caller once the length is known
      rip_relative = true;
      o.mem.base = ZYDIS_REGISTER_RIP;
      o.mem.displacement = static_cast<int64_t>(target);
      return o;
    }
    if (form == 3) {  // absolute [disp32]
      o.mem.displacement = static_cast<int64_t>(target);
      return o;
    }
    const bool addr32 = !bits32_ && form == 5;  // 0x67 prefix in 64-bit mode
    const unsigned abits = bits32_ || addr32 ? 32 : 64;
    unsigned base;
    do base = pick_reg();
    while (base == avoid_reg);
    int64_t disp = 0;
    if (chance(60)) disp = chance(50) ? range(-128, 127) : range(-4096, 4096);
    uint64_t base_value = target - static_cast<uint64_t>(disp);
    if (form == 2 || form == 5) {
      unsigned index;
      do index = pick_reg();
      while (index == base || index == avoid_reg);
      unsigned scale = 1u << rand(4);
      int64_t iv = range(-16, 64);
      base_value -= static_cast<uint64_t>(iv) * scale;
      set_reg(setup, index, addr32 ? (static_cast<uint64_t>(iv) & 0xffffffffu) | (rng_() << 32) : static_cast<uint64_t>(iv));
      o.mem.index = reg(index, abits);
      o.mem.scale = static_cast<ZyanU8>(scale);
    }
    if (addr32) base_value = (base_value & 0xffffffffu) | (rng_() << 32);  // upper half must be ignored
    set_reg(setup, base, base_value);
    o.mem.base = reg(base, abits);
    o.mem.displacement = disp;
    return o;
  }

  // Encodes `req` (with operand `mem_index` possibly RIP-relative) after the setup.
  bool finish(Asm& out, Asm& setup, ZydisEncoderRequest& req, int mem_index, bool rip_relative) {
    Asm trial{.bytes = {}, .base = out.here() + setup.bytes.size()};
    if (rip_relative) {
      const int64_t target = req.operands[mem_index].mem.displacement;
      req.operands[mem_index].mem.displacement = 0x1000;  // force disp32 to learn the length
      if (!encode(trial, req)) return false;
      uint64_t next = trial.here();
      trial.bytes.clear();
      req.operands[mem_index].mem.displacement = target - static_cast<int64_t>(next);
    }
    if (!encode(trial, req)) return false;
    out.append(setup.bytes);
    out.append(trial.bytes);
    last_insn_offset_ = out.bytes.size() - trial.bytes.size();
    return true;
  }

  bool emit_alu(Asm& out);
  bool emit_sse(Asm& out);
  bool emit_mmx(Asm& out);
  bool emit_x87(Asm& out);
  bool emit_maskmov(Asm& out);
  bool emit_x87_memory(Asm& out, unsigned esc, unsigned reg, unsigned size, bool prefix66 = false,
                       bool fxsave = false);
  ZydisEncoderOperand xmm_op() { return r_op(static_cast<ZydisRegister>(ZYDIS_REGISTER_XMM0 + rand(nregs()))); }
  bool emit_unit(Asm& out);
  bool emit_raw_unit(Asm& out);
  bool emit_string(Asm& out);
  bool emit_branch(Asm& out, unsigned depth);

  void track_flags(const Asm& out, size_t from);

  std::mt19937_64& rng_;
  bool bits32_;
  size_t last_insn_offset_ = 0;
  uint64_t undefined_ = 0;
  int known_count_ = -1;  // CL value set for the next shift, or -1
  unsigned depth_ = 0;
  bool branch_unit_ = false;  // the last unit was a forward branch over a body
  bool setup_failed_ = false;  // a register setup could not be encoded: drop the unit
  bool align16_ = false;       // memory operands of the current unit want 16-byte alignment
 public:
  std::vector<std::pair<uint64_t, uint64_t>> undefined_at_;
};

// Whether the host CPU implements the instruction's ISA extension (the native
// side would raise #UD, or execute a different instruction, otherwise).
bool host_supports(ZydisISASet set) {
  static const struct Features {
    bool sse3, ssse3, sse41, sse42, movbe, popcnt, bmi1, bmi2, adx, lzcnt;
    Features() {
      unsigned a = 0, b = 0, c = 0, d = 0;
      __get_cpuid(1, &a, &b, &c, &d);
      sse3 = c & 1;
      ssse3 = c & (1u << 9);
      sse41 = c & (1u << 19);
      sse42 = c & (1u << 20);
      movbe = c & (1u << 22);
      popcnt = c & (1u << 23);
      __get_cpuid_count(7, 0, &a, &b, &c, &d);
      bmi1 = b & (1u << 3);
      bmi2 = b & (1u << 8);
      adx = b & (1u << 19);
      __get_cpuid(0x80000001, &a, &b, &c, &d);
      lzcnt = c & (1u << 5);
    }
  } f;
  switch (set) {
    case ZYDIS_ISA_SET_SSE3: return f.sse3;
    case ZYDIS_ISA_SET_SSSE3: case ZYDIS_ISA_SET_SSSE3MMX: return f.ssse3;
    case ZYDIS_ISA_SET_SSE4: return f.sse41;
    case ZYDIS_ISA_SET_SSE42: return f.sse42;
    case ZYDIS_ISA_SET_MOVBE: return f.movbe;
    case ZYDIS_ISA_SET_POPCNT: return f.popcnt;
    case ZYDIS_ISA_SET_BMI1: return f.bmi1;
    case ZYDIS_ISA_SET_BMI2: return f.bmi2;
    case ZYDIS_ISA_SET_ADOX_ADCX: return f.adx;
    case ZYDIS_ISA_SET_LZCNT: return f.lzcnt;
    default: return true;
  }
}

// Updates the undefined-flag mask for the instructions in out.bytes[from..].
void Gen::track_flags(const Asm& out, size_t from) {
  ZydisDecoder dec;
  ZydisDecoderInit(&dec, zmode(), bits32_ ? ZYDIS_STACK_WIDTH_32 : ZYDIS_STACK_WIDTH_64);
  size_t off = from;
  while (off < out.bytes.size()) {
    ZydisDecodedInstruction insn;
    ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
    undefined_at_.emplace_back(out.base + off, undefined_);
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, out.bytes.data() + off, out.bytes.size() - off, &insn, ops))) return;
    off += insn.length;
    if (!insn.cpu_flags) continue;
    uint64_t undefined = insn.cpu_flags->undefined & kArithFlags;
    uint64_t written = (insn.cpu_flags->modified | insn.cpu_flags->set_0 | insn.cpu_flags->set_1) & kArithFlags;
    const ZydisMnemonic m = insn.mnemonic;
    // A REP string compare with RCX = 0 leaves the flags alone: nothing becomes defined.
    if (insn.attributes & (ZYDIS_ATTRIB_HAS_REP | ZYDIS_ATTRIB_HAS_REPE | ZYDIS_ATTRIB_HAS_REPNE)) written = 0;
    const bool is_shift = m == ZYDIS_MNEMONIC_SHL || m == ZYDIS_MNEMONIC_SHR || m == ZYDIS_MNEMONIC_SAR ||
                          m == ZYDIS_MNEMONIC_ROL || m == ZYDIS_MNEMONIC_ROR || m == ZYDIS_MNEMONIC_RCL ||
                          m == ZYDIS_MNEMONIC_RCR || m == ZYDIS_MNEMONIC_SHLD || m == ZYDIS_MNEMONIC_SHRD;
    if (is_shift) {
      int count = -1;
      for (unsigned i = 0; i < insn.operand_count; ++i)
        if (ops[i].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) count = static_cast<int>(ops[i].imm.value.u);
      if (count < 0) count = known_count_;
      known_count_ = -1;  // a CL count is known only for the shift its unit set it up for
      const unsigned bits = insn.operand_width;
      if (count >= 0) count &= bits == 64 ? 63 : 31;
      if (count == 0) {
        written = 0;
        undefined = 0;
      } else {
        if (count != 1) undefined |= rflags::OF;
        if (m == ZYDIS_MNEMONIC_SHL || m == ZYDIS_MNEMONIC_SHR || m == ZYDIS_MNEMONIC_SAR || m == ZYDIS_MNEMONIC_SHLD ||
            m == ZYDIS_MNEMONIC_SHRD)
          undefined |= rflags::AF;
        if (count < 0 || static_cast<unsigned>(count) >= bits) undefined |= rflags::CF | rflags::OF;
        if (count < 0) {  // unknown count: any previously undefined flag may survive
          undefined |= undefined_;
        }
      }
    }
    undefined_ = (undefined_ & ~(written & ~undefined)) | undefined;
  }
}

bool Gen::emit_alu(Asm& out) {
  static constexpr ZydisMnemonic kBinary[] = {ZYDIS_MNEMONIC_ADD, ZYDIS_MNEMONIC_OR,  ZYDIS_MNEMONIC_ADC,
                                              ZYDIS_MNEMONIC_SBB, ZYDIS_MNEMONIC_AND, ZYDIS_MNEMONIC_SUB,
                                              ZYDIS_MNEMONIC_XOR, ZYDIS_MNEMONIC_CMP, ZYDIS_MNEMONIC_TEST,
                                              ZYDIS_MNEMONIC_MOV, ZYDIS_MNEMONIC_XCHG, ZYDIS_MNEMONIC_XADD,
                                              ZYDIS_MNEMONIC_CMPXCHG};
  static constexpr ZydisMnemonic kUnary[] = {ZYDIS_MNEMONIC_INC, ZYDIS_MNEMONIC_DEC, ZYDIS_MNEMONIC_NEG,
                                             ZYDIS_MNEMONIC_NOT, ZYDIS_MNEMONIC_MUL, ZYDIS_MNEMONIC_IMUL,
                                             ZYDIS_MNEMONIC_DIV, ZYDIS_MNEMONIC_IDIV, ZYDIS_MNEMONIC_SETB};
  static constexpr ZydisMnemonic kShift[] = {ZYDIS_MNEMONIC_SHL, ZYDIS_MNEMONIC_SHR, ZYDIS_MNEMONIC_SAR,
                                             ZYDIS_MNEMONIC_ROL, ZYDIS_MNEMONIC_ROR, ZYDIS_MNEMONIC_RCL,
                                             ZYDIS_MNEMONIC_RCR};
  static constexpr ZydisMnemonic kRegRm[] = {
      ZYDIS_MNEMONIC_IMUL,  ZYDIS_MNEMONIC_BSF,   ZYDIS_MNEMONIC_BSR,    ZYDIS_MNEMONIC_TZCNT, ZYDIS_MNEMONIC_LZCNT,
      ZYDIS_MNEMONIC_POPCNT, ZYDIS_MNEMONIC_CMOVB, ZYDIS_MNEMONIC_MOVZX, ZYDIS_MNEMONIC_MOVSX, ZYDIS_MNEMONIC_LEA,
      ZYDIS_MNEMONIC_MOVSXD, ZYDIS_MNEMONIC_MOVBE, ZYDIS_MNEMONIC_ANDN,  ZYDIS_MNEMONIC_BLSI,  ZYDIS_MNEMONIC_BLSR,
      ZYDIS_MNEMONIC_BLSMSK, ZYDIS_MNEMONIC_SHLX,  ZYDIS_MNEMONIC_SARX,  ZYDIS_MNEMONIC_RORX};
  static constexpr ZydisMnemonic kBitTest[] = {ZYDIS_MNEMONIC_BT, ZYDIS_MNEMONIC_BTS, ZYDIS_MNEMONIC_BTR,
                                               ZYDIS_MNEMONIC_BTC};
  Asm setup;
  ZydisEncoderRequest req{};
  req.machine_mode = zmode();
  int mem_index = -1;
  bool rip = false;
  const unsigned family = static_cast<unsigned>(rand(7));
  if (family == 0 || family == 1) {  // binary ALU: reg/mem, reg/mem/imm
    req.mnemonic = kBinary[rand(std::size(kBinary))];
    const unsigned bits = pick_size(15);
    unsigned form = static_cast<unsigned>(rand(5));  // 0 RR, 1 RM, 2 MR, 3 RI, 4 MI
    const bool no_imm = req.mnemonic == ZYDIS_MNEMONIC_XCHG || req.mnemonic == ZYDIS_MNEMONIC_XADD ||
                        req.mnemonic == ZYDIS_MNEMONIC_CMPXCHG;
    if (no_imm && form >= 3) form = form == 3 ? 0 : 2;
    if ((no_imm || req.mnemonic == ZYDIS_MNEMONIC_TEST) && form == 1) form = 2;
    req.operand_count = 2;
    switch (form) {
      case 0: req.operands[0] = r_op(pick_reg_op(bits)); req.operands[1] = r_op(pick_reg_op(bits)); break;
      case 1: req.operands[0] = r_op(pick_reg_op(bits)); req.operands[1] = mem_op(setup, bits / 8, rip); mem_index = 1; break;
      case 2: req.operands[0] = mem_op(setup, bits / 8, rip); req.operands[1] = r_op(pick_reg_op(bits)); mem_index = 0; break;
      case 3: req.operands[0] = r_op(pick_reg_op(bits)); req.operands[1] = i_op(interesting(bits == 64 ? 32 : bits)); break;
      default: req.operands[0] = mem_op(setup, bits / 8, rip); req.operands[1] = i_op(interesting(bits == 64 ? 32 : bits)); mem_index = 0; break;
    }
    if (bits == 64 && req.operands[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE)
      req.operands[1].imm.s = static_cast<int32_t>(req.operands[1].imm.u);
    if (mem_index == 0 && req.mnemonic != ZYDIS_MNEMONIC_CMP && req.mnemonic != ZYDIS_MNEMONIC_TEST &&
        req.mnemonic != ZYDIS_MNEMONIC_MOV && chance(20))
      req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
  } else if (family == 2) {  // unary / multiply / divide
    req.mnemonic = kUnary[rand(std::size(kUnary))];
    const unsigned bits = req.mnemonic == ZYDIS_MNEMONIC_SETB ? 8 : pick_size(15);
    if (req.mnemonic == ZYDIS_MNEMONIC_SETB) req.mnemonic = static_cast<ZydisMnemonic>(ZYDIS_MNEMONIC_SETB + 0);
    if (req.mnemonic == ZYDIS_MNEMONIC_DIV || req.mnemonic == ZYDIS_MNEMONIC_IDIV) {
      // Make most divisions succeed: a small dividend high half.
      if (chance(70)) {
        if (bits == 8) set_reg(setup, RAX, rng_() & 0x3fff);
        else set_reg(setup, RDX, chance(50) ? 0 : rand(4));
      }
    }
    req.operand_count = 1;
    if (chance(50)) {
      req.operands[0] = r_op(pick_reg_op(bits));
    } else {
      req.operands[0] = mem_op(setup, bits / 8, rip);
      mem_index = 0;
      if ((req.mnemonic == ZYDIS_MNEMONIC_INC || req.mnemonic == ZYDIS_MNEMONIC_DEC || req.mnemonic == ZYDIS_MNEMONIC_NEG ||
           req.mnemonic == ZYDIS_MNEMONIC_NOT) && chance(20))
        req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
    }
  } else if (family == 3) {  // shifts and rotates
    req.mnemonic = kShift[rand(std::size(kShift))];
    const unsigned bits = pick_size(15);
    req.operand_count = 2;
    if (chance(50)) req.operands[0] = r_op(pick_reg_op(bits));
    else { req.operands[0] = mem_op(setup, bits / 8, rip, RCX); mem_index = 0; }
    if (chance(50)) {
      req.operands[1] = i_op(chance(30) ? 1 : rand(bits == 64 ? 64 : 32));
      known_count_ = -1;
    } else {
      known_count_ = static_cast<int>(chance(10) ? rand(256) : rand(bits == 64 ? 64 : 32));
      set_reg(setup, RCX, static_cast<uint64_t>(known_count_) | (rng_() & ~uint64_t{0xff}));
      req.operands[1] = r_op(ZYDIS_REGISTER_CL);
      if (req.operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
          ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, req.operands[0].reg.value) == ZYDIS_REGISTER_RCX)
        req.operands[0].reg.value = reg(RDX, bits);
    }
  } else if (family == 4) {  // reg, r/m families
    req.mnemonic = kRegRm[rand(std::size(kRegRm))];
    unsigned bits = pick_size(14);
    unsigned src_bits = bits;
    const ZydisMnemonic m = req.mnemonic;
    if (m == ZYDIS_MNEMONIC_MOVZX || m == ZYDIS_MNEMONIC_MOVSX) src_bits = bits == 16 ? 8 : (chance(50) ? 8 : 16);
    if (m == ZYDIS_MNEMONIC_MOVSXD) { if (bits32_) return false; bits = 64; src_bits = 32; }
    const bool vex = m == ZYDIS_MNEMONIC_ANDN || m == ZYDIS_MNEMONIC_BLSI || m == ZYDIS_MNEMONIC_BLSR ||
                     m == ZYDIS_MNEMONIC_BLSMSK || m == ZYDIS_MNEMONIC_SHLX || m == ZYDIS_MNEMONIC_SARX ||
                     m == ZYDIS_MNEMONIC_RORX;
    if (vex && bits == 16) bits = src_bits = 32;
    if (m == ZYDIS_MNEMONIC_CMOVB) req.mnemonic = static_cast<ZydisMnemonic>(ZYDIS_MNEMONIC_CMOVB + 0);
    req.operands[0] = r_op(pick_reg_op(bits));
    const bool force_mem = m == ZYDIS_MNEMONIC_LEA || m == ZYDIS_MNEMONIC_MOVBE;
    if (!force_mem && chance(50)) req.operands[1] = r_op(pick_reg_op(src_bits));
    else { req.operands[1] = mem_op(setup, src_bits / 8, rip); mem_index = 1; }
    req.operand_count = 2;
    if (m == ZYDIS_MNEMONIC_MOVBE && chance(50)) std::swap(req.operands[0], req.operands[1]), mem_index = 0;
    if (m == ZYDIS_MNEMONIC_ANDN || m == ZYDIS_MNEMONIC_SHLX || m == ZYDIS_MNEMONIC_SARX) {
      // ANDN r, r, r/m ; SHLX r, r/m, r
      req.operand_count = 3;
      if (m == ZYDIS_MNEMONIC_ANDN) {
        req.operands[2] = req.operands[1];
        req.operands[1] = r_op(pick_reg_op(bits));
        if (mem_index == 1) mem_index = 2;
      } else {
        req.operands[2] = r_op(pick_reg_op(bits));
      }
    }
    if (m == ZYDIS_MNEMONIC_RORX) { req.operand_count = 3; req.operands[2] = i_op(rand(64)); }
    if (m == ZYDIS_MNEMONIC_IMUL && chance(50)) { req.operand_count = 3; req.operands[2] = i_op(interesting(bits == 64 ? 32 : bits)); }
    if (m == ZYDIS_MNEMONIC_IMUL && bits == 64 && req.operand_count == 3)
      req.operands[2].imm.s = static_cast<int32_t>(req.operands[2].imm.u);
  } else if (family == 5) {  // bit tests and double shifts
    if (chance(60)) {
      req.mnemonic = kBitTest[rand(std::size(kBitTest))];
      const unsigned bits = pick_size(14);
      req.operand_count = 2;
      if (chance(50)) {
        req.operands[0] = r_op(pick_reg_op(bits));
      } else {
        unsigned offset_reg = pick_reg();
        req.operands[0] = mem_op(setup, bits / 8, rip, offset_reg);
        mem_index = 0;
        if (chance(50)) {  // register bit offset, possibly negative, kept inside the data area
          set_reg(setup, offset_reg, static_cast<uint64_t>(range(-256, 256)));
          req.operands[1] = r_op(reg(offset_reg, bits));
          if (rip) return false;
          if (bits != 8 && req.prefixes == 0 && chance(20) && req.mnemonic != ZYDIS_MNEMONIC_BT) req.prefixes = ZYDIS_ATTRIB_HAS_LOCK;
          return finish(out, setup, req, mem_index, rip);
        }
      }
      if (chance(50) || req.operands[0].type == ZYDIS_OPERAND_TYPE_MEMORY) req.operands[1] = i_op(rand(256));
      else req.operands[1] = r_op(pick_reg_op(bits));
    } else {
      req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_SHLD : ZYDIS_MNEMONIC_SHRD;
      const unsigned bits = pick_size(14);
      req.operand_count = 3;
      if (chance(50)) req.operands[0] = r_op(pick_reg_op(bits));
      else { req.operands[0] = mem_op(setup, bits / 8, rip, RCX); mem_index = 0; }
      req.operands[1] = r_op(pick_reg_op(bits));
      const unsigned max_count = bits == 16 ? 16 : bits == 64 ? 64 : 32;
      if (chance(50)) {
        req.operands[2] = i_op(rand(max_count));
        known_count_ = -1;
      } else {
        known_count_ = static_cast<int>(rand(max_count));
        set_reg(setup, RCX, static_cast<uint64_t>(known_count_));
        req.operands[2] = r_op(ZYDIS_REGISTER_CL);
        for (int i = 0; i < 2; ++i)
          if (req.operands[i].type == ZYDIS_OPERAND_TYPE_REGISTER &&
              ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, req.operands[i].reg.value) == ZYDIS_REGISTER_RCX)
            req.operands[i].reg.value = reg(RDX, bits);
      }
    }
  } else {  // stack
    const unsigned bits = bits32_ ? 32 : (chance(85) ? 64 : 16);
    switch (rand(6)) {
      case 0: req.mnemonic = ZYDIS_MNEMONIC_PUSH; req.operand_count = 1; req.operands[0] = r_op(pick_reg_op(bits)); break;
      case 1: req.mnemonic = ZYDIS_MNEMONIC_POP; req.operand_count = 1; req.operands[0] = r_op(pick_reg_op(bits)); break;
      case 2: req.mnemonic = ZYDIS_MNEMONIC_PUSH; req.operand_count = 1; req.operands[0] = mem_op(setup, bits / 8, rip); mem_index = 0; break;
      case 3: req.mnemonic = ZYDIS_MNEMONIC_POP; req.operand_count = 1; req.operands[0] = mem_op(setup, bits / 8, rip); mem_index = 0; break;
      case 4: req.mnemonic = ZYDIS_MNEMONIC_PUSH; req.operand_count = 1; req.operands[0] = i_op(interesting(32)); break;
      default: {
        req.mnemonic = ZYDIS_MNEMONIC_CMPXCHG8B;
        if (!bits32_ && chance(50)) req.mnemonic = ZYDIS_MNEMONIC_CMPXCHG16B;
        req.operand_count = 1;
        req.operands[0] = mem_op(setup, req.mnemonic == ZYDIS_MNEMONIC_CMPXCHG16B ? 16 : 8, rip);
        mem_index = 0;
        break;
      }
    }
    if (req.mnemonic == ZYDIS_MNEMONIC_PUSH && req.operands[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE)
      req.operands[0].imm.s = static_cast<int32_t>(req.operands[0].imm.u);
  }
  return finish(out, setup, req, mem_index, rip);
}

// SSE/SSE2 integer and move instructions.
bool Gen::emit_sse(Asm& out) {
  static constexpr ZydisMnemonic kBinary[] = {
      ZYDIS_MNEMONIC_PAND,      ZYDIS_MNEMONIC_PANDN,     ZYDIS_MNEMONIC_POR,       ZYDIS_MNEMONIC_PXOR,
      ZYDIS_MNEMONIC_XORPS,     ZYDIS_MNEMONIC_ANDNPD,    ZYDIS_MNEMONIC_ORPS,      ZYDIS_MNEMONIC_PADDB,
      ZYDIS_MNEMONIC_PADDW,     ZYDIS_MNEMONIC_PADDD,     ZYDIS_MNEMONIC_PADDQ,     ZYDIS_MNEMONIC_PSUBB,
      ZYDIS_MNEMONIC_PSUBW,     ZYDIS_MNEMONIC_PSUBD,     ZYDIS_MNEMONIC_PSUBQ,     ZYDIS_MNEMONIC_PADDUSB,
      ZYDIS_MNEMONIC_PADDUSW,   ZYDIS_MNEMONIC_PADDSB,    ZYDIS_MNEMONIC_PADDSW,    ZYDIS_MNEMONIC_PSUBUSB,
      ZYDIS_MNEMONIC_PSUBUSW,   ZYDIS_MNEMONIC_PSUBSB,    ZYDIS_MNEMONIC_PSUBSW,    ZYDIS_MNEMONIC_PCMPEQB,
      ZYDIS_MNEMONIC_PCMPEQW,   ZYDIS_MNEMONIC_PCMPEQD,   ZYDIS_MNEMONIC_PCMPGTB,   ZYDIS_MNEMONIC_PCMPGTW,
      ZYDIS_MNEMONIC_PCMPGTD,   ZYDIS_MNEMONIC_PMINUB,    ZYDIS_MNEMONIC_PMAXUB,    ZYDIS_MNEMONIC_PMINSW,
      ZYDIS_MNEMONIC_PMAXSW,    ZYDIS_MNEMONIC_PMULLW,    ZYDIS_MNEMONIC_PMULHW,    ZYDIS_MNEMONIC_PMULHUW,
      ZYDIS_MNEMONIC_PMULUDQ,   ZYDIS_MNEMONIC_PAVGB,     ZYDIS_MNEMONIC_PAVGW,     ZYDIS_MNEMONIC_PSADBW,
      ZYDIS_MNEMONIC_PMADDWD,   ZYDIS_MNEMONIC_PUNPCKLBW, ZYDIS_MNEMONIC_PUNPCKLWD, ZYDIS_MNEMONIC_PUNPCKLDQ,
      ZYDIS_MNEMONIC_PUNPCKLQDQ, ZYDIS_MNEMONIC_PUNPCKHBW, ZYDIS_MNEMONIC_PUNPCKHWD, ZYDIS_MNEMONIC_PUNPCKHDQ,
      ZYDIS_MNEMONIC_PUNPCKHQDQ, ZYDIS_MNEMONIC_UNPCKLPS, ZYDIS_MNEMONIC_UNPCKHPD,  ZYDIS_MNEMONIC_PACKSSWB,
      ZYDIS_MNEMONIC_PACKSSDW,  ZYDIS_MNEMONIC_PACKUSWB,  ZYDIS_MNEMONIC_PSLLW,     ZYDIS_MNEMONIC_PSLLD,
      ZYDIS_MNEMONIC_PSLLQ,     ZYDIS_MNEMONIC_PSRLW,     ZYDIS_MNEMONIC_PSRLD,     ZYDIS_MNEMONIC_PSRLQ,
      ZYDIS_MNEMONIC_PSRAW,     ZYDIS_MNEMONIC_PSRAD,
      ZYDIS_MNEMONIC_PSHUFB,    ZYDIS_MNEMONIC_PSIGNB,    ZYDIS_MNEMONIC_PSIGNW,    ZYDIS_MNEMONIC_PSIGND,
      ZYDIS_MNEMONIC_PMINSB,    ZYDIS_MNEMONIC_PMAXSB,    ZYDIS_MNEMONIC_PMINUW,    ZYDIS_MNEMONIC_PMAXUW,
      ZYDIS_MNEMONIC_PMINSD,    ZYDIS_MNEMONIC_PMAXSD,    ZYDIS_MNEMONIC_PMINUD,    ZYDIS_MNEMONIC_PMAXUD,
      ZYDIS_MNEMONIC_PMULLD,    ZYDIS_MNEMONIC_PMULDQ,    ZYDIS_MNEMONIC_PCMPEQQ,   ZYDIS_MNEMONIC_PCMPGTQ,
      ZYDIS_MNEMONIC_PACKUSDW,  ZYDIS_MNEMONIC_PMULHRSW,  ZYDIS_MNEMONIC_PMADDUBSW, ZYDIS_MNEMONIC_PHADDW,
      ZYDIS_MNEMONIC_PHADDD,    ZYDIS_MNEMONIC_PHSUBW,    ZYDIS_MNEMONIC_PHSUBD,    ZYDIS_MNEMONIC_PABSB,
      ZYDIS_MNEMONIC_PABSW,     ZYDIS_MNEMONIC_PABSD,     ZYDIS_MNEMONIC_PTEST};
  Asm setup;
  ZydisEncoderRequest req{};
  req.machine_mode = zmode();
  int mem_index = -1;
  bool rip = false;
  align16_ = true;
  auto xmm_or_mem = [&](unsigned i, unsigned size) {
    if (chance(60)) {
      req.operands[i] = xmm_op();
    } else {
      req.operands[i] = mem_op(setup, size, rip);
      mem_index = static_cast<int>(i);
    }
  };
  switch (rand(13)) {
    case 11: {  // SSE4.1 extract/insert, zero/sign extension, align/blend, MXCSR, SSE3/SSE4.1 FP
      const unsigned sub = static_cast<unsigned>(rand(9));
      switch (sub >= 7 ? 5 : sub) {
        case 5: case 6: {
          static constexpr ZydisMnemonic kOps[] = {
              ZYDIS_MNEMONIC_ADDSUBPS, ZYDIS_MNEMONIC_ADDSUBPD, ZYDIS_MNEMONIC_HADDPS,   ZYDIS_MNEMONIC_HADDPD,
              ZYDIS_MNEMONIC_HSUBPS,   ZYDIS_MNEMONIC_HSUBPD,   ZYDIS_MNEMONIC_ROUNDPS,  ZYDIS_MNEMONIC_ROUNDPD,
              ZYDIS_MNEMONIC_ROUNDSS,  ZYDIS_MNEMONIC_ROUNDSD,  ZYDIS_MNEMONIC_MOVDDUP,  ZYDIS_MNEMONIC_MOVSHDUP,
              ZYDIS_MNEMONIC_MOVSLDUP, ZYDIS_MNEMONIC_BLENDPS,  ZYDIS_MNEMONIC_BLENDPD,  ZYDIS_MNEMONIC_BLENDVPS,
              ZYDIS_MNEMONIC_BLENDVPD, ZYDIS_MNEMONIC_PBLENDVB, ZYDIS_MNEMONIC_INSERTPS, ZYDIS_MNEMONIC_EXTRACTPS,
              ZYDIS_MNEMONIC_PHMINPOSUW, ZYDIS_MNEMONIC_DPPS,     ZYDIS_MNEMONIC_DPPD,     ZYDIS_MNEMONIC_MPSADBW,
              ZYDIS_MNEMONIC_PCMPESTRI, ZYDIS_MNEMONIC_PCMPESTRM, ZYDIS_MNEMONIC_PCMPISTRI, ZYDIS_MNEMONIC_PCMPISTRM};
          // The last seven (DPPS DPPD MPSADBW PCMPxSTRx) get their own extra share.
          req.mnemonic = sub >= 7 ? kOps[std::size(kOps) - 1 - rand(7)] : kOps[rand(std::size(kOps))];
          const ZydisMnemonic m = req.mnemonic;
          req.operand_count = 2;
          if (m == ZYDIS_MNEMONIC_EXTRACTPS) {
            align16_ = false;
            req.operand_count = 3;
            if (chance(50)) req.operands[0] = r_op(reg(pick_reg(), 32));
            else { req.operands[0] = mem_op(setup, 4, rip); mem_index = 0; }
            req.operands[1] = xmm_op();
            req.operands[2] = i_op(rand(256));
            break;
          }
          req.operands[0] = xmm_op();
          unsigned size = 16;
          if (m == ZYDIS_MNEMONIC_ROUNDSS || m == ZYDIS_MNEMONIC_INSERTPS) size = 4;
          if (m == ZYDIS_MNEMONIC_ROUNDSD || m == ZYDIS_MNEMONIC_MOVDDUP) size = 8;
          if (size != 16) align16_ = false;
          xmm_or_mem(1, size);
          if (m == ZYDIS_MNEMONIC_BLENDVPS || m == ZYDIS_MNEMONIC_BLENDVPD || m == ZYDIS_MNEMONIC_PBLENDVB) {
            req.operand_count = 3;  // implicit XMM0 as the third operand
            req.operands[2] = r_op(ZYDIS_REGISTER_XMM0);
          } else if (m == ZYDIS_MNEMONIC_ROUNDPS || m == ZYDIS_MNEMONIC_ROUNDPD || m == ZYDIS_MNEMONIC_ROUNDSS ||
                     m == ZYDIS_MNEMONIC_ROUNDSD || m == ZYDIS_MNEMONIC_BLENDPS || m == ZYDIS_MNEMONIC_BLENDPD ||
                     m == ZYDIS_MNEMONIC_INSERTPS || m == ZYDIS_MNEMONIC_DPPS || m == ZYDIS_MNEMONIC_DPPD ||
                     m == ZYDIS_MNEMONIC_MPSADBW) {
            req.operand_count = 3;
            req.operands[2] = i_op(rand(m == ZYDIS_MNEMONIC_INSERTPS || m == ZYDIS_MNEMONIC_BLENDPS ||
                                                m == ZYDIS_MNEMONIC_DPPS || m == ZYDIS_MNEMONIC_DPPD ||
                                                m == ZYDIS_MNEMONIC_MPSADBW || chance(20) ? 256 : 16));
          } else if (m == ZYDIS_MNEMONIC_PCMPESTRI || m == ZYDIS_MNEMONIC_PCMPESTRM ||
                     m == ZYDIS_MNEMONIC_PCMPISTRI || m == ZYDIS_MNEMONIC_PCMPISTRM) {
            // String compares: no alignment requirement; explicit lengths mostly in range.
            if (mem_index == 1 && chance(50)) req.operands[1].mem.displacement += static_cast<int64_t>(rand(16));
            auto used = [&](ZydisRegister r) {
              if (mem_index != 1) return false;
              const auto& mo = req.operands[1].mem;
              return ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, mo.base) == r ||
                     ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LONG_64, mo.index) == r;
            };
            if (chance(80) && !used(ZYDIS_REGISTER_RAX)) set_reg(setup, RAX, static_cast<uint64_t>(range(-20, 20)));
            if (chance(80) && !used(ZYDIS_REGISTER_RDX)) set_reg(setup, RDX, static_cast<uint64_t>(range(-20, 20)));
            req.operand_count = 3;
            req.operands[2] = i_op(rand(128));
          }
          break;
        }
        case 0: {
          static constexpr ZydisMnemonic kExt[] = {ZYDIS_MNEMONIC_PMOVZXBW, ZYDIS_MNEMONIC_PMOVZXBD, ZYDIS_MNEMONIC_PMOVZXBQ,
                                                   ZYDIS_MNEMONIC_PMOVZXWD, ZYDIS_MNEMONIC_PMOVZXWQ, ZYDIS_MNEMONIC_PMOVZXDQ,
                                                   ZYDIS_MNEMONIC_PMOVSXBW, ZYDIS_MNEMONIC_PMOVSXBD, ZYDIS_MNEMONIC_PMOVSXBQ,
                                                   ZYDIS_MNEMONIC_PMOVSXWD, ZYDIS_MNEMONIC_PMOVSXWQ, ZYDIS_MNEMONIC_PMOVSXDQ};
          static constexpr unsigned kSize[] = {8, 4, 2, 8, 4, 8, 8, 4, 2, 8, 4, 8};
          const unsigned k = static_cast<unsigned>(rand(std::size(kExt)));
          req.mnemonic = kExt[k];
          req.operand_count = 2;
          req.operands[0] = xmm_op();
          align16_ = false;
          xmm_or_mem(1, kSize[k]);
          break;
        }
        case 1: {
          req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_PALIGNR : ZYDIS_MNEMONIC_PBLENDW;
          req.operand_count = 3;
          req.operands[0] = xmm_op();
          xmm_or_mem(1, 16);
          req.operands[2] = i_op(req.mnemonic == ZYDIS_MNEMONIC_PALIGNR && chance(80) ? rand(33) : rand(256));
          break;
        }
        case 2: {
          static constexpr ZydisMnemonic kExtr[] = {ZYDIS_MNEMONIC_PEXTRB, ZYDIS_MNEMONIC_PEXTRW, ZYDIS_MNEMONIC_PEXTRD,
                                                    ZYDIS_MNEMONIC_PEXTRQ};
          static constexpr unsigned kBits[] = {8, 16, 32, 64};
          const unsigned k = static_cast<unsigned>(rand(bits32_ ? 3 : 4));
          req.mnemonic = kExtr[k];
          req.operand_count = 3;
          align16_ = false;
          if (chance(50)) req.operands[0] = r_op(reg(pick_reg(), k == 3 ? 64 : 32));
          else { req.operands[0] = mem_op(setup, kBits[k] / 8, rip); mem_index = 0; }
          req.operands[1] = xmm_op();
          req.operands[2] = i_op(rand(256));
          break;
        }
        case 3: {
          static constexpr ZydisMnemonic kIns[] = {ZYDIS_MNEMONIC_PINSRB, ZYDIS_MNEMONIC_PINSRW, ZYDIS_MNEMONIC_PINSRD,
                                                   ZYDIS_MNEMONIC_PINSRQ};
          static constexpr unsigned kBits[] = {8, 16, 32, 64};
          const unsigned k = static_cast<unsigned>(rand(bits32_ ? 3 : 4));
          req.mnemonic = kIns[k];
          req.operand_count = 3;
          align16_ = false;
          req.operands[0] = xmm_op();
          if (chance(50)) req.operands[1] = r_op(reg(pick_reg(), k == 3 ? 64 : 32));
          else { req.operands[1] = mem_op(setup, kBits[k] / 8, rip); mem_index = 1; }
          req.operands[2] = i_op(rand(256));
          break;
        }
        default: {  // LDMXCSR from memory set up with a valid value (rounding, DAZ/FTZ, masks), or STMXCSR
          align16_ = false;
          req.operand_count = 1;
          req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_LDMXCSR : ZYDIS_MNEMONIC_STMXCSR;
          req.operands[0] = mem_op(setup, 4, rip);
          mem_index = 0;  // LDMXCSR loads random data: reserved bits set give #GP on both sides
          break;
        }
      }
      break;
    }
    case 12: {  // BMI2 / ADX / CRC32 / MOVBE scalar extras
      static constexpr ZydisMnemonic kOps[] = {ZYDIS_MNEMONIC_ADCX, ZYDIS_MNEMONIC_ADOX, ZYDIS_MNEMONIC_MULX,
                                               ZYDIS_MNEMONIC_BZHI, ZYDIS_MNEMONIC_BEXTR, ZYDIS_MNEMONIC_PDEP,
                                               ZYDIS_MNEMONIC_PEXT, ZYDIS_MNEMONIC_CRC32, ZYDIS_MNEMONIC_MOVNTI,
                                               ZYDIS_MNEMONIC_CLFLUSH};
      req.mnemonic = kOps[rand(std::size(kOps))];
      align16_ = false;
      const unsigned bits = bits32_ ? 32 : (chance(50) ? 32 : 64);
      if (req.mnemonic == ZYDIS_MNEMONIC_MOVNTI || req.mnemonic == ZYDIS_MNEMONIC_CLFLUSH) {
        const bool movnti = req.mnemonic == ZYDIS_MNEMONIC_MOVNTI;
        req.operand_count = movnti ? 2 : 1;
        req.operands[0] = mem_op(setup, movnti ? bits / 8 : 1, rip);
        mem_index = 0;
        if (movnti) req.operands[1] = r_op(reg(pick_reg(), bits));
        break;
      }
      req.operands[0] = r_op(reg(pick_reg(), bits));
      if (req.mnemonic == ZYDIS_MNEMONIC_ADCX || req.mnemonic == ZYDIS_MNEMONIC_ADOX) {
        req.operand_count = 2;
        if (chance(50)) req.operands[1] = r_op(reg(pick_reg(), bits));
        else { req.operands[1] = mem_op(setup, bits / 8, rip); mem_index = 1; }
      } else if (req.mnemonic == ZYDIS_MNEMONIC_CRC32) {
        req.operand_count = 2;
        const unsigned src_bits = bits == 64 ? (chance(50) ? 64 : 8) : (8u << rand(3));
        if (chance(50)) req.operands[1] = r_op(pick_reg_op(src_bits));
        else { req.operands[1] = mem_op(setup, src_bits / 8, rip); mem_index = 1; }
      } else {
        req.operand_count = 3;
        // MULX/PDEP/PEXT: r, r, r/m ; BZHI/BEXTR: r, r/m, r
        const bool rm_middle = req.mnemonic == ZYDIS_MNEMONIC_BZHI || req.mnemonic == ZYDIS_MNEMONIC_BEXTR;
        const unsigned mem_slot = rm_middle ? 1 : 2, reg_slot = rm_middle ? 2 : 1;
        req.operands[reg_slot] = r_op(reg(pick_reg(), bits));
        if (chance(50)) req.operands[mem_slot] = r_op(reg(pick_reg(), bits));
        else { req.operands[mem_slot] = mem_op(setup, bits / 8, rip); mem_index = static_cast<int>(mem_slot); }
      }
      break;
    }
    case 8: case 9: case 10: {  // floating point
      static constexpr ZydisMnemonic kPacked[] = {
          ZYDIS_MNEMONIC_ADDPS, ZYDIS_MNEMONIC_SUBPS, ZYDIS_MNEMONIC_MULPS, ZYDIS_MNEMONIC_DIVPS, ZYDIS_MNEMONIC_MINPS,
          ZYDIS_MNEMONIC_MAXPS, ZYDIS_MNEMONIC_SQRTPS, ZYDIS_MNEMONIC_ADDPD, ZYDIS_MNEMONIC_SUBPD, ZYDIS_MNEMONIC_MULPD,
          ZYDIS_MNEMONIC_DIVPD, ZYDIS_MNEMONIC_MINPD, ZYDIS_MNEMONIC_MAXPD, ZYDIS_MNEMONIC_SQRTPD,
          ZYDIS_MNEMONIC_CVTDQ2PS, ZYDIS_MNEMONIC_CVTPS2DQ, ZYDIS_MNEMONIC_CVTTPS2DQ, ZYDIS_MNEMONIC_CVTPD2PS,
          ZYDIS_MNEMONIC_CVTPD2DQ, ZYDIS_MNEMONIC_CVTTPD2DQ, ZYDIS_MNEMONIC_CMPPS, ZYDIS_MNEMONIC_CMPPD,
          ZYDIS_MNEMONIC_RCPPS, ZYDIS_MNEMONIC_RSQRTPS};
      static constexpr ZydisMnemonic kScalar32[] = {ZYDIS_MNEMONIC_ADDSS, ZYDIS_MNEMONIC_SUBSS, ZYDIS_MNEMONIC_MULSS,
                                                    ZYDIS_MNEMONIC_DIVSS, ZYDIS_MNEMONIC_MINSS, ZYDIS_MNEMONIC_MAXSS,
                                                    ZYDIS_MNEMONIC_SQRTSS, ZYDIS_MNEMONIC_CVTSS2SD, ZYDIS_MNEMONIC_COMISS,
                                                    ZYDIS_MNEMONIC_UCOMISS, ZYDIS_MNEMONIC_CMPSS, ZYDIS_MNEMONIC_RCPSS,
                                                    ZYDIS_MNEMONIC_RSQRTSS};
      static constexpr ZydisMnemonic kScalar64[] = {ZYDIS_MNEMONIC_ADDSD, ZYDIS_MNEMONIC_SUBSD, ZYDIS_MNEMONIC_MULSD,
                                                    ZYDIS_MNEMONIC_DIVSD, ZYDIS_MNEMONIC_MINSD, ZYDIS_MNEMONIC_MAXSD,
                                                    ZYDIS_MNEMONIC_SQRTSD, ZYDIS_MNEMONIC_CVTSD2SS, ZYDIS_MNEMONIC_COMISD,
                                                    ZYDIS_MNEMONIC_UCOMISD, ZYDIS_MNEMONIC_CMPSD, ZYDIS_MNEMONIC_CVTPS2PD,
                                                    ZYDIS_MNEMONIC_CVTDQ2PD};
      req.operand_count = 2;
      const unsigned kind = static_cast<unsigned>(rand(4));
      if (kind == 3) {  // conversions between GPRs and scalars
        const unsigned bits = bits32_ ? 32 : (chance(50) ? 32 : 64);
        align16_ = false;
        if (chance(50)) {
          req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_CVTSI2SS : ZYDIS_MNEMONIC_CVTSI2SD;
          req.operands[0] = xmm_op();
          if (chance(60)) req.operands[1] = r_op(reg(pick_reg(), bits));
          else { req.operands[1] = mem_op(setup, bits / 8, rip); mem_index = 1; }
        } else {
          static constexpr ZydisMnemonic kToInt[] = {ZYDIS_MNEMONIC_CVTSS2SI, ZYDIS_MNEMONIC_CVTTSS2SI,
                                                     ZYDIS_MNEMONIC_CVTSD2SI, ZYDIS_MNEMONIC_CVTTSD2SI};
          req.mnemonic = kToInt[rand(4)];
          req.operands[0] = r_op(reg(pick_reg(), bits));
          const bool is_ss = req.mnemonic == ZYDIS_MNEMONIC_CVTSS2SI || req.mnemonic == ZYDIS_MNEMONIC_CVTTSS2SI;
          xmm_or_mem(1, is_ss ? 4 : 8);
        }
        break;
      }
      if (kind == 0) {
        req.mnemonic = kPacked[rand(std::size(kPacked))];
        req.operands[0] = xmm_op();
        xmm_or_mem(1, 16);
      } else {
        const bool s32 = kind == 1;
        req.mnemonic = s32 ? kScalar32[rand(std::size(kScalar32))] : kScalar64[rand(std::size(kScalar64))];
        align16_ = false;
        req.operands[0] = xmm_op();
        xmm_or_mem(1, s32 ? 4 : 8);
      }
      if (req.mnemonic == ZYDIS_MNEMONIC_CMPPS || req.mnemonic == ZYDIS_MNEMONIC_CMPPD ||
          req.mnemonic == ZYDIS_MNEMONIC_CMPSS || req.mnemonic == ZYDIS_MNEMONIC_CMPSD) {
        req.operand_count = 3;
        req.operands[2] = i_op(rand(8));
      }
      break;
    }
    case 0: case 1: case 2: {
      req.mnemonic = kBinary[rand(std::size(kBinary))];
      req.operand_count = 2;
      req.operands[0] = xmm_op();
      const bool is_shift = req.mnemonic == ZYDIS_MNEMONIC_PSLLW || req.mnemonic == ZYDIS_MNEMONIC_PSLLD ||
                            req.mnemonic == ZYDIS_MNEMONIC_PSLLQ || req.mnemonic == ZYDIS_MNEMONIC_PSRLW ||
                            req.mnemonic == ZYDIS_MNEMONIC_PSRLD || req.mnemonic == ZYDIS_MNEMONIC_PSRLQ ||
                            req.mnemonic == ZYDIS_MNEMONIC_PSRAW || req.mnemonic == ZYDIS_MNEMONIC_PSRAD;
      if (is_shift && chance(50)) req.operands[1] = i_op(chance(80) ? rand(70) : rand(256));
      else xmm_or_mem(1, 16);
      break;
    }
    case 3: {  // 128-bit moves
      static constexpr ZydisMnemonic kMoves[] = {ZYDIS_MNEMONIC_MOVDQA, ZYDIS_MNEMONIC_MOVDQU, ZYDIS_MNEMONIC_MOVAPS,
                                                 ZYDIS_MNEMONIC_MOVUPS, ZYDIS_MNEMONIC_MOVUPD, ZYDIS_MNEMONIC_LDDQU,
                                                 ZYDIS_MNEMONIC_MOVNTDQA};
      req.mnemonic = kMoves[rand(std::size(kMoves))];
      if (req.mnemonic == ZYDIS_MNEMONIC_MOVDQU || req.mnemonic == ZYDIS_MNEMONIC_MOVUPS ||
          req.mnemonic == ZYDIS_MNEMONIC_MOVUPD || req.mnemonic == ZYDIS_MNEMONIC_LDDQU)
        align16_ = false;
      req.operand_count = 2;
      const bool load_only = req.mnemonic == ZYDIS_MNEMONIC_LDDQU || req.mnemonic == ZYDIS_MNEMONIC_MOVNTDQA;
      if (!load_only && chance(40)) {
        req.operands[0] = mem_op(setup, 16, rip);
        mem_index = 0;
        req.operands[1] = xmm_op();
      } else {
        req.operands[0] = xmm_op();
        if (load_only) { req.operands[1] = mem_op(setup, 16, rip); mem_index = 1; }
        else xmm_or_mem(1, 16);
      }
      break;
    }
    case 4: {  // MOVD/MOVQ with GPRs and memory, MOVSS/MOVSD, MOVLPS/MOVHPS
      align16_ = false;
      req.operand_count = 2;
      switch (rand(6)) {
        case 0: {
          const unsigned bits = bits32_ ? 32 : (chance(50) ? 32 : 64);
          req.mnemonic = bits == 32 ? ZYDIS_MNEMONIC_MOVD : ZYDIS_MNEMONIC_MOVQ;
          if (chance(50)) {
            req.operands[0] = xmm_op();
            if (chance(50)) req.operands[1] = r_op(reg(pick_reg(), bits));
            else { req.operands[1] = mem_op(setup, bits / 8, rip); mem_index = 1; }
          } else {
            if (chance(50)) req.operands[0] = r_op(reg(pick_reg(), bits));
            else { req.operands[0] = mem_op(setup, bits / 8, rip); mem_index = 0; }
            req.operands[1] = xmm_op();
          }
          break;
        }
        case 1: req.mnemonic = ZYDIS_MNEMONIC_MOVQ; req.operands[0] = xmm_op(); xmm_or_mem(1, 8); break;
        case 2: case 3: {
          req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_MOVSS : ZYDIS_MNEMONIC_MOVSD;
          const unsigned size = req.mnemonic == ZYDIS_MNEMONIC_MOVSS ? 4 : 8;
          if (chance(30)) { req.operands[0] = mem_op(setup, size, rip); mem_index = 0; req.operands[1] = xmm_op(); }
          else { req.operands[0] = xmm_op(); xmm_or_mem(1, size); }
          break;
        }
        case 4: {
          static constexpr ZydisMnemonic kHalf[] = {ZYDIS_MNEMONIC_MOVLPS, ZYDIS_MNEMONIC_MOVHPS, ZYDIS_MNEMONIC_MOVLPD,
                                                    ZYDIS_MNEMONIC_MOVHPD};
          req.mnemonic = kHalf[rand(4)];
          if (chance(50)) { req.operands[0] = mem_op(setup, 8, rip); mem_index = 0; req.operands[1] = xmm_op(); }
          else { req.operands[0] = xmm_op(); req.operands[1] = mem_op(setup, 8, rip); mem_index = 1; }
          break;
        }
        default:
          req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_MOVHLPS : ZYDIS_MNEMONIC_MOVLHPS;
          req.operands[0] = xmm_op();
          req.operands[1] = xmm_op();
          break;
      }
      break;
    }
    case 5: {  // shuffles
      static constexpr ZydisMnemonic kShuf[] = {ZYDIS_MNEMONIC_PSHUFD, ZYDIS_MNEMONIC_PSHUFLW, ZYDIS_MNEMONIC_PSHUFHW,
                                                ZYDIS_MNEMONIC_SHUFPS, ZYDIS_MNEMONIC_SHUFPD};
      req.mnemonic = kShuf[rand(std::size(kShuf))];
      req.operand_count = 3;
      req.operands[0] = xmm_op();
      xmm_or_mem(1, 16);
      req.operands[2] = i_op(rand(256));
      break;
    }
    case 6: {
      req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_PSLLDQ : ZYDIS_MNEMONIC_PSRLDQ;
      req.operand_count = 2;
      req.operands[0] = xmm_op();
      req.operands[1] = i_op(chance(80) ? rand(17) : rand(256));
      break;
    }
    default: {
      static constexpr ZydisMnemonic kMask[] = {ZYDIS_MNEMONIC_PMOVMSKB, ZYDIS_MNEMONIC_MOVMSKPS, ZYDIS_MNEMONIC_MOVMSKPD};
      req.mnemonic = kMask[rand(std::size(kMask))];
      req.operand_count = 2;
      req.operands[0] = r_op(reg(pick_reg(), 32));
      req.operands[1] = xmm_op();
      break;
    }
  }
  bool ok = finish(out, setup, req, mem_index, rip);
  align16_ = false;
  return ok;
}

// MMX instructions on MM registers.
bool Gen::emit_mmx(Asm& out) {
  static constexpr ZydisMnemonic kOps[] = {
      ZYDIS_MNEMONIC_PAND,     ZYDIS_MNEMONIC_PANDN,    ZYDIS_MNEMONIC_POR,       ZYDIS_MNEMONIC_PXOR,
      ZYDIS_MNEMONIC_PADDB,    ZYDIS_MNEMONIC_PADDW,    ZYDIS_MNEMONIC_PADDD,     ZYDIS_MNEMONIC_PADDQ,
      ZYDIS_MNEMONIC_PSUBB,    ZYDIS_MNEMONIC_PSUBQ,    ZYDIS_MNEMONIC_PADDUSB,   ZYDIS_MNEMONIC_PADDSW,
      ZYDIS_MNEMONIC_PSUBUSW,  ZYDIS_MNEMONIC_PSUBSB,   ZYDIS_MNEMONIC_PCMPEQB,   ZYDIS_MNEMONIC_PCMPGTW,
      ZYDIS_MNEMONIC_PCMPGTD,  ZYDIS_MNEMONIC_PMINUB,   ZYDIS_MNEMONIC_PMAXSW,    ZYDIS_MNEMONIC_PMULLW,
      ZYDIS_MNEMONIC_PMULHW,   ZYDIS_MNEMONIC_PMULHUW,  ZYDIS_MNEMONIC_PMULUDQ,   ZYDIS_MNEMONIC_PAVGB,
      ZYDIS_MNEMONIC_PSADBW,   ZYDIS_MNEMONIC_PMADDWD,  ZYDIS_MNEMONIC_PUNPCKLBW, ZYDIS_MNEMONIC_PUNPCKLWD,
      ZYDIS_MNEMONIC_PUNPCKLDQ, ZYDIS_MNEMONIC_PUNPCKHBW, ZYDIS_MNEMONIC_PUNPCKHWD, ZYDIS_MNEMONIC_PUNPCKHDQ,
      ZYDIS_MNEMONIC_PACKSSWB, ZYDIS_MNEMONIC_PACKSSDW, ZYDIS_MNEMONIC_PACKUSWB,  ZYDIS_MNEMONIC_PSHUFB,
      ZYDIS_MNEMONIC_PSIGNW,   ZYDIS_MNEMONIC_PABSB,    ZYDIS_MNEMONIC_PABSD,     ZYDIS_MNEMONIC_PHADDW,
      ZYDIS_MNEMONIC_PHSUBD,   ZYDIS_MNEMONIC_PMULHRSW, ZYDIS_MNEMONIC_PMADDUBSW, ZYDIS_MNEMONIC_PSLLW,
      ZYDIS_MNEMONIC_PSRLQ,    ZYDIS_MNEMONIC_PSRAD,    ZYDIS_MNEMONIC_PSLLD,     ZYDIS_MNEMONIC_PSRAW};
  Asm setup;
  ZydisEncoderRequest req{};
  req.machine_mode = zmode();
  int mem_index = -1;
  bool rip = false;
  auto mm = [&]() { return r_op(static_cast<ZydisRegister>(ZYDIS_REGISTER_MM0 + rand(8))); };
  req.operand_count = 2;
  switch (rand(6)) {
    case 0: case 1: case 2: {
      req.mnemonic = kOps[rand(std::size(kOps))];
      req.operands[0] = mm();
      const bool shift = req.mnemonic == ZYDIS_MNEMONIC_PSLLW || req.mnemonic == ZYDIS_MNEMONIC_PSRLQ ||
                         req.mnemonic == ZYDIS_MNEMONIC_PSRAD || req.mnemonic == ZYDIS_MNEMONIC_PSLLD ||
                         req.mnemonic == ZYDIS_MNEMONIC_PSRAW;
      if (shift && chance(50)) req.operands[1] = i_op(rand(70));
      else if (chance(60)) req.operands[1] = mm();
      else { req.operands[1] = mem_op(setup, 8, rip); mem_index = 1; }
      break;
    }
    case 3: {
      req.mnemonic = chance(50) ? ZYDIS_MNEMONIC_PSHUFW : ZYDIS_MNEMONIC_PALIGNR;
      req.operand_count = 3;
      req.operands[0] = mm();
      if (chance(60)) req.operands[1] = mm();
      else { req.operands[1] = mem_op(setup, 8, rip); mem_index = 1; }
      req.operands[2] = i_op(rand(req.mnemonic == ZYDIS_MNEMONIC_PALIGNR && chance(80) ? 17 : 256));
      break;
    }
    case 4: {  // moves between MMX, GPRs, memory and XMM; MMX <-> floating-point conversions
      switch (rand(7)) {
        case 5: {
          static constexpr ZydisMnemonic kToFp[] = {ZYDIS_MNEMONIC_CVTPI2PS, ZYDIS_MNEMONIC_CVTPI2PD};
          req.mnemonic = kToFp[rand(2)];
          req.operands[0] = xmm_op();
          if (chance(60)) req.operands[1] = mm();
          else { req.operands[1] = mem_op(setup, 8, rip); mem_index = 1; }
          break;
        }
        case 6: {
          static constexpr ZydisMnemonic kFromFp[] = {ZYDIS_MNEMONIC_CVTPS2PI, ZYDIS_MNEMONIC_CVTTPS2PI,
                                                      ZYDIS_MNEMONIC_CVTPD2PI, ZYDIS_MNEMONIC_CVTTPD2PI};
          req.mnemonic = kFromFp[rand(4)];
          req.operands[0] = mm();
          const bool pd = req.mnemonic == ZYDIS_MNEMONIC_CVTPD2PI || req.mnemonic == ZYDIS_MNEMONIC_CVTTPD2PI;
          align16_ = pd;
          if (chance(60)) req.operands[1] = xmm_op();
          else { req.operands[1] = mem_op(setup, pd ? 16 : 8, rip); mem_index = 1; }
          align16_ = false;
          break;
        }
        case 0: req.mnemonic = ZYDIS_MNEMONIC_MOVD; req.operands[0] = mm(); req.operands[1] = r_op(reg(pick_reg(), 32)); break;
        case 1: req.mnemonic = ZYDIS_MNEMONIC_MOVD; req.operands[0] = r_op(reg(pick_reg(), 32)); req.operands[1] = mm(); break;
        case 2: req.mnemonic = ZYDIS_MNEMONIC_MOVQ; req.operands[0] = mm(); req.operands[1] = mem_op(setup, 8, rip); mem_index = 1; break;
        case 3: req.mnemonic = ZYDIS_MNEMONIC_MOVQ; req.operands[0] = mem_op(setup, 8, rip); mem_index = 0; req.operands[1] = mm(); break;
        default:
          if (chance(50)) { req.mnemonic = ZYDIS_MNEMONIC_MOVQ2DQ; req.operands[0] = xmm_op(); req.operands[1] = mm(); }
          else { req.mnemonic = ZYDIS_MNEMONIC_MOVDQ2Q; req.operands[0] = mm(); req.operands[1] = xmm_op(); }
      }
      break;
    }
    default: {
      switch (rand(3)) {
        case 0: req.mnemonic = ZYDIS_MNEMONIC_PMOVMSKB; req.operands[0] = r_op(reg(pick_reg(), 32)); req.operands[1] = mm(); break;
        case 1:
          req.mnemonic = ZYDIS_MNEMONIC_PEXTRW; req.operand_count = 3;
          req.operands[0] = r_op(reg(pick_reg(), 32)); req.operands[1] = mm(); req.operands[2] = i_op(rand(256));
          break;
        default:
          req.mnemonic = ZYDIS_MNEMONIC_PINSRW; req.operand_count = 3;
          req.operands[0] = mm(); req.operands[1] = r_op(reg(pick_reg(), 32)); req.operands[2] = i_op(rand(256));
      }
    }
  }
  return finish(out, setup, req, mem_index, rip);
}

// MASKMOVDQU / MASKMOVQ to [rDI], sometimes with bytes on the unmapped page.
bool Gen::emit_maskmov(Asm& out) {
  const bool mm = chance(40);
  uint64_t target = kDataBase + rand(kDataSize - 16);
  if (chance(15)) target = kDataBase + kDataSize - 1 - rand(16);
  else if (chance(3)) target = 0x20000000 + rand(0x1000);
  set_reg(out, RDI, target);
  const unsigned n = mm ? 8 : nregs();
  const unsigned src = static_cast<unsigned>(rand(n)), mask = static_cast<unsigned>(rand(n));
  std::vector<uint8_t> b;
  if (!mm) b.push_back(0x66);
  if (src >= 8 || mask >= 8) b.push_back(static_cast<uint8_t>(0x40 | (src >= 8 ? 4 : 0) | (mask >= 8 ? 1 : 0)));
  b.insert(b.end(), {0x0f, 0xf7, static_cast<uint8_t>(0xc0 | ((src & 7) << 3) | (mask & 7))});
  last_insn_offset_ = out.bytes.size();
  out.append(b);
  return true;
}

// An x87 (or FXSAVE/FXRSTOR, esc = 0x0f) memory form with a [base + disp32] operand:
// the base register is set up so the operand lies in the data area (rarely
// misaligned, page-crossing or unmapped).
bool Gen::emit_x87_memory(Asm& out, unsigned esc, unsigned reg, unsigned size, bool prefix66, bool fxsave) {
  uint64_t target = kDataBase + rand(kDataSize - size);
  if (fxsave && !chance(5)) target &= ~uint64_t{15};
  const unsigned fault = static_cast<unsigned>(rand(100));
  if (fault == 0) target = kDataBase + kDataSize - 1 - rand(size);  // crosses into the unmapped page
  else if (fault == 1) target = 0x20000000 + rand(0x1000);
  const unsigned base = pick_reg();
  const int32_t disp = static_cast<int32_t>(range(-2048, 2048));
  set_reg(out, base, target - static_cast<uint64_t>(static_cast<int64_t>(disp)));
  auto modrm_disp = [&](std::vector<uint8_t>& b, unsigned r, int32_t d) {
    b.push_back(static_cast<uint8_t>(0x80 | (r << 3) | (base & 7)));
    if ((base & 7) == 4) b.push_back(0x24);  // R12 needs a SIB byte
    for (int i = 0; i < 4; ++i) b.push_back(static_cast<uint8_t>(static_cast<uint32_t>(d) >> (8 * i)));
  };
  const uint8_t rex_b = base >= 8 ? 0x41 : 0;
  if (fxsave && reg == 1 && chance(70)) {  // FXRSTOR: mostly a valid MXCSR in the image
    std::vector<uint8_t> m;
    if (rex_b) m.push_back(rex_b);
    m.push_back(0xc7);
    m.push_back(static_cast<uint8_t>(0x80 | (base & 7)));
    if ((base & 7) == 4) m.push_back(0x24);
    for (int i = 0; i < 4; ++i) m.push_back(static_cast<uint8_t>(static_cast<uint32_t>(disp + 24) >> (8 * i)));
    const uint32_t mxcsr = 0x1f80 | static_cast<uint32_t>(rand(4) << 13) | (chance(25) ? 0x8040u : 0u);
    for (int i = 0; i < 4; ++i) m.push_back(static_cast<uint8_t>(mxcsr >> (8 * i)));
    out.append(m);
  }
  std::vector<uint8_t> b;
  if (prefix66) b.push_back(0x66);
  if (fxsave) {
    const bool wide = !bits32_ && chance(50);
    if (wide || rex_b) b.push_back(static_cast<uint8_t>(0x40 | (wide ? 8 : 0) | (rex_b & 1)));
    b.insert(b.end(), {0x0f, 0xae});
  } else {
    if (rex_b) b.push_back(rex_b);
    b.push_back(static_cast<uint8_t>(0xd8 + esc));
  }
  modrm_disp(b, reg, disp);
  last_insn_offset_ = out.bytes.size();
  out.append(b);
  // Intel parts with "FCS/FDS deprecated" / "FDP updated on exceptions only" (CPUID 7.0:EBX
  // bits 13 and 6) store different x87 pointers than Kiln's classic model: there, clear the
  // pointer fields of FNSTENV/FNSAVE images on both sides.
  static const bool pointer_quirks = [] {
    unsigned a = 0, b7 = 0, c = 0, d = 0;
    __get_cpuid_count(7, 0, &a, &b7, &c, &d);
    return (b7 & ((1u << 6) | (1u << 13))) != 0;
  }();
  if (pointer_quirks && !fxsave && reg == 6 && (esc == 1 || esc == 5)) {
    const int first = prefix66 ? 6 : 12, last = prefix66 ? 14 : 28;  // FIP .. FDS
    for (int off = first; off < last; off += 2) {
      std::vector<uint8_t> z = {0x66};
      if (rex_b) z.push_back(rex_b);
      z.push_back(0xc7);
      modrm_disp(z, 0, disp + off);
      z.insert(z.end(), {0, 0});
      out.append(z);
    }
  }
  if (fxsave && reg == 0) {
    // FOP/FIP/FDP (AMD stores them only with an exception pending) and MXCSR_MASK
    // (AMD reports bit 17) are host-specific: clear them in the image.
    for (int off : {6, 8, 12, 16, 20, 28}) {
      std::vector<uint8_t> z;
      if (off == 6) z.push_back(0x66);
      if (rex_b) z.push_back(rex_b);
      z.push_back(0xc7);
      modrm_disp(z, 0, disp + off);
      z.insert(z.end(), {0, 0});
      if (off != 6) z.insert(z.end(), {0, 0});
      out.append(z);
    }
  }
  return true;
}

// x87 instructions (all forms Kiln implements) and FXSAVE/FXRSTOR.
bool Gen::emit_x87(Asm& out) {
  auto raw = [&](uint8_t esc, uint8_t modrm) {
    last_insn_offset_ = out.bytes.size();
    out.raw({static_cast<uint8_t>(0xd8 + esc), modrm});
    return true;
  };
  const uint8_t i = static_cast<uint8_t>(rand(8));
  switch (rand(20)) {
    case 0: case 1:  // arithmetic st(0), st(i) / st(i), st(0) / and pop
      return raw(static_cast<uint8_t>(chance(50) ? 0 : chance(50) ? 4 : 6), static_cast<uint8_t>(0xc0 | (rand(8) << 3) | i));
    case 2: case 3: {  // arithmetic with m32fp / m32int / m64fp / m16int
      static constexpr unsigned kSize[] = {4, 0, 4, 0, 8, 0, 2, 0};
      const unsigned esc = static_cast<unsigned>(rand(4)) * 2;
      return emit_x87_memory(out, esc, static_cast<unsigned>(rand(8)), kSize[esc]);
    }
    case 4: {  // loads
      switch (rand(8)) {
        case 0: return raw(1, static_cast<uint8_t>(0xc0 | i));           // FLD st(i)
        case 1: return raw(1, static_cast<uint8_t>(0xe8 + rand(7)));     // FLD1 .. FLDZ
        case 2: return emit_x87_memory(out, 1, 0, 4);                     // FLD m32fp
        case 3: return emit_x87_memory(out, 5, 0, 8);                     // FLD m64fp
        case 4: return emit_x87_memory(out, 3, 5, 10);                    // FLD m80fp
        case 5: return emit_x87_memory(out, 7, 0, 2);                     // FILD m16
        case 6: return emit_x87_memory(out, 3, 0, 4);                     // FILD m32
        default: return emit_x87_memory(out, 7, chance(80) ? 5 : 4, 8);  // FILD m64, FBLD
      }
    }
    case 5: case 6: {  // stores
      switch (rand(9)) {
        case 0: return raw(5, static_cast<uint8_t>((chance(50) ? 0xd0 : 0xd8) | i));  // FST/FSTP st(i)
        case 1: return emit_x87_memory(out, 1, static_cast<unsigned>(2 + rand(2)), 4);   // FST/FSTP m32fp
        case 2: return emit_x87_memory(out, 5, static_cast<unsigned>(2 + rand(2)), 8);   // FST/FSTP m64fp
        case 3: return emit_x87_memory(out, 3, 7, 10);                                    // FSTP m80fp
        case 4: return emit_x87_memory(out, 7, static_cast<unsigned>(1 + rand(3)), 2);   // FISTTP/FIST/FISTP m16
        case 5: return emit_x87_memory(out, 3, static_cast<unsigned>(1 + rand(3)), 4);   // ... m32
        case 6: return emit_x87_memory(out, 5, 1, 8);                                     // FISTTP m64
        case 7: return emit_x87_memory(out, 7, 7, 8);                                     // FISTP m64
        default: return emit_x87_memory(out, 7, 6, 10);                                   // FBSTP
      }
    }
    case 7: case 8: {  // one-operand arithmetic and transcendental functions
      static constexpr uint8_t kOps[] = {0xe0, 0xe1, 0xe4, 0xe5, 0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5,
                                         0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff, 0xd0};
      return raw(1, kOps[rand(std::size(kOps))]);
    }
    case 9: case 10: {  // compares
      switch (rand(8)) {
        case 0: return raw(0, static_cast<uint8_t>((chance(50) ? 0xd0 : 0xd8) | i));  // FCOM/FCOMP
        case 1: return raw(5, static_cast<uint8_t>((chance(50) ? 0xe0 : 0xe8) | i));  // FUCOM/FUCOMP
        case 2: return chance(50) ? raw(6, 0xd9) : raw(2, 0xe9);                     // FCOMPP FUCOMPP
        case 3: case 4:  // FCOMI FUCOMI FCOMIP FUCOMIP
          return raw(static_cast<uint8_t>(chance(50) ? 3 : 7), static_cast<uint8_t>((chance(50) ? 0xe8 : 0xf0) | i));
        case 5: {  // FICOM/FICOMP m32int / m16int
          const bool m32 = chance(50);
          return emit_x87_memory(out, m32 ? 2 : 6, static_cast<unsigned>(2 + rand(2)), m32 ? 4 : 2);
        }
        default: {  // FCOM/FCOMP m32fp / m64fp
          const bool m32 = chance(50);
          return emit_x87_memory(out, m32 ? 0 : 4, static_cast<unsigned>(2 + rand(2)), m32 ? 4 : 8);
        }
      }
    }
    case 11: return raw(static_cast<uint8_t>(rand(2) + 2), static_cast<uint8_t>(0xc0 | (rand(4) << 3) | i));  // FCMOVcc
    case 12: {  // stack and tag manipulation
      switch (rand(7)) {
        case 5: {  // undocumented aliases: FSTP1 FXCH4 FXCH7 FSTP8 FSTP9 FCOM2 FCOMP3 FCOMP5
          static constexpr uint8_t kAlias[][2] = {{1, 0xd8}, {5, 0xc8}, {7, 0xc8}, {7, 0xd0},
                                                  {7, 0xd8}, {4, 0xd0}, {4, 0xd8}, {6, 0xd0}};
          const auto& al = kAlias[rand(std::size(kAlias))];
          return raw(al[0], static_cast<uint8_t>(al[1] | i));
        }
        case 6: return raw(3, static_cast<uint8_t>(0xe0 + (chance(50) ? rand(2) : 4)));  // FNENI FNDISI FNSETPM
        case 0: return raw(1, static_cast<uint8_t>(0xc8 | i));           // FXCH
        case 1: return raw(5, static_cast<uint8_t>(0xc0 | i));           // FFREE
        case 2: return raw(7, static_cast<uint8_t>(0xc0 | i));           // FFREEP
        default: return raw(1, chance(50) ? 0xf6 : 0xf7);               // FDECSTP FINCSTP
      }
    }
    case 13: case 14: {  // control and status words
      switch (rand(8)) {
        case 0: return raw(7, 0xe0);                                      // FNSTSW AX
        case 1: return emit_x87_memory(out, 5, 7, 2);                     // FNSTSW m16
        case 2: return emit_x87_memory(out, 1, 7, 2);                     // FNSTCW
        case 3: return raw(3, 0xe2);                                      // FNCLEX
        case 4: last_insn_offset_ = out.bytes.size(); out.raw({0x9b}); return true;  // FWAIT
        case 5: return chance(20) ? raw(3, 0xe3) : raw(1, 0xd0);          // FNINIT, FNOP
        default: {  // FLDCW from memory holding a plausible control word
          uint64_t cw = 0x40 | 0x3f | (rand(4) << 8) | (rand(4) << 10);
          if (chance(15)) cw &= ~(uint64_t{1} << rand(6));
          if (chance(5)) cw = rand(0x10000);
          const unsigned tmp = pick_reg();
          set_reg(out, tmp, cw);
          // mov [kDataBase + 0x1f00], tmp16 via an absolute address
          std::vector<uint8_t> b = {0x66};
          if (tmp >= 8) b.push_back(0x44);
          b.insert(b.end(), {0x89, static_cast<uint8_t>(0x04 | ((tmp & 7) << 3)), 0x25});
          const uint32_t addr = static_cast<uint32_t>(kDataBase + 0x1f00);
          for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(addr >> (8 * k)));
          if (bits32_) {  // no SIB-absolute needed: mod 00 r/m 101 is disp32 in 32-bit mode
            b = {0x66, 0x89, static_cast<uint8_t>(0x05 | ((tmp & 7) << 3))};
            for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(addr >> (8 * k)));
          }
          out.append(b);
          const unsigned base = pick_reg();
          set_reg(out, base, kDataBase + 0x1f00);
          std::vector<uint8_t> l;
          if (base >= 8) l.push_back(0x41);
          l.insert(l.end(), {0xd9, static_cast<uint8_t>(0x28 | (base & 7))});
          if ((base & 7) == 5) l.back() = static_cast<uint8_t>(0x68 | (base & 7)), l.push_back(0);  // [rbp + 0]
          if ((base & 7) == 4) l.push_back(0x24);  // SIB for r12
          last_insn_offset_ = out.bytes.size();
          out.append(l);
          return true;
        }
      }
    }
    case 15: {  // environment and full state
      const bool p66 = chance(25);
      switch (rand(4)) {
        case 0: return emit_x87_memory(out, 1, 6, p66 ? 14 : 28, p66);    // FNSTENV
        case 1: return emit_x87_memory(out, 1, 4, p66 ? 14 : 28, p66);    // FLDENV
        case 2: return emit_x87_memory(out, 5, 6, p66 ? 94 : 108, p66);   // FNSAVE
        default: return emit_x87_memory(out, 5, 4, p66 ? 94 : 108, p66);  // FRSTOR
      }
    }
    case 16: case 17: return emit_x87_memory(out, 0, static_cast<unsigned>(rand(2)), 512, false, true);  // FXSAVE FXRSTOR
    default: {  // FLD of an ordinary double from memory, to keep values flowing
      const unsigned tmp = pick_reg();
      const double d = static_cast<double>(static_cast<int64_t>(rand(20001)) - 10000) / static_cast<double>(1 + rand(64));
      uint64_t bits;
      std::memcpy(&bits, &d, 8);
      if (bits32_) return raw(1, static_cast<uint8_t>(0xe8 + rand(7)));
      set_reg(out, tmp, bits);
      std::vector<uint8_t> b = {static_cast<uint8_t>(0x48 | (tmp >= 8 ? 4 : 0)), 0x89,
                                static_cast<uint8_t>(0x04 | ((tmp & 7) << 3)), 0x25};
      const uint32_t addr = static_cast<uint32_t>(kDataBase + 0x1f08);
      for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(addr >> (8 * k)));
      out.append(b);
      b = {0xdd, 0x04, 0x25};
      for (int k = 0; k < 4; ++k) b.push_back(static_cast<uint8_t>(addr >> (8 * k)));
      last_insn_offset_ = out.bytes.size();
      out.append(b);
      return true;
    }
  }
}

// Instructions without operands, encoded directly.
bool Gen::emit_raw_unit(Asm& out) {
  const bool w = !bits32_ && chance(50);
  switch (rand(bits32_ ? 22 : 17)) {
    case 0: out.raw({0x98}); break;                          // CBW/CWDE (CDQE below)
    case 1: out.raw({0x66, 0x98}); break;
    case 2: out.raw({0x99}); break;                          // CDQ
    case 3: out.raw({0x66, 0x99}); break;                    // CWD
    case 4: out.raw({0xf8}); break;                          // CLC
    case 5: out.raw({0xf9}); break;                          // STC
    case 6: out.raw({0xf5}); break;                          // CMC
    case 7: out.raw({0xfc}); break;                          // CLD
    case 8: out.raw({0xfd}); break;                          // STD
    case 9: out.raw({0x9f}); break;                          // LAHF
    case 10: out.raw({0x9e}); break;                         // SAHF
    case 11: {                                               // PUSHF ; POP r
      out.raw({0x9c});
      out.raw({static_cast<uint8_t>(0x58 + (pick_reg() & 7))});
      break;
    }
    case 12: {                                               // PUSH sanitised flags ; POPF
      uint32_t f = static_cast<uint32_t>(rng_()) & 0x200cd5;
      out.raw({0x68});
      for (int i = 0; i < 4; ++i) out.bytes.push_back(static_cast<uint8_t>(f >> (8 * i)));
      out.raw({0x9d});
      break;
    }
    case 13: {                                               // XLAT
      set_reg(out, RBX, kDataBase + rand(kDataSize - 256));
      out.raw({0xd7});
      break;
    }
    case 14: {                                               // BSWAP r32/r64
      unsigned r = pick_reg();
      if (bits32_) out.raw({0x0f, static_cast<uint8_t>(0xc8 + r)});
      else out.raw({static_cast<uint8_t>(0x48 | (r >> 3)), 0x0f, static_cast<uint8_t>(0xc8 + (r & 7))});
      break;
    }
    case 15: {                                               // CALL next ; POP r  /  LEAVE
      if (chance(50)) {
        out.raw({0xe8, 0, 0, 0, 0});
        out.raw({static_cast<uint8_t>(0x58 + (pick_reg() & 7))});
      } else {
        set_reg(out, RBP, kDataBase + 0x800 + rand(0x700) * 8 / 8);
        out.raw({0xc9});
      }
      break;
    }
    case 16: if (bits32_) out.raw({0x99}); else out.raw({0x48, w ? uint8_t{0x99} : uint8_t{0x98}}); break;  // CQO/CDQE
    case 17: out.raw({0x27}); break;                          // DAA (32-bit only)
    case 18: out.raw({0x2f}); break;                          // DAS
    case 19: out.raw({0x37}); break;                          // AAA
    case 20: out.raw({0x3f}); break;                          // AAS
    default: out.raw({0xd4, static_cast<uint8_t>(chance(90) ? 10 + rand(20) : 0)}); break;  // AAM (0 → #DE)
  }
  return true;
}

bool Gen::emit_string(Asm& out) {
  // Point RSI/RDI into the middle of the data area; small counts for REP.
  set_reg(out, RSI, kDataBase + 0x600 + rand(0x800));
  set_reg(out, RDI, kDataBase + 0x600 + rand(0x800));
  set_reg(out, RCX, rand(10));
  static constexpr uint8_t kOps[] = {0xa4, 0xa6, 0xaa, 0xac, 0xae};  // MOVS CMPS STOS LODS SCAS (byte forms)
  uint8_t op = kOps[rand(std::size(kOps))];
  unsigned size = static_cast<unsigned>(rand(bits32_ ? 3 : 4));  // 0 b, 1 w, 2 d, 3 q
  if (chance(60)) out.raw({static_cast<uint8_t>(chance(50) ? 0xf3 : 0xf2)});
  if (size == 1) out.raw({0x66});
  if (!bits32_ && chance(10)) out.raw({0x3e});  // ignored DS override
  if (size == 3) out.raw({0x48});
  out.raw({static_cast<uint8_t>(size == 0 ? op : op + 1)});
  return true;
}

// A forward conditional or unconditional jump over the next unit.
bool Gen::emit_branch(Asm& out, unsigned depth) {
  Asm body{.bytes = {}, .base = 0};
  const unsigned kind = static_cast<unsigned>(rand(4));
  if (kind == 3) set_reg(out, RCX, rand(3));  // for LOOP/JRCXZ
  // The body goes after a 2-byte short jump; its address is known before generating it.
  body.base = out.here() + 2;
  depth_ = depth + 1;
  if (!emit_unit(body)) return false;
  if (body.bytes.size() > 127) return false;
  branch_unit_ = true;
  uint8_t disp = static_cast<uint8_t>(body.bytes.size());
  switch (kind) {
    case 0: case 1: out.raw({static_cast<uint8_t>(0x70 + rand(16)), disp}); break;  // Jcc rel8
    case 2: out.raw({0xeb, disp}); break;                                           // JMP rel8
    default: out.raw({static_cast<uint8_t>(chance(50) ? 0xe3 : 0xe2), disp}); break; // JRCXZ / LOOP
  }
  out.append(body.bytes);
  return true;
}

bool Gen::emit_unit(Asm& out) {
  const size_t start = out.bytes.size();
  bool ok;
  const unsigned pick = static_cast<unsigned>(rand(100));
  if (pick < 50) ok = emit_alu(out);
  else if (pick < 60) ok = emit_sse(out);
  else if (pick < 65) ok = emit_mmx(out);
  else if (pick < 74) ok = emit_x87(out);
  else if (pick < 76) ok = emit_maskmov(out);
  else if (pick < 82) ok = emit_raw_unit(out);
  else if (pick < 90) ok = emit_string(out);
  else if (pick < 98 && depth_ == 0) ok = emit_branch(out, 0);
  else {
    static const std::vector<std::vector<uint8_t>> kInvalid64 = {{0x06}, {0x0f, 0x0b}, {0xf0, 0x90}, {0x37}, {0x0f, 0xff, 0xc0}};
    static const std::vector<std::vector<uint8_t>> kInvalid32 = {{0x0f, 0x0b}, {0xf0, 0x90}, {0x0f, 0xff, 0xc0}, {0x8c, 0xf0 + 8}};
    const auto& list = bits32_ ? kInvalid32 : kInvalid64;
    out.append(list[rand(list.size())]);
    ok = true;
  }
  if (!ok) out.bytes.resize(start);
  return ok;
}

void Gen::build(Sequence& seq, unsigned units) {
  Asm code{.bytes = {}, .base = kCodeBase + kSequenceOffset};
  for (unsigned u = 0; u < units; ++u) {
    depth_ = 0;
    branch_unit_ = false;
    setup_failed_ = false;
    known_count_ = -1;
    const size_t start = code.bytes.size();
    const uint64_t saved_undefined = undefined_;
    if (!emit_unit(code) || setup_failed_) {
      code.bytes.resize(start);
      undefined_ = saved_undefined;
      continue;
    }
    // If the unit reads a flag that is currently undefined, define all flags first with CMP.
    Asm probe{.bytes = {}, .base = 0};
    probe.bytes.assign(code.bytes.begin() + static_cast<long>(start), code.bytes.end());
    ZydisDecoder dec;
    ZydisDecoderInit(&dec, zmode(), bits32_ ? ZYDIS_STACK_WIDTH_32 : ZYDIS_STACK_WIDTH_64);
    bool reads_undefined = false, unsupported = false;
    size_t off = 0;
    uint64_t mask = undefined_;
    while (off < probe.bytes.size()) {
      ZydisDecodedInstruction insn;
      ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
      if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&dec, probe.bytes.data() + off, probe.bytes.size() - off, &insn, ops))) break;
      off += insn.length;
      if (!host_supports(insn.meta.isa_set)) unsupported = true;
      if (insn.cpu_flags && (insn.cpu_flags->tested & mask)) reads_undefined = true;
      if (insn.mnemonic == ZYDIS_MNEMONIC_PUSHF || insn.mnemonic == ZYDIS_MNEMONIC_PUSHFQ ||
          insn.mnemonic == ZYDIS_MNEMONIC_PUSHFD || insn.mnemonic == ZYDIS_MNEMONIC_LAHF)
        reads_undefined |= mask != 0;
      if (insn.cpu_flags) mask &= ~((insn.cpu_flags->modified | insn.cpu_flags->set_0 | insn.cpu_flags->set_1) & ~insn.cpu_flags->undefined);
    }
    if (unsupported) {  // the host cannot run it natively: skip this unit
      code.bytes.resize(start);
      undefined_ = saved_undefined;
      continue;
    }
    if (reads_undefined && saved_undefined != 0) {
      code.bytes.resize(start);
      code.raw({0x39, static_cast<uint8_t>(0xc0 | (rand(8) << 3) | rand(8))});  // CMP r32, r32
      undefined_ = 0;
      // Regenerate the unit at its new address is not needed for position-independent units,
      // but RIP-relative and branch displacements depend on it: simply retry next iteration.
      continue;
    }
    track_flags(code, start);
    if (std::getenv("KILN_DIFF_DEBUG")) fmt::print(stderr, "unit at {:x}: undefined {:x}\n", code.base + start, undefined_);
    if (branch_unit_) undefined_ |= saved_undefined;  // the body may have been skipped
  }
  undefined_at_.emplace_back(code.here(), undefined_);
  code.raw({0xcc});  // INT3 ends every sequence
  seq.code = std::move(code.bytes);
  seq.start = kCodeBase + kSequenceOffset;
  seq.undefined_flags = undefined_;
  if (std::getenv("KILN_DIFF_DEBUG")) fmt::print(stderr, "final undefined {:x}\n", undefined_);
  seq.undefined_at = undefined_at_;
}

}  // namespace

namespace {

// An 80-bit value of an interesting class: ordinary numbers (from doubles or
// integers), zeros, infinities, NaNs, denormals, unnormals, raw bits.
X87Reg random_x87_value(std::mt19937_64& rng) {
  auto from_double = [](double d) {
    uint64_t bits;
    std::memcpy(&bits, &d, 8);
    const uint64_t sign = bits >> 63, exp = (bits >> 52) & 0x7ff, frac = bits & ((uint64_t{1} << 52) - 1);
    if (exp == 0 && frac == 0) return X87Reg{0, static_cast<uint16_t>(sign << 15)};
    return X87Reg{(uint64_t{1} << 63) | (frac << 11), static_cast<uint16_t>((sign << 15) | (exp - 1023 + 16383))};
  };
  const uint16_t sign = static_cast<uint16_t>((rng() & 1) << 15);
  switch (rng() % 16) {
    case 0: return X87Reg{0, sign};                                       // zero
    case 1: return X87Reg{uint64_t{1} << 63, static_cast<uint16_t>(sign | 0x7fff)};  // infinity
    case 2: return X87Reg{(uint64_t{3} << 62) | (rng() >> 2), static_cast<uint16_t>(sign | 0x7fff)};  // QNaN
    case 3: return X87Reg{(uint64_t{1} << 63) | (rng() >> 2 | 1), static_cast<uint16_t>(sign | 0x7fff)};  // SNaN
    case 4: return X87Reg{rng() >> 1, sign};                              // denormal
    case 5: return X87Reg{rng() >> 1, static_cast<uint16_t>(sign | (rng() % 0x7ffe + 1))};  // unnormal
    case 6: return X87Reg{rng(), static_cast<uint16_t>(rng())};            // raw bits
    case 7: {  // huge / tiny exponents
      X87Reg r{(uint64_t{1} << 63) | rng(), static_cast<uint16_t>(sign | (rng() % 2 ? rng() % 64 + 1 : 0x7ffe - rng() % 64))};
      return r;
    }
    case 8: case 9: return from_double(static_cast<double>(static_cast<int64_t>(rng() % 2000001) - 1000000));
    case 10: return from_double(static_cast<double>(static_cast<int64_t>(rng() % 20001) - 10000) / 16.0);
    default: {  // ordinary values over a wide range
      const double d = static_cast<double>(static_cast<int64_t>(rng() % 200001) - 100000) /
                       static_cast<double>(1 + rng() % 1000) * std::ldexp(1.0, static_cast<int>(rng() % 80) - 40);
      return from_double(d);
    }
  }
}

void random_fpu(std::mt19937_64& rng, MachineState& s) {
  // Mostly all exceptions masked (as Linux sets it up) with random rounding and precision
  // control; sometimes an unmasked exception (then #MF, SIGFPE natively).
  s.fcw = static_cast<uint16_t>(0x0040 | 0x3f | ((rng() % 4) << 8) | ((rng() % 4) << 10));
  if (rng() % 8 == 0) s.fcw = static_cast<uint16_t>(s.fcw & ~(1u << (rng() % 6)));
  const unsigned top = static_cast<unsigned>(rng() % 8);
  s.fsw = static_cast<uint16_t>(top << 11);
  if (rng() % 4 == 0) s.fsw = static_cast<uint16_t>(s.fsw | (rng() & 0x4700 & ~0x3800u) | (rng() & s.fcw & 0x3f));
  switch (rng() % 4) {
    case 0: s.ftw = 0; break;
    case 1: s.ftw = 0xff; break;
    default: s.ftw = static_cast<uint8_t>(rng());
  }
  for (auto& r : s.st) r = random_x87_value(rng);
}

}  // namespace

Sequence Generator::generate(unsigned units) {
  Sequence seq;
  seq.bits32 = bits32_;
  seq.initial.data.resize(kDataSize);
  for (auto& b : seq.initial.data) b = static_cast<uint8_t>(rng_());
  for (unsigned i = 0; i < 16; ++i) {
    switch (rng_() % 4) {
      case 0: seq.initial.regs[i] = rng_() % 256; break;
      case 1: seq.initial.regs[i] = ~uint64_t{0} - rng_() % 4; break;
      default: seq.initial.regs[i] = rng_(); break;
    }
    if (bits32_) seq.initial.regs[i] &= 0xffffffffu;
  }
  seq.initial.regs[RSP] = kStackTop;
  // All exceptions masked; random rounding mode, sometimes flush-to-zero / denormals-are-zero.
  random_fpu(rng_, seq.initial);
  seq.initial.mxcsr = 0x1f80 | static_cast<uint32_t>((rng_() % 4) << 13) | (rng_() % 4 == 0 ? 0x8040u : 0u);
  for (auto& x : seq.initial.xmm) {
    switch (rng_() % 3) {
      case 0:  // raw bits: NaNs, infinities, denormals, huge values
        x[0] = rng_();
        x[1] = rng_() % 3 == 0 ? 0 : rng_();
        break;
      case 1:  // ordinary single-precision values
        for (int i = 0; i < 4; ++i) {
          float f = static_cast<float>(static_cast<int64_t>(rng_() % 2001) - 1000) / static_cast<float>(1 + rng_() % 16);
          uint32_t bits;
          std::memcpy(&bits, &f, 4);
          x[i / 2] = (x[i / 2] & ~(uint64_t{0xffffffff} << (32 * (i % 2)))) | (uint64_t{bits} << (32 * (i % 2)));
        }
        break;
      default:  // ordinary double-precision values
        for (int i = 0; i < 2; ++i) {
          double d = static_cast<double>(static_cast<int64_t>(rng_() % 200001) - 100000) / static_cast<double>(1 + rng_() % 64);
          std::memcpy(&x[i], &d, 8);
        }
    }
  }
  seq.initial.rflags = (rng_() & (kArithFlags | rflags::DF)) | rflags::kFixed | rflags::IF;
  // The native prologue sets RFLAGS with PUSH/POPFQ just below the stack top.
  std::memcpy(seq.initial.data.data() + (kStackTop - kDataBase - 8), &seq.initial.rflags, 8);
  Gen gen(rng_, bits32_);
  gen.build(seq, units ? units : 4 + static_cast<unsigned>(rng_() % 12));
  // Listing for reports.
  ZydisDecoder dec;
  ZydisDecoderInit(&dec, bits32_ ? ZYDIS_MACHINE_MODE_LEGACY_32 : ZYDIS_MACHINE_MODE_LONG_64,
                   bits32_ ? ZYDIS_STACK_WIDTH_32 : ZYDIS_STACK_WIDTH_64);
  size_t off = 0;
  while (off < seq.code.size()) {
    ZydisDisassembledInstruction insn;
    if (!ZYAN_SUCCESS(ZydisDisassembleIntel(bits32_ ? ZYDIS_MACHINE_MODE_LEGACY_32 : ZYDIS_MACHINE_MODE_LONG_64,
                                            seq.start + off, seq.code.data() + off, seq.code.size() - off, &insn))) {
      seq.listing += fmt::format("  {:08x}: (bad) {:02x}\n", seq.start + off, seq.code[off]);
      ++off;
      continue;
    }
    std::string hex;
    for (unsigned i = 0; i < insn.info.length; ++i) hex += fmt::format("{:02x}", seq.code[off + i]);
    uint64_t undef = 0;
    for (auto& [addr, mask] : seq.undefined_at)
      if (addr == seq.start + off) undef = mask;
    seq.listing += fmt::format("  {:08x}: {:<30} {:<50} undef-before={:x}\n", seq.start + off, hex, insn.text, undef);
    off += insn.info.length;
  }
  return seq;
}

// ---------------------------------------------------------------- native runner

namespace {

struct SharedResult {
  int signo;
  uint64_t regs[16];
  uint64_t rip;
  uint64_t rflags;
  uint64_t xmm[16][2];
  uint32_t mxcsr;
  uint16_t fcw, fsw;
  uint8_t ftw;
  X87Reg st[8];
};

struct NativeArena {
  uint8_t* code = nullptr;
  uint8_t* data = nullptr;
  SharedResult* result = nullptr;
};

NativeArena& arena() {
  static NativeArena a = [] {
    NativeArena n;
    auto map_fixed = [](uint64_t addr, size_t size, int prot) {
      void* p = mmap(reinterpret_cast<void*>(addr), size, prot, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
      if (p == MAP_FAILED || p != reinterpret_cast<void*>(addr))
        throw kiln::system_error(errno, "Could not map differential test area at 0x{:x}", addr);
      return static_cast<uint8_t*>(p);
    };
    n.code = map_fixed(kCodeBase, kCodeSize, PROT_READ | PROT_WRITE | PROT_EXEC);
    n.data = map_fixed(kDataBase, kDataSize, PROT_READ | PROT_WRITE);
    void* r = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) throw kiln::system_error(errno, "Could not map differential test result page");
    n.result = static_cast<SharedResult*>(r);
    return n;
  }();
  return a;
}

SharedResult* g_result = nullptr;

void capture(int signo, siginfo_t*, void* context) {
  auto* uc = static_cast<ucontext_t*>(context);
  const greg_t* g = uc->uc_mcontext.gregs;
  static constexpr int kOrder[16] = {REG_RAX, REG_RCX, REG_RDX, REG_RBX, REG_RSP, REG_RBP, REG_RSI, REG_RDI,
                                     REG_R8,  REG_R9,  REG_R10, REG_R11, REG_R12, REG_R13, REG_R14, REG_R15};
  for (int i = 0; i < 16; ++i) g_result->regs[i] = static_cast<uint64_t>(g[kOrder[i]]);
  g_result->rip = static_cast<uint64_t>(g[REG_RIP]);
  g_result->rflags = static_cast<uint64_t>(g[REG_EFL]);
  if (uc->uc_mcontext.fpregs) {
    std::memcpy(g_result->xmm, uc->uc_mcontext.fpregs->_xmm, sizeof(g_result->xmm));
    g_result->mxcsr = uc->uc_mcontext.fpregs->mxcsr;
    const auto* fp = uc->uc_mcontext.fpregs;
    g_result->fcw = fp->cwd;
    g_result->fsw = fp->swd;
    g_result->ftw = static_cast<uint8_t>(fp->ftw);
    for (int i = 0; i < 8; ++i) {
      std::memcpy(&g_result->st[i].significand, fp->_st[i].significand, 8);
      g_result->st[i].sign_exponent = fp->_st[i].exponent;
    }
  }
  g_result->signo = signo;
  _exit(0);
}

void put64(std::vector<uint8_t>& v, uint64_t x) {
  for (int i = 0; i < 8; ++i) v.push_back(static_cast<uint8_t>(x >> (8 * i)));
}

// movabs each register, set flags with POPFQ, then enter the sequence (far jump for 32-bit code).
std::vector<uint8_t> prologue(const Sequence& seq) {
  std::vector<uint8_t> p;
  if (seq.bits32) {
    // Compatibility mode needs usable data segments: DS = ES = SS = __USER_DS (0x2b).
    p.insert(p.end(), {0xb8, 0x2b, 0, 0, 0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0});
  }
  {  // fxrstor64 [kXmmInit]: x87, MMX, MXCSR and XMM state in one go
    p.insert(p.end(), {0x48, 0x0f, 0xae, 0x0c, 0x25});
    const uint32_t addr = static_cast<uint32_t>(kXmmInit);
    for (int i = 0; i < 4; ++i) p.push_back(static_cast<uint8_t>(addr >> (8 * i)));
  }
  p.insert(p.end(), {0x48, 0xbc});  // mov rsp, imm64
  put64(p, kStackTop);
  p.insert(p.end(), {0x48, 0xb8});  // mov rax, flags
  put64(p, seq.initial.rflags);
  p.insert(p.end(), {0x50, 0x9d});  // push rax; popfq
  for (unsigned r = 0; r < 16; ++r) {
    p.push_back(static_cast<uint8_t>(0x48 | (r >> 3)));
    p.push_back(static_cast<uint8_t>(0xb8 + (r & 7)));
    put64(p, seq.initial.regs[r]);
  }
  if (seq.bits32) {
    // jmp far [rip+0] ; m16:32 = seq.start : 0x23 (Linux USER32_CS)
    p.insert(p.end(), {0xff, 0x2d, 0, 0, 0, 0});
    for (int i = 0; i < 4; ++i) p.push_back(static_cast<uint8_t>(seq.start >> (8 * i)));
    p.insert(p.end(), {0x23, 0x00});
  } else {
    p.push_back(0xe9);  // jmp rel32 to the sequence
    int32_t rel = static_cast<int32_t>(seq.start - (kCodeBase + p.size() + 4));
    for (int i = 0; i < 4; ++i) p.push_back(static_cast<uint8_t>(static_cast<uint32_t>(rel) >> (8 * i)));
  }
  return p;
}

}  // namespace

MachineState run_native(const Sequence& seq) {
  NativeArena& a = arena();
  auto pro = prologue(seq);
  if (pro.size() > kSequenceOffset || seq.code.size() > kXmmInit - kCodeBase - kSequenceOffset)
    throw kiln::invalid_argument("differential test sequence too large");
  std::memset(a.code, 0xcc, kCodeSize);
  std::memcpy(a.code, pro.data(), pro.size());
  std::memcpy(a.code + kSequenceOffset, seq.code.data(), seq.code.size());
  {  // FXSAVE image of the initial FPU/SSE state for the prologue's FXRSTOR64
    uint8_t* img = a.code + (kXmmInit - kCodeBase);
    std::memset(img, 0, 512);
    std::memcpy(img, &seq.initial.fcw, 2);
    std::memcpy(img + 2, &seq.initial.fsw, 2);
    img[4] = seq.initial.ftw;
    std::memcpy(img + 24, &seq.initial.mxcsr, 4);
    for (int i = 0; i < 8; ++i) {
      std::memcpy(img + 32 + 16 * i, &seq.initial.st[i].significand, 8);
      std::memcpy(img + 40 + 16 * i, &seq.initial.st[i].sign_exponent, 2);
    }
    std::memcpy(img + 160, seq.initial.xmm, sizeof(seq.initial.xmm));
  }
  std::memcpy(a.data, seq.initial.data.data(), kDataSize);
  std::memset(static_cast<void*>(a.result), 0, sizeof(SharedResult));
  g_result = a.result;

  pid_t pid = fork();
  if (pid < 0) throw kiln::system_error(errno, "fork failed in differential test");
  if (pid == 0) {
    static uint8_t altstack[65536];
    stack_t ss{};
    ss.ss_sp = altstack;
    ss.ss_size = sizeof(altstack);
    sigaltstack(&ss, nullptr);
    struct sigaction sa{};
    sa.sa_sigaction = capture;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    for (int s : {SIGTRAP, SIGSEGV, SIGBUS, SIGFPE, SIGILL}) sigaction(s, &sa, nullptr);
    mprotect(a.code, kCodeSize, PROT_READ | PROT_EXEC);
    alarm(2);
    reinterpret_cast<void (*)()>(a.code)();
    _exit(99);
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  MachineState out;
  out.data.assign(a.data, a.data + kDataSize);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    out.outcome = Outcome::Timeout;
    return out;
  }
  for (int i = 0; i < 16; ++i) out.regs[i] = a.result->regs[i];
  out.rip = a.result->rip;
  out.rflags = a.result->rflags;
  std::memcpy(out.xmm, a.result->xmm, sizeof(out.xmm));
  out.mxcsr = a.result->mxcsr;
  out.fcw = a.result->fcw;
  out.fsw = a.result->fsw;
  out.ftw = a.result->ftw;
  std::memcpy(out.st, a.result->st, sizeof(out.st));
  switch (a.result->signo) {
    case SIGTRAP: out.outcome = Outcome::Trap; break;
    case SIGSEGV: out.outcome = Outcome::Segv; break;
    case SIGFPE: out.outcome = Outcome::DivideError; break;
    case SIGILL: out.outcome = Outcome::Illegal; break;
    case SIGBUS: out.outcome = Outcome::Bus; break;
    default: out.outcome = Outcome::Other;
  }
  return out;
}

MachineState run_emulated(const Sequence& seq, bool optimise) {
  FlatMemory memory;
  uint8_t* code = memory.map(kCodeBase, kCodeSize, kPermRead | kPermExec);
  std::memset(code, 0xcc, kCodeSize);
  std::memcpy(code + kSequenceOffset, seq.code.data(), seq.code.size());
  uint8_t* data = memory.map(kDataBase, kDataSize, kPermRead | kPermWrite);
  std::memcpy(data, seq.initial.data.data(), kDataSize);
  Cpu cpu(memory);
  if (std::getenv("KILN_DIFF_TRACE")) cpu.set_log(kLogInAsm | kLogOpOpt | kLogCpu, stderr);
  cpu.translate_options().optimise = optimise && !std::getenv("KILN_DIFF_NO_OPT");
  for (int i = 0; i < 16; ++i) cpu.state.regs[i] = seq.initial.regs[i];
  write_rflags(cpu.state, seq.initial.rflags);
  for (int i = 0; i < 16; ++i) cpu.state.xmm[i] = Xmm{seq.initial.xmm[i][0], seq.initial.xmm[i][1]};
  cpu.state.mxcsr = seq.initial.mxcsr;
  X87State& fpu = cpu.state.fpu;
  fpu.fcw = seq.initial.fcw;
  fpu.set_status(seq.initial.fsw);
  fpu.tags = seq.initial.ftw;
  for (int i = 0; i < 8; ++i) fpu.regs[(fpu.top + i) & 7] = seq.initial.st[i];
  // Linux's selectors (they appear in FSTENV/FSAVE images).
  cpu.state.seg_selector[CS] = seq.bits32 ? 0x23 : 0x33;
  cpu.state.seg_selector[SS] = 0x2b;
  cpu.state.seg_selector[DS] = cpu.state.seg_selector[ES] = seq.bits32 ? 0x2b : 0;
  cpu.state.rip = seq.start;
  cpu.state.mode.code = seq.bits32 ? CodeSize::Bits32 : CodeSize::Bits64;
  RunResult r = cpu.run(100000);
  MachineState out;
  for (int i = 0; i < 16; ++i) out.regs[i] = cpu.state.regs[i];
  out.rip = cpu.state.rip;
  out.rflags = read_rflags(cpu.state);
  out.mxcsr = cpu.state.mxcsr;
  out.fcw = fpu.fcw;
  out.fsw = fpu.status();
  out.ftw = fpu.tags;
  for (int i = 0; i < 8; ++i) out.st[i] = fpu.regs[(fpu.top + i) & 7];
  for (int i = 0; i < 16; ++i) {
    out.xmm[i][0] = cpu.state.xmm[i].lo;
    out.xmm[i][1] = cpu.state.xmm[i].hi;
  }
  out.data.assign(data, data + kDataSize);
  if (r.reason != StopReason::Exception) {
    out.outcome = Outcome::Timeout;
    return out;
  }
  switch (cpu.state.exception.vector) {
    case Vector::BP: out.outcome = Outcome::Trap; break;
    case Vector::PF: case Vector::GP: out.outcome = Outcome::Segv; break;
    case Vector::DE: case Vector::XM: case Vector::MF: out.outcome = Outcome::DivideError; break;  // SIGFPE natively
    case Vector::UD: out.outcome = Outcome::Illegal; break;
    case Vector::AC: case Vector::SS: out.outcome = Outcome::Bus; break;
    default: out.outcome = Outcome::Other;
  }
  return out;
}

std::string compare(const Sequence& seq, const MachineState& n, const MachineState& e) {
  static constexpr const char* kNames[] = {"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
                                           "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  std::string diff;
  if (n.outcome != e.outcome)
    diff += fmt::format("  outcome: native {} emulated {}\n", outcome_name(n.outcome), outcome_name(e.outcome));
  if (n.outcome == Outcome::Timeout || e.outcome == Outcome::Timeout) return diff;
  const uint64_t mask = seq.bits32 ? 0xffffffffu : ~uint64_t{0};
  const unsigned nregs = seq.bits32 ? 8 : 16;
  if ((n.rip & mask) != (e.rip & mask)) diff += fmt::format("  rip: native {:x} emulated {:x}\n", n.rip, e.rip);
  for (unsigned i = 0; i < nregs; ++i)
    if ((n.regs[i] & mask) != (e.regs[i] & mask))
      diff += fmt::format("  {}: native {:016x} emulated {:016x}\n", kNames[i], n.regs[i], e.regs[i]);
  uint64_t undefined = seq.undefined_flags;
  if (n.outcome != Outcome::Trap)  // a fault in mid-sequence: use the mask before that instruction
    for (auto it = seq.undefined_at.rbegin(); it != seq.undefined_at.rend(); ++it)
      if (it->first == n.rip) {
        undefined = it->second;
        break;
      }
  for (unsigned i = 0; i < nregs; ++i)
    if (n.xmm[i][0] != e.xmm[i][0] || n.xmm[i][1] != e.xmm[i][1])
      diff += fmt::format("  xmm{}: native {:016x}{:016x} emulated {:016x}{:016x}\n", i, n.xmm[i][1], n.xmm[i][0],
                          e.xmm[i][1], e.xmm[i][0]);
  for (unsigned i = 0; i < 8; ++i)
    if (n.st[i].significand != e.st[i].significand || n.st[i].sign_exponent != e.st[i].sign_exponent)
      diff += fmt::format("  st{}: native {:04x}:{:016x} emulated {:04x}:{:016x}\n", i, n.st[i].sign_exponent,
                          n.st[i].significand, e.st[i].sign_exponent, e.st[i].significand);
  if (n.fcw != e.fcw) diff += fmt::format("  fcw: native {:04x} emulated {:04x}\n", n.fcw, e.fcw);
  if (n.fsw != e.fsw) diff += fmt::format("  fsw: native {:04x} emulated {:04x}\n", n.fsw, e.fsw);
  if (n.ftw != e.ftw) diff += fmt::format("  ftw: native {:02x} emulated {:02x}\n", n.ftw, e.ftw);
  if (n.mxcsr != e.mxcsr) diff += fmt::format("  mxcsr: native {:08x} emulated {:08x}\n", n.mxcsr, e.mxcsr);
  const uint64_t fmask = (kArithFlags | rflags::DF) & ~undefined;
  if ((n.rflags & fmask) != (e.rflags & fmask))
    diff += fmt::format("  rflags: native {:08x} emulated {:08x} (compared bits {:x}; outcome {} at {:x})\n", n.rflags, e.rflags, fmask, outcome_name(n.outcome), n.rip);
  for (size_t i = 0; i < n.data.size(); ++i)
    if (n.data[i] != e.data[i]) {
      diff += fmt::format("  memory at {:x}: native {:02x} emulated {:02x}\n", kDataBase + i, n.data[i], e.data[i]);
      break;
    }
  return diff;
}

bool native_mode_available(bool bits32) {
  Sequence seq;
  seq.bits32 = bits32;
  seq.code = {0x90, 0xcc};  // nop ; int3
  seq.start = kCodeBase + kSequenceOffset;
  seq.initial.data.assign(kDataSize, 0);
  seq.initial.regs[RSP] = kStackTop;
  seq.initial.rflags = rflags::kFixed | rflags::IF;
  MachineState s = run_native(seq);
  return s.outcome == Outcome::Trap && (s.rip & 0xffffffffu) == ((seq.start + 2) & 0xffffffffu);
}

DiffSummary run_campaign(uint64_t seed, unsigned count, bool bits32, unsigned max_failures, bool optimise) {
  DiffSummary summary;
  Generator gen(seed, bits32);
  const char* only = std::getenv("KILN_DIFF_ONLY");
  for (unsigned i = 0; i < count; ++i) {
    Sequence seq = gen.generate(0);
    if (only && std::strtoul(only, nullptr, 0) != i) continue;
    if (std::getenv("KILN_DIFF_DUMP")) fmt::print(stderr, "sequence {}:\n{}", i, seq.listing);
    MachineState native = run_native(seq);
    ++summary.sequences;
    std::string diff;
    try {
      MachineState emulated = run_emulated(seq, optimise);
      diff = compare(seq, native, emulated);
    } catch (const kiln::Error& e) {
      diff = fmt::format("  emulator error: {}\n", e.what());
    }
    if (diff.empty()) continue;
    summary.failures.push_back(fmt::format("sequence {} (seed {}, {}-bit):\n{}{}", i, seed, bits32 ? 32 : 64, seq.listing, diff));
    if (summary.failures.size() >= max_failures) break;
  }
  return summary;
}

}  // namespace kiln::emu::difftest
