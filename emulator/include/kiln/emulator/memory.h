// The guest memory interface. The backends never see how guest addresses map
// to host memory: they ask Memory::translate for the physical address and a
// host pointer to the whole guest page and cache the answer in a small
// software TLB (see Cpu). SoftMmu (mmu.h) implements it for system mode on top
// of the guest page tables and the machine's PhysicalMemory; FlatMemory below
// is the simple user-mode/test implementation (linear == physical).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kiln/emulator/cpu_state.h"

namespace kiln::emu {

class PhysicalMemory;

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kPageMask = ~(kPageSize - 1);

// The model's MAXPHYADDR (CPUID 0x80000008): physical address bits above it
// are reserved in page tables, CR3, the APIC base, MTRRs. Linear addresses
// have 48 bits (4-level paging); canonical ones have bits 63..47 all equal.
constexpr unsigned kPhysicalAddressBits = 40;
constexpr unsigned kLinearAddressBits = 48;
constexpr bool canonical(uint64_t address) {
  constexpr unsigned shift = 64 - kLinearAddressBits;
  return static_cast<uint64_t>(static_cast<int64_t>(address << shift) >> shift) == address;
}

enum class Access : uint8_t { Read = 0, Write = 1, Execute = 2 };

enum Perm : uint8_t { kPermRead = 1, kPermWrite = 2, kPermExec = 4 };

// Who makes an access: user (CPL 3), supervisor (CPL 0-2; SMAP honours
// RFLAGS.AC) or an implicit supervisor access to a system structure (GDT, LDT,
// IDT, TSS) at any CPL (SMAP applies regardless of AC).
enum class Privilege : uint8_t { User, Supervisor, Implicit };

// #PF error code bits.
namespace pf {
constexpr uint32_t P = 1, W = 2, U = 4, RSVD = 8, ID = 16;
}

// The answer of Memory::translate.
struct Translation {
  uint64_t physical = 0;  // physical address of the byte at `linear`
  // Host pointer to the 4 KiB physical page holding `physical` (RAM; ROM for
  // reads and fetches), or nullptr: the access goes through PhysicalMemory
  // (MMIO handlers, unmapped space, writes to ROM).
  uint8_t* host = nullptr;
  uint64_t page_size = kPageSize;  // size of the mapping (4 KiB, 2/4 MiB, 1 GiB)
  bool global = false;             // G bit with CR4.PGE: survives CR3 reloads
  bool cacheable = true;           // may be kept in the TLB (false e.g. for SMAP-checked accesses)
  // On failure: the exception (#PF or #GP) and its error code.
  Vector vector = Vector::PF;
  uint32_t error_code = 0;
};

class Memory {
 public:
  virtual ~Memory() = default;
  // Host pointer to the start of the guest page containing `address`, valid
  // for kPageSize bytes, or nullptr when the access must fault (#PF). For
  // SoftMmu this is the physical view (no paging).
  virtual uint8_t* page_pointer(uint64_t address, Access access) = 0;
  // Translates a linear address for `access` in the CPU's current paging mode.
  // Returns false with out.vector/out.error_code set when the access faults.
  // The default (FlatMemory) maps linear to physical one to one, faults as a
  // user-mode #PF and raises #GP for non-canonical data addresses in 64-bit code.
  virtual bool translate(uint64_t linear, Access access, Privilege privilege, const CpuState& cpu, Translation& out);
  // Copies up to `want` code bytes at `address` for the frontend and returns
  // how many; stops at the first byte that cannot be fetched (its address goes
  // to fault_address, fetch_fault() says why). Default: page_pointer(Execute).
  virtual size_t fetch_code(uint64_t address, uint8_t* out, size_t want, uint64_t& fault_address);
  // The machine's physical memory (MMIO dispatch, write notifications), if any.
  virtual PhysicalMemory* physical_memory() { return nullptr; }
  // Why page_pointer(address, Access::Execute) returned nullptr: the exception
  // the frontend raises for an unfetchable instruction byte.
  virtual PendingException fetch_fault(uint64_t address) {
    return PendingException{.raised = true, .vector = Vector::PF, .error_code = pf::U | pf::ID, .fault_address = address};
  }
  // Bumped whenever a mapping changes so cached translations can be dropped.
  uint64_t generation() const { return generation_; }

 protected:
  void changed() { ++generation_; }

 private:
  uint64_t generation_ = 0;
};

// Guest memory made of page-aligned regions, either owned or borrowed host memory.
class FlatMemory final : public Memory {
 public:
  // Maps zero-filled owned memory. Throws kiln::Error on overlap or misalignment.
  uint8_t* map(uint64_t base, uint64_t size, uint8_t perms);
  // Maps caller-owned host memory (must outlive this object).
  void map_host(uint64_t base, std::span<uint8_t> host, uint8_t perms);
  void unmap_all();
  void set_perms(uint64_t base, uint8_t perms);

  uint8_t* page_pointer(uint64_t address, Access access) override;

  // Bulk copies for loaders and tests; throw kiln::Error on unmapped addresses.
  void write_bytes(uint64_t address, std::span<const uint8_t> bytes);
  void read_bytes(uint64_t address, std::span<uint8_t> bytes);

 private:
  struct Region {
    uint64_t base;
    uint64_t size;
    uint8_t* host;
    uint8_t perms;
    std::unique_ptr<uint8_t[]> owned;
  };
  Region* find(uint64_t address);
  void insert(Region region);
  std::vector<Region> regions_;  // sorted by base
};

}  // namespace kiln::emu
