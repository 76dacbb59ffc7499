// x87, MMX aliasing, FXSAVE/FXRSTOR, MASKMOVDQU and SSE4 leftovers (DPPS,
// MPSADBW, PCMPxSTRx) with the architecturally specified results (the
// differential test covers the rest against the host).
#include <gtest/gtest.h>

#include <cstring>
#include <initializer_list>
#include <vector>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu {
namespace {

constexpr uint64_t kCode = 0x10000;
constexpr uint64_t kData = 0x20000;  // two pages; the page after them is unmapped

struct Machine {
  FlatMemory memory;
  Cpu cpu{memory};
  uint8_t* data;
  explicit Machine(std::vector<uint8_t> code) {
    code.push_back(0xcc);  // INT3 stops the run
    memory.map(kCode, kPageSize, kPermRead | kPermExec);
    memory.write_bytes(kCode, code);
    data = memory.map(kData, 2 * kPageSize, kPermRead | kPermWrite);
    cpu.state.rip = kCode;
    cpu.state.regs[RSP] = kData + kPageSize;
  }
  Vector run() {
    EXPECT_EQ(cpu.run(100000).reason, StopReason::Exception);
    return cpu.state.exception.vector;
  }
  X87State& fpu() { return cpu.state.fpu; }
  const X87Reg& st(unsigned i) { return fpu().regs[(fpu().top + i) & 7]; }
  void put_double(uint64_t offset, double d) { std::memcpy(data + offset, &d, 8); }
  template <typename T>
  T get(uint64_t offset) {
    T v;
    std::memcpy(&v, data + offset, sizeof(T));
    return v;
  }
};

// Appends an instruction whose last four bytes are the absolute address kData + offset
// (ModRM 04 | reg << 3 with SIB 25: [disp32]).
void abs_insn(std::vector<uint8_t>& code, std::initializer_list<uint8_t> opcode, unsigned reg, uint64_t offset) {
  code.insert(code.end(), opcode);
  code.push_back(static_cast<uint8_t>(0x04 | (reg << 3)));
  code.push_back(0x25);
  const uint32_t a = static_cast<uint32_t>(kData + offset);
  for (int i = 0; i < 4; ++i) code.push_back(static_cast<uint8_t>(a >> (8 * i)));
}

constexpr uint64_t kIndefiniteSignificand = 0xc000000000000000;
constexpr uint16_t kIE = 1, kZE = 4, kSF = 0x40, kES = 0x80, kC0 = 0x100, kC1 = 0x200, kC2 = 0x400, kC3 = 0x4000;

TEST(EmulatorX87, StackUnderflowLoadsIndefinite) {
  Machine m({0xdb, 0xe3, 0xd9, 0xc1, 0xdf, 0xe0});  // fninit ; fld st(1) (empty) ; fnstsw ax
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.st(0).significand, kIndefiniteSignificand);
  EXPECT_EQ(m.st(0).sign_exponent, 0xffff);
  EXPECT_EQ(m.fpu().top, 7);
  EXPECT_EQ(m.fpu().tags, 0x80);
  EXPECT_EQ(m.cpu.state.regs[RAX] & 0xffff, 0x3800u | kSF | kIE);  // C1 = 0: underflow
}

TEST(EmulatorX87, StackOverflowSetsC1) {
  std::vector<uint8_t> code = {0xdb, 0xe3};
  for (int i = 0; i < 9; ++i) code.insert(code.end(), {0xd9, 0xe8});  // nine FLD1
  code.insert(code.end(), {0xdf, 0xe0});
  Machine m(code);
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.cpu.state.regs[RAX] & (kSF | kIE | kC1), kSF | kIE | kC1);
  EXPECT_EQ(m.st(0).significand, kIndefiniteSignificand);
  EXPECT_EQ(m.fpu().tags, 0xff);
}

