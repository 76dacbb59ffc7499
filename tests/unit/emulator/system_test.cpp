// System mode segmentation, control transfers and event delivery: guest
// snippets (assembled with nasm when the test runs) on a Cpu in system mode
// over identity-mapped memory with hand-built GDT/IDT/TSS.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/system.h"

namespace kiln::emu {
namespace {

// Memory layout (identity mapped, 1 MiB of RAM; 0x100000.. is unmapped).
constexpr uint64_t kGdt = 0x1000, kIdt = 0x2000, kTss = 0x3000, kCode = 0x4000, kHandlers = 0x8000;
constexpr uint64_t kStack0 = 0xa000, kStack3 = 0xb000, kIstStack = 0xc000, kData = 0xd000;

// GDT selectors.
constexpr uint16_t kCode32 = 0x08, kData32 = 0x10, kCode64 = 0x18, kCode16 = 0x20, kData3 = 0x2b, kCode32R3 = 0x33,
                   kCode64R3 = 0x3b, kTssSel = 0x40, kGateSel = 0x50, kAbsentData = 0x58, kReadOnlyData = 0x60,
                   kExecOnlyCode = 0x68, kAbsentCode = 0x70, kData16 = 0x78;

uint64_t segment(uint32_t base, uint32_t limit, uint8_t access, uint8_t flags) {
  return (limit & 0xffff) | (uint64_t{base & 0xffffff} << 16) | (uint64_t{access} << 40) |
         (uint64_t{(limit >> 16) & 0xf} << 48) | (uint64_t{flags & 0xfu} << 52) | (uint64_t{base >> 24} << 56);
}
uint64_t gate(uint16_t selector, uint32_t offset, uint8_t type, unsigned dpl, unsigned params_or_ist = 0,
              bool present = true) {
  return (offset & 0xffff) | (uint64_t{selector} << 16) | (uint64_t{params_or_ist} << 32) |
         (uint64_t{type} << 40) | (uint64_t{dpl} << 45) | (uint64_t{present} << 47) |
         (uint64_t{offset >> 16} << 48);
}

std::vector<uint8_t> assemble(const std::string& source) {
  static int counter = 0;
  auto dir = std::filesystem::temp_directory_path();
  auto stem = dir / ("kiln_system_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::string asm_path = stem.string() + ".asm", bin_path = stem.string() + ".bin";
  std::ofstream(asm_path) << source;
  std::string command = "nasm -f bin -o " + bin_path + " " + asm_path;
  int status = std::system(command.c_str());
  std::ifstream in(bin_path, std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::filesystem::remove(asm_path);
  std::filesystem::remove(bin_path);
  if (status != 0) ADD_FAILURE() << "nasm failed on:\n" << source;
  return bytes;
}

bool have_nasm() { return std::system("nasm -v > /dev/null 2>&1") == 0; }

class FakePic final : public InterruptController {
 public:
  bool pending() override {
    if (delay > 0) return --delay, false;
    return count > 0;
  }
  uint8_t acknowledge() override {
    --count;
    ++acknowledged;
    return vector;
  }
  int count = 0;
  int acknowledged = 0;
  int delay = 0;  // pending() answers false this many times first
  uint8_t vector = 0x20;
};

struct Machine {
  FlatMemory memory;
  uint8_t* ram;
  Cpu cpu{memory};
  CpuState& s = cpu.state;

  Machine() {
    ram = memory.map(0, 0x100000, kPermRead | kPermWrite | kPermExec);
    s.mode.system = true;
    update_mode(s);  // real mode after reset
    gdt(kCode32, segment(0, 0xfffff, 0x9a, 0xc));
    gdt(kData32, segment(0, 0xfffff, 0x92, 0xc));
    gdt(kCode64, segment(0, 0, 0x9a, 0x2));
    gdt(kCode16, segment(0, 0xffff, 0x9a, 0x0));
    gdt(kData3 & ~3, segment(0, 0xfffff, 0xf2, 0xc));
    gdt(kCode32R3 & ~3, segment(0, 0xfffff, 0xfa, 0xc));
    gdt(kCode64R3 & ~3, segment(0, 0, 0xfa, 0x2));
    gdt(kAbsentData, segment(0, 0xfffff, 0x12, 0xc));
    gdt(kReadOnlyData, segment(0, 0xfffff, 0x90, 0xc));
    gdt(kExecOnlyCode, segment(0, 0xfffff, 0x98, 0xc));
    gdt(kAbsentCode, segment(0, 0xfffff, 0x1a, 0xc));
    gdt(kData16, segment(0, 0xffff, 0x92, 0x0));
    s.sys.gdtr = {kGdt, 0x7f};
    // Handlers: vector v at kHandlers + 16 v, "hlt; iret" (32-bit) by default.
    for (unsigned v = 0; v < 256; ++v) {
      ram[kHandlers + 16 * v] = 0xf4;
      ram[kHandlers + 16 * v + 1] = 0xcf;
    }
  }

  void gdt(uint16_t selector, uint64_t descriptor) { put64(kGdt + (selector & ~7u), descriptor); }
  void put64(uint64_t address, uint64_t v) { std::memcpy(ram + address, &v, 8); }
  void put32(uint64_t address, uint32_t v) { std::memcpy(ram + address, &v, 4); }
  void put16(uint64_t address, uint16_t v) { std::memcpy(ram + address, &v, 2); }
  uint64_t get64(uint64_t address) const {
    uint64_t v;
    std::memcpy(&v, ram + address, 8);
    return v;
  }
  uint32_t get32(uint64_t address) const {
    uint32_t v;
    std::memcpy(&v, ram + address, 4);
    return v;
  }
  uint16_t get16(uint64_t address) const {
    uint16_t v;
    std::memcpy(&v, ram + address, 2);
    return v;
  }
  static uint64_t handler(unsigned vector) { return kHandlers + 16 * vector; }

  // Loads a segment cache directly from the GDT (test setup, independent of the emulator's loader).
  void set_segment(Seg seg, uint16_t selector) {
    const uint64_t d = get64(kGdt + (selector & ~7u));
    s.seg_selector[seg] = selector;
    s.seg_base[seg] = ((d >> 16) & 0xffffff) | (((d >> 56) & 0xff) << 24);
    uint32_t limit = static_cast<uint32_t>((d & 0xffff) | (((d >> 48) & 0xf) << 16));
    s.seg_limit[seg] = (d >> 55) & 1 ? (limit << 12) | 0xfff : limit;
    s.seg_attrs[seg] = static_cast<uint16_t>(((d >> 40) & 0xff) | (((d >> 52) & 0xf) << 12));
  }
  void protected32(unsigned cpl = 0) {
    s.sys.cr0 |= cr0::PE;
    set_segment(CS, cpl == 0 ? kCode32 : kCode32R3);
    for (Seg seg : {ES, SS, DS, FS, GS}) set_segment(seg, cpl == 0 ? kData32 : kData3);
    s.sys.cpl = static_cast<uint8_t>(cpl);
    s.regs[RSP] = cpl == 0 ? kStack0 : kStack3;
    update_mode(s);
    idt_limit = 256 * 8 - 1;
    s.sys.idtr = {kIdt, idt_limit};
    for (unsigned v = 0; v < 256; ++v) idt32(v, desc_type::kInterruptGate32, 0);
    tss32(kStack0, kData32);
  }
  void long64(unsigned cpl = 0) {
    s.sys.cr0 |= cr0::PE | cr0::PG;
    s.sys.cr4 |= cr4::PAE;
    s.sys.efer |= efer::LME | efer::LMA;
    set_segment(CS, cpl == 0 ? kCode64 : kCode64R3);
    for (Seg seg : {ES, SS, DS, FS, GS}) set_segment(seg, cpl == 0 ? kData32 : kData3);
    s.sys.cpl = static_cast<uint8_t>(cpl);
    s.regs[RSP] = cpl == 0 ? kStack0 : kStack3;
    update_mode(s);
    s.sys.idtr = {kIdt, 256 * 16 - 1};
    for (unsigned v = 0; v < 256; ++v) {
      idt64(v, desc_type::kInterruptGate32, 0, 0);
      ram[handler(v) + 1] = 0x48;  // hlt; iretq
      ram[handler(v) + 2] = 0xcf;
    }
    // 64-bit TSS: RSP0, IST1.
    put64(kTss + 4, kStack0);
    put64(kTss + 0x24, kIstStack);
    gdt(kTssSel, segment(kTss, 0x67, 0x89, 0));
    gdt(kTssSel + 8, 0);
    s.sys.tr = SegmentCache{.base = kTss, .limit = 0x67, .selector = kTssSel, .attrs = 0x8b};
  }
  void idt32(unsigned vector, uint8_t type, unsigned dpl, bool present = true) {
    put64(kIdt + 8 * vector, gate(kCode32, static_cast<uint32_t>(handler(vector)), type, dpl, 0, present));
  }
  void idt64(unsigned vector, uint8_t type, unsigned dpl, unsigned ist, bool present = true) {
    put64(kIdt + 16 * vector, gate(kCode64, static_cast<uint32_t>(handler(vector)), type, dpl, ist, present));
    put64(kIdt + 16 * vector + 8, 0);
  }
  void tss32(uint32_t esp0, uint16_t ss0) {
    put32(kTss + 4, esp0);
    put32(kTss + 8, ss0);
    gdt(kTssSel, segment(kTss, 0x67, 0x89, 0));
    s.sys.tr = SegmentCache{.base = kTss, .limit = 0x67, .selector = kTssSel, .attrs = 0x8b};
  }
  void code(const std::string& source, uint64_t at = kCode) {
    std::vector<uint8_t> bytes = assemble(source);
    std::memcpy(ram + at, bytes.data(), bytes.size());
    s.rip = at;
  }
  RunResult run(uint64_t limit = 100000) { return cpu.run(limit); }
  // Runs until the handler of `vector` executes its HLT.
  void expect_handler(unsigned vector) {
    RunResult r = run();
    ASSERT_EQ(r.reason, StopReason::Halt) << "rip " << std::hex << s.rip;
    EXPECT_EQ(s.rip, handler(vector) + 1) << "expected vector " << vector << ", rip 0x" << std::hex << s.rip;
  }
  // Continues after a HLT (as the machine does when it wakes the CPU).
  RunResult resume(uint64_t limit = 100000) {
    s.sys.halted = false;
    return run(limit);
  }
  uint32_t idt_limit = 0;
};

#define REQUIRE_NASM() \
  if (!have_nasm()) GTEST_SKIP() << "nasm not installed"

// ---------------- modes ----------------

TEST(SystemMode, ModeFollowsCr0EferAndCsAttributes) {
  CpuState s;
  s.mode.system = true;
  update_mode(s);
  EXPECT_EQ(s.mode.code, CodeSize::Bits16);  // reset: real mode
  EXPECT_TRUE(s.mode.flat);
  s.seg_base[DS] = 0x10;
  update_mode(s);
  EXPECT_FALSE(s.mode.flat);
  s.sys.cr0 |= cr0::PE;
  s.seg_attrs[CS] = 0xc09b;  // D=1
  update_mode(s);
  EXPECT_EQ(s.mode.code, CodeSize::Bits32);
  s.sys.efer |= efer::LMA;
  update_mode(s);
  EXPECT_EQ(s.mode.code, CodeSize::Bits32);  // compatibility mode
  s.seg_attrs[CS] = 0x209b;                  // L=1
  update_mode(s);
  EXPECT_EQ(s.mode.code, CodeSize::Bits64);
  EXPECT_TRUE(s.mode.system);
}

TEST(SystemMode, RealToProtectedToLongToCompatibilityByFarJumps) {
  REQUIRE_NASM();
  Machine m;
  m.code(R"(
    bits 16
    org 0x4000
    mov ax, 0x0123
    mov ds, ax                 ; real mode: base = selector << 4
    hlt                        ; the test sets CR0.PE here (MOV CR0 belongs to another helper)
    jmp dword 0x08:pm32
    bits 32
pm32:
    mov ax, 0x10
    mov ds, ax
    mov ss, ax
    mov esp, 0xa000
    hlt                        ; the test activates long mode here
    jmp 0x18:lm64
    bits 64
lm64:
    mov rax, 0x1122334455667788
    hlt
    jmp far [rel compat_ptr]   ; m16:32 -> 32-bit code segment: compatibility mode
    bits 32
compat:
    mov eax, 0xc0de
    hlt
compat_ptr: dq compat          ; REX.W form (m16:64) as nasm encodes it
            dw 0x08
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.mode.code, CodeSize::Bits16);
  EXPECT_EQ(m.s.seg_selector[DS], 0x0123);
  EXPECT_EQ(m.s.seg_base[DS], 0x1230u);
  EXPECT_FALSE(m.s.mode.flat);
  EXPECT_TRUE(m.s.sys.halted);
  // Still halted: run() returns at once.
  EXPECT_EQ(m.run().reason, StopReason::Halt);

  m.s.sys.cr0 |= cr0::PE;
  m.s.sys.gdtr = {kGdt, 0x7f};
  ASSERT_EQ(m.resume().reason, StopReason::Halt);
  EXPECT_EQ(m.s.mode.code, CodeSize::Bits32);
  EXPECT_EQ(m.s.seg_selector[CS], kCode32);
  EXPECT_EQ(m.s.seg_selector[DS], kData32);
  EXPECT_EQ(m.s.seg_base[DS], 0u);
  EXPECT_EQ(m.s.seg_limit[DS], 0xffffffffu);
  EXPECT_TRUE(m.s.mode.flat);
  EXPECT_EQ(m.s.sys.cpl, 0);
  // The accessed bit was set in the descriptors.
  EXPECT_TRUE(m.get64(kGdt + kData32) & (uint64_t{1} << 40));
  EXPECT_TRUE(m.get64(kGdt + kCode32) & (uint64_t{1} << 40));

  m.s.sys.efer |= efer::LME | efer::LMA;
  m.s.sys.cr0 |= cr0::PG;
  ASSERT_EQ(m.resume().reason, StopReason::Halt);
  EXPECT_EQ(m.s.mode.code, CodeSize::Bits64);
  EXPECT_EQ(m.s.regs[RAX], 0x1122334455667788u);

  ASSERT_EQ(m.resume().reason, StopReason::Halt);
  EXPECT_EQ(m.s.mode.code, CodeSize::Bits32);
  EXPECT_EQ(m.s.regs[RAX] & 0xffffffff, 0xc0deu);
  EXPECT_TRUE(long_mode_active(m.s));
}

// ---------------- segment loads ----------------

struct FaultCase {
  const char* name;
  unsigned cpl;
  const char* code;
  unsigned vector;
  uint32_t error;
};

class SegmentFaults : public ::testing::TestWithParam<FaultCase> {};

TEST_P(SegmentFaults, RaiseTheRightExceptionAndErrorCode) {
  REQUIRE_NASM();
  const FaultCase& c = GetParam();
  Machine m;
  m.protected32(c.cpl);
  // A call gate (DPL 3) to ring 0 with one parameter, a TSS, a not-present gate.
  m.gdt(kGateSel, gate(kCode32, 0x6000, desc_type::kCallGate32, 3, 1));
  m.code(std::string("bits 32\norg 0x4000\n") + c.code + "\nhlt\n");
  m.expect_handler(c.vector);
  if (exception_has_error_code(static_cast<uint8_t>(c.vector))) {
    // The handler runs at CPL 0 on kStack0 (from the TSS when the fault came from ring 3).
    const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
    EXPECT_EQ(m.get32(esp), c.error) << c.name;
    EXPECT_EQ(m.get32(esp + 8) & 0xffff, c.cpl == 0 ? kCode32 : kCode32R3);
    if (c.cpl == 3) {
      EXPECT_EQ(esp, kStack0 - 24);
      EXPECT_EQ(m.get32(esp + 20), kData3);  // old SS
    }
  }
  EXPECT_EQ(m.s.sys.cpl, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    System, SegmentFaults,
    ::testing::Values(
        FaultCase{"beyond_gdt_limit", 0, "mov ax, 0x88\nmov ds, ax", 13, 0x88},
        FaultCase{"ldt_without_ldt", 0, "mov ax, 0x0c\nmov es, ax", 13, 0x0c},
        FaultCase{"system_descriptor", 0, "mov ax, 0x40\nmov ds, ax", 13, 0x40},
        FaultCase{"execute_only_code", 0, "mov ax, 0x68\nmov fs, ax", 13, 0x68},
        FaultCase{"absent_data", 0, "mov ax, 0x58\nmov gs, ax", 11, 0x58},
        FaultCase{"null_ss", 0, "xor eax, eax\nmov ss, ax", 13, 0},
        FaultCase{"ss_rpl_mismatch", 0, "mov ax, 0x13\nmov ss, ax", 13, 0x10},
        FaultCase{"ss_dpl_mismatch", 0, "mov ax, 0x28\nmov ss, ax", 13, 0x28},
        FaultCase{"ss_read_only", 0, "mov ax, 0x60\nmov ss, ax", 13, 0x60},
        FaultCase{"ss_absent", 0, "mov ax, 0x58\nmov ss, ax", 12, 0x58},
        FaultCase{"ring3_loads_ring0_data", 3, "mov ax, 0x10\nmov ds, ax", 13, 0x10},
        FaultCase{"pop_absent", 0, "push dword 0x58\npop es", 11, 0x58},
        FaultCase{"lss_null", 0, "lss esp, [0xd000]\n", 13, 0},
        FaultCase{"far_jump_to_data", 0, "jmp 0x10:0", 13, 0x10},
        FaultCase{"far_jump_to_absent_code", 0, "jmp 0x70:0", 11, 0x70},
        FaultCase{"far_jump_beyond_limit", 0, "jmp 0x20:0x12345", 13, 0},
        FaultCase{"far_call_null", 0, "call 0x0:0", 13, 0},
        FaultCase{"ring3_far_jump_to_ring0_code", 3, "jmp 0x08:0", 13, 0x08},
        FaultCase{"int_gate_dpl", 3, "int 0x40", 13, 0x40 * 8 + 2},
        FaultCase{"int3_gate_dpl", 3, "int3", 13, 3 * 8 + 2},
        FaultCase{"retf_to_inner_level", 3, "push dword 0x08\npush dword 0\nretf", 13, 0x08},
        FaultCase{"retf_null_cs", 0, "push dword 0\npush dword 0\nretf", 13, 0},
        FaultCase{"iret_to_absent_code", 0, "pushfd\npush dword 0x70\npush dword 0\niretd", 11, 0x70},
        FaultCase{"far_call_absent_code", 0, "call 0x70:0", 11, 0x70}),
    [](const ::testing::TestParamInfo<FaultCase>& info) { return std::string(info.param.name); });

TEST(SystemMode, LssNullSelectorFaultsWithZeroErrorCode) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.put32(kData, 0x1234);
  m.put16(kData + 4, 0);
  m.code("bits 32\norg 0x4000\nlss esp, [0xd000]\nhlt\n");
  m.expect_handler(13);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 0u);
}

TEST(SystemMode, PageFaultWritesCr2) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code("bits 32\norg 0x4000\nmov dword [0x200010], 1\nhlt\n");
  m.expect_handler(14);
  EXPECT_EQ(m.s.sys.cr2, 0x200010u);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])) & 2, 2u);  // write
}

