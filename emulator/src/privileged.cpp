// System-mode privileged instructions, MSRs and the system CPUID model (see privileged.h).
// Architecture facts from the Intel SDM vol. 2/3 and the AMD APM vol. 2/3.
#include "kiln/emulator/privileged.h"
#include "kiln/emulator/system.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/fp_eval.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu {

namespace {

constexpr uint64_t kVm = 1u << 17;  // RFLAGS.VM
constexpr uint64_t kIopl = 3u << 12;
constexpr uint64_t kNt = 1u << 14;
constexpr uint64_t kRf = 1u << 16;

// Segment attribute bits (descriptor bits 52..55 in attrs bits 12..15).
constexpr uint16_t kAttrL = 1u << 13, kAttrDb = 1u << 14, kAttrG = 1u << 15;
// The fixed caches SYSCALL/SYSRET/SYSENTER/SYSEXIT load: flat 4 GiB, accessed.
constexpr uint16_t kCode64Dpl0 = 0x9b | kAttrL | kAttrG, kCode32Dpl0 = 0x9b | kAttrDb | kAttrG;
constexpr uint16_t kData32Dpl0 = 0x93 | kAttrDb | kAttrG;
constexpr uint16_t kCode64Dpl3 = 0xfb | kAttrL | kAttrG, kCode32Dpl3 = 0xfb | kAttrDb | kAttrG;
constexpr uint16_t kData32Dpl3 = 0xf3 | kAttrDb | kAttrG;

constexpr uint64_t kPhysicalMask = (uint64_t{1} << kPhysicalAddressBits) - 1;

// CR0 bits that exist (others read as 0; writes to bits 31..0 outside this set are ignored).
constexpr uint64_t kCr0Bits = cr0::PE | cr0::MP | cr0::EM | cr0::TS | cr0::ET | cr0::NE | cr0::WP | cr0::AM |
                              cr0::NW | cr0::CD | cr0::PG;
// CR4 bits the model supports (everything else is reserved: #GP). No VME/PVI (no virtual-8086
// extensions), MCE (no machine check architecture), PCIDE, FSGSBASE, OSXSAVE.
constexpr uint64_t kCr4Bits = cr4::TSD | cr4::DE | cr4::PSE | cr4::PAE | cr4::PGE | cr4::PCE | cr4::OSFXSR |
                              cr4::OSXMMEXCPT | cr4::UMIP | cr4::SMEP | cr4::SMAP;
// Changing these flushes global TLB entries too (SDM vol. 3 4.10.4.1).
constexpr uint64_t kCr4TlbBits = cr4::PGE | cr4::PAE | cr4::PSE | cr4::SMEP | cr4::SMAP;

constexpr uint64_t kMiscFastStrings = 1u << 0, kMiscLimitCpuid = 1u << 22, kMiscXdDisable = uint64_t{1} << 34;
// Read-only MISC_ENABLE bits: branch trace storage and PEBS unavailable.
constexpr uint64_t kMiscReadOnly = (1u << 11) | (1u << 12);

namespace msr {
constexpr uint32_t kTsc = 0x10, kPlatformId = 0x17, kApicBase = 0x1b, kUcodeRev = 0x8b, kMtrrCap = 0xfe,
                   kSysenterCs = 0x174, kSysenterEsp = 0x175, kSysenterEip = 0x176, kMiscEnable = 0x1a0,
                   kMtrrPhysBase0 = 0x200, kMtrrFix64k = 0x250, kMtrrFix16k80000 = 0x258, kMtrrFix16kA0000 = 0x259,
                   kMtrrFix4kC0000 = 0x268, kArchCapabilities = 0x10a, kPat = 0x277, kMtrrDefType = 0x2ff,
                   kEfer = 0xc0000080,
                   kStar = 0xc0000081, kLstar = 0xc0000082, kCstar = 0xc0000083, kSfmask = 0xc0000084,
                   kFsBase = 0xc0000100, kGsBase = 0xc0000101, kKernelGsBase = 0xc0000102, kTscAux = 0xc0000103;
}

// IA32_ARCH_CAPABILITIES (read-only): the interpreter does not speculate, so the CPU is not
// affected by the transient-execution issues these bits rule out (Linux then skips page
// table isolation and buffer clearing): RDCL_NO, SKIP_L1DFL_VMENTRY, SSB_NO, MDS_NO,
// PSCHANGE_MC_NO, TAA_NO, SBDR_SSDP_NO, FBSDP_NO, PSDP_NO, BHI_NO, PBRSB_NO, GDS_NO, RFDS_NO.
constexpr uint64_t kArchCapabilitiesValue = (1u << 0) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) |
                                            (1u << 13) | (1u << 14) | (1u << 15) | (1u << 20) | (1u << 24) |
                                            (1u << 26) | (1u << 27);

bool fault(CpuState& s, Vector v, uint32_t error = 0) {
  s.exception = PendingException{.raised = true, .vector = v, .error_code = error};
  return false;
}
bool gp(CpuState& s, uint32_t error = 0) { return fault(s, Vector::GP, error); }

