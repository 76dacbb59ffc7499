// The machine's physical address space: RAM, ROM and MMIO regions. The soft
// MMU translates guest virtual addresses to physical ones and asks this map
// for a host pointer (RAM, ROM for reads) or the MMIO handler.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "kiln/emulator/io.h"

namespace kiln::emu {

enum class RegionKind : uint8_t { Ram, Rom, Mmio };

struct PhysicalRegion {
  uint64_t base = 0;
  uint64_t size = 0;
  RegionKind kind = RegionKind::Ram;
  uint8_t* host = nullptr;           // Ram and Rom
  MmioHandler* mmio = nullptr;       // Mmio
  std::shared_ptr<uint8_t> owned;    // host memory owned by the map (anonymous mmap: zero pages on demand)
};

class PhysicalMemory {
 public:
  // Adds zero-filled RAM; returns its host memory. Regions are page aligned and
  // never overlap (kiln::Error otherwise).
  uint8_t* add_ram(uint64_t base, uint64_t size);
  // Adds read-only memory holding `contents` (padded with zeroes to `size`).
  void add_rom(uint64_t base, uint64_t size, std::span<const uint8_t> contents);
  void add_mmio(uint64_t base, uint64_t size, MmioHandler& handler);

  // The region holding `address`, or nullptr.
  const PhysicalRegion* find(uint64_t address) const;
  // Host pointer for RAM/ROM at `address` (nullptr for MMIO or unmapped).
  uint8_t* host_pointer(uint64_t address) const;

  // Bulk copies for loaders and tests (RAM and ROM); kiln::Error on a hole or MMIO.
  void write_bytes(uint64_t address, std::span<const uint8_t> bytes);
  void read_bytes(uint64_t address, std::span<uint8_t> bytes) const;
  // Sub-word accesses of any kind of region; unmapped reads return all ones.
  uint64_t read(uint64_t address, unsigned size);
  void write(uint64_t address, unsigned size, uint64_t value);

  // Called after RAM changes through write_bytes, write or notify_written
  // (loaders, DMA, the MMU's accessed/dirty updates) so the CPU can drop
  // translated code of the range. One observer; runs on the writer's thread
  // (write guest RAM from other threads only while the CPU is stopped).
  using WriteObserver = std::function<void(uint64_t address, uint64_t size)>;
  void set_write_observer(WriteObserver observer, const void* owner = nullptr) {
    observer_ = std::move(observer);
    observer_owner_ = owner;
  }
  // Removes the observer if `owner` installed it (a replaced CPU must not remove its successor's).
  void clear_write_observer(const void* owner) {
    if (observer_owner_ == owner) set_write_observer(nullptr);
  }
  // Devices that write RAM through host_pointer() report the range here.
  void notify_written(uint64_t address, uint64_t size) {
    if (observer_) observer_(address, size);
  }

  const std::vector<PhysicalRegion>& regions() const { return regions_; }
  // Total RAM below 4 GiB and above (for Multiboot's mem_lower/mem_upper and the memory map).
  uint64_t ram_size() const;

 private:
  PhysicalRegion& insert(PhysicalRegion region);
  std::vector<PhysicalRegion> regions_;  // sorted by base
  WriteObserver observer_;
  const void* observer_owner_ = nullptr;
};

}  // namespace kiln::emu