TEST(SystemMode, SegmentRegisterMovesPushesAndPops) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code(R"(
    bits 32
    org 0x4000
    mov ax, 0x78
    mov es, ax
    mov ebx, es
    push fs
    pop gs
    mov ecx, gs
    mov dword [0xd000], 0x5678
    mov word [0xd004], 0x78
    lfs edx, [0xd000]
    mov esi, fs
    mov word [0xd010], 0
    mov ax, ds
    mov [0xd010], ds
    movzx edi, word [0xd010]
    hlt
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.regs[RBX], 0x78u);
  EXPECT_EQ(m.s.seg_limit[ES], 0xffffu);
  EXPECT_EQ(m.s.regs[RCX], kData32);
  EXPECT_EQ(m.s.regs[RDX], 0x5678u);
  EXPECT_EQ(m.s.regs[RSI], 0x78u);
  EXPECT_EQ(m.s.regs[RDI], kData32);
  EXPECT_EQ(m.s.regs[RSP], kStack0);
}

TEST(SystemMode, NullSelectorsInDataRegistersAndLongModeSs) {
  REQUIRE_NASM();
  Machine m;
  m.long64();
  m.code(R"(
    bits 64
    org 0x4000
    xor eax, eax
    mov ds, ax
    mov es, ax
    mov ss, ax                 ; allowed in 64-bit mode at CPL 0
    push 7
    pop rbx
    hlt
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.seg_selector[SS], 0);
  EXPECT_EQ(m.s.seg_selector[DS], 0);
  EXPECT_EQ(m.s.regs[RBX], 7u);
}

