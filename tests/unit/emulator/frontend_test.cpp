// Decoder and frontend corner cases, run through the whole translator.
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "kiln/common/error.h"
#include "kiln/emulator/cpu.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu {
namespace {

constexpr uint64_t kCode = 0x10000;
constexpr uint64_t kData = 0x20000;

struct Machine {
  FlatMemory memory;
  Cpu cpu{memory};
  uint8_t* data;
  explicit Machine(std::vector<uint8_t> code, CodeSize size = CodeSize::Bits64) {
    code.push_back(0xcc);  // INT3 stops the run
    memory.map(kCode, kPageSize, kPermRead | kPermExec);
    memory.write_bytes(kCode, code);
    data = memory.map(kData, 2 * kPageSize, kPermRead | kPermWrite);
    cpu.state.mode.code = size;
    cpu.state.rip = kCode;
    cpu.state.regs[RSP] = kData + kPageSize;
  }
  RunResult run() { return cpu.run(10000); }
  uint64_t& reg(Reg r) { return cpu.state.regs[r]; }
};

void expect_breakpoint(Machine& m) {
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.cpu.state.exception.vector, Vector::BP);
}

TEST(Frontend, HighByteRegistersWithoutRex) {
  Machine m({0x88, 0xe0});  // mov al, ah
  m.reg(RAX) = 0x1122;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 0x1111u);
}

TEST(Frontend, RexSelectsSplInsteadOfAh) {
  Machine m({0x40, 0x88, 0xe0});  // mov al, spl
  m.reg(RAX) = 0x1122;
  m.reg(RSP) = kData + 0x155;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 0x1155u);
}

TEST(Frontend, ThirtyTwoBitWritesZeroExtend) {
  Machine m({0x01, 0xd8, 0x66, 0x01, 0xd9});  // add eax, ebx ; add cx, bx
  m.reg(RAX) = 0xffffffff00000001;
  m.reg(RBX) = 1;
  m.reg(RCX) = 0xaaaaaaaaaaaa0001;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 2u);
  EXPECT_EQ(m.reg(RCX), 0xaaaaaaaaaaaa0002u);
}

TEST(Frontend, RexWWinsOverOperandSizePrefix) {
  Machine m({0x66, 0x48, 0x01, 0xd8});  // add rax, rbx (REX.W beats 0x66)
  m.reg(RAX) = 0xffffffff;
  m.reg(RBX) = 1;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 0x100000000u);
}

TEST(Frontend, RexNotLastIsIgnored) {
  Machine m({0x48, 0x66, 0x01, 0xd8});  // REX before 0x66 is ignored: add ax, bx
  m.reg(RAX) = 0x1ffff;
  m.reg(RBX) = 1;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 0x10000u);
}

TEST(Frontend, RipRelativeAddressing) {
  // mov rax, [rip + disp] where the target is the data page.
  const uint64_t next = kCode + 7;
  const int32_t disp = static_cast<int32_t>(kData + 0x40 - next);
  std::vector<uint8_t> code = {0x48, 0x8b, 0x05};
  for (int i = 0; i < 4; ++i) code.push_back(static_cast<uint8_t>(static_cast<uint32_t>(disp) >> (8 * i)));
  Machine m(code);
  uint64_t v = 0x1122334455667788;
  std::memcpy(m.data + 0x40, &v, 8);
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), v);
}

TEST(Frontend, SixteenBitAddressingInRealModeCode) {
  Machine m({0x8b, 0x00, 0x8b, 0x4f, 0x02}, CodeSize::Bits16);  // mov ax, [bx+si] ; mov cx, [bx+2]
  m.reg(RBX) = 0x1fff0 + 0x20000 - 0x20000;  // wraps: only the low 16 bits address
  m.reg(RBX) = 0xfff0;
  m.reg(RSI) = 0x10;  // bx + si = 0x10000 wraps to 0x0000 in 16-bit addressing
  m.memory.map(0, kPageSize, kPermRead | kPermWrite);
  uint16_t at_zero = 0xbeef;
  m.memory.write_bytes(0, {reinterpret_cast<uint8_t*>(&at_zero), 2});
  m.cpu.state.rip = kCode & 0xffff;
  // 16-bit code fetches at CS:IP with a flat (zero-based) CS: put the code at 0x0000 + IP.
  m.memory.unmap_all();
  uint8_t* low = m.memory.map(0, 0x30000, kPermRead | kPermWrite | kPermExec);
  std::vector<uint8_t> code = {0x8b, 0x00, 0x8b, 0x4f, 0x02, 0xcc};
  std::memcpy(low + 0x1000, code.data(), code.size());
  low[0] = 0xef;
  low[1] = 0xbe;
  low[0xfff2] = 0x34;
  low[0xfff3] = 0x12;
  m.cpu.state.rip = 0x1000;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX) & 0xffff, 0xbeefu);
  EXPECT_EQ(m.reg(RCX) & 0xffff, 0x1234u);
}

