// Soft MMU, TLB and TB management: page walks in every paging mode, #PF error
// codes and CR2, access rights, TLB invalidation, MMIO dispatch, self-modifying
// code and the TB cache size limit. Page tables are built in PhysicalMemory and
// small code snippets run on a system-mode Cpu.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/mmu.h"
#include "kiln/emulator/physical_memory.h"

namespace kiln::emu {
namespace {

namespace pte {
constexpr uint64_t P = 1, RW = 2, US = 4, A = 0x20, D = 0x40, PS = 0x80, G = 0x100, XD = 1ull << 63;
}

constexpr uint64_t kRamSize = 32 << 20;
constexpr uint64_t kCode = 0x10000;

// A machine with 32 MiB of RAM at 0, the soft MMU and a system-mode CPU at CPL 0.
struct System {
  PhysicalMemory phys;
  uint8_t* ram = phys.add_ram(0, kRamSize);
  SoftMmu mmu{phys};
  Cpu cpu{mmu};

  System() {
    cpu.set_exception_intercepts(~0u);  // no IDT here: faults come back from run()
    cpu.state.mode.system = true;
    cpu.state.mode.code = CodeSize::Bits64;
    cpu.state.sys.cr0 = cr0::PE | cr0::ET;
  }
  uint64_t r64(uint64_t a) { return phys.read(a, 8); }
  uint32_t r32(uint64_t a) { return static_cast<uint32_t>(phys.read(a, 4)); }
  void w64(uint64_t a, uint64_t v) { phys.write(a, 8, v); }
  void w32(uint64_t a, uint32_t v) { phys.write(a, 4, v); }

  // 4-level paging: PML4 0x1000, PDPT 0x2000, PD 0x3000 with 2 MiB identity pages for the
  // first 16 MiB (user, writable), PD[8] -> PT 0x5000 for linear 16..18 MiB (filled by tests).
  void long_mode(uint64_t extra_efer = 0) {
    w64(0x1000, 0x2000 | pte::P | pte::RW | pte::US);
    w64(0x2000, 0x3000 | pte::P | pte::RW | pte::US);
    for (uint64_t i = 0; i < 8; ++i) w64(0x3000 + i * 8, (i << 21) | pte::P | pte::RW | pte::US | pte::PS);
    w64(0x3000 + 8 * 8, 0x5000 | pte::P | pte::RW | pte::US);
    cpu.state.sys.cr3 = 0x1000;
    cpu.state.sys.cr4 = cr4::PAE;
    cpu.state.sys.efer = efer::LME | efer::LMA | extra_efer;
    cpu.state.sys.cr0 |= cr0::PG;
    cpu.state.mode.code = CodeSize::Bits64;
    cpu.invalidate_tlb(true);
  }
  // PT entry for linear 16 MiB + index * 4 KiB.
  void map16(unsigned index, uint64_t entry) { w64(0x5000 + index * 8, entry); }

  void load(uint64_t address, const std::vector<uint8_t>& code) { phys.write_bytes(address, code); }
  RunResult run_at(uint64_t rip) {
    cpu.state.rip = rip;
    return cpu.run(100000);
  }
  uint64_t& reg(Reg r) { return cpu.state.regs[r]; }