TEST(SystemMode, SixteenBitStackSegmentIn32BitCode) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code(R"(
    bits 32
    org 0x4000
    mov ax, 0x78               ; 16-bit data segment (B = 0) as SS
    mov ss, ax
    mov esp, 0x00018000
    push dword 0x11223344      ; SP-relative: stored at 0x7ffc, ESP bits 16..31 kept
    mov ebx, esp
    pop ecx
    hlt
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.regs[RBX], 0x00017ffcu);
  EXPECT_EQ(m.get32(0x7ffc), 0x11223344u);
  EXPECT_EQ(m.s.regs[RCX], 0x11223344u);
  EXPECT_EQ(m.s.regs[RSP], 0x00018000u);
  EXPECT_EQ(m.s.mode.stack_bits, 16u);
}

TEST(SystemMode, SegmentLimitAndNullSegmentChecks) {
  REQUIRE_NASM();
  struct Case {
    const char* code;
    unsigned vector;
  };
  for (Case c : {Case{"mov eax, [0xfffc]", 0},          // inside the 64 KiB limit
                 Case{"mov eax, [0xfffe]", 13},         // its last byte beyond the limit
                 Case{"mov eax, [0x10000]", 13},        // beyond the limit
                 Case{"mov eax, [es:0x1fff0]", 13},     // expand-down, limit 0x1ffff: at or below the limit is invalid
                 Case{"mov eax, [es:0x30000]", 0},      // expand-down: above the limit is valid
                 Case{"xor eax, eax\nmov fs, ax\nmov eax, [fs:0]", 13},  // null FS
                 Case{"mov esp, 0x10004\npush eax", 12},     // SS limit
                 Case{"mov esp, 0xfffe\npop eax", 12},       // its last byte beyond the SS limit
                 Case{"mov esp, 0xfffc\npop eax", 0}}) {
    Machine m;
    m.protected32();
    m.gdt(0x80, segment(0, 0xffff, 0x92, 0x4));    // 32-bit data, 64 KiB limit
    m.gdt(0x88, segment(0, 0x1ffff, 0x96, 0x4));   // expand-down data, limit 0x1ffff
    m.s.sys.gdtr.limit = 0x8f;
    m.idt32(0, desc_type::kInterruptGate32, 0);
    m.code(std::string("bits 32\norg 0x4000\nmov ax, 0x80\nmov ds, ax\nmov ss, ax\nmov ax, 0x88\nmov es, ax\n") +
           c.code + "\nxor edx, edx\ndiv edx\n");  // #DE (vector 0) when no fault came first
    m.s.regs[RSP] = 0x9000;
    m.expect_handler(c.vector);
    if (c.vector != 0) {
      const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
      EXPECT_EQ(m.get32(esp), 0u) << c.code;
    }
  }
}

TEST(SystemMode, SegmentChecksUseTheAccessSizeAndType) {
  REQUIRE_NASM();
  struct Case {
    const char* code;
    unsigned vector;
  };
  for (Case c : {Case{"mov ax, 0x60\nmov ds, ax\nmov eax, [0x100]", 0},   // read-only data: reads work
                 Case{"mov ax, 0x60\nmov ds, ax\nmov [0x100], eax", 13},  // writes do not
                 Case{"mov ax, 0x60\nmov ds, ax\nadd [0x100], eax", 13},
                 Case{"mov eax, [cs:0x4000]", 0},                         // readable code
                 Case{"mov [cs:0x4100], eax", 13},                        // code is never writable
                 Case{"jmp 0x68:next\nnext: mov eax, [cs:0x4000]", 13},   // execute-only code
                 Case{"jmp 0x68:next\nnext: mov eax, [0x4000]", 0},
                 Case{"mov ax, 0x80\nmov ds, ax\nmov word [0xfffe], 1", 0},
                 Case{"mov ax, 0x80\nmov ds, ax\nmov dword [0xfffe], 1", 13},
                 Case{"mov ax, 0x80\nmov ds, ax\nmovq mm0, [0xfff9]", 13},  // 8 bytes
                 Case{"mov ax, 0x80\nmov ds, ax\nfld qword [0xfff9]", 13},  // x87 (a helper access)
                 Case{"mov ax, 0x60\nmov ds, ax\nfnstcw [0x100]", 13},
                 Case{"mov ax, 0x60\nmov ds, ax\nfnstcw [cs:0x5000]", 13},
                 Case{"mov ax, 0x60\nmov ds, ax\nfld dword [0x100]", 0},
                 Case{"mov ax, 0x88\nmov es, ax\nmov eax, [es:0xfffc]", 0},    // expand-down upper end
                 Case{"mov ax, 0x88\nmov es, ax\nmov eax, [es:0xfffe]", 13}}) {
    Machine m;
    m.protected32();
    m.gdt(0x80, segment(0, 0xffff, 0x92, 0x4));  // 32-bit data, 64 KiB limit
    m.gdt(0x88, segment(0, 0x1fff, 0x96, 0x0));  // expand-down data, limit 0x1fff, B = 0 (upper end 0xffff)
    m.s.sys.gdtr.limit = 0x8f;
    m.idt32(0, desc_type::kInterruptGate32, 0);
    m.code(std::string("bits 32\norg 0x4000\n") + c.code + "\nxor edx, edx\ndiv edx\n");  // #DE when no fault came first
    m.expect_handler(c.vector);
    if (c.vector != 0) {
      EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 0u) << c.code;
    }
  }
}

