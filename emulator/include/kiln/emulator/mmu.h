// The soft MMU for system mode: translates linear addresses through the guest
// page tables held in PhysicalMemory, in the paging mode CpuState selects
// (CR0.PG/WP, CR3, CR4.PSE/PAE/PGE/SMEP/SMAP, EFER.LMA/NXE, CPL, RFLAGS.AC):
// none (identity), 32-bit (4 KiB and, with CR4.PSE, 4 MiB pages incl.
// PSE-36), PAE (4 KiB and 2 MiB) and 4-level (4 KiB, 2 MiB and 1 GiB). It sets
// the accessed and dirty bits in the guest's entries as hardware does (only
// for accesses that succeed) and reports #PF with the architectural error code.
// The Cpu caches its answers in the TLB; this class keeps no state of its own.
#pragma once

#include <cstdint>

#include "kiln/emulator/memory.h"
#include "kiln/emulator/physical_memory.h"

namespace kiln::emu {

class SoftMmu final : public Memory {
 public:
  explicit SoftMmu(PhysicalMemory& physical) : physical_(physical) {}

  // Physical view: the host page of RAM (or ROM when not writing) at `address`.
  uint8_t* page_pointer(uint64_t address, Access access) override;
  bool translate(uint64_t linear, Access access, Privilege privilege, const CpuState& cpu, Translation& out) override;
  PhysicalMemory* physical_memory() override { return &physical_; }

 private:
  // Walks the page tables; fills out.physical/page_size/global/cacheable or the fault.
  bool walk(uint64_t linear, Access access, Privilege privilege, const CpuState& cpu, Translation& out);

  PhysicalMemory& physical_;
};

}  // namespace kiln::emu