TEST(EmulatorX87, FxamClasses) {
  // fninit ; fxam (empty) ; fnstsw [0x100] ; fldz ; fchs ; fxam ; fnstsw [0x102] ; fld1 ; fxam ; fnstsw [0x104]
  // fld qword [0x10] (inf) ; fxam ; fnstsw [0x106] ; fld qword [0x18] (NaN) ; fxam ; fnstsw [0x108]
  // fld qword [0x20] (double denormal: normal in 80 bits) ; fxam ; fnstsw [0x10a]
  std::vector<uint8_t> code = {0xdb, 0xe3, 0xd9, 0xe5};
  abs_insn(code, {0xdd}, 7, 0x100);
  code.insert(code.end(), {0xd9, 0xee, 0xd9, 0xe0, 0xd9, 0xe5});
  abs_insn(code, {0xdd}, 7, 0x102);
  code.insert(code.end(), {0xd9, 0xe8, 0xd9, 0xe5});
  abs_insn(code, {0xdd}, 7, 0x104);
  abs_insn(code, {0xdd}, 0, 0x10);
  code.insert(code.end(), {0xd9, 0xe5});
  abs_insn(code, {0xdd}, 7, 0x106);
  abs_insn(code, {0xdd}, 0, 0x18);
  code.insert(code.end(), {0xd9, 0xe5});
  abs_insn(code, {0xdd}, 7, 0x108);
  abs_insn(code, {0xdb}, 5, 0x30);  // fld tword [0x30]: an 80-bit denormal
  code.insert(code.end(), {0xd9, 0xe5});
  abs_insn(code, {0xdd}, 7, 0x10a);
  Machine m(code);
  m.put_double(0x10, __builtin_inf());
  m.put_double(0x18, __builtin_nan(""));
  const uint64_t denormal = 0x1234;
  std::memcpy(m.data + 0x30, &denormal, 8);
  std::memset(m.data + 0x38, 0, 2);
  EXPECT_EQ(m.run(), Vector::BP);
  const uint16_t mask = kC3 | kC2 | kC1 | kC0;
  EXPECT_EQ(m.get<uint16_t>(0x100) & mask, kC3 | kC0);        // empty
  EXPECT_EQ(m.get<uint16_t>(0x102) & mask, kC3 | kC1);        // -0
  EXPECT_EQ(m.get<uint16_t>(0x104) & mask, kC2);              // +normal
  EXPECT_EQ(m.get<uint16_t>(0x106) & mask, kC2 | kC0);        // +infinity
  EXPECT_EQ(m.get<uint16_t>(0x108) & mask, kC0);              // NaN
  EXPECT_EQ(m.get<uint16_t>(0x10a) & mask, kC3 | kC2);        // denormal
}

TEST(EmulatorX87, FpremReportsPartialRemainder) {
  // fld qword [0x18] (3) ; fld qword [0x10] (2^100) ; fprem ; fnstsw [0x100] ;
  // again: fprem ; fnstsw ax ; test ah, 4 ; jnz again ; fstp qword [0x20]
  std::vector<uint8_t> code;
  abs_insn(code, {0xdd}, 0, 0x18);
  abs_insn(code, {0xdd}, 0, 0x10);
  code.insert(code.end(), {0xd9, 0xf8});
  abs_insn(code, {0xdd}, 7, 0x100);
  code.insert(code.end(), {0xd9, 0xf8, 0xdf, 0xe0, 0xf6, 0xc4, 0x04, 0x75, 0xf7});
  abs_insn(code, {0xdd}, 3, 0x20);
  Machine m(code);
  m.put_double(0x10, 0x1p100);
  m.put_double(0x18, 3.0);
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_TRUE(m.get<uint16_t>(0x100) & kC2) << "first FPREM must be partial (exponent difference 100)";
  EXPECT_EQ(m.get<double>(0x20), 1.0);  // 2^100 mod 3 = 1
}

TEST(EmulatorX87, FistOutOfRangeStoresIntegerIndefinite) {
  // fld qword [0x10] (1e10) ; fist word [0x100] ; fistp dword [0x104] ; fld qword [0x18] (NaN) ; fistp qword [0x108]
  std::vector<uint8_t> code;
  abs_insn(code, {0xdd}, 0, 0x10);
  abs_insn(code, {0xdf}, 2, 0x100);
  abs_insn(code, {0xdb}, 3, 0x104);
  abs_insn(code, {0xdd}, 0, 0x18);
  abs_insn(code, {0xdf}, 7, 0x108);
  Machine m(code);
  m.put_double(0x10, 1e10);
  m.put_double(0x18, __builtin_nan(""));
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.get<uint16_t>(0x100), 0x8000u);
  EXPECT_EQ(m.get<uint32_t>(0x104), 0x80000000u);
  EXPECT_EQ(m.get<uint64_t>(0x108), 0x8000000000000000u);
  EXPECT_TRUE(m.fpu().fsw & kIE);
  EXPECT_EQ(m.fpu().tags, 0);
}