TEST(SystemMode, CodeFetchBeyondTheCsLimitIsGeneralProtection) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.gdt(0x80, segment(0, 0x4007, 0x9a, 0x4));  // 32-bit code, limit 0x4007 (byte granular)
  m.gdt(0x88, segment(0, 0xffff, 0x9a, 0x4));  // the same with limit 0xffff
  m.s.sys.gdtr.limit = 0x8f;
  m.code("bits 32\norg 0x4000\ntimes 7 nop\nmov eax, 1\nhlt\n");  // MOV at 0x4007 crosses the limit
  // Under the larger limit the block runs to HLT (and is cached).
  m.set_segment(CS, 0x88);
  update_mode(m.s);
  EXPECT_TRUE(m.s.mode.cs_limited);
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.regs[RAX], 1u);
  // Same base and mode key, smaller limit: the cached block must not run past it.
  m.s.regs[RAX] = 0;
  m.s.sys.halted = false;
  m.set_segment(CS, 0x80);
  update_mode(m.s);
  m.s.rip = kCode;
  m.expect_handler(13);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(m.get32(esp), 0u);           // error code
  EXPECT_EQ(m.get32(esp + 4), kCode + 7);  // at the instruction crossing the limit
  EXPECT_EQ(m.get32(esp + 8), 0x80u);
  EXPECT_EQ(m.s.regs[RAX], 0u);
  // Starting beyond the limit faults before paging is consulted.
  m.s.sys.halted = false;
  m.set_segment(CS, 0x80);
  update_mode(m.s);
  m.s.rip = 0x200000;  // unmapped: #GP, not #PF
  m.expect_handler(13);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP]) + 4), 0x200000u);
  // Flat 4 GiB code is not limited.
  m.set_segment(CS, kCode32);
  update_mode(m.s);
  EXPECT_FALSE(m.s.mode.cs_limited);
}

TEST(SystemMode, StringInstructionsCheckOnlyTheSegmentsTheyUse) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code(R"(
    bits 32
    org 0x4000
    xor eax, eax
    mov ds, ax                 ; DS unusable: STOS (ES only) still works
    mov edi, 0xd000
    mov eax, 0x12345678
    stosd
    mov ax, 0x10
    mov ds, ax
    xor eax, eax
    mov es, ax                 ; ES unusable: LODS (DS only) still works
    mov esi, 0xd000
    lodsd
    mov ebx, eax
    mov edi, 0xd000
    stosd                      ; ES unusable: #GP(0)
  )");
  m.expect_handler(13);
  EXPECT_EQ(m.s.regs[RBX], 0x12345678u);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 0u);
}

// ---------------- call gates ----------------

TEST(SystemMode, CallGateFromRing3SwitchesStackAndCopiesParameters) {
  REQUIRE_NASM();
  Machine m;
  m.protected32(3);
  m.gdt(kGateSel, gate(kCode32, 0x6000, desc_type::kCallGate32, 3, 2));
  m.idt32(3, desc_type::kTrapGate32, 3);
  m.code(R"(
    bits 32
    org 0x6000
    mov eax, [esp + 8]          ; first parameter
    mov ebx, [esp + 12]         ; second parameter
    mov ecx, ss
    hlt
    retf 8                      ; pops the parameters on both stacks
  )", 0x6000);
  m.code(R"(
    bits 32
    org 0x4000
    mov ax, 0x2b
    mov ds, ax
    push dword 0x2222
    push dword 0x1111
    call 0x53:0
    mov edx, esp
    int3
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.sys.cpl, 0u);
  EXPECT_EQ(m.s.seg_selector[CS], kCode32);
  EXPECT_EQ(m.s.regs[RAX], 0x1111u);
  EXPECT_EQ(m.s.regs[RBX], 0x2222u);
  EXPECT_EQ(m.s.regs[RCX], kData32);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(esp, kStack0 - 24);
  EXPECT_EQ(m.get32(esp + 4), kCode32R3);
  EXPECT_EQ(m.get32(esp + 16), kStack3 - 8);  // old ESP
  EXPECT_EQ(m.get32(esp + 20), kData3);
  // RETF 8 back to ring 3, whose INT3 (gate DPL 3) shows the outer state.
  ASSERT_EQ(m.resume().reason, StopReason::Halt);
  EXPECT_EQ(m.s.rip, Machine::handler(3) + 1);
  EXPECT_EQ(m.s.regs[RDX], kStack3);
  const uint32_t frame = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(m.get32(frame + 4), kCode32R3);
  EXPECT_EQ(m.get32(frame + 12), kStack3);
  EXPECT_EQ(m.get32(frame + 16), kData3);
  EXPECT_EQ(m.s.seg_selector[DS], kData3);  // DPL 3 data stays loaded
}

TEST(SystemMode, ReturnToOuterLevelNullsInaccessibleDataSegments) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code(R"(
    bits 32
    org 0x4000
    push dword 0x2b             ; SS
    push dword 0xb000           ; ESP
    push dword 0x33             ; CS
    push dword user
    retf
user:
    mov eax, ds
    mov ebx, es
    hlt                         ; #GP at CPL 3
  )");
  m.expect_handler(13);
  EXPECT_EQ(m.s.regs[RAX], 0u);
  EXPECT_EQ(m.s.regs[RBX], 0u);
  EXPECT_EQ(m.s.seg_selector[FS], 0u);
}

TEST(SystemMode, TssStackFaultsOnCallGate) {
  REQUIRE_NASM();
  for (uint16_t ss0 : {uint16_t{0}, kData3, kReadOnlyData, kAbsentData}) {
    Machine m;
    m.protected32(3);
    m.tss32(kStack0, ss0);
    m.gdt(kGateSel, gate(kCode32, 0x6000, desc_type::kCallGate32, 3, 0));
    m.code("bits 32\norg 0x4000\ncall 0x53:0\n");
    // The #TS/#SS from ring 3 is delivered on the same bad ring-0 stack: #TS again (contributory
    // twice) -> #DF, whose delivery fails too -> triple fault.
    EXPECT_EQ(m.run().reason, StopReason::Reset) << ss0;
  }
}

TEST(SystemMode, CallGateStackFaultsReportTheSelector) {
  REQUIRE_NASM();
  struct Case {
    uint16_t ss1;
    unsigned vector;
    uint32_t error;
  };
  // Ring 3 calls a gate to ring-1 code whose TSS SS1 is bad; ring 0 handlers (TSS SS0) stay valid.
  for (Case c : {Case{0, 10, 0}, Case{kData32, 10, kData32}, Case{kAbsentData | 1, 12, kAbsentData}}) {
    Machine m;
    m.protected32(3);
    m.gdt(0x80, segment(0, 0xfffff, 0xba, 0xc));  // ring-1 code
    m.gdt(kGateSel, gate(0x81, 0x6000, desc_type::kCallGate32, 3, 0));
    m.s.sys.gdtr.limit = 0x8f;
    m.put32(kTss + 12, 0x9000);  // ESP1
    m.put32(kTss + 16, c.ss1);   // SS1
    m.gdt(kAbsentData, segment(0, 0xfffff, 0x32, 0xc));  // DPL 1, not present
    m.code("bits 32\norg 0x4000\ncall 0x53:0\n");
    m.expect_handler(c.vector);
    EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), c.error) << c.ss1;
  }
}

TEST(SystemMode, LongModeCallGateToRing0) {
  REQUIRE_NASM();
  Machine m;
  m.long64(3);
  // 16-byte call gate at 0x50 (DPL 3) to 64-bit ring-0 code.
  m.gdt(kGateSel, gate(kCode64, 0x6000, desc_type::kCallGate32, 3, 0));
  m.gdt(kGateSel + 8, 0);
  m.code("bits 64\norg 0x6000\nmov rax, [rsp]\nmov rbx, [rsp + 8]\nmov rcx, [rsp + 16]\nmov rdx, [rsp + 24]\nhlt\n"
         "o64 retf\n", 0x6000);
  m.code(R"(
    bits 64
    org 0x4000
    mov rsp, 0xb000
    call far [rel gate_pointer] ; nasm encodes REX.W: m16:64
    mov rsi, rsp
    hlt                        ; CPL 3: #GP
gate_pointer: dq 0
     dw 0x53
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.sys.cpl, 0u);
  EXPECT_EQ(m.s.regs[RSP], kStack0 - 32);
  EXPECT_EQ(m.s.regs[RBX], kCode64R3);
  EXPECT_EQ(m.s.regs[RCX], kStack3);
  EXPECT_EQ(m.s.regs[RDX], kData3);
  EXPECT_EQ(m.s.seg_selector[SS], 0u);  // null SS with RPL = new CPL
  ASSERT_EQ(m.resume().reason, StopReason::Halt);
  EXPECT_EQ(m.s.rip, Machine::handler(13) + 1);
  EXPECT_EQ(m.s.regs[RSI], kStack3);
  EXPECT_EQ(m.get64(m.s.regs[RSP] + 16), kCode64R3);
  EXPECT_EQ(m.get64(m.s.regs[RSP] + 40), kData3);
}