  bool translate(uint64_t linear, Access access, Privilege privilege, Translation& t) {
    return mmu.translate(linear, access, privilege, cpu.state, t);
  }
  // #PF error code of a faulting translation, or -1 when it succeeds (-2: #GP).
  int error(uint64_t linear, Access access, Privilege privilege = Privilege::Supervisor) {
    Translation t;
    if (translate(linear, access, privilege, t)) return -1;
    return t.vector == Vector::PF ? static_cast<int>(t.error_code) : -2;
  }
};

void expect_breakpoint(const RunResult& r, const Cpu& cpu) {
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(cpu.state.exception.vector, Vector::BP);
}

// ---- Page walks -----------------------------------------------------------------

TEST(SoftMmu, PagingOffIsIdentity) {
  System s;
  Translation t;
  ASSERT_TRUE(s.translate(0x123456, Access::Write, Privilege::User, t));
  EXPECT_EQ(t.physical, 0x123456u);
  EXPECT_EQ(t.host, s.ram + 0x123000);
  ASSERT_TRUE(s.translate(0x4000000, Access::Read, Privilege::Supervisor, t));  // beyond RAM: no host memory
  EXPECT_EQ(t.host, nullptr);
}

TEST(SoftMmu, Paging32WithAccessedAndDirtyBits) {
  System s;
  s.w32(0x1000 + 1 * 4, 0x2000 | pte::P | pte::RW | pte::US);  // PDE for 4..8 MiB
  s.w32(0x2000 + 5 * 4, 0x800000 | pte::P | pte::RW | pte::US);
  s.cpu.state.sys.cr3 = 0x1000;
  s.cpu.state.sys.cr0 |= cr0::PG;
  s.cpu.state.mode.code = CodeSize::Bits32;
  Translation t;
  ASSERT_TRUE(s.translate(0x405123, Access::Read, Privilege::User, t));
  EXPECT_EQ(t.physical, 0x800123u);
  EXPECT_EQ(t.host, s.ram + 0x800000);
  EXPECT_EQ(t.page_size, kPageSize);
  EXPECT_EQ(s.r32(0x1004) & (pte::A | pte::D), pte::A);
  EXPECT_EQ(s.r32(0x2014) & (pte::A | pte::D), pte::A);
  ASSERT_TRUE(s.translate(0x405123, Access::Write, Privilege::User, t));
  EXPECT_EQ(s.r32(0x1004) & (pte::A | pte::D), pte::A);  // D only in the leaf
  EXPECT_EQ(s.r32(0x2014) & (pte::A | pte::D), pte::A | pte::D);
  // A faulting access sets no bits.
  s.w32(0x1000 + 2 * 4, 0x3000 | pte::P | pte::RW);
  s.w32(0x3000, 0x900000 | pte::P);
  EXPECT_EQ(s.error(0x800000, Access::Write, Privilege::User), int(pf::P | pf::W | pf::U));
  EXPECT_EQ(s.r32(0x1008) & pte::A, 0u);
  EXPECT_EQ(s.r32(0x3000) & pte::A, 0u);
}

TEST(SoftMmu, Paging32LargePagesWithPse) {
  System s;
  s.w32(0x1000 + 2 * 4, 0x00c00000 | pte::PS | pte::P | pte::RW);
  s.w32(0x1000 + 3 * 4, 0x00400000 | (5u << 13) | pte::PS | pte::P);          // PSE-36: bits 34:32 = 5
  s.w32(0x1000 + 4 * 4, 0x00400000 | (1u << 21) | pte::PS | pte::P);          // reserved bit 21
  s.cpu.state.sys.cr3 = 0x1000;
  s.cpu.state.sys.cr0 |= cr0::PG;
  s.cpu.state.sys.cr4 = cr4::PSE;
  Translation t;
  ASSERT_TRUE(s.translate(0x812345, Access::Write, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0xc12345u);
  EXPECT_EQ(t.page_size, uint64_t{4} << 20);
  EXPECT_EQ(t.host, s.ram + 0xc12000);
  EXPECT_EQ(s.r32(0x1008) & (pte::A | pte::D), pte::A | pte::D);
  ASSERT_TRUE(s.translate(0xc00010, Access::Read, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0x500400010u);
  EXPECT_EQ(t.host, nullptr);
  EXPECT_EQ(s.error(0x1000000, Access::Read), int(pf::P | pf::RSVD));
  // Without CR4.PSE the PS bit is ignored: the PDE points to a page table.
  s.cpu.state.sys.cr4 = 0;
  s.w32(0xc00000 + 0x12 * 4, 0x700000 | pte::P);
  ASSERT_TRUE(s.translate(0x812345, Access::Read, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0x700345u);
}

TEST(SoftMmu, PaePagingWith2MiBPagesAndNx) {
  System s;
  s.w64(0x1000, 0x2000 | pte::P);                                    // PDPTE 0
  s.w64(0x2000 + 1 * 8, 0x3000 | pte::P | pte::RW | pte::US);        // PD[1] -> PT
  s.w64(0x3000 + 3 * 8, 0x900000 | pte::P | pte::RW | pte::US);
  s.w64(0x3000 + 4 * 8, 0x901000 | pte::P | pte::RW | pte::US | pte::XD);
  s.w64(0x2000 + 2 * 8, 0x1000000 | pte::PS | pte::P | pte::RW | pte::G);  // 2 MiB page
  s.w64(0x2000 + 3 * 8, 0x1200000 | (1u << 13) | pte::PS | pte::P);       // reserved bit 13
  s.cpu.state.sys.cr3 = 0x1000;
  s.cpu.state.sys.cr0 |= cr0::PG;
  s.cpu.state.sys.cr4 = cr4::PAE | cr4::PGE;
  s.cpu.state.mode.code = CodeSize::Bits32;
  Translation t;
  ASSERT_TRUE(s.translate(0x203456, Access::Read, Privilege::User, t));
  EXPECT_EQ(t.physical, 0x900456u);
  EXPECT_FALSE(t.global);
  EXPECT_EQ(s.r64(0x2008) & pte::A, pte::A);
  EXPECT_EQ(s.r64(0x1000) & pte::A, 0u);  // PAE PDPTEs have no accessed bit
  ASSERT_TRUE(s.translate(0x401234, Access::Write, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0x1001234u);
  EXPECT_EQ(t.page_size, uint64_t{2} << 20);
  EXPECT_TRUE(t.global);
  EXPECT_EQ(s.r64(0x2010) & (pte::A | pte::D), pte::A | pte::D);
  EXPECT_EQ(s.error(0x600000, Access::Read), int(pf::P | pf::RSVD));
  // XD is reserved without EFER.NXE, a no-execute bit with it.
  EXPECT_EQ(s.error(0x204000, Access::Read), int(pf::P | pf::RSVD));
  s.cpu.state.sys.efer = efer::NXE;
  EXPECT_EQ(s.error(0x204000, Access::Read), -1);
  EXPECT_EQ(s.error(0x204000, Access::Execute), int(pf::P | pf::ID));
  EXPECT_EQ(s.error(0x204000, Access::Execute, Privilege::User), int(pf::P | pf::ID | pf::U));
  EXPECT_EQ(s.error(0x203000, Access::Execute), -1);
  // Bits 62:52 are reserved in PAE entries (ignored in 4-level ones, see below).
  s.w64(0x3000 + 5 * 8, 0x902000 | pte::P | (uint64_t{1} << 55));
  EXPECT_EQ(s.error(0x205000, Access::Read), int(pf::P | pf::RSVD));
  // Not-present PDPTE; reserved PDPTE bits.
  EXPECT_EQ(s.error(0x40000000, Access::Execute), int(pf::ID));
  s.w64(0x1008, 0x4000 | pte::P | pte::RW);
  EXPECT_EQ(s.error(0x40000000, Access::Read), int(pf::P | pf::RSVD));
}

TEST(SoftMmu, FourLevelPagingAllPageSizes) {
  System s;
  s.long_mode();
  s.map16(0x10, 0x700000 | pte::P | pte::RW | pte::US);
  s.w64(0x2000 + 1 * 8, 0x40000000 | pte::PS | pte::P | pte::RW);  // 1 GiB page at linear 1 GiB
  s.w64(0x1000 + 511 * 8, 0x6000 | pte::P | pte::RW);              // higher half
  s.w64(0x6000, 0x7000 | pte::P | pte::RW);
  s.w64(0x7000, 0x200000 | pte::PS | pte::P | pte::RW);
  Translation t;
  ASSERT_TRUE(s.translate(0x1010abc, Access::Write, Privilege::User, t));
  EXPECT_EQ(t.physical, 0x700abcu);
  for (uint64_t e : {0x1000, 0x2000, 0x3040}) EXPECT_EQ(s.r64(e) & pte::A, pte::A) << std::hex << e;
  EXPECT_EQ(s.r64(0x3040) & pte::D, 0u);
  EXPECT_EQ(s.r64(0x5080) & (pte::A | pte::D), pte::A | pte::D);
  ASSERT_TRUE(s.translate(0x200000 + 0x1111, Access::Read, Privilege::User, t));
  EXPECT_EQ(t.physical, 0x201111u);
  EXPECT_EQ(t.page_size, uint64_t{2} << 20);
  ASSERT_TRUE(s.translate(0x40123456, Access::Read, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0x40123456u);
  EXPECT_EQ(t.page_size, uint64_t{1} << 30);
  ASSERT_TRUE(s.translate(0xffffff8000012345, Access::Read, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0x212345u);
  // Non-canonical: #GP, no walk.
  EXPECT_EQ(s.error(0x0000800000000000, Access::Read), -2);
  // Reserved bits: PS in a PML4E, an address bit at MAXPHYADDR, 1 GiB frame bits 29:13.
  s.w64(0x1000 + 1 * 8, 0x2000 | pte::P | pte::PS);
  EXPECT_EQ(s.error(0x8000000000, Access::Read), int(pf::P | pf::RSVD));
  s.map16(0x11, (uint64_t{1} << kPhysicalAddressBits) | 0x1000 | pte::P | pte::RW | pte::US);
  EXPECT_EQ(s.error(0x1011000, Access::Write, Privilege::User), int(pf::P | pf::RSVD | pf::W | pf::U));
  s.w64(0x2000 + 2 * 8, 0x80000000 | (1u << 20) | pte::PS | pte::P);
  EXPECT_EQ(s.error(0x80000000, Access::Read), int(pf::P | pf::RSVD));
  s.map16(0x12, 0x702000 | pte::P | pte::RW | (uint64_t{1} << 55));  // software-available bit
  ASSERT_TRUE(s.translate(0x1012008, Access::Read, Privilege::Supervisor, t));
  EXPECT_EQ(t.physical, 0x702008u);
}

TEST(SoftMmu, ErrorCodesAndAccessRights) {
  System s;
  s.long_mode();
  s.map16(0, 0x800000 | pte::P | pte::RW);             // supervisor, writable
  s.map16(1, 0x801000 | pte::P | pte::US);             // user, read-only
  s.map16(2, 0x802000 | pte::P | pte::RW | pte::US);   // user, writable
  const uint64_t sup = 0x1000000, user_ro = 0x1001000, user_rw = 0x1002000, absent = 0x1003000;
  EXPECT_EQ(s.error(absent, Access::Read), 0);
  EXPECT_EQ(s.error(absent, Access::Write, Privilege::User), int(pf::W | pf::U));
  EXPECT_EQ(s.error(absent, Access::Execute), 0);  // no I/D without NXE or SMEP
  EXPECT_EQ(s.error(sup, Access::Read, Privilege::User), int(pf::P | pf::U));
  EXPECT_EQ(s.error(user_ro, Access::Write, Privilege::User), int(pf::P | pf::W | pf::U));
  // CR0.WP: supervisor writes to read-only pages.
  EXPECT_EQ(s.error(user_ro, Access::Write), -1);
  s.cpu.state.sys.cr0 |= cr0::WP;
  EXPECT_EQ(s.error(user_ro, Access::Write), int(pf::P | pf::W));
  // NXE: fetches report I/D.
  s.cpu.state.sys.efer |= efer::NXE;
  EXPECT_EQ(s.error(absent, Access::Execute), int(pf::ID));
  s.cpu.state.sys.efer &= ~efer::NXE;
  // SMEP: supervisor fetches from user pages.
  EXPECT_EQ(s.error(user_rw, Access::Execute), -1);
  s.cpu.state.sys.cr4 |= cr4::SMEP;
  EXPECT_EQ(s.error(user_rw, Access::Execute), int(pf::P | pf::ID));
  EXPECT_EQ(s.error(sup, Access::Execute), -1);
  EXPECT_EQ(s.error(user_rw, Access::Execute, Privilege::User), -1);
  EXPECT_EQ(s.error(absent, Access::Execute), int(pf::ID));
  // SMAP: supervisor data accesses to user pages unless RFLAGS.AC; implicit ones always.
  s.cpu.state.sys.cr4 |= cr4::SMAP;
  EXPECT_EQ(s.error(user_rw, Access::Read), int(pf::P));
  EXPECT_EQ(s.error(user_rw, Access::Write), int(pf::P | pf::W));
  EXPECT_EQ(s.error(user_rw, Access::Read, Privilege::User), -1);
  s.cpu.state.rflags_other |= rflags::AC;
  Translation t;
  ASSERT_TRUE(s.translate(user_rw, Access::Write, Privilege::Supervisor, t));
  EXPECT_FALSE(t.cacheable);  // depends on AC
  EXPECT_EQ(s.error(user_rw, Access::Read, Privilege::Implicit), int(pf::P));
  EXPECT_EQ(s.error(sup, Access::Read, Privilege::Implicit), -1);
}

// ---- CPU: faults, TLB ---------------------------------------------------------------

TEST(SoftMmuCpu, PageFaultSetsErrorCodeAndCr2) {
  System s;
  s.long_mode();
  s.load(kCode, {0x89, 0x1c, 0x25, 0x10, 0x00, 0x00, 0x01, 0xcc});  // mov [0x1000010], ebx; int3
  RunResult r = s.run_at(kCode);
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(s.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::W);
  EXPECT_EQ(s.cpu.state.sys.cr2, 0x1000010u);
  EXPECT_EQ(s.cpu.state.rip, kCode);
  // Present but read-only with CR0.WP: P|W; mapping it writable lets the store through and sets D.
  s.map16(0, 0x800000 | pte::P);
  s.cpu.state.sys.cr0 |= cr0::WP;
  s.cpu.invalidate_tlb_page(0x1000000);
  s.run_at(kCode);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::P | pf::W);
  s.map16(0, 0x800000 | pte::P | pte::RW);
  s.cpu.invalidate_tlb_page(0x1000000);
  s.reg(RBX) = 0xfeedf00d;
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.r32(0x800010), 0xfeedf00du);
  EXPECT_EQ(s.r64(0x5000) & (pte::A | pte::D), pte::A | pte::D);
}

TEST(SoftMmuCpu, UserAccessToSupervisorPageFaultsAfterPrivilegeChanges) {
  System s;
  s.long_mode();
  s.map16(0, 0x800000 | pte::P | pte::RW);  // supervisor only
  s.w32(0x800000, 0x1234);
  const std::vector<uint8_t> load = {0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x01, 0xcc};  // mov eax, [0x1000000]; int3
  s.load(kCode, load);
  expect_breakpoint(s.run_at(kCode), s.cpu);  // CPL 0 fills the TLB
  EXPECT_EQ(s.reg(RAX), 0x1234u);
  s.cpu.state.sys.cpl = 3;
  RunResult r = s.run_at(kCode);
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(s.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::P | pf::U);
  s.cpu.state.sys.cpl = 0;
  s.reg(RAX) = 0;
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x1234u);
  // Implicit supervisor accesses work at CPL 3.
  s.cpu.state.sys.cpl = 3;
  uint64_t v = 0;
  EXPECT_TRUE(s.cpu.read_implicit(0x1000000, 4, v));
  EXPECT_EQ(v, 0x1234u);
  EXPECT_FALSE(s.cpu.write_implicit(0x1000ffe, 4, 0xa1b2c3d4));  // crosses into the (absent) next page
  EXPECT_EQ(s.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(s.cpu.state.exception.fault_address, 0x1001000u);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::W);  // implicit accesses are supervisor accesses
  EXPECT_EQ(s.r32(0x800ffc), 0u);                      // nothing written
  EXPECT_TRUE(s.cpu.write_implicit(0x1000ffc, 4, 0xa1b2c3d4));
  EXPECT_EQ(s.r32(0x800ffc), 0xa1b2c3d4u);
  uint64_t physical = 0;
  EXPECT_FALSE(s.cpu.translate_linear(0x1000123, Access::Read, physical));  // CPL 3
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::P | pf::U);
  s.cpu.state.sys.cpl = 0;
  EXPECT_TRUE(s.cpu.translate_linear(0x1000123, Access::Read, physical));
  EXPECT_EQ(physical, 0x800123u);
  s.cpu.state.sys.cpl = 3;
  s.cpu.state.sys.cpl = 0;
  EXPECT_TRUE(s.cpu.read<4>(0x1000000, v));
  s.cpu.state.sys.cpl = 3;
  s.cpu.privilege_changed();  // as exception delivery / far transfers do before further accesses
  EXPECT_FALSE(s.cpu.read<4>(0x1000000, v));
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::P | pf::U);
}

TEST(SoftMmuCpu, InvlpgDropsStaleTranslation) {
  System s;
  s.long_mode();
  s.map16(0, 0x800000 | pte::P | pte::RW);
  s.map16(1, 0x801000 | pte::P | pte::RW);
  s.w32(0x800000, 0x11111111);
  s.w32(0x801000, 0x22222222);
  s.w32(0x802000, 0x33333333);
  // mov eax, [0x1000000]; mov ebx, [0x1001000]; int3
  s.load(kCode, {0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x01, 0x8b, 0x1c, 0x25, 0x00, 0x10, 0x00, 0x01, 0xcc});
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11111111u);
  s.map16(0, 0x802000 | pte::P | pte::RW);
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11111111u);  // the TLB still holds the old translation, as on hardware
  s.cpu.invalidate_tlb_page(0x1000abc);
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x33333333u);
  EXPECT_EQ(s.reg(RBX), 0x22222222u);
}

