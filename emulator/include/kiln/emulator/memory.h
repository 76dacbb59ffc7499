// The guest memory interface. The backends never see how guest addresses map
// to host memory: they ask for a host pointer to a whole guest page and cache
// the answer in a small software TLB (see Cpu). A soft MMU for system mode
// implements the same interface on top of page tables and the machine's
// memory map; FlatMemory below is the simple user-mode/test implementation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace kiln::emu {

constexpr uint64_t kPageSize = 4096;
constexpr uint64_t kPageMask = ~(kPageSize - 1);

enum class Access : uint8_t { Read = 0, Write = 1, Execute = 2 };

enum Perm : uint8_t { kPermRead = 1, kPermWrite = 2, kPermExec = 4 };

class Memory {
 public:
  virtual ~Memory() = default;
  // Host pointer to the start of the guest page containing `address`, valid
  // for kPageSize bytes, or nullptr when the access must fault (#PF).
  virtual uint8_t* page_pointer(uint64_t address, Access access) = 0;
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