// ---------------- interrupts and IRET ----------------

TEST(SystemMode, RealModeIntAndIret) {
  REQUIRE_NASM();
  Machine m;
  m.s.regs[RSP] = 0x7000;
  // IVT entry 0x21 -> 0000:0x6000.
  m.put16(0x21 * 4, 0x6000);
  m.put16(0x21 * 4 + 2, 0);
  m.code("bits 16\norg 0x6000\nmov bx, sp\nmov cx, [ss:bx + 4]\nmov dx, 0x4242\niret\n", 0x6000);
  m.s.rflags_other |= rflags::IF;
  m.code(R"(
    bits 16
    org 0x4000
    int 0x21
    pushf
    pop ax
    hlt
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.regs[RDX] & 0xffff, 0x4242u);
  EXPECT_TRUE(m.s.regs[RCX] & rflags::IF);    // pushed FLAGS had IF
  EXPECT_TRUE(m.s.regs[RAX] & rflags::IF);    // restored by IRET
  EXPECT_EQ(m.s.regs[RSP], 0x7000u);
}

TEST(SystemMode, ProtectedModeInterruptSamePrivilegeAndIret) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.idt32(0x30, desc_type::kTrapGate32, 0);
  m.s.rflags_other |= rflags::IF;
  m.code(R"(
    bits 32
    org 0x4000
    int 0x30
    mov ebx, esp
    hlt
  )");
  m.expect_handler(0x30);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(esp, kStack0 - 12);
  EXPECT_EQ(m.get32(esp), kCode + 2);  // after INT 0x30
  EXPECT_EQ(m.get32(esp + 4), kCode32);
  EXPECT_TRUE(m.s.rflags_other & rflags::IF);  // trap gate keeps IF
  ASSERT_EQ(m.resume().reason, StopReason::Halt);
  EXPECT_EQ(m.s.regs[RBX], kStack0);
}

TEST(SystemMode, InterruptGateFromRing3AndIretToOuterLevel) {
  REQUIRE_NASM();
  Machine m;
  m.protected32(3);
  m.idt32(0x80, desc_type::kInterruptGate32, 3);
  m.s.rflags_other |= rflags::IF;
  m.code(R"(
    bits 32
    org 0x4000
    mov eax, 5
    int 0x80
    mov ebx, esp
    mov ecx, cs
    hlt
  )");
  m.expect_handler(0x80);
  EXPECT_EQ(m.s.sys.cpl, 0u);
  EXPECT_FALSE(m.s.rflags_other & rflags::IF);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(esp, kStack0 - 20);
  EXPECT_EQ(m.get32(esp + 12), kStack3);
  EXPECT_EQ(m.get32(esp + 16), kData3);
  // IRET back to ring 3; its HLT then raises #GP(0).
  RunResult r = m.resume();
  ASSERT_EQ(r.reason, StopReason::Halt);
  EXPECT_EQ(m.s.rip, Machine::handler(13) + 1);
  const uint32_t gp_esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(m.get32(gp_esp + 16), kStack3);  // ring-3 ESP restored before the #GP
  EXPECT_EQ(m.get32(gp_esp + 8), kCode32R3);
}

TEST(SystemMode, LongModeInterruptsIstAlignmentAndIretq) {
  REQUIRE_NASM();
  Machine m;
  m.long64();
  m.idt64(0x40, desc_type::kInterruptGate32, 0, 1);  // IST1
  m.code(R"(
    bits 64
    org 0x4000
    int 0x40
    mov rbx, rsp
    ud2
  )");
  m.s.regs[RSP] = 0x9ff8;  // not 16-byte aligned
  m.expect_handler(0x40);
  EXPECT_EQ(m.s.regs[RSP], kIstStack - 40);
  EXPECT_EQ(m.get64(kIstStack - 40), kCode + 2);  // RIP after INT
  EXPECT_EQ(m.get64(kIstStack - 24) & rflags::kFixed, rflags::kFixed);
  EXPECT_EQ(m.get64(kIstStack - 16), 0x9ff8u);
  m.resume();
  // UD2 -> #UD on the normal stack, aligned down to 16 bytes.
  EXPECT_EQ(m.s.rip, Machine::handler(6) + 1);
  EXPECT_EQ(m.s.regs[RBX], 0x9ff8u);
  EXPECT_EQ(m.s.regs[RSP], 0x9ff0u - 40);
}

TEST(SystemMode, LongModeIretqToRing3AndCompatibilityMode) {
  REQUIRE_NASM();
  Machine m;
  m.long64();
  m.code(R"(
    bits 64
    org 0x4000
    push 0x2b
    push 0xb000
    pushfq
    push 0x33                  ; 32-bit ring-3 code: compatibility mode
    push compat
    iretq
    bits 32
compat:
    mov eax, esp
    int3                       ; gate DPL 0: #GP(3*8+2)
  )");
  m.expect_handler(13);
  EXPECT_EQ(m.s.regs[RAX], kStack3);
  EXPECT_EQ(m.get64(m.s.regs[RSP]), 3u * 8 + 2);
  EXPECT_EQ(m.get64(m.s.regs[RSP] + 16), kCode32R3);
  EXPECT_EQ(m.s.mode.code, CodeSize::Bits64);
}

TEST(SystemMode, LongModeSixteenByteGateChecks) {
  REQUIRE_NASM();
  Machine m;
  m.long64();
  // A 32-bit code target is invalid for a long-mode gate: #GP(selector + EXT... software INT: no EXT).
  m.put64(kIdt + 16 * 0x41, gate(kCode32, 0x8000, desc_type::kInterruptGate32, 0));
  m.idt64(0x42, desc_type::kInterruptGate32, 0, 0, false);
  m.code("bits 64\norg 0x4000\nint 0x41\nhlt\n");
  m.expect_handler(13);
  EXPECT_EQ(m.get64(m.s.regs[RSP]), kCode32);
  Machine n;
  n.long64();
  n.idt64(0x42, desc_type::kInterruptGate32, 0, 0, false);
  n.code("bits 64\norg 0x4000\nint 0x42\nhlt\n");
  n.expect_handler(11);
  EXPECT_EQ(n.get64(n.s.regs[RSP]), 0x42u * 8 + 2);
}

TEST(SystemMode, DoubleFaultWhenGpHandlerIsAbsent) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.idt32(13, desc_type::kInterruptGate32, 0, false);
  m.code("bits 32\norg 0x4000\nmov ax, 0x88\nmov ds, ax\n");
  m.expect_handler(8);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 0u);  // #DF error code
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP]) + 4), kCode + 4);
}

TEST(SystemMode, PageFaultDuringPageFaultDeliveryIsDoubleFault) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code("bits 32\norg 0x4000\nmov esp, 0x200100\npush eax\n");
  // Delivering the #PF pushes on the same unmapped stack: #PF then #PF -> #DF, also unmapped -> triple.
  EXPECT_EQ(m.run().reason, StopReason::Reset);
}

TEST(SystemMode, TripleFaultResets) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.s.sys.idtr.limit = 0;  // nothing deliverable
  m.code("bits 32\norg 0x4000\nud2\n");
  EXPECT_EQ(m.run().reason, StopReason::Reset);
}

TEST(SystemMode, BenignThenContributoryIsDeliveredSerially) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.idt32(6, desc_type::kInterruptGate32, 0, false);  // #UD gate absent -> #NP(6*8+2+EXT)
  m.code("bits 32\norg 0x4000\nud2\n");
  m.expect_handler(11);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 6u * 8 + 3);
}