// Blocks are chained (a block remembers its successor); INVLPG must break the
// chain, or the loop's second call would still run the old page's code.
TEST(SoftMmuCpu, ChainedSuccessorFollowsRemappedCode) {
  System s;
  s.long_mode();
  s.map16(0, 0x800000 | pte::P | pte::RW);
  s.load(0x800000, {0xba, 0x01, 0x00, 0x00, 0x00, 0xc3});  // mov edx, 1 ; ret
  s.load(0x801000, {0xba, 0x10, 0x00, 0x00, 0x00, 0xc3});  // mov edx, 0x10 ; ret
  // mov ecx, 3 ; xor ebx, ebx
  // loop: mov eax, 0x1000000 ; call rax ; add ebx, edx
  //       xor qword [0x5000], 0x1000 (the page flips between the two) ; invlpg [0x1000000] ; dec ecx ; jnz loop ; int3
  // The loop block links to its successor on the second pass; the third must not follow that link.
  s.load(kCode, {0xb9, 0x03, 0x00, 0x00, 0x00, 0x31, 0xdb,
                 0xb8, 0x00, 0x00, 0x00, 0x01, 0xff, 0xd0, 0x01, 0xd3,
                 0x48, 0x81, 0x34, 0x25, 0x00, 0x50, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,
                 0x0f, 0x01, 0x3c, 0x25, 0x00, 0x00, 0x00, 0x01, 0xff, 0xc9, 0x75, 0xdf, 0xcc});
  s.reg(RSP) = 0x700000;
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RBX), 0x12u);  // 1 + 0x10 + 1
}