bool protected_mode(const CpuState& s) { return s.sys.cr0 & cr0::PE; }
bool vm86(const CpuState& s) { return protected_mode(s) && (s.rflags_other & kVm); }
bool long_mode(const CpuState& s) { return s.sys.efer & efer::LMA; }
bool in_64bit_code(const CpuState& s) { return long_mode(s) && (s.seg_attrs[CS] & kAttrL); }
unsigned iopl(const CpuState& s) { return static_cast<unsigned>((s.rflags_other >> 12) & 3); }
// The privilege level instructions check: real mode runs at 0, virtual-8086 mode at 3.
unsigned cpl(const CpuState& s) { return !protected_mode(s) ? 0 : vm86(s) ? 3 : s.sys.cpl; }
bool require_cpl0(CpuState& s) { return cpl(s) == 0 || gp(s); }
// UMIP: SGDT/SIDT/SLDT/SMSW/STR outside CPL 0 raise #GP(0).
bool umip_allows(CpuState& s) { return !(s.sys.cr4 & cr4::UMIP) || cpl(s) == 0 || gp(s); }

void load_flat_segment(CpuState& s, Seg seg, uint16_t selector, uint16_t attrs) {
  s.seg_selector[seg] = selector;
  s.seg_base[seg] = 0;
  s.seg_limit[seg] = 0xffffffff;
  s.seg_attrs[seg] = attrs;
}

// Valid memory types in PAT entries and MTRRs: UC WC WT WP WB (PAT also UC-).
bool valid_memory_type(uint64_t type, bool pat) {
  return type == 0 || type == 1 || type == 4 || type == 5 || type == 6 || (pat && type == 7);
}
bool valid_type_bytes(uint64_t value, bool pat) {
  for (int i = 0; i < 8; ++i)
    if (!valid_memory_type((value >> (8 * i)) & 0xff, pat)) return false;
  return true;
}

// ---- control registers ----

bool pae_paging(uint64_t cr0_value, uint64_t cr4_value, uint64_t efer_value) {
  return (cr0_value & cr0::PG) && (cr4_value & cr4::PAE) && !(efer_value & efer::LMA);
}

// PAE paging (outside long mode) loads the four PDPTEs from CR3 on MOV CR3 and when
// paging, PAE or the CR4 bits that affect translation change; a present PDPTE with a
// reserved bit set makes the MOV #GP(0) (nothing changes). Cpu::memory() addresses
// guest-physical memory here. Missing memory reads as all ones, as on a bus without a device.
bool pae_pdptes_valid(Cpu& cpu, uint64_t cr3) {
  const uint64_t base = cr3 & 0xffffffe0u;
  const uint8_t* page = cpu.memory().page_pointer(base, Access::Read);
  if (!page) return false;
  for (unsigned i = 0; i < 4; ++i) {
    uint64_t entry = 0;
    std::memcpy(&entry, page + (base & ~kPageMask) + 8 * i, 8);
    if ((entry & 1) && (entry & (0x1e6 | ~kPhysicalMask))) return false;  // bits 1-2, 5-8, above MAXPHYADDR
  }
  return true;
}

bool write_cr0(Cpu& cpu, uint64_t value) {
  CpuState& s = cpu.state;
  if (value >> 32) return gp(s);
  value = (value & kCr0Bits) | cr0::ET;  // ET is hard-wired to 1
  if ((value & cr0::PG) && !(value & cr0::PE)) return gp(s);
  if ((value & cr0::NW) && !(value & cr0::CD)) return gp(s);
  const uint64_t old = s.sys.cr0;
  const bool enabling_paging = (value & cr0::PG) && !(old & cr0::PG);
  const bool disabling_paging = !(value & cr0::PG) && (old & cr0::PG);
  // Long mode activation needs PAE, and cannot start from code that already claims CS.L.
  if (enabling_paging && (s.sys.efer & efer::LME) && (!(s.sys.cr4 & cr4::PAE) || (s.seg_attrs[CS] & kAttrL)))
    return gp(s);
  if (disabling_paging && long_mode(s) && in_64bit_code(s)) return gp(s);  // leave from compatibility mode only
  const bool lma = enabling_paging ? (s.sys.efer & efer::LME) != 0 : disabling_paging ? false : long_mode(s);
  if (pae_paging(value, s.sys.cr4, lma ? efer::LMA : 0) && ((old ^ value) & (cr0::PG | cr0::CD | cr0::NW)) &&
      !pae_pdptes_valid(cpu, s.sys.cr3))
    return gp(s);
  s.sys.efer = lma ? s.sys.efer | efer::LMA : s.sys.efer & ~efer::LMA;
  s.sys.cr0 = value;
  if ((old ^ value) & (cr0::PG | cr0::PE | cr0::WP | cr0::CD)) cpu.invalidate_tlb(true);
  refresh_fpu_mode(s);
  return true;
}

bool write_cr4(Cpu& cpu, uint64_t value) {
  CpuState& s = cpu.state;
  if (value & ~kCr4Bits) return gp(s);
  if (long_mode(s) && !(value & cr4::PAE)) return gp(s);
  const uint64_t old = s.sys.cr4;
  if (pae_paging(s.sys.cr0, value, s.sys.efer) && ((old ^ value) & (cr4::PAE | cr4::PGE | cr4::PSE | cr4::SMEP)) &&
      !pae_pdptes_valid(cpu, s.sys.cr3))
    return gp(s);
  s.sys.cr4 = value;
  if ((old ^ value) & kCr4TlbBits) cpu.invalidate_tlb(true);
  refresh_fpu_mode(s);
  return true;
}