TEST(SystemMode, ExternalInterruptAtBlockBoundaryWhenIfSet) {
  REQUIRE_NASM();
  Machine m;
  FakePic pic;
  m.cpu.set_interrupt_controller(&pic);
  m.protected32();
  m.s.rflags_other &= ~rflags::IF;
  m.code(R"(
    bits 32
    org 0x4000
    mov ecx, 100
spin: loop spin                ; IF = 0: the interrupt waits
    pushfd
    or dword [esp], 0x200      ; IRET sets IF
    push dword 0x08
    push dword after
    iretd
after:
    mov ebx, 1
spin2: jmp spin2
  )");
  pic.count = 1;
  m.expect_handler(0x20);
  EXPECT_EQ(pic.acknowledged, 1);
  EXPECT_EQ(m.s.regs[RCX], 0u);
  EXPECT_EQ(m.s.regs[RBX], 0u);  // taken at the boundary right after the IRET
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_TRUE(m.get32(esp + 8) & rflags::IF);
  EXPECT_FALSE(m.s.rflags_other & rflags::IF);
}

TEST(SystemMode, HltWaitsAndResumesWithTheInterruptAfterHlt) {
  REQUIRE_NASM();
  Machine m;
  FakePic pic;
  m.cpu.set_interrupt_controller(&pic);
  m.protected32();
  m.s.rflags_other |= rflags::IF;
  m.code(R"(
    bits 32
    org 0x4000
    hlt
    mov eax, 7
    hlt
  )");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_TRUE(m.s.sys.halted);
  EXPECT_EQ(m.s.rip, kCode + 1);
  EXPECT_EQ(m.run().reason, StopReason::Halt);  // nothing pending
  pic.count = 1;
  m.expect_handler(0x20);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), kCode + 1);  // return after the HLT
  ASSERT_EQ(m.resume().reason, StopReason::Halt);                       // IRET, mov eax, 7; hlt
  EXPECT_EQ(m.s.regs[RAX], 7u);
}

TEST(SystemMode, HltWithAPendingInterruptDoesNotStop) {
  REQUIRE_NASM();
  Machine m;
  FakePic pic;
  m.cpu.set_interrupt_controller(&pic);
  m.protected32();
  m.idt32(0x20, desc_type::kInterruptGate32, 0);
  m.ram[Machine::handler(0x20)] = 0x90;  // nop; iret
  m.code(R"(
    bits 32
    org 0x4000
    mov ebx, 1
    hlt
    mov ebx, 2
    ud2
  )");
  // One instruction per block; the interrupt becomes pending at the boundary after the HLT.
  pic.count = 1;
  pic.delay = 2;
  m.s.rflags_other |= rflags::IF;
  m.cpu.translate_options().max_insns = 1;
  m.cpu.flush_translations();
  m.expect_handler(6);
  EXPECT_EQ(pic.acknowledged, 1);
  EXPECT_EQ(m.s.regs[RBX], 2u);  // the HLT was left by the interrupt without returning to the caller
}

TEST(SystemMode, ExitRequestReturnsToTheCaller) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code("bits 32\norg 0x4000\nspin: jmp spin\n");
  m.cpu.request_exit();
  RunResult r = m.run();
  EXPECT_EQ(r.reason, StopReason::ExitRequest);
  EXPECT_EQ(m.run(1000).reason, StopReason::InsnLimit);
}

TEST(SystemMode, MovSsShadowDelaysTheInterrupt) {
  REQUIRE_NASM();
  Machine m;
  FakePic pic;
  m.cpu.set_interrupt_controller(&pic);
  m.protected32();
  m.s.rflags_other |= rflags::IF;
  m.code(R"(
    bits 32
    org 0x4000
    mov ax, 0x10
    mov ss, ax
    mov esp, 0x9000
spin: jmp spin
  )");
  // Run the MOV SS block alone, then make the interrupt pending.
  m.cpu.translate_options().max_insns = 2;
  m.cpu.flush_translations();
  RunResult r = m.run(2);
  EXPECT_EQ(r.reason, StopReason::InsnLimit);
  EXPECT_TRUE(m.s.sys.interrupt_shadow);
  pic.count = 1;
  m.expect_handler(0x20);
  // The instruction after MOV SS (mov esp) ran before the interrupt: the frame is on the new stack.
  EXPECT_EQ(m.s.regs[RSP], 0x9000u - 12);
}

TEST(SystemMode, Int1IgnoresTheGateDplAndLssHasNoShadow) {
  REQUIRE_NASM();
  Machine m;
  m.protected32(3);
  m.put32(kData, 0xa000);
  m.put16(kData + 4, kData3);
  m.code("bits 32\norg 0x4000\nlss esp, [0xd000]\nint1\n");
  m.expect_handler(1);
  EXPECT_FALSE(m.s.sys.interrupt_shadow);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), kCode + 7 + 1);  // trap: after INT1
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP]) + 12), 0xa000u);    // ESP loaded by LSS
}

TEST(SystemMode, FaultLoopStillReturnsToTheCaller) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  // Every handler is UD2: #UD delivered again and again without completing an instruction.
  for (unsigned v = 0; v < 256; ++v) {
    m.ram[Machine::handler(v)] = 0x0f;
    m.ram[Machine::handler(v) + 1] = 0x0b;
  }
  m.code("bits 32\norg 0x4000\nud2\n");
  m.s.regs[RSP] = 0x90000;
  EXPECT_EQ(m.run(1000).reason, StopReason::InsnLimit);
}

TEST(SystemMode, InterceptedExceptionsStopTheRunUndelivered) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.cpu.set_exception_intercepts((1u << 3) | (1u << 13));
  m.code("bits 32\norg 0x4000\nint3\nmov ax, 0x88\nmov ds, ax\nud2\n");
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.s.exception.vector, Vector::BP);
  EXPECT_EQ(m.s.rip, kCode + 1);  // a trap: after INT3
  EXPECT_EQ(m.s.regs[RSP], kStack0);
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.s.exception.vector, Vector::GP);
  EXPECT_EQ(m.s.exception.error_code, 0x88u);
  EXPECT_EQ(m.s.rip, kCode + 5);  // a fault: at MOV DS
  m.s.rip += 2;
  m.expect_handler(6);  // #UD is not intercepted: delivered
}

// ---------------- single step (RFLAGS.TF) ----------------

constexpr uint64_t kDr6Bs = 1u << 14;

// Steps with #DB intercepted: each run stops after one instruction, RIP after it.
TEST(SingleStep, TrapsAfterEachInstructionWithDr6Bs) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.cpu.set_exception_intercepts(1u << 1);
  m.code("bits 32\norg 0x4000\nnop\nmov eax, 1\nadd eax, eax\njmp next\nnext: hlt\n");
  m.s.rflags_other |= rflags::TF;
  for (uint64_t expected : {kCode + 1, kCode + 6, kCode + 8, kCode + 10}) {
    m.s.sys.dr[6] = 0xffff0ff0;
    RunResult r = m.run();
    ASSERT_EQ(r.reason, StopReason::Exception);
    EXPECT_EQ(m.s.exception.vector, Vector::DB);
    EXPECT_EQ(m.s.rip, expected);
    EXPECT_EQ(r.insns, 1u);
    EXPECT_TRUE(m.s.sys.dr[6] & kDr6Bs);
  }
  EXPECT_EQ(m.s.regs[RAX], 2u);
  // HLT itself takes no trap.
  EXPECT_EQ(m.run().reason, StopReason::Halt);
}

// Delivered through the IDT: the handler gets the next EIP and EFLAGS with TF, runs with TF clear.
TEST(SingleStep, DeliveredTrapPushesTheNextEipAndClearsTf) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code("bits 32\norg 0x4000\nmov ebx, 7\nmov ecx, 8\nhlt\n");
  m.s.rflags_other |= rflags::TF;
  m.expect_handler(1);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(m.get32(esp), kCode + 5);
  EXPECT_TRUE(m.get32(esp + 8) & rflags::TF);
  EXPECT_FALSE(m.s.rflags_other & rflags::TF);
  EXPECT_EQ(m.s.regs[RCX], 0u);
  // IRET restores TF; it started with TF clear, so the next trap follows MOV ECX.
  m.s.sys.halted = false;
  m.expect_handler(1);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), kCode + 10);
  EXPECT_EQ(m.s.regs[RCX], 8u);
}

// POPF that sets TF traps after the following instruction; one that clears it still traps after itself.
TEST(SingleStep, PopfSettingTfTrapsAfterTheNextInstruction) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.cpu.set_exception_intercepts(1u << 1);
  m.code(R"(
    bits 32
    org 0x4000
    pushfd
    or dword [esp], 0x100
    popfd          ; 0x4008
    nop            ; 0x4009
    pushfd         ; 0x400a
    and dword [esp], ~0x100
    popfd          ; 0x4012
    nop            ; 0x4013
    hlt
  )");
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.s.rip, kCode + 0xa);  // after the NOP following POPF
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.s.rip, kCode + 0xb);
  ASSERT_EQ(m.run().reason, StopReason::Exception);
  EXPECT_EQ(m.s.rip, kCode + 0x12);
  ASSERT_EQ(m.run().reason, StopReason::Exception);  // the POPF clearing TF
  EXPECT_EQ(m.s.rip, kCode + 0x13);
  EXPECT_FALSE(m.s.rflags_other & rflags::TF);
  EXPECT_EQ(m.run().reason, StopReason::Halt);
}