TEST(SoftMmuCpu, InvlpgDropsWholeLargePage) {
  System s;
  s.long_mode();
  s.w32(0x600000, 0xaaaa);
  s.w32(0x601000, 0xbbbb);
  s.w32(0xa00000, 0xcccc);
  s.w32(0xa01000, 0xdddd);
  // mov eax, [0x600000]; mov ebx, [0x601000]; int3 (linear 6 MiB is PD[3], a 2 MiB page)
  s.load(kCode, {0x8b, 0x04, 0x25, 0x00, 0x00, 0x60, 0x00, 0x8b, 0x1c, 0x25, 0x00, 0x10, 0x60, 0x00, 0xcc});
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0xaaaau);
  EXPECT_EQ(s.reg(RBX), 0xbbbbu);
  s.w64(0x3000 + 3 * 8, 0xa00000 | pte::P | pte::RW | pte::US | pte::PS);
  s.cpu.invalidate_tlb_page(0x6ff000);  // any address of the large page
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0xccccu);
  EXPECT_EQ(s.reg(RBX), 0xddddu);
}

TEST(SoftMmuCpu, Cr3ReloadKeepsGlobalPages) {
  System s;
  s.long_mode();
  s.cpu.state.sys.cr4 |= cr4::PGE;
  s.map16(0, 0x800000 | pte::P | pte::RW | pte::G);
  s.map16(1, 0x801000 | pte::P | pte::RW);
  s.w32(0x800000, 1);
  s.w32(0x801000, 2);
  s.w32(0x802000, 3);
  s.w32(0x803000, 4);
  s.load(kCode, {0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x01, 0x8b, 0x1c, 0x25, 0x00, 0x10, 0x00, 0x01, 0xcc});
  expect_breakpoint(s.run_at(kCode), s.cpu);
  s.map16(0, 0x802000 | pte::P | pte::RW | pte::G);
  s.map16(1, 0x803000 | pte::P | pte::RW);
  s.cpu.invalidate_tlb(false);  // MOV CR3
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 1u);  // global: kept
  EXPECT_EQ(s.reg(RBX), 4u);
  s.cpu.invalidate_tlb(true);  // e.g. toggling CR4.PGE
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 3u);
  // Without CR4.PGE a CR3 reload drops everything.
  s.map16(0, 0x800000 | pte::P | pte::RW | pte::G);
  s.cpu.state.sys.cr4 &= ~cr4::PGE;
  s.cpu.invalidate_tlb(false);
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 1u);
}