TEST(Frontend, AddressSizePrefixIn32BitCode) {
  Machine m({0x67, 0x8b, 0x00}, CodeSize::Bits32);  // mov eax, [bx+si]
  m.reg(RBX) = 0xffff0000 + 0x100;  // upper bits ignored by 16-bit addressing
  m.reg(RSI) = 0x20;
  m.memory.map(0, kPageSize, kPermRead);
  expect_breakpoint(m);  // reads 0x120 from the zero-filled low page
  EXPECT_EQ(m.reg(RAX), 0u);
}

TEST(Frontend, SegmentOverrideFsAddsBase) {
  Machine m({0x64, 0x48, 0x8b, 0x04, 0x25, 0x08, 0, 0, 0});  // mov rax, fs:[8]
  m.cpu.state.seg_base[FS] = kData;
  uint64_t v = 0xfeedface;
  std::memcpy(m.data + 8, &v, 8);
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), v);
}

TEST(Frontend, IgnoredSegmentOverrideIn64BitMode) {
  Machine m({0x26, 0x48, 0x8b, 0x03});  // mov rax, es:[rbx] — ES base ignored in 64-bit mode
  m.cpu.state.seg_base[ES] = 0x123456;
  m.reg(RBX) = kData;
  m.data[0] = 0x42;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 0x42u);
}

TEST(Frontend, LockOnRegisterDestinationIsInvalid) {
  Machine m({0xf0, 0x01, 0xd8});
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.cpu.state.exception.vector, Vector::UD);
  EXPECT_EQ(m.cpu.state.rip, kCode);
}

TEST(Frontend, InvalidOpcodesRaiseUd) {
  for (std::vector<uint8_t> bytes : {std::vector<uint8_t>{0x0f, 0x0b}, {0x06}, {0x0f, 0x04}, {0x37}}) {
    Machine m(bytes);
    ASSERT_EQ(m.run().reason, StopReason::Exception);
    EXPECT_EQ(m.cpu.state.exception.vector, Vector::UD);
  }
}

TEST(Frontend, DebugAndControlRegisterOperandsRaiseUd) {
  // mov eax, dr4 (found by the fuzzer: non-GPR operands must not reach register lookup)
  for (CodeSize size : {CodeSize::Bits16, CodeSize::Bits32, CodeSize::Bits64}) {
    Machine m({0x0f, 0x21, 0xe0}, size);
    ASSERT_EQ(m.run().reason, StopReason::Exception);
    EXPECT_EQ(m.cpu.state.exception.vector, Vector::UD);
  }
  Machine cr({0x0f, 0x20, 0xc0});  // mov rax, cr0
  ASSERT_EQ(cr.run().reason, StopReason::Exception);
  EXPECT_EQ(cr.cpu.state.exception.vector, Vector::UD);
}

TEST(Frontend, OverlongInstructionRaisesGp) {
  std::vector<uint8_t> code(15, 0x66);
  code.push_back(0x90);
  Machine m(code);
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.cpu.state.exception.vector, Vector::GP);
}

TEST(Frontend, FetchFaultAcrossPageBoundary) {
  FlatMemory memory;
  memory.map(kCode, kPageSize, kPermRead | kPermExec);
  // mov rax, imm64 starting 3 bytes before the end of the page.
  std::vector<uint8_t> code = {0x48, 0xb8, 0x11};
  memory.write_bytes(kCode + kPageSize - 3, code);
  Cpu cpu(memory);
  cpu.state.rip = kCode + kPageSize - 3;
  ASSERT_EQ(cpu.run(100).reason, StopReason::Exception);
  EXPECT_EQ(cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(cpu.state.exception.fault_address, kCode + kPageSize);
  EXPECT_EQ(cpu.state.rip, kCode + kPageSize - 3);
}

TEST(Frontend, DivideErrorIsPrecise) {
  Machine m({0x48, 0xff, 0xc1, 0x48, 0xf7, 0xf3});  // inc rcx ; div rbx (rbx = 0)
  m.reg(RBX) = 0;
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.cpu.state.exception.vector, Vector::DE);
  EXPECT_EQ(m.cpu.state.rip, kCode + 3);
  EXPECT_EQ(m.reg(RCX), 1u);
}

