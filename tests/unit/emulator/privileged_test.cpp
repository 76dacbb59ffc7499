// System-mode privileged instructions (privileged.cpp): control/debug registers, MSRs,
// descriptor-table registers, fast system calls, IF/IOPL rules, #NM/#UD from CR0/CR4
// and the system CPUID. Snippets run on a Cpu in CpuMode::system with the state set
// up directly; they stop at HLT (CPL 0) or INT3 / a fault.
//
// The machine is complete enough for a run loop that delivers exceptions through the
// IDT and a soft MMU that walks page tables: identity-mapped 2 MiB pages, a GDT with
// flat ring 0/3 segments and a TSS, and an IDT (or real-mode IVT) whose vector v
// handler at kHandlers + 16 * v is a HLT. A fault is therefore seen either as
// StopReason::Exception (no delivery) or as a halt in a handler, whose frame gives the
// interrupted RIP/CS/RFLAGS/RSP/SS (run_to_exception reads both the same way).
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/lazy_flags.h"
#include "kiln/emulator/privileged.h"

namespace kiln::emu {
namespace {

constexpr uint64_t kRealCode = 0x8000;  // real-mode code stays below 64 KiB
constexpr uint64_t kCode = 0x10000;
constexpr uint64_t kData = 0x20000;
constexpr uint64_t kKernelStackTop = 0x31800;
constexpr uint64_t kStackTop = 0x32000;
constexpr uint64_t kGdt = 0x40000;
constexpr uint64_t kIdt = 0x41000;
constexpr uint64_t kTss = 0x42000;
constexpr uint64_t kHandlers = 0x43000;
constexpr uint64_t kPml4 = 0x44000, kPdpt = 0x45000, kPd = 0x46000;

// Flat 4 GiB cache attributes (descriptor type/S/DPL/P, L, D/B, G).
constexpr uint16_t kCode64 = 0xa09b, kCode32 = 0xc09b, kData32 = 0xc093;
constexpr uint16_t kDpl3 = 0x60;
// GDT: 0x08 code32, 0x10 code64, 0x18 data (ring 0); 0x20 code32, 0x28 data, 0x30 code64 (ring 3);
// 0x50 the harness TSS. Tests put their own descriptors from index 12 (0x60) on.
constexpr uint64_t kGdtEntries[] = {0, 0x00cf9a000000ffff, 0x00af9a000000ffff, 0x00cf92000000ffff,
                                    0x00cffa000000ffff, 0x00cff2000000ffff, 0x00affa000000ffff};

enum class Kind { Long64, Protected32, Real };

struct System {
  FlatMemory memory;
  Cpu cpu{memory};
  Kind kind;
  uint8_t* data;
  uint8_t* gdt;

  explicit System(const std::vector<uint8_t>& code, Kind k = Kind::Long64, unsigned cpl = 0) : kind(k) {
    uint8_t* low = memory.map(0, 0x10000, kPermRead | kPermWrite | kPermExec);  // IVT, real-mode code
    memory.map(kCode, 2 * kPageSize, kPermRead | kPermWrite | kPermExec);
    data = memory.map(kData, 0x12000, kPermRead | kPermWrite);
    gdt = memory.map(kGdt, 3 * kPageSize, kPermRead | kPermWrite);  // GDT, IDT, TSS
    uint8_t* handlers = memory.map(kHandlers, kPageSize, kPermRead | kPermExec);
    uint8_t* tables = memory.map(kPml4, 3 * kPageSize, kPermRead | kPermWrite);
    const uint64_t entry = kind == Kind::Real ? kRealCode : kCode;
    memory.write_bytes(entry, code);
    std::memset(handlers, 0xf4, kPageSize);  // every handler slot starts with HLT
    set_up_tables(low, tables);

    CpuState& s = cpu.state;
    s.mode.system = true;
    s.rip = entry;
    s.regs[RSP] = kStackTop - 0x100;
    const uint16_t dpl = cpl == 3 ? kDpl3 : 0;
    switch (kind) {
      case Kind::Long64:
        s.sys.cr0 = cr0::PE | cr0::PG | cr0::ET | cr0::NE | cr0::MP | cr0::WP;
        s.sys.cr4 = cr4::PAE | cr4::PGE | cr4::OSFXSR | cr4::OSXMMEXCPT;
        s.sys.efer = efer::LME | efer::LMA | efer::SCE | efer::NXE;
        s.sys.cr3 = kPml4;
        s.seg_attrs[CS] = kCode64 | dpl;
        s.seg_selector[CS] = cpl == 3 ? 0x33 : 0x10;
        s.mode.code = CodeSize::Bits64;
        s.sys.idtr = TableRegister{.base = kIdt, .limit = 32 * 16 - 1};
        break;
      case Kind::Protected32:
        s.sys.cr0 = cr0::PE | cr0::ET | cr0::NE | cr0::MP;
        s.sys.cr4 = cr4::OSFXSR | cr4::OSXMMEXCPT;
        s.seg_attrs[CS] = kCode32 | dpl;
        s.seg_selector[CS] = cpl == 3 ? 0x23 : 0x08;
        s.mode.code = CodeSize::Bits32;
        s.sys.idtr = TableRegister{.base = kIdt, .limit = 32 * 8 - 1};
        break;
      case Kind::Real:
        s.sys.cr0 = cr0::ET;
        s.mode.code = CodeSize::Bits16;
        s.sys.idtr = TableRegister{.base = 0, .limit = 0x3ff};
        break;
    }
    for (Seg seg : {ES, SS, DS, FS, GS}) {
      s.seg_attrs[seg] = kind == Kind::Real ? 0x93 : kData32 | dpl;
      s.seg_limit[seg] = kind == Kind::Real ? 0xffff : 0xffffffff;
      s.seg_selector[seg] = kind == Kind::Real ? 0 : cpl == 3 ? 0x2b : 0x18;
    }
    s.seg_limit[CS] = kind == Kind::Real ? 0xffff : 0xffffffff;
    s.sys.cpl = static_cast<uint8_t>(cpl);
    s.sys.gdtr = TableRegister{.base = kGdt, .limit = 0xff};
    s.sys.tr = SegmentCache{.base = kTss, .limit = 0x67, .selector = 0x50, .attrs = 0x8b};
    refresh_fpu_mode(s);
  }