bool write_cr(Cpu& cpu, unsigned n, uint64_t value) {
  CpuState& s = cpu.state;
  if (!require_cpl0(s)) return false;
  switch (n) {
    case 0: return write_cr0(cpu, value);
    case 2: s.sys.cr2 = value; return true;
    case 3:
      // Bits above MAXPHYADDR are reserved in long mode (no PCIDs: bit 63 too); legacy CR3 is 32 bits.
      if (long_mode(s) && (value & ~kPhysicalMask)) return gp(s);
      if (pae_paging(s.sys.cr0, s.sys.cr4, s.sys.efer) && !pae_pdptes_valid(cpu, value)) return gp(s);
      s.sys.cr3 = long_mode(s) ? value : value & 0xffffffffu;
      cpu.invalidate_tlb(false);
      return true;
    case 4: return write_cr4(cpu, value);
    case 8:
      if (value & ~uint64_t{0xf}) return gp(s);
      s.sys.cr8 = value;
      return true;
    default: return fault(s, Vector::UD);
  }
}

bool read_cr(CpuState& s, unsigned n, uint64_t& value) {
  if (!require_cpl0(s)) return false;
  switch (n) {
    case 0: value = s.sys.cr0; return true;
    case 2: value = s.sys.cr2; return true;
    case 3: value = s.sys.cr3; return true;
    case 4: value = s.sys.cr4; return true;
    case 8: value = s.sys.cr8; return true;
    default: return fault(s, Vector::UD);
  }
}

// ---- debug registers ----

// DR4/DR5 alias DR6/DR7 unless CR4.DE makes them #UD; DR7.GD turns every access into #DB.
bool debug_register_access(CpuState& s, unsigned& n) {
  if (!require_cpl0(s)) return false;
  if (n == 4 || n == 5) {
    if (s.sys.cr4 & cr4::DE) return fault(s, Vector::UD);
    n += 2;
  }
  if (s.sys.dr[7] & (1u << 13)) {
    s.sys.dr[6] |= 1u << 13;   // BD: the debug exception was a general-detect condition
    s.sys.dr[7] &= ~uint64_t{1u << 13};
    return fault(s, Vector::DB);
  }
  return true;
}

bool write_dr(CpuState& s, unsigned n, uint64_t value) {
  if (!debug_register_access(s, n)) return false;
  if (n >= 6 && (value >> 32)) return gp(s);
  if (n == 6) value = (value & 0xe00f) | 0xffff0ff0;  // B0-B3, BD, BS, BT; the rest reads fixed
  if (n == 7) value = (value & 0xffff23ff) | 0x400;   // bits 11, 12, 14, 15 read 0, bit 10 reads 1
  s.sys.dr[n] = value;
  return true;
}

// ---- descriptor tables ----

// SYS-B's own reader for the GDT system descriptors LLDT and LTR load (SYS-A's general
// descriptor loader in system.cpp replaces it at merge). Checks in the SDM's order and
// raises #GP(selector) / #NP(selector). `types` has bit t set for each allowed system type.
struct SystemDescriptor {
  SegmentCache cache;
  uint64_t address = 0;  // linear address of the descriptor in the GDT
  uint32_t high = 0;     // its second doubleword (LTR sets the busy bit there)
};

bool read_gdt_system_descriptor(Cpu& cpu, uint16_t selector, uint32_t types, SystemDescriptor& out) {
  CpuState& s = cpu.state;
  const uint32_t error = selector & 0xfffc;
  if (selector & 4) return gp(s, error);  // must be in the GDT
  const unsigned size = long_mode(s) ? 16 : 8;
  const uint32_t offset = selector & 0xfff8u;
  if (offset + size - 1 > s.sys.gdtr.limit) return gp(s, error);
  const uint64_t address = s.sys.gdtr.base + offset;
  uint64_t low = 0, upper = 0;
  if (!cpu.read<8>(address, low)) return false;
  if (size == 16 && !cpu.read<8>(address + 8, upper)) return false;
  const uint32_t high = static_cast<uint32_t>(low >> 32);
  const unsigned type = (high >> 8) & 0x1f;  // S bit and type
  if (type >= 16 || !(types & (1u << type))) return gp(s, error);
  if (size == 16 && ((upper >> 40) & 0x1f) != 0) return gp(s, error);  // upper half's type must be 0
  if (!(high & 0x8000)) return fault(s, Vector::NP, error);
  uint64_t base = ((low >> 16) & 0xffffff) | (uint64_t{high >> 24} << 24);
  if (size == 16) base |= (upper & 0xffffffffu) << 32;
  if (size == 16 && !canonical(base)) return gp(s, error);
  uint32_t limit = static_cast<uint32_t>(low & 0xffff) | (high & 0xf0000);
  if (high & (1u << 23)) limit = (limit << 12) | 0xfff;
  out.cache = SegmentCache{.base = base,
                           .limit = limit,
                           .selector = selector,
                           .attrs = static_cast<uint16_t>(((high >> 8) & 0xff) | (((high >> 20) & 0xf) << 12))};
  out.address = address;
  out.high = high;
  return true;
}