TEST(EmulatorX87, RoundingControl) {
  // For RC = nearest, down, up, chop: fldcw ; fld qword [0x10] (-2.5) ; fistp dword [0x100 + 4 * rc]
  std::vector<uint8_t> code;
  for (unsigned rc = 0; rc < 4; ++rc) {
    abs_insn(code, {0xd9}, 5, 0x20 + 2 * rc);
    abs_insn(code, {0xdd}, 0, 0x10);
    abs_insn(code, {0xdb}, 3, 0x100 + 4 * rc);
    abs_insn(code, {0xdd}, 0, 0x18);
    abs_insn(code, {0xdb}, 3, 0x110 + 4 * rc);
  }
  Machine m(code);
  m.put_double(0x10, -2.5);
  m.put_double(0x18, 3.5);
  for (unsigned rc = 0; rc < 4; ++rc) {
    const uint16_t cw = static_cast<uint16_t>(0x37f | (rc << 10));
    std::memcpy(m.data + 0x20 + 2 * rc, &cw, 2);
  }
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.get<int32_t>(0x100), -2);  // nearest even
  EXPECT_EQ(m.get<int32_t>(0x104), -3);  // down
  EXPECT_EQ(m.get<int32_t>(0x108), -2);  // up
  EXPECT_EQ(m.get<int32_t>(0x10c), -2);  // chop
  EXPECT_EQ(m.get<int32_t>(0x110), 4);
  EXPECT_EQ(m.get<int32_t>(0x114), 3);
  EXPECT_EQ(m.get<int32_t>(0x118), 4);
  EXPECT_EQ(m.get<int32_t>(0x11c), 3);
}

TEST(EmulatorX87, UnmaskedExceptionRaisesMfAtNextWaitingInstruction) {
  // fldcw [0x20] (ZE unmasked) ; fld1 ; fldz ; fdivp ; fnstsw ax ; fld1 (#MF here)
  std::vector<uint8_t> code;
  abs_insn(code, {0xd9}, 5, 0x20);
  code.insert(code.end(), {0xd9, 0xe8, 0xd9, 0xee, 0xde, 0xf9, 0xdf, 0xe0});
  const uint64_t faulting = kCode + code.size();
  code.insert(code.end(), {0xd9, 0xe8});
  Machine m(code);
  const uint16_t cw = 0x37b;
  std::memcpy(m.data + 0x20, &cw, 2);
  EXPECT_EQ(m.run(), Vector::MF);
  EXPECT_EQ(m.cpu.state.rip, faulting);
  EXPECT_EQ(m.cpu.state.regs[RAX] & (kZE | kES), kZE | kES);
  // FDIVP with an unmasked #Z leaves its operands and the stack alone.
  EXPECT_EQ(m.fpu().tags & 0xff, 0xc0);
}

TEST(EmulatorX87, MmxInstructionRaisesPendingMf) {
  // fldcw [0x20] (ZE unmasked) ; fld1 ; fldz ; fdivp ; movq mm0, rax (#MF, nothing changed)
  std::vector<uint8_t> code;
  abs_insn(code, {0xd9}, 5, 0x20);
  code.insert(code.end(), {0xd9, 0xe8, 0xd9, 0xee, 0xde, 0xf9});
  const uint64_t faulting = kCode + code.size();
  code.insert(code.end(), {0x48, 0x0f, 0x6e, 0xc0});
  Machine m(code);
  const uint16_t cw = 0x37b;
  std::memcpy(m.data + 0x20, &cw, 2);
  EXPECT_EQ(m.run(), Vector::MF);
  EXPECT_EQ(m.cpu.state.rip, faulting);
  EXPECT_EQ(m.fpu().top, 6);  // the MMX transition did not happen
  EXPECT_EQ(m.fpu().tags, 0xc0);
}

