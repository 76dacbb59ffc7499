#include "kiln/emulator/mmu.h"

namespace kiln::emu {

namespace {

// Paging-structure entry bits.
namespace pte {
constexpr uint64_t P = 1, RW = 2, US = 4, A = 0x20, D = 0x40, PS = 0x80, G = 0x100, XD = 1ull << 63;
}

// Frame address bits of an entry (bits MAXPHYADDR-1..12).
constexpr uint64_t kFrameBits = ((uint64_t{1} << kPhysicalAddressBits) - 1) & ~uint64_t{0xfff};
// Reserved address bits of 64-bit entries (bits 51..MAXPHYADDR).
constexpr uint64_t kHighReserved = ((uint64_t{1} << 52) - 1) & ~((uint64_t{1} << kPhysicalAddressBits) - 1);
// Bits 62:52: ignored (available to software) in 4-level entries, reserved in PAE entries.
constexpr uint64_t kPaeHighReserved = 0x7ff0000000000000;

}  // namespace

uint8_t* SoftMmu::page_pointer(uint64_t address, Access access) {
  const PhysicalRegion* r = physical_.find(address);
  if (!r || r->kind == RegionKind::Mmio || (r->kind == RegionKind::Rom && access == Access::Write)) return nullptr;
  return r->host + ((address & kPageMask) - r->base);
}

bool SoftMmu::translate(uint64_t linear, Access access, Privilege privilege, const CpuState& cpu, Translation& out) {
  out = Translation{};
  if (cpu.mode.code == CodeSize::Bits64 && !canonical(linear)) {
    out.vector = Vector::GP;  // the caller turns it into #SS for stack accesses
    return false;
  }
  if (!(cpu.sys.cr0 & cr0::PG)) {
    out.physical = linear & 0xffffffff;  // without paging linear addresses are 32 bits
  } else if (!walk(linear, access, privilege, cpu, out)) {
    return false;
  }
  if (privilege == Privilege::Implicit) out.cacheable = false;  // never lend CPL 3 code a supervisor entry
  const PhysicalRegion* r = physical_.find(out.physical);
  if (r && (r->kind == RegionKind::Ram || (r->kind == RegionKind::Rom && access != Access::Write)))
    out.host = r->host + ((out.physical & kPageMask) - r->base);
  return true;
}

bool SoftMmu::walk(uint64_t linear, Access access, Privilege privilege, const CpuState& cpu, Translation& out) {
  const SystemState& sys = cpu.sys;
  const bool write = access == Access::Write, fetch = access == Access::Execute, user = privilege == Privilege::User;
  const bool pae = sys.cr4 & cr4::PAE, long_mode = sys.efer & efer::LMA;
  const bool nxe = pae && (sys.efer & efer::NXE);  // XD exists only in PAE and 4-level entries
  // I/D is reported only when fetches can fault for their own reasons (SMEP or NX).
  const uint32_t error = (write ? pf::W : 0) | (user ? pf::U : 0) | (fetch && ((sys.cr4 & cr4::SMEP) || nxe) ? pf::ID : 0);
  auto fault = [&](uint32_t bits) {
    out.vector = Vector::PF;
    out.error_code = error | bits;
    return false;
  };

  struct Used {
    uint64_t address;
    uint64_t value;
  };
  Used used[4];
  int count = 0;
  bool user_ok = true, write_ok = true, no_exec = false;
  uint64_t frame = 0, size = kPageSize, leaf = 0;

  if (!pae) {
    // 32-bit paging: PDE -> PTE, or a 4 MiB page with CR4.PSE (PSE-36: PDE bits 20:13 are address bits 39:32).
    linear &= 0xffffffff;
    const uint64_t pde_address = (sys.cr3 & 0xfffff000) + ((linear >> 22) & 0x3ff) * 4;
    const uint64_t pde = physical_.read(pde_address, 4);
    if (!(pde & pte::P)) return fault(0);
    used[count++] = {pde_address, pde};
    user_ok = pde & pte::US;
    write_ok = pde & pte::RW;
    if ((pde & pte::PS) && (sys.cr4 & cr4::PSE)) {
      if (pde & (1u << 21)) return fault(pf::P | pf::RSVD);
      size = uint64_t{4} << 20;
      frame = (pde & 0xffc00000) | (((pde >> 13) & 0xff) << 32);
      leaf = pde;
    } else {
      const uint64_t pte_address = (pde & 0xfffff000) + ((linear >> 12) & 0x3ff) * 4;
      const uint64_t entry = physical_.read(pte_address, 4);
      if (!(entry & pte::P)) return fault(0);
      used[count++] = {pte_address, entry};
      user_ok = user_ok && (entry & pte::US);
      write_ok = write_ok && (entry & pte::RW);
      frame = entry & 0xfffff000;
      leaf = entry;
    }
  } else {
    // PAE (PDPTE -> PD -> PT) or 4-level (PML4 -> PDPT -> PD -> PT). `level` 4..1 selects the
    // linear address bits 47:39, 38:30, 29:21, 20:12.
    uint64_t table;
    int level;
    if (long_mode) {
      table = sys.cr3 & kFrameBits;  // CR3 bits 11:0 are flags or the PCID
      level = 4;
    } else {
      // The PDPTEs (architecturally loaded at MOV CR3; read at every walk here). A reserved
      // bit makes MOV CR3 #GP on hardware; here it is a #PF with RSVD at the access.
      linear &= 0xffffffff;
      const uint64_t pdpte_address = (sys.cr3 & 0xffffffe0) + ((linear >> 30) & 3) * 8;
      const uint64_t pdpte = physical_.read(pdpte_address, 8);
      if (!(pdpte & pte::P)) return fault(0);
      if (pdpte & (kHighReserved | kPaeHighReserved | pte::XD | 0x1e6)) return fault(pf::P | pf::RSVD);  // 63:M, 8:5, 2:1
      table = pdpte & kFrameBits;
      level = 2;
    }
    const uint64_t always_reserved = kHighReserved | (nxe ? 0 : pte::XD) | (long_mode ? 0 : kPaeHighReserved);
    for (;; --level) {
      const unsigned shift = 12 + 9 * (level - 1);
      const uint64_t address = table + ((linear >> shift) & 511) * 8;
      const uint64_t entry = physical_.read(address, 8);
      if (!(entry & pte::P)) return fault(0);
      const bool large = (level == 2 || level == 3) && (entry & pte::PS);
      uint64_t reserved = always_reserved;
      if (level == 4) reserved |= pte::PS;
      if (large) reserved |= level == 3 ? 0x3fffe000 : 0x1fe000;  // frame bits below the page size (above PAT)
      if (entry & reserved) return fault(pf::P | pf::RSVD);
      used[count++] = {address, entry};
      user_ok = user_ok && (entry & pte::US);
      write_ok = write_ok && (entry & pte::RW);
      no_exec = no_exec || (nxe && (entry & pte::XD));
      if (level == 1 || large) {
        size = uint64_t{1} << shift;
        frame = entry & kFrameBits & ~(size - 1);
        leaf = entry;
        break;
      }
      table = entry & kFrameBits;
    }
  }

  // Access rights (SDM 4.6), combined over every level.
  if (user) {
    if (!user_ok || (write && !write_ok) || (fetch && no_exec)) return fault(pf::P);
  } else if (fetch) {
    if (no_exec || (user_ok && (sys.cr4 & cr4::SMEP))) return fault(pf::P);
  } else {
    if (user_ok && (sys.cr4 & cr4::SMAP)) {
      if (privilege == Privilege::Implicit || !(cpu.rflags_other & rflags::AC)) return fault(pf::P);
      out.cacheable = false;  // allowed only while RFLAGS.AC = 1
    }
    if (write && !write_ok && (sys.cr0 & cr0::WP)) return fault(pf::P);
  }

  // Accessed bits in every entry used, dirty in the leaf for writes (A and D live in the low
  // 32 bits, so 64-bit entries are updated by their low half).
  for (int i = 0; i < count; ++i) {
    uint64_t wanted = used[i].value | pte::A;
    if (write && i == count - 1) wanted |= pte::D;
    if (wanted != used[i].value) physical_.write(used[i].address, 4, wanted & 0xffffffff);
  }
  out.physical = frame | (linear & (size - 1));
  out.page_size = size;
  out.global = (sys.cr4 & cr4::PGE) && (leaf & pte::G);
  return true;
}

}  // namespace kiln::emu