bool load_ldtr(Cpu& cpu, uint16_t selector) {
  CpuState& s = cpu.state;
  if (!protected_mode(s) || vm86(s)) return fault(s, Vector::UD);
  if (!require_cpl0(s)) return false;
  if ((selector & 0xfffc) == 0) {  // a null selector leaves LDTR unusable
    s.sys.ldtr = SegmentCache{.base = 0, .limit = 0, .selector = selector, .attrs = 0};
    return true;
  }
  SystemDescriptor d;
  if (!read_gdt_system_descriptor(cpu, selector, 1u << 2, d)) return false;
  s.sys.ldtr = d.cache;
  return true;
}

bool load_tr(Cpu& cpu, uint16_t selector) {
  CpuState& s = cpu.state;
  if (!protected_mode(s) || vm86(s)) return fault(s, Vector::UD);
  if (!require_cpl0(s)) return false;
  if ((selector & 0xfffc) == 0) return gp(s);
  // Available TSS: 16-bit (type 1) only outside long mode, 32/64-bit (type 9).
  SystemDescriptor d;
  if (!read_gdt_system_descriptor(cpu, selector, (1u << 9) | (long_mode(s) ? 0 : 1u << 1), d)) return false;
  // Mark the descriptor busy before TR changes, so a write fault leaves TR as it was.
  if (!cpu.write<4>(d.address + 4, d.high | 0x200)) return false;
  d.cache.attrs |= 0x2;
  s.sys.tr = d.cache;
  return true;
}

bool load_table(Cpu& cpu, uint64_t address, bool idt, unsigned operand_bits) {
  CpuState& s = cpu.state;
  if (!require_cpl0(s)) return false;
  uint64_t limit = 0, base = 0;
  if (!cpu.read<2>(address, limit)) return false;
  if (in_64bit_code(s)) {
    if (!cpu.read<8>(address + 2, base)) return false;
    if (!canonical(base)) return gp(s);
  } else {
    if (!cpu.read<4>(address + 2, base)) return false;
    if (operand_bits == 16) base &= 0xffffff;
  }
  TableRegister& t = idt ? s.sys.idtr : s.sys.gdtr;
  t.base = base;
  t.limit = static_cast<uint32_t>(limit);
  return true;
}

bool store_table(Cpu& cpu, uint64_t address, bool idt) {
  CpuState& s = cpu.state;
  if (!umip_allows(s)) return false;
  const TableRegister& t = idt ? s.sys.idtr : s.sys.gdtr;
  // Both stores are probed first so that a fault on the second leaves memory untouched.
  const unsigned base_bytes = in_64bit_code(s) ? 8 : 4;
  if (!cpu.probe(address, Access::Write) || !cpu.probe(address + 1 + base_bytes, Access::Write)) return false;
  if (!cpu.write<2>(address, t.limit & 0xffff)) return false;
  return base_bytes == 8 ? cpu.write<8>(address + 2, t.base) : cpu.write<4>(address + 2, t.base & 0xffffffffu);
}

// ---- fast system calls ----

uint64_t syscall(Cpu& cpu, uint64_t next_rip) {
  CpuState& s = cpu.state;
  if (!(s.sys.efer & efer::SCE)) return fault(s, Vector::UD), 0;
  const uint16_t selector = static_cast<uint16_t>(s.sys.star >> 32);
  const uint64_t flags = read_rflags(s) & ~kRf;
  uint64_t target;
  if (long_mode(s)) {
    s.regs[RCX] = next_rip;
    s.regs[R11] = flags;
    write_rflags(s, flags & ~s.sys.sfmask);
    target = in_64bit_code(s) ? s.sys.lstar : s.sys.cstar;
    load_flat_segment(s, CS, selector & 0xfffc, kCode64Dpl0);
  } else {
    // Legacy mode (AMD): EIP from STAR[31:0]; IF, VM and RF are cleared instead of SFMASK.
    s.regs[RCX] = next_rip & 0xffffffffu;
    write_rflags(s, flags & ~(rflags::IF | kVm));
    target = s.sys.star & 0xffffffffu;
    load_flat_segment(s, CS, selector & 0xfffc, kCode32Dpl0);
  }
  load_flat_segment(s, SS, static_cast<uint16_t>(selector + 8), kData32Dpl0);
  s.sys.cpl = 0;
  refresh_code_mode(s);
  return target;
}

uint64_t sysret(Cpu& cpu, bool to_64bit) {
  CpuState& s = cpu.state;
  if (!(s.sys.efer & efer::SCE)) return fault(s, Vector::UD), 0;
  if (!protected_mode(s) || cpl(s) != 0) return gp(s), 0;
  const uint16_t selector = static_cast<uint16_t>(s.sys.star >> 48);
  uint64_t target;
  if (long_mode(s)) {
    target = to_64bit ? s.regs[RCX] : s.regs[RCX] & 0xffffffffu;
    if (to_64bit && !canonical(target)) return gp(s), 0;  // Intel checks here, in ring 0
    write_rflags(s, (s.regs[R11] & 0x3c7fd7) | rflags::kFixed);  // RF and VM cleared
    if (to_64bit) load_flat_segment(s, CS, static_cast<uint16_t>((selector + 16) | 3), kCode64Dpl3);
    else load_flat_segment(s, CS, selector | 3, kCode32Dpl3);
  } else {
    target = s.regs[RCX] & 0xffffffffu;
    s.rflags_other |= rflags::IF;
    load_flat_segment(s, CS, selector | 3, kCode32Dpl3);
  }
  // SS keeps its selector's RPL 3 and gets the fixed flat data cache.
  load_flat_segment(s, SS, static_cast<uint16_t>((selector + 8) | 3), kData32Dpl3);
  s.sys.cpl = 3;
  refresh_code_mode(s);
  return target;
}