  // Page tables (1 GiB identity, user-accessible 2 MiB pages), GDT, TSS and IDT/IVT.
  void set_up_tables(uint8_t* low, uint8_t* tables) {
    auto put64 = [](uint8_t* at, uint64_t v) { std::memcpy(at, &v, 8); };
    put64(tables, kPdpt | 7);
    put64(tables + kPageSize, kPd | 7);
    for (uint64_t i = 0; i < 512; ++i) put64(tables + 2 * kPageSize + 8 * i, (i << 21) | 0x87);
    for (size_t i = 0; i < std::size(kGdtEntries); ++i) set_gdt_entry(static_cast<unsigned>(i), kGdtEntries[i]);
    set_gdt_entry(10, 0x67 | ((kTss & 0xffffff) << 16) | (uint64_t{0x8b} << 40));  // busy TSS
    uint8_t* tss = gdt + (kTss - kGdt);
    uint8_t* idt = gdt + (kIdt - kGdt);
    for (unsigned v = 0; v < 32; ++v) {
      const uint64_t handler = kHandlers + 16 * v;
      // Gates have DPL 3 so that INT3 from ring 3 reaches its handler.
      if (kind == Kind::Long64) {
        put64(idt + 16 * v, (handler & 0xffff) | (uint64_t{0x10} << 16) | (uint64_t{0xee} << 40) |
                                ((handler >> 16) << 48));
      } else if (kind == Kind::Protected32) {
        put64(idt + 8 * v, (handler & 0xffff) | (uint64_t{0x08} << 16) | (uint64_t{0xee} << 40) |
                               ((handler >> 16) << 48));
      } else {
        const uint32_t far = static_cast<uint32_t>(((kHandlers >> 4) << 16) | (16 * v));
        std::memcpy(low + 4 * v, &far, 4);
      }
    }
    if (kind == Kind::Long64) {
      put64(tss + 4, kKernelStackTop);  // RSP0
    } else {
      const uint32_t esp0 = kKernelStackTop, ss0 = 0x18;
      std::memcpy(tss + 4, &esp0, 4);
      std::memcpy(tss + 8, &ss0, 4);
    }
  }
  void place(uint64_t address, const std::vector<uint8_t>& bytes) { memory.write_bytes(address, bytes); }
  RunResult run() { return cpu.run(10000); }
  uint64_t& reg(Reg r) { return cpu.state.regs[r]; }
  SystemState& sys() { return cpu.state.sys; }
  void set_gdt_entry(unsigned index, uint64_t value) { std::memcpy(gdt + 8 * index, &value, 8); }
  uint64_t read_stack(uint64_t address, unsigned size) {
    uint64_t v = 0;
    if (size == 8) EXPECT_TRUE(cpu.read<8>(address, v));
    else if (size == 4) EXPECT_TRUE(cpu.read<4>(address, v));
    else EXPECT_TRUE(cpu.read<2>(address, v));
    return v;
  }
};

bool in_handler(uint64_t rip) { return rip >= kHandlers && rip < kHandlers + 32 * 16; }

// Where and how the snippet stopped on an exception or trap.
struct Stop {
  bool stopped = false;
  Vector vector = Vector::DE;
  uint32_t error = 0;
  uint64_t rip = 0, rflags = 0, rsp = 0;
  uint16_t cs = 0, ss = 0;
};

Stop run_to_exception(System& m) {
  Stop stop;
  RunResult r = m.run();
  CpuState& s = m.cpu.state;
  if (r.reason == StopReason::Exception) {  // not delivered: the state is the interrupted one
    stop = Stop{true, s.exception.vector, s.exception.error_code, s.rip, read_rflags(s), s.regs[RSP],
                s.seg_selector[CS], s.seg_selector[SS]};
    return stop;
  }
  // Real mode: the handler's linear address is CS base + IP, the frame at SS base + SP.
  const bool real = m.kind == Kind::Real;
  const uint64_t pc = real ? s.seg_base[CS] + (s.rip & 0xffff) : s.rip;
  if (r.reason != StopReason::Halt || !in_handler(pc)) return stop;
  // Delivered through the IDT/IVT: the handler's HLT stopped the run; read the frame.
  const unsigned v = static_cast<unsigned>((pc - kHandlers) / 16);
  stop.stopped = true;
  stop.vector = static_cast<Vector>(v);
  const bool has_error = v == 8 || (v >= 10 && v <= 14) || v == 17;
  const unsigned size = m.kind == Kind::Long64 ? 8 : m.kind == Kind::Protected32 ? 4 : 2;
  uint64_t at = real ? s.seg_base[SS] + (s.regs[RSP] & 0xffff) : s.regs[RSP] & (m.kind == Kind::Long64 ? ~uint64_t{0} : 0xffffffffu);
  if (has_error && m.kind != Kind::Real) {
    stop.error = static_cast<uint32_t>(m.read_stack(at, size));
    at += size;
  }
  stop.rip = m.read_stack(at, size);
  stop.cs = static_cast<uint16_t>(m.read_stack(at + size, size));
  stop.rflags = m.read_stack(at + 2 * size, size);
  if (m.kind == Kind::Long64 || (m.kind == Kind::Protected32 && (stop.cs & 3))) {
    stop.rsp = m.read_stack(at + 3 * size, size);
    stop.ss = static_cast<uint16_t>(m.read_stack(at + 4 * size, size));
  } else {
    stop.rsp = at + 3 * size;
    stop.ss = s.seg_selector[SS];
  }
  return stop;
}

void expect_halt(System& m) {
  RunResult r = m.run();
  ASSERT_EQ(r.reason, StopReason::Halt) << "exception vector " << static_cast<int>(m.cpu.state.exception.vector);
  ASSERT_FALSE(in_handler(m.cpu.state.rip)) << "exception vector " << (m.cpu.state.rip - kHandlers) / 16
                                             << " delivered";
}

Stop expect_fault(System& m, Vector v, uint32_t error = 0) {
  Stop stop = run_to_exception(m);
  EXPECT_TRUE(stop.stopped) << "no exception";
  EXPECT_EQ(stop.vector, v);
  EXPECT_EQ(stop.error, error);
  return stop;
}

TEST(Privileged, HarnessReadsDeliveredExceptionFrames) {
  // What the harness sees once exceptions are delivered through the IDT: a frame on the
  // stack and the handler's HLT. Built by hand here: push a #GP frame, jump to the handler.
  // push 0x2b ; push 0x1234 ; push 0x202 ; push 0x33 ; push 0x5678 ; push 0x10 ; mov eax,handler ; jmp rax
  System m64({0x6a, 0x2b, 0x68, 0x34, 0x12, 0x00, 0x00, 0x68, 0x02, 0x02, 0x00, 0x00, 0x6a, 0x33, 0x68, 0x78, 0x56,
              0x00, 0x00, 0x6a, 0x10, 0xb8, 0xd0, 0x30, 0x04, 0x00, 0xff, 0xe0});
  Stop stop = expect_fault(m64, Vector::GP, 0x10);
  EXPECT_EQ(stop.rip, 0x5678u);
  EXPECT_EQ(stop.cs, 0x33);
  EXPECT_EQ(stop.rflags, 0x202u);
  EXPECT_EQ(stop.rsp, 0x1234u);
  EXPECT_EQ(stop.ss, 0x2b);
  // 32-bit, no privilege change: push 0x202 ; push 0x08 ; push 0x5678 ; push 0x10 ; mov eax,handler ; jmp eax
  System m32({0x68, 0x02, 0x02, 0x00, 0x00, 0x6a, 0x08, 0x68, 0x78, 0x56, 0x00, 0x00, 0x6a, 0x10, 0xb8, 0xd0, 0x30,
              0x04, 0x00, 0xff, 0xe0},
             Kind::Protected32);
  const uint64_t esp = m32.reg(RSP);
  stop = expect_fault(m32, Vector::GP, 0x10);
  EXPECT_EQ(stop.rip, 0x5678u);
  EXPECT_EQ(stop.cs, 0x08);
  EXPECT_EQ(stop.rsp, esp);
}

// ---- control registers ----

TEST(Privileged, ControlRegisterRoundTrip) {
  // mov rax,cr0 ; mov rbx,cr4 ; mov edx,kPml4 ; mov cr3,rdx ; mov rsi,cr3 ; mov cr2,rdx ; mov rdi,cr2
  // mov r8,5 ; mov cr8,r8 ; mov r9,cr8 ; hlt
  System m({0x0f, 0x20, 0xc0, 0x0f, 0x20, 0xe3, 0xba, 0x00, 0x40, 0x04, 0x00, 0x0f, 0x22, 0xda, 0x0f, 0x20, 0xde,
            0x0f, 0x22, 0xd2, 0x0f, 0x20, 0xd7, 0x41, 0xb8, 0x05, 0x00, 0x00, 0x00, 0x45, 0x0f, 0x22, 0xc0, 0x45,
            0x0f, 0x20, 0xc1, 0xf4});
  expect_halt(m);
  EXPECT_EQ(m.reg(RAX), m.sys().cr0);
  EXPECT_EQ(m.reg(RBX), m.sys().cr4);
  EXPECT_EQ(m.reg(RSI), kPml4);
  EXPECT_EQ(m.sys().cr3, kPml4);
  EXPECT_EQ(m.reg(RDI), kPml4);
  EXPECT_EQ(m.reg(R9), 5u);
  EXPECT_EQ(m.sys().cr8, 5u);
}

TEST(Privileged, ControlRegistersNeedCplZero) {
  System m({0x0f, 0x20, 0xc0, 0xcc}, Kind::Long64, 3);  // mov rax, cr0 ; int3
  expect_fault(m, Vector::GP);
  System w({0x0f, 0x22, 0xc0, 0xf4}, Kind::Long64, 3);  // mov cr0, rax
  w.reg(RAX) = w.sys().cr0;
  expect_fault(w, Vector::GP);
}

TEST(Privileged, Cr0InvalidCombinationsRaiseGp) {
  const std::vector<uint8_t> mov_cr0 = {0x0f, 0x22, 0xc0, 0xf4};
  struct Case {
    Kind kind;
    uint64_t value;
  } cases[] = {
      {Kind::Long64, (uint64_t{1} << 32) | cr0::PE | cr0::PG},  // bits 63:32
      {Kind::Protected32, cr0::PG},                          // PG without PE
      {Kind::Protected32, cr0::PE | cr0::NW},                // NW without CD
      {Kind::Long64, cr0::PE},                               // leaving long mode from 64-bit code
  };
  for (const Case& c : cases) {
    System m(mov_cr0, c.kind);
    m.reg(RAX) = c.value;
    const uint64_t before = m.sys().cr0;
    expect_fault(m, Vector::GP);
    EXPECT_EQ(m.sys().cr0, before);
  }
  // Reserved bits 31:0 are ignored and ET reads 1.
  System m(mov_cr0, Kind::Protected32);
  m.reg(RAX) = cr0::PE | (1u << 7);
  expect_halt(m);
  EXPECT_EQ(m.sys().cr0, cr0::PE | cr0::ET);
}

TEST(Privileged, Cr4ReservedBitsAndPaeInLongMode) {
  const std::vector<uint8_t> mov_cr4 = {0x0f, 0x22, 0xe0, 0xf4};
  for (uint64_t bad : {cr4::VME, cr4::PCIDE, cr4::OSXSAVE, cr4::FSGSBASE, uint64_t{1} << 32,
                       cr4::OSFXSR}) {  // last: clearing PAE in long mode
    System m(mov_cr4);
    m.reg(RAX) = bad == cr4::OSFXSR ? cr4::OSFXSR : cr4::PAE | bad;
    expect_fault(m, Vector::GP);
  }
  System m(mov_cr4, Kind::Protected32);  // no paging: SMEP does not stop the kernel's user-page code
  m.reg(RAX) = cr4::SMEP | cr4::SMAP | cr4::UMIP | cr4::TSD | cr4::DE | cr4::PSE | cr4::PGE;
  expect_halt(m);
  EXPECT_EQ(m.sys().cr4, m.reg(RAX));
}

TEST(Privileged, Cr3AndCr8ReservedBits) {
  System cr3({0x0f, 0x22, 0xd8, 0xf4});
  cr3.reg(RAX) = uint64_t{1} << kPhysicalAddressBits;
  expect_fault(cr3, Vector::GP);
  System cr8({0x44, 0x0f, 0x22, 0xc0, 0xf4});
  cr8.reg(RAX) = 0x10;
  expect_fault(cr8, Vector::GP);
  System cr5({0x0f, 0x22, 0xe8, 0xf4});  // mov cr5, rax
  expect_fault(cr5, Vector::UD);
}

TEST(Privileged, PaePdptesAreCheckedOnLoad) {
  // Legacy PAE paging: PDPT 0 maps the harness's 2 MiB-page directory; a second PDPT has a
  // present entry with a reserved bit (RW is reserved in PDPTEs).
  auto make = [](const std::vector<uint8_t>& code) {
    auto m = std::make_unique<System>(code, Kind::Protected32);
    const uint64_t good = kPd | 1, bad = kPd | 3;
    std::memcpy(m->data + 0x1000, &good, 8);
    std::memcpy(m->data + 0x2000, &bad, 8);
    m->sys().cr4 |= cr4::PAE;
    m->sys().cr0 |= cr0::PG;
    m->sys().cr3 = kData + 0x1000;
    return m;
  };
  const std::vector<uint8_t> mov_cr3 = {0x0f, 0x22, 0xd8, 0xf4};
  auto bad_cr3 = make(mov_cr3);
  bad_cr3->reg(RAX) = kData + 0x2000;
  expect_fault(*bad_cr3, Vector::GP);
  EXPECT_EQ(bad_cr3->sys().cr3, kData + 0x1000);
  auto good_cr3 = make(mov_cr3);
  good_cr3->reg(RAX) = kData + 0x1000;
  expect_halt(*good_cr3);
  // Turning PGE on reloads the PDPTEs from the current CR3.
  auto cr4 = make({0x0f, 0x22, 0xe0, 0xf4});
  std::memcpy(cr4->data + 0x1000 + 8, &cr4->data[0x2000], 8);  // PDPTE 1 now invalid
  cr4->reg(RAX) = cr4->sys().cr4 | cr4::PGE;
  expect_fault(*cr4, Vector::GP);
}

// mov ecx,EFER ; rdmsr ; or eax,LME ; wrmsr ; mov eax,cr0 ; or eax,PG ; mov cr0,eax ; mov ecx,EFER ; rdmsr ; hlt
const std::vector<uint8_t> kActivateLongMode = {
    0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, 0x20, 0xc0, 0x0d,
    0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0xf4};

TEST(Privileged, LongModeActivation) {
  System m(kActivateLongMode, Kind::Protected32);
  m.sys().cr4 |= cr4::PAE;
  m.sys().cr3 = kPml4;
  expect_halt(m);
  EXPECT_EQ(m.reg(RAX) & (efer::LME | efer::LMA), efer::LME | efer::LMA);
  EXPECT_TRUE(m.sys().efer & efer::LMA);
  EXPECT_TRUE(m.sys().cr0 & cr0::PG);
  EXPECT_EQ(m.cpu.state.mode.code, CodeSize::Bits32);  // compatibility mode until CS is reloaded
}

TEST(Privileged, LongModeActivationWithoutPaeRaisesGp) {
  System m(kActivateLongMode, Kind::Protected32);
  expect_fault(m, Vector::GP);
  EXPECT_FALSE(m.sys().efer & efer::LMA);
  EXPECT_TRUE(m.sys().efer & efer::LME);
  EXPECT_FALSE(m.sys().cr0 & cr0::PG);
}

TEST(Privileged, EferLmeCannotChangeWithPagingOn) {
  System m({0x0f, 0x30, 0xf4}, Kind::Long64);  // wrmsr
  m.reg(RCX) = 0xc0000080;
  m.reg(RAX) = efer::SCE;  // clears LME while CR0.PG = 1
  expect_fault(m, Vector::GP);
}

TEST(Privileged, LmswAndSmsw) {
  // lmsw ax ; smsw rbx ; hlt: LMSW sets TS and EM but cannot clear PE.
  System m({0x0f, 0x01, 0xf0, 0x48, 0x0f, 0x01, 0xe3, 0xf4});
  m.reg(RAX) = cr0::TS | cr0::EM;
  expect_halt(m);
  EXPECT_EQ(m.sys().cr0 & 0xf, cr0::PE | cr0::TS | cr0::EM);
  EXPECT_EQ(m.reg(RBX), m.sys().cr0);
  EXPECT_EQ(m.cpu.state.mode.fpu & (fpu_mode::TS | fpu_mode::EM), fpu_mode::TS | fpu_mode::EM);
}

TEST(Privileged, SmswHonoursUmip) {
  const std::vector<uint8_t> smsw = {0x0f, 0x01, 0xe0, 0xcc};  // smsw eax ; int3
  System ok(smsw, Kind::Long64, 3);
  expect_fault(ok, Vector::BP);
  EXPECT_EQ(ok.reg(RAX), ok.sys().cr0 & 0xffffffff);
  System umip(smsw, Kind::Long64, 3);
  umip.sys().cr4 |= cr4::UMIP;
  expect_fault(umip, Vector::GP);
}

// ---- debug registers ----

TEST(Privileged, DebugRegisters) {
  // mov rax,0x12345 ; mov dr0,rax ; mov rbx,dr0 ; mov eax,-1 ; mov dr6,rax ; mov rcx,dr6 ; mov rdx,dr4
  // mov eax,0x1ff ; mov dr7,rax ; mov rsi,dr5 ; hlt
  System m({0xb8, 0x45, 0x23, 0x01, 0x00, 0x0f, 0x23, 0xc0, 0x0f, 0x21, 0xc3, 0xb8, 0xff, 0xff, 0xff, 0xff, 0x0f,
            0x23, 0xf0, 0x0f, 0x21, 0xf1, 0x0f, 0x21, 0xe2, 0xb8, 0xff, 0x01, 0x00, 0x00, 0x0f, 0x23, 0xf8, 0x0f,
            0x21, 0xee, 0xf4});
  expect_halt(m);
  EXPECT_EQ(m.reg(RBX), 0x12345u);
  EXPECT_EQ(m.reg(RCX), 0xffffefffu);  // fixed DR6 bits: 4-11 and 16-31 one, 12 zero
  EXPECT_EQ(m.reg(RDX), 0xffffefffu);  // DR4 aliases DR6 without CR4.DE
  EXPECT_EQ(m.reg(RSI), 0x5ffu);  // DR7 (through DR5): bit 10 reads one
  EXPECT_EQ(m.sys().dr[7], 0x5ffu);
}

TEST(Privileged, DebugRegisterFaults) {
  System de({0x0f, 0x21, 0xe8, 0xf4});  // mov rax, dr5
  de.sys().cr4 |= cr4::DE;
  expect_fault(de, Vector::UD);
  System upper({0x0f, 0x23, 0xf8, 0xf4});  // mov dr7, rax
  upper.reg(RAX) = uint64_t{1} << 32;
  expect_fault(upper, Vector::GP);
  System user({0x0f, 0x21, 0xe8, 0xcc}, Kind::Long64, 3);
  expect_fault(user, Vector::GP);
  System gd({0x0f, 0x21, 0xe8, 0xf4});  // DR7.GD: any access is a debug exception
  gd.sys().dr[7] = 0x2400;
  expect_fault(gd, Vector::DB);
  EXPECT_TRUE(gd.sys().dr[6] & 0x2000);   // BD
  EXPECT_FALSE(gd.sys().dr[7] & 0x2000);  // GD cleared for the handler
}

// ---- MSRs ----

TEST(Privileged, MsrRoundTrip) {
  // mov ecx,LSTAR ; mov eax,0x11223344 ; mov edx,0xffff8000 ; wrmsr ; xor eax,eax ; xor edx,edx ; rdmsr ; hlt
  System m({0xb9, 0x82, 0x00, 0x00, 0xc0, 0xb8, 0x44, 0x33, 0x22, 0x11, 0xba, 0x00, 0x80, 0xff, 0xff, 0x0f, 0x30,
            0x31, 0xc0, 0x31, 0xd2, 0x0f, 0x32, 0xf4});
  expect_halt(m);
  EXPECT_EQ(m.reg(RAX), 0x11223344u);
  EXPECT_EQ(m.reg(RDX), 0xffff8000u);
  EXPECT_EQ(m.sys().lstar, 0xffff800011223344u);
}

void write_msr_and_expect(uint32_t index, uint64_t value, bool ok, unsigned cpl = 0) {
  System m({0x0f, 0x30, 0xf4}, Kind::Long64, cpl);  // wrmsr ; hlt
  m.reg(RCX) = index;
  m.reg(RAX) = value & 0xffffffff;
  m.reg(RDX) = value >> 32;
  if (ok) {
    expect_halt(m);
    uint64_t back = 0;
    EXPECT_TRUE(read_msr(m.cpu, index, back));
  } else {
    SCOPED_TRACE(::testing::Message() << "msr " << std::hex << index << " value " << value);
    expect_fault(m, Vector::GP);
  }
}

TEST(Privileged, WrmsrChecks) {
  write_msr_and_expect(0xc0000082, 0x0000800000000000, false);  // LSTAR non-canonical
  write_msr_and_expect(0xc0000100, 0x0000800000000000, false);  // FS_BASE non-canonical
  write_msr_and_expect(0xc0000084, uint64_t{1} << 32, false);   // SFMASK bits 63:32
  write_msr_and_expect(0xc0000080, efer::LME | efer::LMA | efer::SCE | (1u << 1), false);  // EFER reserved
  write_msr_and_expect(0xc0000103, uint64_t{1} << 32, false);   // TSC_AUX bits 63:32
  write_msr_and_expect(0x277, 0x0007040600070402, false);       // PAT: type 2 is reserved
  write_msr_and_expect(0x2ff, 0x803, false);                    // MTRRdefType: type 3
  write_msr_and_expect(0x201, 0x7ff, false);                    // MTRRphysMask0: reserved low bits
  write_msr_and_expect(0xfe, 0, false);                         // MTRRcap is read-only
  write_msr_and_expect(0x10a, 0, false);                        // ARCH_CAPABILITIES too
  write_msr_and_expect(0x174, uint64_t{1} << 32, false);        // SYSENTER_CS bits 63:32
  write_msr_and_expect(0x12345, 0, false);                      // unknown
  write_msr_and_expect(0xc0000082, 0, false, 3);                // CPL 3
  write_msr_and_expect(0x277, 0x0007040600070406, true);
  write_msr_and_expect(0x200, 0xf0000006, true);
  write_msr_and_expect(0x201, 0xfff0000800, true);
  write_msr_and_expect(0x250, 0x0606060606060606, true);
  write_msr_and_expect(0x2ff, 0xc06, true);
  write_msr_and_expect(0x1a0, 1, true);
  write_msr_and_expect(0x8b, 0, true);
}

TEST(Privileged, MsrsReachTheirState) {
  System m({0x0f, 0x30, 0xf4});
  m.reg(RCX) = 0xc0000100;  // FS_BASE
  m.reg(RAX) = 0x1000;
  m.reg(RDX) = 0xffffffff;
  expect_halt(m);
  EXPECT_EQ(m.cpu.state.seg_base[FS], 0xffffffff00001000u);
  uint64_t v = 0;
  ASSERT_TRUE(write_msr(m.cpu, 0x10, 1000000));  // TSC
  ASSERT_TRUE(read_msr(m.cpu, 0x10, v));
  EXPECT_EQ(v, 1000000u);
  ASSERT_TRUE(read_msr(m.cpu, 0xfe, v));  // MTRRcap: 8 variable ranges, fixed ranges, WC
  EXPECT_EQ(v, 0x508u);
  ASSERT_TRUE(read_msr(m.cpu, 0x1a0, v));
  EXPECT_EQ(v & 0x1801, 0x1801u);  // fast strings; BTS and PEBS unavailable
  ASSERT_TRUE(read_msr(m.cpu, 0x10a, v));
  EXPECT_EQ(v & 0x21, 0x21u);  // RDCL_NO, MDS_NO
  // MISC_ENABLE.XD_DISABLE hides NX: EFER.NXE is cleared and becomes reserved.
  ASSERT_TRUE(write_msr(m.cpu, 0x1a0, uint64_t{1} << 34));
  EXPECT_FALSE(m.sys().efer & efer::NXE);
  EXPECT_FALSE(write_msr(m.cpu, 0xc0000080, efer::LME | efer::LMA | efer::NXE));
  uint32_t r[4];
  system_cpuid(m.cpu.state, 0x80000001, 0, r);
  EXPECT_FALSE(r[3] & (1u << 20));
}

TEST(Privileged, RdmsrUnknownAndUserRaiseGp) {
  System unknown({0x0f, 0x32, 0xf4});
  unknown.reg(RCX) = 0x4b564d00;
  expect_fault(unknown, Vector::GP);
  System user({0x0f, 0x32, 0xcc}, Kind::Long64, 3);
  user.reg(RCX) = 0xc0000080;
  expect_fault(user, Vector::GP);
}

TEST(Privileged, RdtscpRdpidAndTsd) {
  System m({0x0f, 0x01, 0xf9, 0xf3, 0x0f, 0xc7, 0xfb, 0xf4});  // rdtscp ; rdpid rbx ; hlt
  m.sys().tsc_aux = 7;
  m.cpu.state.tsc = 0x123456789;
  expect_halt(m);
  EXPECT_EQ(m.reg(RCX), 7u);
  EXPECT_EQ(m.reg(RBX), 7u);
  EXPECT_EQ((m.reg(RDX) << 32) | m.reg(RAX), 0x12345678au);
  System tsd({0x0f, 0x31, 0xcc}, Kind::Long64, 3);  // rdtsc ; int3
  tsd.sys().cr4 |= cr4::TSD;
  expect_fault(tsd, Vector::GP);
  System allowed({0x0f, 0x31, 0xcc}, Kind::Long64, 3);
  expect_fault(allowed, Vector::BP);
}

// ---- descriptor tables ----

TEST(Privileged, LoadAndStoreTableRegisters64) {
  // lgdt [0x20000] ; sgdt [0x20010] ; lidt [0x20020] ; sidt [0x20030] ; hlt
  System m({0x0f, 0x01, 0x14, 0x25, 0x00, 0x00, 0x02, 0x00, 0x0f, 0x01, 0x04, 0x25, 0x10, 0x00, 0x02, 0x00,
            0x0f, 0x01, 0x1c, 0x25, 0x20, 0x00, 0x02, 0x00, 0x0f, 0x01, 0x0c, 0x25, 0x30, 0x00, 0x02, 0x00, 0xf4});
  const uint8_t gdt[10] = {0x7f, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x80, 0xff, 0xff};
  const uint8_t idt[10] = {0xff, 0x0f, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  std::memcpy(m.data, gdt, 10);
  std::memcpy(m.data + 0x20, idt, 10);
  expect_halt(m);
  EXPECT_EQ(m.sys().gdtr.base, 0xffff800000001000u);
  EXPECT_EQ(m.sys().gdtr.limit, 0x7fu);
  EXPECT_EQ(m.sys().idtr.base, 0x2000u);
  EXPECT_EQ(std::memcmp(m.data + 0x10, gdt, 10), 0);
  EXPECT_EQ(std::memcmp(m.data + 0x30, idt, 10), 0);
}

TEST(Privileged, LoadTableNonCanonicalOrUser) {
  System m({0x0f, 0x01, 0x14, 0x25, 0x00, 0x00, 0x02, 0x00, 0xf4});
  const uint8_t gdt[10] = {0x7f, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00};
  std::memcpy(m.data, gdt, 10);
  expect_fault(m, Vector::GP);
  System user({0x0f, 0x01, 0x14, 0x25, 0x00, 0x00, 0x02, 0x00, 0xcc}, Kind::Long64, 3);
  expect_fault(user, Vector::GP);
}

TEST(Privileged, LoadAndStoreTableRegisters32) {
  // o16 lgdt [0x20000] ; sgdt [0x20010] ; lgdt [0x20020] ; sgdt [0x20030] ; hlt
  System m({0x66, 0x0f, 0x01, 0x15, 0x00, 0x00, 0x02, 0x00, 0x0f, 0x01, 0x05, 0x10, 0x00, 0x02, 0x00, 0x0f, 0x01,
            0x15, 0x20, 0x00, 0x02, 0x00, 0x0f, 0x01, 0x05, 0x30, 0x00, 0x02, 0x00, 0xf4},
           Kind::Protected32);
  const uint8_t table[6] = {0x17, 0x00, 0x44, 0x33, 0x22, 0x11};
  std::memcpy(m.data, table, 6);
  std::memcpy(m.data + 0x20, table, 6);
  expect_halt(m);
  const uint8_t base24[6] = {0x17, 0x00, 0x44, 0x33, 0x22, 0x00};  // 16-bit operand: 24-bit base
  EXPECT_EQ(std::memcmp(m.data + 0x10, base24, 6), 0);
  EXPECT_EQ(std::memcmp(m.data + 0x30, table, 6), 0);
  EXPECT_EQ(m.sys().gdtr.base, 0x11223344u);
}

// A 64-bit available TSS descriptor (16 bytes) at GDT index 12/13 (0x60), an LDT at 14/15 (0x70).
void add_system_descriptors(System& m, unsigned tss_type = 9, bool present = true) {
  const uint64_t base = 0xffff800012345678, limit = 0x67;
  auto low = [&](unsigned type) {
    return (limit & 0xffff) | ((base & 0xffffff) << 16) | (uint64_t{type} << 40) |
           (uint64_t{present ? 1u : 0u} << 47) | (((base >> 24) & 0xff) << 56);
  };
  m.set_gdt_entry(12, low(tss_type));
  m.set_gdt_entry(13, base >> 32);
  m.set_gdt_entry(14, low(2));
  m.set_gdt_entry(15, base >> 32);
}

TEST(Privileged, LtrMarksTheTssBusy) {
  // mov eax,0x60 ; ltr ax ; str rbx ; sldt rcx ; hlt
  System m({0xb8, 0x60, 0x00, 0x00, 0x00, 0x0f, 0x00, 0xd8, 0x48, 0x0f, 0x00, 0xcb, 0x0f, 0x00, 0xc1, 0xf4});
  add_system_descriptors(m);
  m.sys().ldtr.selector = 0x38;
  m.reg(RCX) = ~uint64_t{0};
  expect_halt(m);
  EXPECT_EQ(m.sys().tr.selector, 0x60u);
  EXPECT_EQ(m.sys().tr.base, 0xffff800012345678u);
  EXPECT_EQ(m.sys().tr.limit, 0x67u);
  EXPECT_EQ(m.sys().tr.attrs & 0xff, 0x8bu);  // busy 64-bit TSS
  EXPECT_EQ(m.gdt[12 * 8 + 5], 0x8b);          // busy bit written back to the GDT
  EXPECT_EQ(m.reg(RBX), 0x60u);
  EXPECT_EQ(m.reg(RCX), 0x38u);               // SLDT r32 zero-extends
}

TEST(Privileged, LtrAndLldtChecks) {
  const std::vector<uint8_t> ltr = {0xb8, 0x60, 0x00, 0x00, 0x00, 0x0f, 0x00, 0xd8, 0x48, 0x0f, 0x00, 0xcb,
                                    0x0f, 0x00, 0xc1, 0xf4};
  System busy(ltr);
  add_system_descriptors(busy, 0xb);
  expect_fault(busy, Vector::GP, 0x60);
  System absent(ltr);
  add_system_descriptors(absent, 9, false);
  expect_fault(absent, Vector::NP, 0x60);
  System beyond(ltr);
  add_system_descriptors(beyond);
  beyond.sys().gdtr.limit = 0x67;  // the 16-byte descriptor does not fit
  expect_fault(beyond, Vector::GP, 0x60);

  const std::vector<uint8_t> lldt = {0x0f, 0x00, 0xd0, 0xf4};  // lldt ax
  System good(lldt);
  add_system_descriptors(good);
  good.reg(RAX) = 0x70;
  expect_halt(good);
  EXPECT_EQ(good.sys().ldtr.base, 0xffff800012345678u);
  System wrong_type(lldt);
  add_system_descriptors(wrong_type);
  wrong_type.reg(RAX) = 0x08;
  expect_fault(wrong_type, Vector::GP, 0x08);
  System ldt_selector(lldt);
  ldt_selector.reg(RAX) = 0x74;  // TI = 1
  expect_fault(ldt_selector, Vector::GP, 0x74);
  System null(lldt);
  null.reg(RAX) = 0;
  expect_halt(null);
  EXPECT_EQ(null.sys().ldtr.attrs, 0u);
  System real({0x0f, 0x00, 0xd0, 0xf4}, Kind::Real);
  expect_fault(real, Vector::UD);
}

// ---- fast system calls ----

TEST(Privileged, SyscallSysretRoundTrip) {
  // user: mov eax,1 ; syscall ; mov rbx,rax ; syscall ; int3
  System m({0xb8, 0x01, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x89, 0xc3, 0x0f, 0x05, 0xcc}, Kind::Long64, 3);
  // kernel: cmp eax,1 ; jne stop ; mov r12,rcx ; mov r13,r11 ; pushfq ; pop r14 ; mov eax,42 ; sysretq ; stop: hlt
  m.place(kCode + 0x100, {0x83, 0xf8, 0x01, 0x75, 0x11, 0x49, 0x89, 0xcc, 0x4d, 0x89, 0xdd, 0x9c, 0x41, 0x5e,
                          0xb8, 0x2a, 0x00, 0x00, 0x00, 0x48, 0x0f, 0x07, 0xf4});
  m.sys().star = (uint64_t{0x23} << 48) | (uint64_t{0x10} << 32);
  m.sys().lstar = kCode + 0x100;
  m.sys().sfmask = rflags::IF | rflags::TF | rflags::DF | rflags::AC;
  write_rflags(m.cpu.state, rflags::kFixed | rflags::IF | rflags::CF);
  expect_halt(m);
  EXPECT_EQ(m.reg(R12), kCode + 7);                  // RCX: the instruction after SYSCALL
  EXPECT_EQ(m.reg(R13), rflags::kFixed | rflags::IF | rflags::CF);  // R11: RFLAGS
  EXPECT_EQ(m.reg(R14) & rflags::IF, 0u);           // SFMASK cleared IF in the kernel
  EXPECT_EQ(m.reg(RBX), 42u);                        // the user code ran after SYSRET
  EXPECT_EQ(m.reg(RCX), kCode + 12);
  const CpuState& s = m.cpu.state;
  EXPECT_EQ(s.sys.cpl, 0);
  EXPECT_EQ(s.seg_selector[CS], 0x10);
  EXPECT_EQ(s.seg_selector[SS], 0x18);
  EXPECT_EQ(s.seg_attrs[CS], kCode64);
  EXPECT_EQ(s.mode.code, CodeSize::Bits64);
}

TEST(Privileged, SysretToCompatibilityMode) {
  // sysretd ; then in 32-bit code: dec eax ; inc eax (64-bit code would see inc rax) ; int3
  System m({0x0f, 0x07, 0x48, 0xff, 0xc0, 0xcc});
  m.sys().star = (uint64_t{0x23} << 48) | (uint64_t{0x10} << 32);
  m.reg(RCX) = 0xffffffff00000000 | (kCode + 2);  // upper half ignored
  m.reg(R11) = rflags::kFixed | rflags::IF | (uint64_t{1} << 17);
  m.reg(RAX) = 0x100000005;
  const Stop stop = expect_fault(m, Vector::BP);
  EXPECT_EQ(m.reg(RAX), 5u);  // ran as 32-bit code
  EXPECT_EQ(stop.rip, kCode + 6);
  EXPECT_EQ(stop.cs, 0x23);
  EXPECT_EQ(stop.ss, 0x2b);
  EXPECT_EQ(stop.rflags & (1u << 17), 0u);  // VM cleared
  EXPECT_TRUE(stop.rflags & rflags::IF);
}

TEST(Privileged, SysretAndSyscallFaults) {
  System noncanonical({0x48, 0x0f, 0x07, 0xf4});
  noncanonical.reg(RCX) = 0x0000800000000000;
  expect_fault(noncanonical, Vector::GP);
  EXPECT_EQ(noncanonical.sys().cpl, 0);
  System user({0x48, 0x0f, 0x07, 0xcc}, Kind::Long64, 3);
  expect_fault(user, Vector::GP);
  System disabled({0x0f, 0x05, 0xf4});
  disabled.sys().efer &= ~efer::SCE;
  expect_fault(disabled, Vector::UD);
}

TEST(Privileged, SyscallFromCompatibilityModeUsesCstar) {
  System m({0x0f, 0x05, 0xf4}, Kind::Long64, 3);
  m.cpu.state.seg_attrs[CS] = kCode32 | kDpl3;
  m.cpu.state.mode.code = CodeSize::Bits32;
  m.sys().star = uint64_t{0x10} << 32;
  m.sys().cstar = kCode + 2;  // the HLT
  expect_halt(m);
  EXPECT_EQ(m.reg(RCX), kCode + 2);
  EXPECT_EQ(m.cpu.state.mode.code, CodeSize::Bits64);
}

TEST(Privileged, LegacyModeSyscallAndSysret) {
  // Protected mode without long mode (AMD semantics): SYSCALL to STAR[31:0] clearing IF,
  // SYSRET back to ring 3 setting IF.
  System m({0x0f, 0x05, 0xcc}, Kind::Protected32, 3);  // syscall ; int3
  m.place(kCode + 0x40, {0x89, 0xcb, 0x9c, 0x5e, 0x0f, 0x07});  // mov ebx,ecx ; pushfd ; pop esi ; sysret
  m.sys().efer = efer::SCE;
  m.sys().star = (uint64_t{0x20} << 48) | (uint64_t{0x08} << 32) | (kCode + 0x40);
  const Stop stop = expect_fault(m, Vector::BP);
  EXPECT_EQ(m.reg(RBX), kCode + 2);         // ECX: return address
  EXPECT_EQ(m.reg(RSI) & rflags::IF, 0u);   // IF cleared in the kernel
  EXPECT_EQ(stop.cs, 0x23);
  EXPECT_EQ(stop.ss, 0x2b);
  EXPECT_EQ(stop.rip, kCode + 3);
  EXPECT_TRUE(stop.rflags & rflags::IF);    // SYSRET sets IF
}

TEST(Privileged, SysenterSysexitRoundTrip32) {
  // user: mov ecx,esp ; mov edx,back ; sysenter ; back: int3
  System m({0x89, 0xe1, 0xba, 0x09, 0x00, 0x01, 0x00, 0x0f, 0x34, 0xcc}, Kind::Protected32, 3);
  m.place(kCode + 0x80, {0x89, 0xe3, 0x9c, 0x5e, 0x0f, 0x35});  // kernel: mov ebx,esp ; pushfd ; pop esi ; sysexit
  m.sys().sysenter_cs = 0x08;
  m.sys().sysenter_esp = kStackTop - 0x10;
  m.sys().sysenter_eip = kCode + 0x80;
  const uint64_t user_esp = m.reg(RSP);
  const Stop stop = expect_fault(m, Vector::BP);
  EXPECT_EQ(stop.rip, kCode + 10);
  EXPECT_EQ(m.reg(RBX), kStackTop - 0x10);
  EXPECT_EQ(m.reg(RSI) & rflags::IF, 0u);  // SYSENTER cleared IF
  EXPECT_EQ(stop.rsp, user_esp);
  EXPECT_EQ(stop.cs, 0x1b);
  EXPECT_EQ(stop.ss, 0x23);
}

TEST(Privileged, SysenterAndSysexit64) {
  System m({0x0f, 0x34}, Kind::Long64, 3);  // sysenter (into a 64-bit kernel)
  m.place(kCode + 0x80, {0x48, 0x0f, 0x35});  // sysexitq
  m.place(kCode + 0x90, {0x48, 0xff, 0xc0, 0xcc});  // inc rax ; int3
  m.sys().sysenter_cs = 0x10;
  m.sys().sysenter_esp = 0xffff800000001000;
  m.sys().sysenter_eip = kCode + 0x80;
  m.reg(RDX) = kCode + 0x90;
  m.reg(RCX) = 0x7fff0000;
  m.reg(RAX) = 0xffffffff;
  const Stop stop = expect_fault(m, Vector::BP);
  EXPECT_EQ(m.reg(RAX), 0x100000000u);  // ran as 64-bit code
  EXPECT_EQ(stop.cs, 0x33);
  EXPECT_EQ(stop.ss, 0x3b);
  EXPECT_EQ(stop.rsp, 0x7fff0000u);
  System unset({0x0f, 0x34, 0xf4}, Kind::Protected32);  // SYSENTER_CS null
  expect_fault(unset, Vector::GP);
  System user_exit({0x0f, 0x35}, Kind::Protected32, 3);
  user_exit.sys().sysenter_cs = 0x08;
  expect_fault(user_exit, Vector::GP);
}

TEST(Privileged, Swapgs) {
  System m({0x0f, 0x01, 0xf8, 0xf4});
  m.cpu.state.seg_base[GS] = 0x1000;
  m.sys().kernel_gs_base = 0xffff800000002000;
  expect_halt(m);
  EXPECT_EQ(m.cpu.state.seg_base[GS], 0xffff800000002000u);
  EXPECT_EQ(m.sys().kernel_gs_base, 0x1000u);
  System user({0x0f, 0x01, 0xf8, 0xcc}, Kind::Long64, 3);
  expect_fault(user, Vector::GP);
  // GS-relative loads on both sides of SWAPGS in one block see the two bases.
  // mov rbx,[gs:0] ; swapgs ; mov rax,[gs:0] ; hlt
  System same_block({0x65, 0x48, 0x8b, 0x1c, 0x25, 0, 0, 0, 0, 0x0f, 0x01, 0xf8, 0x65, 0x48, 0x8b, 0x04, 0x25, 0,
                     0, 0, 0, 0xf4});
  same_block.cpu.state.seg_base[GS] = kData;
  same_block.sys().kernel_gs_base = kData + 8;
  const uint64_t user_value = 0x1111, kernel_value = 0x2222;
  std::memcpy(same_block.data, &user_value, 8);
  std::memcpy(same_block.data + 8, &kernel_value, 8);
  expect_halt(same_block);
  EXPECT_EQ(same_block.reg(RBX), user_value);
  EXPECT_EQ(same_block.reg(RAX), kernel_value);
}

// ---- IF / IOPL ----

TEST(Privileged, CliStiFollowIopl) {
  System user({0xfa, 0xcc}, Kind::Long64, 3);  // cli ; int3
  EXPECT_TRUE(expect_fault(user, Vector::GP).rflags & rflags::IF);
  System iopl3({0xfa, 0xcc}, Kind::Long64, 3);
  iopl3.cpu.state.rflags_other |= 3u << 12;
  EXPECT_FALSE(expect_fault(iopl3, Vector::BP).rflags & rflags::IF);
  System sti({0xfb, 0xf4});
  sti.cpu.state.rflags_other &= ~rflags::IF;
  expect_halt(sti);
  EXPECT_TRUE(sti.cpu.state.rflags_other & rflags::IF);
  EXPECT_FALSE(sti.sys().interrupt_shadow);  // it covered the HLT and ended at the block boundary
  System kernel32({0xfa, 0xf4}, Kind::Protected32, 0);  // CPL 0 <= IOPL 0
  expect_halt(kernel32);
  EXPECT_FALSE(kernel32.cpu.state.rflags_other & rflags::IF);
}

TEST(Privileged, PopfPrivilegeRules) {
  const std::vector<uint8_t> popf = {0x50, 0x9d, 0xcc};  // push rax ; popfq ; int3
  const uint64_t image = rflags::kFixed | (3u << 12) | rflags::CF;  // IF clear, IOPL 3
  System user(popf, Kind::Long64, 3);  // CPL 3 > IOPL 0: IF and IOPL kept
  user.reg(RAX) = image;
  uint64_t f = expect_fault(user, Vector::BP).rflags;
  EXPECT_TRUE(f & rflags::IF);
  EXPECT_EQ(f & (3u << 12), 0u);
  EXPECT_TRUE(f & rflags::CF);
  System user_iopl(popf, Kind::Long64, 3);  // CPL 3 <= IOPL 3: IF changes, IOPL still kept
  user_iopl.cpu.state.rflags_other |= 3u << 12;
  user_iopl.reg(RAX) = rflags::kFixed | rflags::CF;
  f = expect_fault(user_iopl, Vector::BP).rflags;
  EXPECT_FALSE(f & rflags::IF);
  EXPECT_EQ(f & (3u << 12), 3u << 12);
  System kernel({0x50, 0x9d, 0xf4});  // CPL 0: both change
  kernel.reg(RAX) = image;
  expect_halt(kernel);
  f = read_rflags(kernel.cpu.state);
  EXPECT_FALSE(f & rflags::IF);
  EXPECT_EQ(f & (3u << 12), 3u << 12);
}

TEST(Privileged, PrivilegedInstructionsAtCplThree) {
  for (const std::vector<uint8_t>& code : std::vector<std::vector<uint8_t>>{
           {0xf4},                    // hlt
           {0x0f, 0x01, 0x38, 0xcc},  // invlpg [rax]
           {0x0f, 0x09, 0xcc},        // wbinvd
           {0x0f, 0x06, 0xcc},        // clts
           {0x0f, 0x33, 0xcc},        // rdpmc (no counters at any CPL)
       }) {
    System m(code, Kind::Long64, 3);
    m.reg(RAX) = kData;
    expect_fault(m, Vector::GP);
  }
  System stac({0x0f, 0x01, 0xcb, 0xcc}, Kind::Long64, 3);
  expect_fault(stac, Vector::UD);
  System kernel_stac({0x0f, 0x01, 0xcb, 0xf4});
  expect_halt(kernel_stac);
  EXPECT_TRUE(kernel_stac.cpu.state.rflags_other & rflags::AC);
}

// ---- FPU availability ----

TEST(Privileged, DeviceNotAvailableAndInvalidOpcode) {
  struct Case {
    std::vector<uint8_t> code;
    uint64_t cr0_set, cr4_clear;
    bool halts;
    Vector vector;
  } cases[] = {
      {{0xd9, 0xe8, 0xf4}, cr0::TS, 0, false, Vector::NM},              // fld1 with TS
      {{0xd9, 0xe8, 0xf4}, cr0::EM, 0, false, Vector::NM},              // fld1 with EM
      {{0x0f, 0x28, 0xc1, 0xf4}, cr0::TS, 0, false, Vector::NM},        // movaps with TS
      {{0x0f, 0x28, 0xc1, 0xf4}, cr0::EM, 0, false, Vector::UD},        // movaps with EM
      {{0x0f, 0x28, 0xc1, 0xf4}, 0, cr4::OSFXSR, false, Vector::UD},    // movaps without OSFXSR
      {{0x0f, 0x77, 0xf4}, cr0::EM, 0, false, Vector::UD},              // emms with EM
      {{0x0f, 0x77, 0xf4}, cr0::TS, 0, false, Vector::NM},              // emms with TS
      {{0x9b, 0xf4}, cr0::TS, 0, false, Vector::NM},                    // fwait with MP and TS
      {{0x0f, 0x06, 0xd9, 0xe8, 0xf4}, cr0::TS, 0, true, Vector::NM},   // clts ; fld1
      {{0x0f, 0x28, 0xc1, 0xf4}, 0, 0, true, Vector::NM},               // movaps
  };
  for (const Case& c : cases) {
    System m(c.code);
    m.sys().cr0 |= c.cr0_set;
    m.sys().cr4 &= ~c.cr4_clear;
    refresh_fpu_mode(m.cpu.state);
    SCOPED_TRACE(::testing::Message() << "opcode " << std::hex << int{c.code[0]} << " cr0 " << c.cr0_set);
    if (c.halts) expect_halt(m);
    else expect_fault(m, c.vector);
  }
  System wait_ts_only({0x9b, 0xf4});  // WAIT ignores TS without MP
  wait_ts_only.sys().cr0 = (wait_ts_only.sys().cr0 | cr0::TS) & ~cr0::MP;
  refresh_fpu_mode(wait_ts_only.cpu.state);
  expect_halt(wait_ts_only);
}

TEST(Privileged, SimdExceptionWithoutOsxmmexcptIsUd) {
  for (bool osxmmexcpt : {true, false}) {
    System m({0xf3, 0x0f, 0x5e, 0xc1, 0xf4});  // divss xmm0, xmm1
    if (!osxmmexcpt) m.sys().cr4 &= ~cr4::OSXMMEXCPT;
    m.cpu.state.mxcsr = 0x1f80 & ~0x200u;  // divide-by-zero unmasked
    m.cpu.state.xmm[0].lo = 0x3f800000;    // 1.0f / 0.0f
    expect_fault(m, osxmmexcpt ? Vector::XM : Vector::UD);
  }
}

// ---- CPUID ----

TEST(Privileged, SystemCpuid) {
  CpuState s;
  s.mode.system = true;
  uint32_t r[4];
  system_cpuid(s, 0, 0, r);
  EXPECT_EQ(r[0], 7u);
  EXPECT_EQ(r[1], 0x756e6547u);  // "Genu"
  system_cpuid(s, 1, 0, r);
  for (unsigned bit : {0, 2, 3, 4, 5, 6, 8, 11, 12, 13, 15, 16, 19, 23, 24, 25, 26})
    EXPECT_TRUE(r[3] & (1u << bit)) << "leaf 1 EDX bit " << bit;
  EXPECT_FALSE(r[3] & (1u << 9));  // no local APIC in the machine
  EXPECT_TRUE(r[2] & (1u << 13));  // CX16
  EXPECT_TRUE(r[2] & (1u << 23));  // POPCNT
  EXPECT_FALSE(r[2] & (1u << 26)); // no XSAVE
  system_cpuid(s, 7, 0, r);
  EXPECT_EQ(r[1] & ((1u << 7) | (1u << 20)), (1u << 7) | (1u << 20));  // SMEP SMAP
  EXPECT_TRUE(r[2] & (1u << 22));                                       // RDPID
  EXPECT_TRUE(r[3] & (1u << 29));                                       // ARCH_CAPABILITIES MSR
  system_cpuid(s, 0x80000001, 0, r);
  EXPECT_EQ(r[3] & ((1u << 11) | (1u << 20) | (1u << 27) | (1u << 29)),
            (1u << 11) | (1u << 20) | (1u << 27) | (1u << 29));  // SYSCALL NX RDTSCP LM
  EXPECT_FALSE(r[3] & (1u << 26));                              // no 1 GiB pages
  system_cpuid(s, 0x80000008, 0, r);
  EXPECT_EQ(r[0], kPhysicalAddressBits | (kLinearAddressBits << 8));

  // Through the instruction, in system mode.
  System m({0x0f, 0xa2, 0xf4});
  m.reg(RAX) = 0x80000000;
  expect_halt(m);
  EXPECT_EQ(m.reg(RAX), 0x80000008u);
}

TEST(Privileged, RandomSystemInstructionsStayInTheGuest) {
  // Random operands for the 0F 00/01/05/06/07/08/09/20-23/30-35 opcodes and the rest of the
  // system helpers at CPL 0 and 3: every run ends with a guest-visible result, never a host error.
  uint64_t seed = 0x5eed;
  auto next = [&] {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint8_t>(seed >> 56);
  };
  static constexpr uint8_t kSecond[] = {0x00, 0x01, 0x05, 0x06, 0x07, 0x08, 0x09, 0x20, 0x21,
                                        0x22, 0x23, 0x30, 0x32, 0x34, 0x35, 0xa2, 0x31, 0xc7};
  for (int i = 0; i < 1500; ++i) {
    std::vector<uint8_t> code;
    for (int k = 0; k < 4; ++k) {
      if (next() & 1) code.push_back(static_cast<uint8_t>(0x40 | (next() & 0xf)));  // REX
      code.push_back(0x0f);
      code.push_back(kSecond[next() % std::size(kSecond)]);
      for (int b = 0; b < 6; ++b) code.push_back(next());
    }
    code.push_back(0xf4);
    const Kind kind = (i & 1) ? Kind::Long64 : Kind::Protected32;
    System m(code, kind, (i & 2) ? 3 : 0);
    for (Reg r : {RAX, RBX, RCX, RDX, RSI, RDI}) m.reg(r) = kData + 8 * next();
    EXPECT_NO_THROW(m.run());
  }
}

TEST(Privileged, UserModeKeepsUd) {
  // The same encodings without CpuMode::system: #UD (kiln-x86-run and the differential tests).
  for (const std::vector<uint8_t>& code : std::vector<std::vector<uint8_t>>{
           {0x0f, 0x22, 0xc0}, {0x0f, 0x32}, {0x0f, 0x30}, {0xfa}, {0x0f, 0x01, 0xf8}, {0x0f, 0x07}, {0x0f, 0x34},
           {0x0f, 0x01, 0xf9}, {0x0f, 0x01, 0x14, 0x25, 0, 0, 2, 0}}) {
    FlatMemory memory;
    Cpu cpu(memory);
    memory.map(kCode, kPageSize, kPermRead | kPermExec);
    memory.write_bytes(kCode, code);
    cpu.state.rip = kCode;
    ASSERT_EQ(cpu.run(100).reason, StopReason::Exception);
    EXPECT_EQ(cpu.state.exception.vector, Vector::UD);
  }
}

}  // namespace
}  // namespace kiln::emu