TEST(EmulatorX87, WaitingFormsAreFwaitPlusNoWaitInstruction) {
  // fstcw [0x100] (9B D9 /7) ; fldcw [0x20] (ZE unmasked) ; fldz ; fld1 ; fdivrp ; fstsw ax (9B DF E0): #MF on the FWAIT
  std::vector<uint8_t> code = {0x9b};
  abs_insn(code, {0xd9}, 7, 0x100);
  abs_insn(code, {0xd9}, 5, 0x20);
  code.insert(code.end(), {0xd9, 0xee, 0xd9, 0xe8, 0xde, 0xf1});
  const uint64_t fwait = kCode + code.size();
  code.insert(code.end(), {0x9b, 0xdf, 0xe0});
  Machine m(code);
  const uint16_t cw = 0x37b;
  std::memcpy(m.data + 0x20, &cw, 2);
  EXPECT_EQ(m.run(), Vector::MF);
  EXPECT_EQ(m.get<uint16_t>(0x100), 0x37fu);
  EXPECT_EQ(m.cpu.state.rip, fwait);
}

TEST(EmulatorX87, FcomiSetsEflags) {
  // fld1 ; fldz ; fcomi st0, st1 (0 < 1: CF) ; setb al ; fucomip st0, st1 (pop) ; fld qword [0x10] NaN ; fcomi
  std::vector<uint8_t> code = {0xd9, 0xe8, 0xd9, 0xee, 0xdb, 0xf1, 0x0f, 0x92, 0xc0, 0xdf, 0xe9};
  abs_insn(code, {0xdd}, 0, 0x10);
  code.insert(code.end(), {0xdb, 0xf1, 0x0f, 0x9a, 0xc3});  // fcomi ; setp bl
  Machine m(code);
  m.put_double(0x10, __builtin_nan(""));
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.cpu.state.regs[RAX] & 0xff, 1u);
  EXPECT_EQ(m.cpu.state.regs[RBX] & 0xff, 1u);  // unordered: ZF PF CF
  EXPECT_TRUE(m.fpu().fsw & kIE);
}

TEST(EmulatorX87, MmxAliasesRegisterFile) {
  // fninit ; fld1 ; movq mm2, rax ; fnstenv [0x100] ; emms ; fnstenv [0x200]
  std::vector<uint8_t> code = {0xdb, 0xe3, 0xd9, 0xe8, 0x48, 0x0f, 0x6e, 0xd0};
  abs_insn(code, {0xd9}, 6, 0x100);
  code.insert(code.end(), {0x0f, 0x77});
  abs_insn(code, {0xd9}, 6, 0x200);
  Machine m(code);
  m.cpu.state.regs[RAX] = 0x0123456789abcdef;
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.fpu().regs[2].significand, 0x0123456789abcdefu);
  EXPECT_EQ(m.fpu().regs[2].sign_exponent, 0xffff);
  EXPECT_EQ((m.get<uint16_t>(0x104) >> 11) & 7, 0u);  // TOP = 0 after an MMX instruction
  // Full tags from the contents: R7 = 1.0 valid, R2 special (exponent 0xFFFF), the others zero.
  EXPECT_EQ(m.get<uint16_t>(0x108), 0x1565u);
  EXPECT_EQ(m.get<uint16_t>(0x208), 0xffffu);          // EMMS: all empty
}