uint64_t sysenter(Cpu& cpu) {
  CpuState& s = cpu.state;
  const uint16_t cs = static_cast<uint16_t>(s.sys.sysenter_cs);
  if (!protected_mode(s) || (cs & 0xfffc) == 0) return gp(s), 0;
  write_rflags(s, read_rflags(s) & ~(rflags::IF | kVm | kRf));
  uint64_t target;
  if (long_mode(s)) {
    load_flat_segment(s, CS, cs & 0xfffc, kCode64Dpl0);
    s.regs[RSP] = s.sys.sysenter_esp;
    target = s.sys.sysenter_eip;
  } else {
    load_flat_segment(s, CS, cs & 0xfffc, kCode32Dpl0);
    s.regs[RSP] = s.sys.sysenter_esp & 0xffffffffu;
    target = s.sys.sysenter_eip & 0xffffffffu;
  }
  load_flat_segment(s, SS, static_cast<uint16_t>((cs & 0xfffc) + 8), kData32Dpl0);
  s.sys.cpl = 0;
  refresh_code_mode(s);
  return target;
}

uint64_t sysexit(Cpu& cpu, bool to_64bit) {
  CpuState& s = cpu.state;
  const uint16_t cs = static_cast<uint16_t>(s.sys.sysenter_cs);
  if (!protected_mode(s) || (cs & 0xfffc) == 0 || cpl(s) != 0) return gp(s), 0;
  uint64_t target;
  if (to_64bit) {
    if (!canonical(s.regs[RDX]) || !canonical(s.regs[RCX])) return gp(s), 0;
    load_flat_segment(s, CS, static_cast<uint16_t>((cs + 32) | 3), kCode64Dpl3);
    load_flat_segment(s, SS, static_cast<uint16_t>((cs + 40) | 3), kData32Dpl3);
    s.regs[RSP] = s.regs[RCX];
    target = s.regs[RDX];
  } else {
    load_flat_segment(s, CS, static_cast<uint16_t>((cs + 16) | 3), kCode32Dpl3);
    load_flat_segment(s, SS, static_cast<uint16_t>((cs + 24) | 3), kData32Dpl3);
    s.regs[RSP] = s.regs[RCX] & 0xffffffffu;
    target = s.regs[RDX] & 0xffffffffu;
  }
  s.sys.cpl = 3;
  refresh_code_mode(s);
  return target;
}

// ---- RFLAGS.IF / IOPL ----

bool cli_sti(CpuState& s, bool set) {
  // Real mode always; protected mode when CPL <= IOPL (no PVI/VME: otherwise #GP).
  if (protected_mode(s) && (vm86(s) ? iopl(s) != 3 : cpl(s) > iopl(s))) return gp(s);
  if (set) {
    if (!(s.rflags_other & rflags::IF)) s.sys.interrupt_shadow = true;
    s.rflags_other |= rflags::IF;
  } else {
    s.rflags_other &= ~rflags::IF;
  }
  return true;
}

bool popf(CpuState& s, uint64_t value, unsigned operand_bits) {
  // Flags POPF may change at all: arithmetic, TF, IF, DF, IOPL, NT, AC, ID.
  uint64_t changeable = rflags::kArith | rflags::TF | rflags::IF | rflags::DF | kIopl | kNt | rflags::AC | rflags::ID;
  if (vm86(s)) {
    if (iopl(s) != 3) return gp(s);
    changeable &= ~kIopl;
  } else if (protected_mode(s) && cpl(s) > 0) {
    changeable &= ~kIopl;                             // only CPL 0 changes IOPL
    if (cpl(s) > iopl(s)) changeable &= ~rflags::IF;  // IF silently kept
  }
  if (operand_bits == 16) changeable &= 0xffff;
  const uint64_t old = read_rflags(s);
  const uint64_t result = (old & ~changeable) | (value & changeable);
  write_rflags(s, result & ~kRf);
  return true;
}

// ---- time stamp counter ----

bool rdtscp(CpuState& s) {
  if (protected_mode(s) && (s.sys.cr4 & cr4::TSD) && cpl(s) != 0) return gp(s);
  ++s.tsc;  // reads tick the counter, as RDTSC does (helpers.cpp)
  s.regs[RAX] = s.tsc & 0xffffffffu;
  s.regs[RDX] = s.tsc >> 32;
  s.regs[RCX] = s.sys.tsc_aux & 0xffffffffu;
  return true;
}

// ---- MSRs ----