// INT n clears TF: the handler is not stepped and no trap follows INT n itself.
TEST(SingleStep, SoftwareInterruptHandlerIsNotStepped) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.cpu.set_exception_intercepts(1u << 1);
  m.code("bits 32\norg 0x4000\nint 0x30\nnop\nhlt\n");
  m.s.rflags_other |= rflags::TF;
  m.expect_handler(0x30);  // HLT in the handler, no #DB on the way
  EXPECT_FALSE(m.s.rflags_other & rflags::TF);
  RunResult r = m.resume();  // IRET (TF back on, no trap after it), then NOP traps
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(m.s.exception.vector, Vector::DB);
  EXPECT_EQ(m.s.rip, kCode + 3);
}

// Faults are delivered instead of the trap; the handler is not stepped.
TEST(SingleStep, FaultingInstructionTakesTheFaultNotTheTrap) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.code("bits 32\norg 0x4000\nud2\n");
  m.s.rflags_other |= rflags::TF;
  m.expect_handler(6);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), kCode);
  EXPECT_FALSE(m.s.rflags_other & rflags::TF);
}

// MOV SS / POP SS suppress the trap after them: the next one follows the instruction after.
TEST(SingleStep, MovSsAndPopSsDelayTheTrap) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.cpu.set_exception_intercepts(1u << 1);
  m.code(R"(
    bits 32
    org 0x4000
    mov ax, 0x10   ; 0x4000
    mov ss, ax     ; 0x4004
    nop            ; 0x4006
    push ss        ; 0x4007
    pop ss         ; 0x4008
    nop            ; 0x4009
    sti            ; 0x400a (STI does not suppress the trap)
    hlt
  )");
  m.s.rflags_other |= rflags::TF;
  for (uint64_t expected : {kCode + 4, kCode + 7, kCode + 8, kCode + 0xa, kCode + 0xb}) {
    ASSERT_EQ(m.run().reason, StopReason::Exception);
    EXPECT_EQ(m.s.rip, expected);
  }
}

TEST(SingleStep, LongModeAndRealMode) {
  REQUIRE_NASM();
  {
    Machine m;
    m.long64();
    m.cpu.set_exception_intercepts(1u << 1);
    m.code("bits 64\norg 0x4000\nmov rax, 0x123456789\npush rax\npop rbx\nhlt\n");
    m.s.rflags_other |= rflags::TF;
    for (uint64_t expected : {kCode + 10, kCode + 11, kCode + 12}) {
      ASSERT_EQ(m.run().reason, StopReason::Exception);
      EXPECT_EQ(m.s.rip, expected);
    }
    EXPECT_EQ(m.s.regs[RBX], 0x123456789u);
  }
  {
    Machine m;  // real mode: delivered through the IVT
    m.put32(4 * 1, 0x0000'8010);  // #DB at 0:8010 (handler(1)): hlt; iret
    m.code("bits 16\norg 0x4000\ninc ax\ninc ax\n");
    m.s.rflags_other |= rflags::TF;
    m.expect_handler(1);
    EXPECT_EQ(m.get16(static_cast<uint16_t>(m.s.regs[RSP])), kCode + 1);
    EXPECT_EQ(m.s.regs[RAX] & 0xffff, 1u);
  }
}

TEST(SingleStep, UserModeIgnoresTf) {
  REQUIRE_NASM();
  Machine m;
  m.s.mode.system = false;
  m.s.mode.code = CodeSize::Bits64;
  m.code("bits 64\norg 0x4000\nnop\nnop\nhlt\n");
  m.s.rflags_other |= rflags::TF;
  EXPECT_EQ(m.run().reason, StopReason::Halt);
}

// ---------------- virtual-8086 mode ----------------

constexpr uint64_t kVm = 1u << 17, kIopl3 = 3u << 12;
constexpr uint64_t kVm86Code = 0x5000;  // CS 0x0500, IP 0

// Places 16-bit `source` at linear 0x5000 and a 32-bit IRETD at kCode whose frame enters
// virtual-8086 mode at 0500:0000 with SS:SP 0C00:0800, ES 0700, DS 0600, FS 0710, GS 0720.
void enter_vm86(Machine& m, const std::string& source, uint32_t eflags) {
  m.code("bits 16\n" + source, kVm86Code);
  const uint32_t frame[9] = {0, 0x500, eflags | 2, 0x800, 0xc00, 0x700, 0x600, 0x710, 0x720};
  const uint32_t sp = kStack0 - 64;
  for (unsigned i = 0; i < 9; ++i) m.put32(sp + 4 * i, frame[i]);
  m.s.regs[RSP] = sp;
  m.code("bits 32\norg 0x4000\niretd\n");
  m.cpu.flush_translations();  // the test rewrote code behind the emulator's back
}

TEST(Vm86, IretEntersAndFaultsComeBackWithTheExtendedFrame) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  enter_vm86(m, R"(
    mov ax, 0x1234
    mov [0x10], ax      ; DS 0600: linear 0x6010
    mov bx, 0x0680
    mov es, bx
    mov [es:0x20], ax   ; linear 0x6820
    push ax
    pop cx
    mov dx, cs
    cli                 ; IOPL 0: #GP(0)
  )", kVm);
  m.expect_handler(13);
  EXPECT_EQ(m.get16(0x6010), 0x1234u);
  EXPECT_EQ(m.get16(0x6820), 0x1234u);
  EXPECT_EQ(m.s.regs[RCX] & 0xffff, 0x1234u);
  EXPECT_EQ(m.s.regs[RDX] & 0xffff, 0x500u);
  EXPECT_EQ(m.s.sys.cpl, 0u);
  EXPECT_FALSE(m.s.rflags_other & kVm);
  EXPECT_FALSE(m.s.mode.vm86);
  EXPECT_EQ(m.s.mode.code, CodeSize::Bits32);
  for (Seg seg : {ES, DS, FS, GS}) EXPECT_EQ(m.s.seg_selector[seg], 0u);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(esp, kStack0 - 40);  // TSS ESP0, nine dwords and the error code
  const uint32_t expected[10] = {0, 0x13, 0x500, 0, 0x800, 0xc00, 0x680, 0x600, 0x710, 0x720};
  for (unsigned i = 0; i < 10; ++i) {
    if (i != 3) {
      EXPECT_EQ(m.get32(esp + 4 * i), expected[i]) << "frame slot " << i;
    }
  }
  EXPECT_TRUE(m.get32(esp + 12) & kVm);
}

TEST(Vm86, IoplSensitiveInstructionsFaultBelowIopl3) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.idt32(3, desc_type::kTrapGate32, 3);
  m.cpu.set_exception_intercepts(1u << 13);
  enter_vm86(m, "pushf\npopf\nint 0x30\niret\nsti\ncli\nhlt\nlar ax, bx\nint3\n", kVm);
  // Each raises #GP(0) at itself; step over it by hand (the intercept keeps virtual-8086 mode).
  for (unsigned length : {1, 1, 2, 1, 1, 1, 1}) {
    const uint64_t ip = m.s.rip;
    ASSERT_EQ(m.run().reason, StopReason::Exception) << "ip " << ip;
    EXPECT_EQ(m.s.exception.vector, Vector::GP);
    EXPECT_EQ(m.s.exception.error_code, 0u);
    EXPECT_TRUE(m.s.rflags_other & kVm);
    m.s.rip += length;
  }
  m.cpu.set_exception_intercepts(0);
  // LAR: #UD; INT3 is not IOPL-sensitive: through the DPL-3 gate to ring 0.
  m.expect_handler(6);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 8u);  // a fault: at LAR
  m.s.sys.halted = false;
  enter_vm86(m, "int3\n", kVm);  // again from ring 0
  m.expect_handler(3);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), 1u);  // a trap: after INT3
}