TEST(EmulatorX87, FxsaveFxrstorRoundTripAndFaults) {
  // fninit ; fld1 ; fldpi ; fxsave [rax] ; fninit ; fxrstor [rax] ; fxsave [rax+0x200] ; fxsave [rax+8] (#GP)
  std::vector<uint8_t> code = {0xdb, 0xe3, 0xd9, 0xe8, 0xd9, 0xeb, 0x0f, 0xae, 0x00, 0xdb, 0xe3, 0x0f, 0xae, 0x08,
                               0x0f, 0xae, 0x80, 0x00, 0x02, 0x00, 0x00};
  const uint64_t misaligned = kCode + code.size();
  code.insert(code.end(), {0x0f, 0xae, 0x40, 0x08});
  Machine m(code);
  m.cpu.state.regs[RAX] = kData + 0x400;
  m.cpu.state.xmm[3] = Xmm{0x1111, 0x2222};
  EXPECT_EQ(m.run(), Vector::GP);
  EXPECT_EQ(m.cpu.state.rip, misaligned);
  EXPECT_EQ(std::memcmp(m.data + 0x400, m.data + 0x600, 416), 0);
  EXPECT_EQ(m.get<uint16_t>(0x400), 0x37fu);
  EXPECT_EQ(m.get<uint16_t>(0x402) >> 11, 6u);     // TOP
  EXPECT_EQ(m.get<uint8_t>(0x404), 0xc0u);         // abridged tags: R6, R7
  EXPECT_EQ(m.get<uint32_t>(0x418), 0x1f80u);      // MXCSR
  EXPECT_EQ(m.get<uint64_t>(0x400 + 160 + 48), 0x1111u);
  EXPECT_EQ(m.fpu().top, 6);
  EXPECT_EQ(m.st(1).significand, 0x8000000000000000u);  // 1.0 restored

  // FXRSTOR with a reserved MXCSR bit: #GP, nothing loaded.
  Machine r({0x0f, 0xae, 0x08});
  r.cpu.state.regs[RAX] = kData;
  const uint32_t bad = 0x10000 | 0x1f80;
  std::memcpy(r.data + 24, &bad, 4);
  r.data[0] = 0x7b;
  EXPECT_EQ(r.run(), Vector::GP);
  EXPECT_EQ(r.fpu().fcw, 0x37f);
}

// Real-address mode stores and loads the environment in its own layout:
// linear 20/32-bit pointers (segment * 16 + offset) split across two fields,
// FOP beside the instruction pointer's high bits.
TEST(EmulatorX87, RealModeEnvironmentLayout) {
  FlatMemory memory;
  Cpu cpu{memory};
  // fnstenv [0x2000] ; o32 fnstenv [0x2040] ; fldenv [0x2000] ; fnstenv [0x2080] ; o32 fldenv [0x2040] ; hlt
  const std::vector<uint8_t> code = {0xd9, 0x36, 0x00, 0x20, 0x66, 0xd9, 0x36, 0x40, 0x20, 0xd9, 0x26, 0x00, 0x20,
                                     0xd9, 0x36, 0x80, 0x20, 0x66, 0xd9, 0x26, 0x40, 0x20, 0xf4};
  memory.map(0x1000, kPageSize, kPermRead | kPermExec);
  memory.write_bytes(0x1000, code);
  uint8_t* data = memory.map(0x2000, kPageSize, kPermRead | kPermWrite);
  CpuState& st = cpu.state;
  st.mode = CpuMode{.code = CodeSize::Bits16, .flat = true, .system = true};
  st.sys.cr0 = cr0::ET;  // PE clear: real-address mode
  st.rip = 0x1000;
  st.fpu.fip = 0x1234, st.fpu.fcs = 0xabcd, st.fpu.fop = 0x5a5, st.fpu.fdp = 0x4321, st.fpu.fds = 0x8765;
  EXPECT_EQ(cpu.run(100).reason, StopReason::Halt);
  auto word = [&](unsigned offset) { return uint32_t(data[offset]) | uint32_t(data[offset + 1]) << 8; };
  auto dword = [&](unsigned offset) { return word(offset) | word(offset + 2) << 16; };
  // Linear IP 0xabcd0 + 0x1234 = 0xacf04, DP 0x87650 + 0x4321 = 0x8b971.
  EXPECT_EQ(word(0), 0x37fu);
  EXPECT_EQ(word(6), 0xcf04u);
  EXPECT_EQ(word(8), 0xa5a5u);   // IP bits 19..16 in 15..12, FOP in 10..0
  EXPECT_EQ(word(10), 0xb971u);
  EXPECT_EQ(word(12), 0x8000u);  // DP bits 19..16 in 15..12
  EXPECT_EQ(dword(0x40 + 12), 0xcf04u);
  EXPECT_EQ(dword(0x40 + 16), 0xa5a5u);  // IP bits 31..16 in 27..12
  EXPECT_EQ(dword(0x40 + 20), 0xb971u);
  EXPECT_EQ(dword(0x40 + 24), 0x8000u);
  // FLDENV took the linear pointers; storing them again gives the same image.
  EXPECT_EQ(std::memcmp(data, data + 0x80, 14), 0);
  EXPECT_EQ(st.fpu.fip, 0xacf04u);
  EXPECT_EQ(st.fpu.fdp, 0x8b971u);
  EXPECT_EQ(st.fpu.fop, 0x5a5u);
  EXPECT_EQ(st.fpu.fcs, 0u);
}