uint64_t* mtrr_fixed_slot(CpuState& s, uint32_t index) {
  if (index == msr::kMtrrFix64k) return &s.sys.mtrr_fixed[0];
  if (index == msr::kMtrrFix16k80000) return &s.sys.mtrr_fixed[1];
  if (index == msr::kMtrrFix16kA0000) return &s.sys.mtrr_fixed[2];
  if (index >= msr::kMtrrFix4kC0000 && index < msr::kMtrrFix4kC0000 + 8)
    return &s.sys.mtrr_fixed[3 + index - msr::kMtrrFix4kC0000];
  return nullptr;
}

bool nx_available(const CpuState& s) { return !(s.sys.misc_enable & kMiscXdDisable); }

}  // namespace

void refresh_fpu_mode(CpuState& s) {
  uint8_t bits = 0;
  if (s.sys.cr0 & cr0::EM) bits |= fpu_mode::EM;
  if (s.sys.cr0 & cr0::TS) bits |= fpu_mode::TS;
  if (s.sys.cr0 & cr0::MP) bits |= fpu_mode::MP;
  if (s.sys.cr4 & cr4::OSFXSR) bits |= fpu_mode::OSFXSR;
  s.mode.fpu = bits;
}

void refresh_code_mode(CpuState& s) { update_mode(s); }

bool read_msr(Cpu& cpu, uint32_t index, uint64_t& value) {
  CpuState& s = cpu.state;
  switch (index) {
    case msr::kTsc: value = s.tsc; return true;
    case msr::kPlatformId: value = 0; return true;
    case msr::kApicBase: value = s.sys.apic_base; return true;
    case msr::kUcodeRev: value = 0; return true;  // no microcode update loaded
    case msr::kArchCapabilities: value = kArchCapabilitiesValue; return true;
    case msr::kMtrrCap: value = 8 | (1u << 8) | (1u << 10); return true;  // 8 variable ranges, fixed ranges, WC
    case msr::kSysenterCs: value = s.sys.sysenter_cs; return true;
    case msr::kSysenterEsp: value = s.sys.sysenter_esp; return true;
    case msr::kSysenterEip: value = s.sys.sysenter_eip; return true;
    case msr::kMiscEnable: value = s.sys.misc_enable | kMiscReadOnly; return true;
    case msr::kPat: value = s.sys.pat; return true;
    case msr::kMtrrDefType: value = s.sys.mtrr_def_type; return true;
    case msr::kEfer: value = s.sys.efer; return true;
    case msr::kStar: value = s.sys.star; return true;
    case msr::kLstar: value = s.sys.lstar; return true;
    case msr::kCstar: value = s.sys.cstar; return true;
    case msr::kSfmask: value = s.sys.sfmask; return true;
    case msr::kFsBase: value = s.seg_base[FS]; return true;
    case msr::kGsBase: value = s.seg_base[GS]; return true;
    case msr::kKernelGsBase: value = s.sys.kernel_gs_base; return true;
    case msr::kTscAux: value = s.sys.tsc_aux; return true;
    default: break;
  }
  if (index >= msr::kMtrrPhysBase0 && index < msr::kMtrrPhysBase0 + 16) {
    value = s.sys.mtrr_var[index - msr::kMtrrPhysBase0];
    return true;
  }
  if (uint64_t* slot = mtrr_fixed_slot(s, index)) {
    value = *slot;
    return true;
  }
  return false;
}