TEST(Vm86, Iopl3RunsInterruptsThroughTheIdtAndBack) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.idt32(0x30, desc_type::kInterruptGate32, 3);
  m.idt32(0x31, desc_type::kInterruptGate32, 3);
  enter_vm86(m, R"(
    mov ax, 7
    int 0x30
    pushf
    cli
    pop bx
    sti
    push 0x0202
    popf
    mov cx, 0x0500
    push cx
    push word after
    retf                ; real-style far return
after:
    int 0x31
  )", kVm | kIopl3);
  m.expect_handler(0x30);
  const uint32_t esp = static_cast<uint32_t>(m.s.regs[RSP]);
  EXPECT_EQ(m.get32(esp), 5u);  // after INT 0x30
  EXPECT_EQ(m.get32(esp + 4), 0x500u);
  EXPECT_EQ(m.get32(esp + 8) & (kVm | kIopl3), kVm | kIopl3);
  EXPECT_EQ(m.get32(esp + 24), 0x600u);  // DS
  m.s.sys.halted = false;
  m.expect_handler(0x31);  // IRETD back to virtual-8086 mode, the rest ran there
  EXPECT_EQ(m.s.regs[RAX] & 0xffff, 7u);
  EXPECT_EQ(m.s.regs[RBX] & (kVm | kIopl3 | rflags::IF), kIopl3);  // PUSHF: VM reads as 0
  EXPECT_TRUE(m.get32(static_cast<uint32_t>(m.s.regs[RSP]) + 8) & rflags::IF);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP]) + 4), 0x500u);
}

TEST(Vm86, SegmentLimitIs64KiB) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  enter_vm86(m, "mov ax, [0xffff]\n", kVm);
  m.expect_handler(13);
}

TEST(SystemMode, HltAtRing3IsGeneralProtection) {
  REQUIRE_NASM();
  Machine m;
  m.protected32(3);
  m.code("bits 32\norg 0x4000\nhlt\n");
  m.expect_handler(13);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP]) + 4), kCode);
}

TEST(SystemMode, IntoOnlyWithOverflow) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  m.idt32(4, desc_type::kTrapGate32, 0);
  m.code(R"(
    bits 32
    org 0x4000
    xor eax, eax
    into
    mov eax, 0x7fffffff
    add eax, 1
    into
    hlt
  )");
  m.expect_handler(4);
  EXPECT_EQ(m.get32(static_cast<uint32_t>(m.s.regs[RSP])), kCode + 2 + 1 + 5 + 3 + 1);
}

// ---------------- task switches ----------------

constexpr uint64_t kTssB = 0x3100;
constexpr uint16_t kTssBSel = 0x80;

// A second task: EIP 0x6000, its own stack, flat ring-0 segments.
void add_task_b(Machine& m) {
  m.gdt(kTssSel, segment(kTss, 0x67, 0x8b, 0));  // the running task's TSS is busy
  m.gdt(kTssBSel, segment(kTssB, 0x67, 0x89, 0));
  m.s.sys.gdtr.limit = 0x8f;
  m.put32(kTssB + 0x20, 0x6000);
  m.put32(kTssB + 0x24, 2);
  m.put32(kTssB + 0x38, 0x9800);
  m.put32(kTssB + 0x4c, kCode32);
  for (unsigned offset : {0x48u, 0x50u, 0x54u, 0x58u, 0x5cu}) m.put32(kTssB + offset, kData32);
}

TEST(SystemMode, InterruptThroughTaskGateAndIretBack) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  add_task_b(m);
  m.put64(kIdt + 8 * 0x40, gate(kTssBSel, 0, desc_type::kTaskGate, 0));
  m.code("bits 32\norg 0x6000\nmov ecx, [0x3000 + 0x28]\nmov eax, 0x22\nhlt\niretd\n", 0x6000);
  m.code("bits 32\norg 0x4000\nmov eax, 0x11\nint 0x40\nmov ebx, eax\nhlt\n");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.sys.tr.selector, kTssBSel);
  EXPECT_EQ(m.s.regs[RCX], 0x11u);               // saved EAX of the old task
  EXPECT_EQ(m.s.regs[RSP], 0x9800u);
  EXPECT_EQ(m.get32(kTss + 0x20), kCode + 5 + 2);  // saved EIP: after INT
  EXPECT_EQ(m.get16(kTssB), kTssSel);              // back link
  EXPECT_TRUE(m.s.rflags_other & (1u << 14));      // NT
  EXPECT_TRUE(m.s.sys.cr0 & cr0::TS);
  EXPECT_EQ((m.get64(kGdt + kTssBSel) >> 40) & 0xf, 0xbu);  // busy
  ASSERT_EQ(m.resume().reason, StopReason::Halt);  // IRETD with NT: back to the first task
  EXPECT_EQ(m.s.sys.tr.selector, kTssSel);
  EXPECT_EQ(m.s.regs[RBX], 0x11u);
  EXPECT_EQ(m.s.regs[RSP], kStack0);
  EXPECT_FALSE(m.s.rflags_other & (1u << 14));
  EXPECT_EQ((m.get64(kGdt + kTssBSel) >> 40) & 0xf, 0x9u);  // available again
  EXPECT_EQ(m.get32(kTssB + 0x20), 0x6000u + 6 + 5 + 1 + 1);  // task B saved after its IRETD
}

TEST(SystemMode, DoubleFaultThroughTaskGatePushesTheErrorCode) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  add_task_b(m);
  m.put64(kIdt + 8 * 8, gate(kTssBSel, 0, desc_type::kTaskGate, 0));
  m.idt32(13, desc_type::kInterruptGate32, 0, false);
  m.code("bits 32\norg 0x6000\nhlt\n", 0x6000);
  m.code("bits 32\norg 0x4000\nmov ax, 0x88\nmov ds, ax\n");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.rip, 0x6001u);
  EXPECT_EQ(m.s.regs[RSP], 0x9800u - 4);
  EXPECT_EQ(m.get32(0x9800 - 4), 0u);
  EXPECT_EQ(m.get32(kTss + 0x20), kCode + 4);  // the faulting instruction
}

TEST(SystemMode, FarJumpToTss) {
  REQUIRE_NASM();
  Machine m;
  m.protected32();
  add_task_b(m);
  m.code("bits 32\norg 0x6000\nhlt\n", 0x6000);
  m.code("bits 32\norg 0x4000\njmp 0x80:0\n");
  ASSERT_EQ(m.run().reason, StopReason::Halt);
  EXPECT_EQ(m.s.sys.tr.selector, kTssBSel);
  EXPECT_FALSE(m.s.rflags_other & (1u << 14));
  EXPECT_EQ((m.get64(kGdt + kTssSel) >> 40) & 0xf, 0x9u);  // old task no longer busy
  EXPECT_EQ(m.get16(kTssB), 0u);                           // no back link
  EXPECT_EQ(m.get32(kTss + 0x20), kCode + 7);
}

// ---------------- LAR / LSL / VERR / VERW / ARPL ----------------

TEST(SystemMode, SelectorInspection) {
  REQUIRE_NASM();
  Machine m;
  m.protected32(3);
  m.code(R"(
    bits 32
    org 0x4000
    mov edx, 0x2b
    lar eax, edx
    setz byte [0xd000]
    lsl ebx, edx
    setz byte [0xd001]
    mov edx, 0x10
    mov ecx, 0x1234
    lar ecx, edx               ; DPL 0 < CPL 3: ZF = 0, ECX unchanged
    setz byte [0xd002]
    mov dx, 0x2b
    verr dx
    setz byte [0xd003]
    verw dx
    setz byte [0xd004]
    mov dx, 0x33
    verr dx                    ; readable code
    setz byte [0xd005]
    verw dx
    setz byte [0xd006]
    mov dx, 0x88               ; beyond the GDT: ZF = 0, no fault
    verr dx
    setz byte [0xd007]
    mov si, 0x28
    mov di, 0x03
    arpl si, di
    setz byte [0xd008]
    arpl si, di
    setz byte [0xd009]
    hlt
  )");
  m.expect_handler(13);  // the final HLT at CPL 3
  EXPECT_EQ(m.s.regs[RAX], 0x00c0f200u);
  EXPECT_EQ(m.s.regs[RBX], 0xffffffffu);
  EXPECT_EQ(m.s.regs[RCX], 0x1234u);
  EXPECT_EQ(m.s.regs[RSI] & 0xffff, 0x2bu);
  const uint8_t expected[] = {1, 1, 0, 1, 1, 1, 0, 0, 1, 0};
  for (unsigned i = 0; i < sizeof expected; ++i) EXPECT_EQ(m.ram[kData + i], expected[i]) << i;
}

TEST(SystemMode, UserModeStillRaisesUdForSegmentInstructions) {
  FlatMemory memory;
  memory.map(0x1000, kPageSize, kPermRead | kPermExec);
  memory.map(0x2000, kPageSize, kPermRead | kPermWrite);
  const uint8_t code[] = {0x8e, 0xd8};  // mov ds, ax
  memory.write_bytes(0x1000, code);
  Cpu cpu(memory);
  cpu.state.rip = 0x1000;
  cpu.state.regs[RSP] = 0x3000;
  ASSERT_EQ(cpu.run(10).reason, StopReason::Exception);
  EXPECT_EQ(cpu.state.exception.vector, Vector::UD);
}

}  // namespace
}  // namespace kiln::emu