// ---- MMIO, ROM ------------------------------------------------------------------------

struct RecordingDevice final : MmioHandler {
  struct Access {
    bool write;
    uint64_t offset;
    unsigned size;
    uint64_t value;
  };
  std::vector<Access> log;
  uint64_t mmio_read(uint64_t offset, unsigned size) override {
    log.push_back({false, offset, size, 0});
    return 0xa0 + offset;  // one distinct byte per offset
  }
  void mmio_write(uint64_t offset, unsigned size, uint64_t value) override { log.push_back({true, offset, size, value}); }
};

TEST(SoftMmuCpu, MmioGoesToTheHandlerEveryTime) {
  System s;
  RecordingDevice device;
  s.phys.add_mmio(0x4000000, kPageSize, device);
  s.long_mode();
  s.map16(1, 0x801000 | pte::P | pte::RW);
  s.map16(2, 0x4000000 | pte::P | pte::RW);
  s.w32(0x801ffc, 0x11223344);
  // mov eax, [0x1002010]; mov dword [0x1002020], 0x5a5a; mov ecx, [0x1001ffe]; int3
  s.load(kCode, {0x8b, 0x04, 0x25, 0x10, 0x20, 0x00, 0x01, 0xc7, 0x04, 0x25, 0x20, 0x20, 0x00,
                 0x01, 0x5a, 0x5a, 0x00, 0x00, 0x8b, 0x0c, 0x25, 0xfe, 0x1f, 0x00, 0x01, 0xcc});
  for (int round = 0; round < 2; ++round) {
    device.log.clear();
    expect_breakpoint(s.run_at(kCode), s.cpu);
    ASSERT_EQ(device.log.size(), 3u) << "round " << round;
    EXPECT_FALSE(device.log[0].write);
    EXPECT_EQ(device.log[0].offset, 0x10u);
    EXPECT_EQ(device.log[0].size, 4u);
    EXPECT_EQ(s.reg(RAX), 0xb0u);
    EXPECT_TRUE(device.log[1].write);
    EXPECT_EQ(device.log[1].offset, 0x20u);
    EXPECT_EQ(device.log[1].size, 4u);
    EXPECT_EQ(device.log[1].value, 0x5a5au);
    // Crossing RAM -> MMIO: two RAM bytes, then a 2-byte device read at offset 0.
    EXPECT_FALSE(device.log[2].write);
    EXPECT_EQ(device.log[2].offset, 0u);
    EXPECT_EQ(device.log[2].size, 2u);
    EXPECT_EQ(s.reg(RCX), 0x00a01122u);
  }
  // A store crossing MMIO -> a missing page faults before the device sees anything.
  device.log.clear();
  s.load(kCode, {0x89, 0x04, 0x25, 0xfe, 0x2f, 0x00, 0x01, 0xcc});  // mov [0x1002ffe], eax
  RunResult r = s.run_at(kCode);
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(s.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(s.cpu.state.sys.cr2, 0x1003000u);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::W);
  EXPECT_TRUE(device.log.empty());
}