TEST(Frontend, FaultingPushLeavesRspUnchanged) {
  Machine m({0x50});  // push rax with RSP pointing at unmapped memory
  m.reg(RSP) = 0x900000;
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(m.reg(RSP), 0x900000u);
  EXPECT_EQ(m.cpu.state.exception.error_code & 2, 2u);  // write access
}

TEST(Frontend, RepMovsbCopiesAndCountsDown) {
  Machine m({0xf3, 0xa4});  // rep movsb
  m.reg(RSI) = kData;
  m.reg(RDI) = kData + 0x100;
  m.reg(RCX) = 5;
  for (int i = 0; i < 5; ++i) m.data[i] = static_cast<uint8_t>(i + 1);
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RCX), 0u);
  EXPECT_EQ(m.reg(RDI), kData + 0x105);
  EXPECT_EQ(m.data[0x104], 5);
}

TEST(Frontend, CmpxchgAndLazyFlags) {
  // cmpxchg [rbx], ecx ; setz dl
  Machine m({0x0f, 0xb1, 0x0b, 0x0f, 0x94, 0xc2});
  m.reg(RBX) = kData;
  m.reg(RAX) = 7;
  m.reg(RCX) = 9;
  m.data[0] = 7;
  expect_breakpoint(m);
  EXPECT_EQ(m.data[0], 9);
  EXPECT_EQ(m.reg(RDX) & 0xff, 1u);
}

TEST(Frontend, CpuidAndRdtsc) {
  // xor eax, eax ; cpuid ; mov esi, ebx ; rdtsc ; mov edi, eax ; rdtsc
  Machine m({0x31, 0xc0, 0x0f, 0xa2, 0x89, 0xde, 0x0f, 0x31, 0x89, 0xc7, 0x0f, 0x31});
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RSI), 0x756e6547u);  // "Genu"
  EXPECT_GT(m.reg(RAX), m.reg(RDI));
}

TEST(Frontend, BlocksAreTranslatedOnceAndCached) {
  // mov ecx, 1000 ; l: dec ecx ; jnz l
  Machine m({0xb9, 0xe8, 0x03, 0, 0, 0xff, 0xc9, 0x75, 0xfc});
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RCX), 0u);
  EXPECT_LE(m.cpu.stats().translations, 4u);
  EXPECT_GE(m.cpu.stats().blocks_executed, 1000u);
}

TEST(Frontend, TranslationCacheIsKeyedByMode) {
  // 48 ff c0: "inc rax" in 64-bit code, "dec eax ; inc eax" in 32-bit code.
  Machine m({0x48, 0xff, 0xc0});
  m.reg(RAX) = 5;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 6u);
  m.cpu.state.mode.code = CodeSize::Bits32;
  m.cpu.state.rip = kCode;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 6u);
  m.cpu.state.mode.code = CodeSize::Bits64;
  m.cpu.state.rip = kCode;
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX), 7u);
  EXPECT_EQ(m.cpu.stats().translations, 2u);  // the 64-bit block was reused
}

TEST(Frontend, LogsInAsmOpAndExec) {
  Machine m({0x48, 0x01, 0xd8});
  std::FILE* log = std::tmpfile();
  ASSERT_NE(log, nullptr);
  m.cpu.set_log(parse_log_mask("in_asm,op,exec"), log);
  expect_breakpoint(m);
  std::rewind(log);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, log)) text += buf;
  std::fclose(log);
  EXPECT_NE(text.find("IN:"), std::string::npos);
  EXPECT_NE(text.find("add rax, rbx"), std::string::npos) << text;
  EXPECT_NE(text.find("add.i64"), std::string::npos) << text;
  EXPECT_NE(text.find("Trace 0:"), std::string::npos) << text;
  EXPECT_THROW(parse_log_mask("in_asm,bogus"), kiln::Error);
}

