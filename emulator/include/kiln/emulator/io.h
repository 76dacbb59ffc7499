// Port I/O and MMIO dispatch: devices register handlers for port ranges
// (IoBus) or physical address ranges (PhysicalMemory::add_mmio). Accesses the
// guest makes to nothing read as all ones and are ignored on write, as on a PC.
#pragma once

#include <cstdint>
#include <vector>

namespace kiln::emu {

class IoHandler {
 public:
  virtual ~IoHandler() = default;
  // `port` is the absolute port number, `size` 1, 2 or 4.
  virtual uint32_t io_read(uint16_t port, unsigned size) = 0;
  virtual void io_write(uint16_t port, unsigned size, uint32_t value) = 0;
};

class MmioHandler {
 public:
  virtual ~MmioHandler() = default;
  // `offset` is relative to the region's base, `size` 1, 2, 4 or 8.
  virtual uint64_t mmio_read(uint64_t offset, unsigned size) = 0;
  virtual void mmio_write(uint64_t offset, unsigned size, uint64_t value) = 0;
};

class IoBus {
 public:
  // Maps ports [first, first + count) to `handler` (which must outlive the bus).
  // Throws kiln::Error when the range overlaps an existing one.
  void map(uint16_t first, uint32_t count, IoHandler& handler);
  uint32_t read(uint16_t port, unsigned size);
  void write(uint16_t port, unsigned size, uint32_t value);

 private:
  struct Range {
    uint16_t first;
    uint32_t count;
    IoHandler* handler;
  };
  IoHandler* find(uint16_t port) const;
  std::vector<Range> ranges_;  // sorted by first
};

}  // namespace kiln::emu