TEST(SoftMmuCpu, RomIsReadOnly) {
  System s;
  const std::vector<uint8_t> contents = {0x78, 0x56, 0x34, 0x12};
  s.phys.add_rom(0x5000000, kPageSize, contents);
  s.long_mode();
  s.map16(0, 0x5000000 | pte::P | pte::RW);
  // mov [0x1000000], ebx; mov eax, [0x1000000]; int3
  s.load(kCode, {0x89, 0x1c, 0x25, 0x00, 0x00, 0x00, 0x01, 0x8b, 0x04, 0x25, 0x00, 0x00, 0x00, 0x01, 0xcc});
  s.reg(RBX) = 0xdeadbeef;
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x12345678u);
}

// ---- Code fetch ---------------------------------------------------------------------

TEST(SoftMmuCpu, FetchFaultsReportInstructionFetch) {
  System s;
  s.long_mode(efer::NXE);
  s.map16(0, 0x800000 | pte::P | pte::RW | pte::XD);
  s.map16(1, 0x801000 | pte::P | pte::RW);
  s.load(0x800000, {0xcc});
  RunResult r = s.run_at(0x1000000);
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(s.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::P | pf::ID);
  EXPECT_EQ(s.cpu.state.sys.cr2, 0x1000000u);
  // An instruction running into a missing page: the earlier ones complete.
  s.load(0x801ffd, {0x90, 0x90, 0xb8});  // nop; nop; mov eax, imm32 (imm on the next page)
  r = s.run_at(0x1001ffd);
  ASSERT_EQ(r.reason, StopReason::Exception);
  EXPECT_EQ(r.insns, 2u);
  EXPECT_EQ(s.cpu.state.exception.vector, Vector::PF);
  EXPECT_EQ(s.cpu.state.exception.error_code, pf::ID);
  EXPECT_EQ(s.cpu.state.sys.cr2, 0x1002000u);
  EXPECT_EQ(s.cpu.state.rip, 0x1001fffu);
  // Mapping the next page: the instruction spans both and runs.
  s.map16(2, 0x900000 | pte::P | pte::RW);
  s.load(0x900000, {0x44, 0x33, 0x22, 0x11, 0xcc});
  expect_breakpoint(s.run_at(0x1001ffd), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11223344u);
  // Remapping the second page to other code is seen: blocks check every page they span.
  s.load(0x902000, {0x88, 0x77, 0x66, 0x55, 0xcc});
  s.map16(2, 0x902000 | pte::P | pte::RW);
  s.cpu.invalidate_tlb_page(0x1002000);
  expect_breakpoint(s.run_at(0x1001ffd), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x55667788u);
}