TEST(EmulatorX87, MaskmovdquTouchesOnlySelectedBytes) {
  // maskmovdqu xmm0, xmm1: bytes 0, 1 and 3 selected.
  Machine m({0x66, 0x0f, 0xf7, 0xc1});
  m.cpu.state.regs[RDI] = kData + 0x100;
  m.cpu.state.xmm[0] = Xmm{0x8877665544332211, 0x1};
  m.cpu.state.xmm[1] = Xmm{0x0000000080008080, 0};
  std::memset(m.data + 0x100, 0xee, 16);
  EXPECT_EQ(m.run(), Vector::BP);
  EXPECT_EQ(m.get<uint64_t>(0x100), 0xeeeeeeee44ee2211u);
  EXPECT_EQ(m.get<uint64_t>(0x108), 0xeeeeeeeeeeeeeeeeu);

  // The destination reaching the unmapped page faults before anything is written, even
  // when only bytes on the mapped page are selected (implementation-dependent; as hardware).
  Machine f({0x66, 0x0f, 0xf7, 0xc1});
  f.cpu.state.regs[RDI] = kData + 2 * kPageSize - 4;
  f.cpu.state.xmm[0] = Xmm{0x8877665544332211, 0};
  f.cpu.state.xmm[1] = Xmm{0x80, 0};
  EXPECT_EQ(f.run(), Vector::PF);
  EXPECT_EQ(f.data[2 * kPageSize - 4], 0u);

  // maskmovq mm0, mm1 also switches to MMX use (TOP = 0, all tags valid).
  Machine q({0x0f, 0xf7, 0xc1});
  q.cpu.state.regs[RDI] = kData + 0x200;
  q.fpu().top = 3;
  q.fpu().regs[0].significand = 0x1122334455667788;
  q.fpu().regs[1].significand = 0x8000000000000080;
  EXPECT_EQ(q.run(), Vector::BP);
  EXPECT_EQ(q.get<uint64_t>(0x200), 0x1100000000000088u);
  EXPECT_EQ(q.fpu().top, 0);
  EXPECT_EQ(q.fpu().tags, 0xff);
}

TEST(EmulatorSse4, DotProductSadAndStringCompare) {
  if (!__builtin_cpu_supports("sse4.2")) GTEST_SKIP() << "host without SSE4.2";
  // dpps xmm0, xmm1, 0xf1 ; mpsadbw xmm2, xmm3, 0 ; pcmpistri xmm4, xmm5, 0x0c ; setc al
  Machine m({0x66, 0x0f, 0x3a, 0x40, 0xc1, 0xf1, 0x66, 0x0f, 0x3a, 0x42, 0xd3, 0x00, 0x66, 0x0f, 0x3a, 0x63,
             0xe5, 0x0c, 0x0f, 0x92, 0xc0});
  const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
  std::memcpy(&m.cpu.state.xmm[0], a, 16);
  std::memcpy(&m.cpu.state.xmm[1], b, 16);
  uint8_t bytes[16];
  for (int i = 0; i < 16; ++i) bytes[i] = static_cast<uint8_t>(i);
  std::memcpy(&m.cpu.state.xmm[2], bytes, 16);
  m.cpu.state.xmm[3] = Xmm{0, 0};
  const char needle[16] = "lo", haystack[16] = "hello world";
  std::memcpy(&m.cpu.state.xmm[4], needle, 16);
  std::memcpy(&m.cpu.state.xmm[5], haystack, 16);
  EXPECT_EQ(m.run(), Vector::BP);
  float dp[4];
  std::memcpy(dp, &m.cpu.state.xmm[0], 16);
  EXPECT_EQ(dp[0], 70.0f);
  EXPECT_EQ(dp[1], 0.0f);
  uint16_t sad[8];
  std::memcpy(sad, &m.cpu.state.xmm[2], 16);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(sad[i], 4 * i + 6);
  EXPECT_EQ(m.cpu.state.regs[RCX], 3u);  // "lo" starts at index 3 of "hello world"
  EXPECT_EQ(m.cpu.state.regs[RAX] & 0xff, 1u);  // CF: a match
}

}  // namespace
}  // namespace kiln::emu