bool write_msr(Cpu& cpu, uint32_t index, uint64_t value) {
  CpuState& s = cpu.state;
  switch (index) {
    case msr::kTsc: s.tsc = value; return true;
    case msr::kApicBase: {
      // BSP (8, read-only), global enable (11), base; no x2APIC.
      const uint64_t writable = (1u << 11) | (kPhysicalMask & ~uint64_t{0xfff});
      if (value & ~(writable | (1u << 8))) return false;
      s.sys.apic_base = (value & writable) | (s.sys.apic_base & (1u << 8));
      return true;
    }
    case msr::kUcodeRev: return true;  // writing (0) precedes reading the revision; nothing to load
    case msr::kSysenterCs:
      if (value >> 32) return false;
      s.sys.sysenter_cs = value;
      return true;
    case msr::kSysenterEsp:
      if (!canonical(value)) return false;
      s.sys.sysenter_esp = value;
      return true;
    case msr::kSysenterEip:
      if (!canonical(value)) return false;
      s.sys.sysenter_eip = value;
      return true;
    case msr::kMiscEnable:
      if (value & ~(kMiscFastStrings | kMiscLimitCpuid | kMiscXdDisable | kMiscReadOnly)) return false;
      s.sys.misc_enable = value & (kMiscFastStrings | kMiscLimitCpuid | kMiscXdDisable);
      if (!nx_available(s) && (s.sys.efer & efer::NXE)) {
        s.sys.efer &= ~efer::NXE;  // XD disable turns the NX bit back into a reserved bit
        cpu.invalidate_tlb(true);
      }
      return true;
    case msr::kPat:
      if (!valid_type_bytes(value, true)) return false;
      s.sys.pat = value;
      cpu.invalidate_tlb(true);
      return true;
    case msr::kMtrrDefType:
      if ((value & ~uint64_t{0xcff}) || !valid_memory_type(value & 0xff, false)) return false;
      s.sys.mtrr_def_type = value;
      return true;
    case msr::kEfer: {
      const uint64_t allowed = efer::SCE | efer::LME | efer::LMA | (nx_available(s) ? efer::NXE : 0);
      if (value & ~allowed) return false;
      // LME cannot change while paging is on; LMA is read-only (set by CR0.PG).
      if ((s.sys.cr0 & cr0::PG) && ((value ^ s.sys.efer) & efer::LME)) return false;
      const uint64_t old = s.sys.efer;
      s.sys.efer = (value & ~efer::LMA) | (old & efer::LMA);
      if ((old ^ s.sys.efer) & efer::NXE) cpu.invalidate_tlb(true);
      return true;
    }
    case msr::kStar: s.sys.star = value; return true;
    case msr::kLstar:
    case msr::kCstar:
      if (!canonical(value)) return false;
      (index == msr::kLstar ? s.sys.lstar : s.sys.cstar) = value;
      return true;
    case msr::kSfmask:
      if (value >> 32) return false;
      s.sys.sfmask = value;
      return true;
    case msr::kFsBase:
    case msr::kGsBase:
    case msr::kKernelGsBase:
      if (!canonical(value)) return false;
      (index == msr::kFsBase ? s.seg_base[FS] : index == msr::kGsBase ? s.seg_base[GS] : s.sys.kernel_gs_base) = value;
      return true;
    case msr::kTscAux:
      if (value >> 32) return false;
      s.sys.tsc_aux = value;
      return true;
    default: break;
  }
  if (index >= msr::kMtrrPhysBase0 && index < msr::kMtrrPhysBase0 + 16) {
    const bool is_mask = (index - msr::kMtrrPhysBase0) & 1;
    const uint64_t valid = is_mask ? (kPhysicalMask & ~uint64_t{0xfff}) | (1u << 11)
                                   : (kPhysicalMask & ~uint64_t{0xfff}) | 0xff;
    if ((value & ~valid) || (!is_mask && !valid_memory_type(value & 0xff, false))) return false;
    s.sys.mtrr_var[index - msr::kMtrrPhysBase0] = value;
    return true;
  }
  if (uint64_t* slot = mtrr_fixed_slot(s, index)) {
    if (!valid_type_bytes(value, false)) return false;
    *slot = value;
    return true;
  }
  return false;  // unknown or read-only (PLATFORM_ID, MTRRcap, ARCH_CAPABILITIES)
}

void system_cpuid(const CpuState& s, uint32_t leaf, uint32_t subleaf, uint32_t out[4]) {
  uint32_t a = 0, b = 0, c = 0, d = 0;
  const bool sse41 = ir::host_has_sse41(), sse42 = ir::host_has_sse42();
  const uint32_t max_basic = (s.sys.misc_enable & kMiscLimitCpuid) ? 2 : 7;
  auto text = [](const char* str, uint32_t& r0, uint32_t& r1, uint32_t& r2, uint32_t& r3) {
    char buf[16] = {};
    std::memcpy(buf, str, std::min<size_t>(std::strlen(str), 16));
    std::memcpy(&r0, buf, 4);
    std::memcpy(&r1, buf + 4, 4);
    std::memcpy(&r2, buf + 8, 4);
    std::memcpy(&r3, buf + 12, 4);
  };
  if (leaf <= max_basic || (leaf >= 0x80000000 && leaf <= 0x80000008)) {
    switch (leaf) {
      case 0: {
        uint32_t unused = 0;
        a = max_basic;
        text("GenuineIntelxxxx", b, d, c, unused);
        break;
      }
      case 1:
        a = 0x000306a9;        // family 6 model 58 stepping 9
        b = 8u << 8;           // CLFLUSH line 64 bytes; one logical processor, APIC ID 0
        // FPU DE PSE TSC MSR PAE CX8 SEP MTRR PGE CMOV PAT CLFSH MMX FXSR SSE SSE2. No APIC (the
        // machine has no local APIC), VME (no virtual-8086 extensions), MCE/MCA, PSE-36.
        d = (1u << 0) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) | (1u << 11) |
            (1u << 12) | (1u << 13) | (1u << 15) | (1u << 16) | (1u << 19) | (1u << 23) | (1u << 24) |
            (1u << 25) | (1u << 26);
        c = (1u << 13) | (1u << 22) | (1u << 23);  // CX16, MOVBE, POPCNT
        // SSE3/SSSE3/SSE4.1 FP ops and SSE4.2 string compares run on the host's units.
        if (sse41) c |= (1u << 0) | (1u << 9) | (1u << 19);
        if (sse42) c |= 1u << 20;
        break;
      case 7:
        if (subleaf == 0) {
          b = (1u << 3) | (1u << 7) | (1u << 8) | (1u << 19) | (1u << 20);  // BMI1 SMEP BMI2 ADX SMAP
          c = (1u << 2) | (1u << 22);                                     // UMIP RDPID
          d = 1u << 29;                                                   // IA32_ARCH_CAPABILITIES
        }
        break;
      case 0x80000000: a = 0x80000008; break;
      case 0x80000001:
        c = (1u << 0) | (1u << 5) | (1u << 8);  // LAHF/SAHF in 64-bit mode, LZCNT, PREFETCHW
        d = (1u << 11) | (1u << 27) | (1u << 29) | (nx_available(s) ? 1u << 20 : 0);  // SYSCALL RDTSCP LM NX
        break;
      case 0x80000002: text("Kiln virtual x86", a, b, c, d); break;
      case 0x80000003: text("-64 CPU", a, b, c, d); break;
      case 0x80000008: a = kPhysicalAddressBits | (kLinearAddressBits << 8); break;
      default: break;  // 2..6, 0x80000004..7: no cache/power/topology descriptors
    }
  }
  out[0] = a;
  out[1] = b;
  out[2] = c;
  out[3] = d;
}