TEST(SoftMmuCpu, CodeFetchAddsCsBase) {
  System s;
  s.cpu.state.mode.code = CodeSize::Bits32;
  s.cpu.state.mode.flat = false;
  s.load(0x20010, {0xb8, 0x07, 0x00, 0x00, 0x00, 0xcc});  // mov eax, 7; int3
  s.cpu.state.seg_base[CS] = 0x20000;
  expect_breakpoint(s.run_at(0x10), s.cpu);
  EXPECT_EQ(s.reg(RAX), 7u);
  EXPECT_EQ(s.cpu.state.rip, 0x16u);  // after the INT3 trap
  // The same physical code through another CS base / RIP pair.
  s.cpu.state.seg_base[CS] = 0x20008;
  s.reg(RAX) = 0;
  expect_breakpoint(s.run_at(0x8), s.cpu);
  EXPECT_EQ(s.reg(RAX), 7u);
  EXPECT_EQ(s.cpu.state.rip, 0xeu);
  EXPECT_EQ(s.cpu.tb_cache().size(), 2u);
}

TEST(SoftMmuCpu, BlockAcrossLinearPagesWithUnalignedCsBase) {
  System s;
  s.cpu.state.mode.code = CodeSize::Bits16;
  s.cpu.state.mode.flat = false;
  s.cpu.state.seg_base[CS] = 0x20ff8;  // real-mode style base, not page aligned
  // nop x6; mov eax, imm32 (66 b8, crossing into the next page); int3 -- one block
  s.load(0x20ff8, {0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x66, 0xb8, 0x44, 0x33, 0x22, 0x11, 0xcc});
  expect_breakpoint(s.run_at(0), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11223344u);
  EXPECT_EQ(s.cpu.stats().translations, 1u);
  // Rewriting a byte on the second page invalidates the block.
  s.load(0x21001, {0x99});
  expect_breakpoint(s.run_at(0), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11229944u);
  EXPECT_EQ(s.cpu.stats().translations, 2u);
}

TEST(SoftMmuCpu, BlockWhoseTwoLinearPagesAliasOnePhysicalPage) {
  System s;
  s.long_mode();
  s.map16(0, 0x800000 | pte::P | pte::RW);
  s.map16(1, 0x800000 | pte::P | pte::RW);  // the next linear page is the same physical page
  // nop x4; mov eax, imm32 with the opcode at 0x800fff and the imm32 at 0x800000 (through the alias); int3
  s.load(0x800ffb, {0x90, 0x90, 0x90, 0x90, 0xb8});
  s.load(0x800000, {0x44, 0x33, 0x22, 0x11, 0xcc});
  expect_breakpoint(s.run_at(0x1000ffb), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11223344u);
  s.load(0x800001, {0x99});  // invalidates the block once, although it is listed on that page twice
  EXPECT_LT(s.cpu.tb_cache().host_bytes(), size_t{1} << 20);  // no double accounting
  expect_breakpoint(s.run_at(0x1000ffb), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11229944u);
  EXPECT_EQ(s.cpu.stats().tb_invalidations, 1u);
  EXPECT_LT(s.cpu.tb_cache().host_bytes(), size_t{1} << 20);  // accounting stayed sane
}

// ---- Self-modifying code, TB cache -------------------------------------------------------

TEST(SoftMmuCpu, UserModeSelfModifyingCode) {
  FlatMemory memory;
  memory.map(kCode, kPageSize, kPermRead | kPermWrite | kPermExec);
  memory.write_bytes(kCode, std::vector<uint8_t>{0xc6, 0x05, 0x01, 0x00, 0x00, 0x00, 0x42, 0xb8, 0x11, 0x11, 0x11, 0x11, 0xcc});
  Cpu cpu(memory);
  cpu.state.rip = kCode;
  expect_breakpoint(cpu.run(1000), cpu);
  EXPECT_EQ(cpu.state.regs[RAX], 0x11111142u);
}

TEST(SoftMmuCpu, StoreIntoTheRunningBlockTakesEffect) {
  System s;
  // mov byte [rel target+1], 0x42; target: mov eax, 0x11111111; int3
  s.load(kCode, {0xc6, 0x05, 0x01, 0x00, 0x00, 0x00, 0x42, 0xb8, 0x11, 0x11, 0x11, 0x11, 0xcc});
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11111142u);
  EXPECT_EQ(s.cpu.stats().smc_restarts, 1u);
  // Run again: the patched code is translated afresh and the store no longer changes anything.
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 0x11111142u);
}

TEST(SoftMmuCpu, StoreIntoAnotherBlockInvalidatesIt) {
  System s;
  s.long_mode();
  s.reg(RSP) = 0x80000;
  // call f; mov ebx, eax; mov byte [rel f+1], 2; call f; int3; f: mov eax, 1; ret
  s.load(kCode, {0xe8, 0x0f, 0x00, 0x00, 0x00, 0x89, 0xc3, 0xc6, 0x05, 0x07, 0x00, 0x00, 0x00,
                 0x02, 0xe8, 0x01, 0x00, 0x00, 0x00, 0xcc, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xc3});
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RBX), 1u);
  EXPECT_EQ(s.reg(RAX), 2u);
  EXPECT_GE(s.cpu.stats().tb_invalidations, 1u);
  EXPECT_EQ(s.cpu.stats().smc_restarts, 0u);  // the storing block does not contain f
}