TEST(Frontend, Sse2IntegerAndMoves) {
  // movdqu xmm1, [rbx] ; paddw xmm1, xmm1 ; pshufd xmm2, xmm1, 0x1b ; pmovmskb eax, xmm2 ; movq rcx, xmm2
  Machine m({0xf3, 0x0f, 0x6f, 0x0b, 0x66, 0x0f, 0xfd, 0xc9, 0x66, 0x0f, 0x70, 0xd1, 0x1b, 0x66, 0x0f, 0xd7, 0xc2,
             0x66, 0x48, 0x0f, 0x7e, 0xd1});
  m.reg(RBX) = kData + 1;  // unaligned is fine for MOVDQU
  for (int i = 0; i < 16; ++i) m.data[1 + i] = static_cast<uint8_t>(0x40 + i);
  expect_breakpoint(m);
  // words 0x4140,0x4342,... doubled → 0x8280,0x8684,...; dwords reversed by 0x1b.
  EXPECT_EQ(m.cpu.state.xmm[1].lo, 0x8e8c8a8886848280u);
  EXPECT_EQ(m.cpu.state.xmm[2].lo, 0x969492909e9c9a98u);
  EXPECT_EQ(m.reg(RAX), 0xffffu);
  EXPECT_EQ(m.reg(RCX), m.cpu.state.xmm[2].lo);
}

TEST(Frontend, AlignedSseAccessRaisesGp) {
  Machine m({0x66, 0x0f, 0xfe, 0x03});  // paddd xmm0, [rbx] with rbx misaligned
  m.reg(RBX) = kData + 8;
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.cpu.state.exception.vector, Vector::GP);
}

TEST(Frontend, SixteenBitCodeWrapsIpAndUsesSp) {
  // At IP 0xfffe: push ax (50) ; nop (90) — the nop sits at IP 0xffff, then IP wraps to 0x0000 (int3).
  FlatMemory memory;
  uint8_t* low = memory.map(0, 0x10000, kPermRead | kPermWrite | kPermExec);
  low[0xfffe] = 0x50;
  low[0xffff] = 0x90;
  low[0] = 0xcc;
  Cpu cpu(memory);
  cpu.state.mode.code = CodeSize::Bits16;
  cpu.state.rip = 0xfffe;
  cpu.state.regs[RSP] = 0xabcd0100;  // 16-bit stack: only SP changes
  cpu.state.regs[RAX] = 0x1234;
  ASSERT_EQ(cpu.run(100).reason, StopReason::Exception);
  EXPECT_EQ(cpu.state.exception.vector, Vector::BP);
  EXPECT_EQ(cpu.state.rip, 1u);
  EXPECT_EQ(cpu.state.regs[RSP], 0xabcd00feu);
  EXPECT_EQ(low[0xfe], 0x34);
  EXPECT_EQ(low[0xff], 0x12);
}

TEST(Frontend, RemappingMemoryDropsStaleTranslations) {
  FlatMemory memory;
  uint8_t* code = memory.map(kCode, kPageSize, kPermRead | kPermWrite | kPermExec);
  code[0] = 0xff;  // inc eax
  code[1] = 0xc0;
  code[2] = 0xcc;
  Cpu cpu(memory);
  cpu.state.rip = kCode;
  cpu.run(100);
  EXPECT_EQ(cpu.state.regs[RAX], 1u);
  memory.unmap_all();
  uint8_t* other = memory.map(kCode, kPageSize, kPermRead | kPermExec);
  other[0] = 0xff;  // dec eax
  other[1] = 0xc8;
  other[2] = 0xcc;
  cpu.state.rip = kCode;
  cpu.run(100);
  EXPECT_EQ(cpu.state.regs[RAX], 0u);
}

TEST(Frontend, BcdAdjustIn32BitMode) {
  Machine m({0xb0, 0x79, 0x04, 0x35, 0x27}, CodeSize::Bits32);  // mov al,0x79 ; add al,0x35 ; daa
  expect_breakpoint(m);
  EXPECT_EQ(m.reg(RAX) & 0xff, 0x14u);  // 79 + 35 = 114 (BCD), CF set
  EXPECT_TRUE(read_rflags(m.cpu.state) & rflags::CF);
}

}  // namespace
}  // namespace kiln::emu