uint64_t helper_system(Cpu& cpu, uint64_t op, uint64_t b, uint64_t c, uint64_t d) {
  CpuState& s = cpu.state;
  switch (static_cast<SystemOp>(op)) {
    case SystemOp::RequireCpl0: require_cpl0(s); return 0;
    case SystemOp::MovToCr: write_cr(cpu, static_cast<unsigned>(b), c); return 0;
    case SystemOp::MovFromCr: {
      uint64_t value = 0;
      read_cr(s, static_cast<unsigned>(b), value);
      return value;
    }
    case SystemOp::MovToDr: write_dr(s, static_cast<unsigned>(b), c); return 0;
    case SystemOp::MovFromDr: {
      unsigned n = static_cast<unsigned>(b);
      return debug_register_access(s, n) ? s.sys.dr[n] : 0;
    }
    case SystemOp::Clts:
      if (require_cpl0(s)) {
        s.sys.cr0 &= ~cr0::TS;
        refresh_fpu_mode(s);
      }
      return 0;
    case SystemOp::Lmsw:
      // Loads PE MP EM TS; PE can be set but not cleared.
      if (require_cpl0(s)) write_cr0(cpu, (s.sys.cr0 & ~uint64_t{0xe}) | (b & 0xf));
      return 0;
    case SystemOp::Smsw: return umip_allows(s) ? s.sys.cr0 : 0;
    case SystemOp::LoadTable: load_table(cpu, b, c != 0, static_cast<unsigned>(d)); return 0;
    case SystemOp::StoreTable: store_table(cpu, b, c != 0); return 0;
    case SystemOp::Lldt: load_ldtr(cpu, static_cast<uint16_t>(b)); return 0;
    case SystemOp::Ltr: load_tr(cpu, static_cast<uint16_t>(b)); return 0;
    case SystemOp::Sldt:
    case SystemOp::Str:
      if (!protected_mode(s) || vm86(s)) return fault(s, Vector::UD), 0;
      if (!umip_allows(s)) return 0;
      return static_cast<SystemOp>(op) == SystemOp::Sldt ? s.sys.ldtr.selector : s.sys.tr.selector;
    case SystemOp::Rdmsr: {
      uint64_t value = 0;
      if (!require_cpl0(s)) return 0;
      if (!read_msr(cpu, static_cast<uint32_t>(s.regs[RCX]), value)) return gp(s), 0;
      s.regs[RAX] = value & 0xffffffffu;
      s.regs[RDX] = value >> 32;
      return 0;
    }
    case SystemOp::Wrmsr: {
      if (!require_cpl0(s)) return 0;
      const uint64_t value = (s.regs[RDX] << 32) | (s.regs[RAX] & 0xffffffffu);
      if (!write_msr(cpu, static_cast<uint32_t>(s.regs[RCX]), value)) gp(s);
      return 0;
    }
    case SystemOp::Rdtscp: rdtscp(s); return 0;
    case SystemOp::Rdpid: return s.sys.tsc_aux;
    case SystemOp::Invlpg:
      if (require_cpl0(s) && (!in_64bit_code(s) || canonical(b))) cpu.invalidate_tlb_page(b);
      return 0;
    case SystemOp::Syscall: return syscall(cpu, b);
    case SystemOp::Sysret: return sysret(cpu, b != 0);
    case SystemOp::Sysenter: return sysenter(cpu);
    case SystemOp::Sysexit: return sysexit(cpu, b != 0);
    case SystemOp::Swapgs:
      if (!in_64bit_code(s)) return fault(s, Vector::UD), 0;
      if (require_cpl0(s)) std::swap(s.seg_base[GS], s.sys.kernel_gs_base);
      return 0;
    case SystemOp::Cli: cli_sti(s, false); return 0;
    case SystemOp::Sti: cli_sti(s, true); return 0;
    case SystemOp::Popf: popf(s, b, static_cast<unsigned>(c)); return 0;
    case SystemOp::Vm86Pushf:
      if (vm86(s) && iopl(s) != 3) gp(s);
      return 0;
    case SystemOp::Stac:
    case SystemOp::Clac:
      // SMAP's AC toggles are CPL-0 only (#UD elsewhere, like without SMAP).
      if (cpl(s) != 0) return fault(s, Vector::UD), 0;
      if (static_cast<SystemOp>(op) == SystemOp::Stac) s.rflags_other |= rflags::AC;
      else s.rflags_other &= ~rflags::AC;
      return 0;
  }
  return fault(s, Vector::UD), 0;
}

}  // namespace kiln::emu