TEST(SoftMmuCpu, PageGainingCodeLosesItsFastWriteEntry) {
  System s;
  s.load(kCode, {0xc7, 0x04, 0x25, 0x00, 0x10, 0x01, 0x00, 0x90, 0x90, 0x90, 0x90, 0xcc});  // mov dword [0x11000], ..; int3
  s.load(kCode + 0x20, {0xc6, 0x04, 0x25, 0x01, 0x10, 0x01, 0x00, 0x02, 0xcc});           // mov byte [0x11001], 2; int3
  expect_breakpoint(s.run_at(kCode), s.cpu);  // a fast write entry for page 0x11000
  s.load(0x11000, {0xb8, 0x01, 0x00, 0x00, 0x00, 0xcc});  // mov eax, 1; int3
  expect_breakpoint(s.run_at(0x11000), s.cpu);  // the page now holds code
  EXPECT_EQ(s.reg(RAX), 1u);
  expect_breakpoint(s.run_at(kCode + 0x20), s.cpu);  // must not take the fast path
  expect_breakpoint(s.run_at(0x11000), s.cpu);
  EXPECT_EQ(s.reg(RAX), 2u);
}

TEST(SoftMmuCpu, DataNextToCodeStaysCheap) {
  System s;
  // mov ecx, 50; l: mov [rel data], ecx; dec ecx; jnz l; int3 ... data at kCode + 0x40
  s.load(kCode, {0xb9, 0x32, 0x00, 0x00, 0x00, 0x89, 0x0d, 0x35, 0x00, 0x00, 0x00, 0xff, 0xc9, 0x75, 0xf6, 0xcc});
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.r32(kCode + 0x40), 1u);
  EXPECT_EQ(s.cpu.stats().tb_invalidations, 0u);
  EXPECT_EQ(s.cpu.stats().smc_restarts, 0u);
  EXPECT_LE(s.cpu.stats().translations, 3u);
}

TEST(SoftMmuCpu, PhysicalWritesInvalidateCode) {
  System s;
  s.load(kCode, {0xb8, 0x01, 0x00, 0x00, 0x00, 0xcc});  // mov eax, 1; int3
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 1u);
  s.load(kCode + 1, {0x02});  // a loader / DMA through PhysicalMemory
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 2u);
  s.ram[kCode + 1] = 3;  // a device writing through its host pointer reports the range
  s.phys.notify_written(kCode + 1, 1);
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 3u);
  EXPECT_EQ(s.cpu.stats().tb_invalidations, 2u);
}

TEST(SoftMmuCpu, ReplacedCpuKeepsTheWriteObserverOfItsSuccessor) {
  PhysicalMemory phys;
  phys.add_ram(0, 1 << 20);
  SoftMmu mmu(phys);
  auto first = std::make_unique<Cpu>(mmu);
  auto second = std::make_unique<Cpu>(mmu);
  first.reset();  // e.g. a machine reset creating the new CPU before dropping the old one
  second->state.mode.system = true;
  second->set_exception_intercepts(~0u);
  phys.write_bytes(kCode, std::vector<uint8_t>{0xb8, 0x01, 0x00, 0x00, 0x00, 0xcc});
  second->state.rip = kCode;
  expect_breakpoint(second->run(100), *second);
  phys.write_bytes(kCode + 1, std::vector<uint8_t>{0x02});
  second->state.rip = kCode;
  expect_breakpoint(second->run(100), *second);
  EXPECT_EQ(second->state.regs[RAX], 2u);
}

TEST(SoftMmuCpu, FullTbCacheIsFlushed) {
  // mov ecx, 100; l: add eax, 1; jmp n; n: dec ecx; jnz l; int3  (three blocks per iteration)
  const std::vector<uint8_t> loop = {0xb9, 0x64, 0x00, 0x00, 0x00, 0x83, 0xc0, 0x01,
                                     0xeb, 0x00, 0xff, 0xc9, 0x75, 0xf7, 0xcc};
  System s;
  s.load(kCode, loop);
  expect_breakpoint(s.run_at(kCode), s.cpu);
  EXPECT_EQ(s.reg(RAX), 100u);
  EXPECT_EQ(s.cpu.stats().tb_cache_flushes, 0u);
  EXPECT_EQ(s.cpu.tb_cache_limit(), size_t{32} << 20);

  System small;
  small.load(kCode, loop);
  small.cpu.set_tb_cache_limit(1);  // every new block overflows the cache
  expect_breakpoint(small.run_at(kCode), small.cpu);
  EXPECT_EQ(small.reg(RAX), 100u);
  EXPECT_GT(small.cpu.stats().tb_cache_flushes, 100u);
  EXPECT_EQ(small.cpu.tb_cache().size(), 1u);
  EXPECT_GT(small.cpu.tb_cache().host_bytes(), 0u);
}

}  // namespace
}  // namespace kiln::emu
