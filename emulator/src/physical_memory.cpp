#include "kiln/emulator/physical_memory.h"

#include <algorithm>
#include <cstring>

#include <sys/mman.h>

#include <cerrno>

#include "kiln/common/error.h"
#include "kiln/emulator/memory.h"

namespace kiln::emu {

// ---- IoBus -----------------------------------------------------------------

void IoBus::map(uint16_t first, uint32_t count, IoHandler& handler) {
  if (count == 0 || first + count > 0x10000) throw invalid_argument("I/O ports 0x{:x}+{} are out of range", first, count);
  for (const Range& r : ranges_) {
    if (first < r.first + r.count && r.first < first + count)
      throw invalid_argument("I/O ports 0x{:x}+{} overlap 0x{:x}+{}", first, count, r.first, r.count);
  }
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), first, [](uint16_t p, const Range& r) { return p < r.first; });
  ranges_.insert(it, Range{first, count, &handler});
}

IoHandler* IoBus::find(uint16_t port) const {
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), port, [](uint16_t p, const Range& r) { return p < r.first; });
  if (it == ranges_.begin()) return nullptr;
  --it;
  return uint32_t(port - it->first) < it->count ? it->handler : nullptr;
}

uint32_t IoBus::read(uint16_t port, unsigned size) {
  IoHandler* h = find(port);
  const uint32_t ones = size >= 4 ? 0xffffffffu : (1u << (8 * size)) - 1;
  return h ? h->io_read(port, size) & ones : ones;
}

void IoBus::write(uint16_t port, unsigned size, uint32_t value) {
  if (IoHandler* h = find(port)) h->io_write(port, size, value);
}

// ---- PhysicalMemory ---------------------------------------------------------

namespace {

// Guest memory comes from anonymous mappings: untouched pages cost nothing, so
// a large -m starts at once and only the memory the guest uses is resident.
std::shared_ptr<uint8_t> map_host_memory(uint64_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw Error(errno, fmt::format("cannot allocate {} MiB of guest memory", size >> 20));
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [size](uint8_t* q) { ::munmap(q, size); });
}

}  // namespace

PhysicalRegion& PhysicalMemory::insert(PhysicalRegion region) {
  if ((region.base | region.size) & ~kPageMask || region.size == 0 || region.base + region.size < region.base)
    throw invalid_argument("physical region 0x{:x}+0x{:x} is not page aligned", region.base, region.size);
  for (const PhysicalRegion& r : regions_) {
    if (region.base < r.base + r.size && r.base < region.base + region.size)
      throw invalid_argument("physical region 0x{:x}+0x{:x} overlaps 0x{:x}+0x{:x}", region.base, region.size, r.base, r.size);
  }
  auto it = std::upper_bound(regions_.begin(), regions_.end(), region.base,
                             [](uint64_t a, const PhysicalRegion& r) { return a < r.base; });
  return *regions_.insert(it, std::move(region));
}

uint8_t* PhysicalMemory::add_ram(uint64_t base, uint64_t size) {
  auto owned = map_host_memory(size);
  uint8_t* host = owned.get();
  insert(PhysicalRegion{.base = base, .size = size, .kind = RegionKind::Ram, .host = host, .owned = std::move(owned)});
  return host;
}

void PhysicalMemory::add_rom(uint64_t base, uint64_t size, std::span<const uint8_t> contents) {
  if (contents.size() > size) throw invalid_argument("ROM contents ({} bytes) exceed the region ({} bytes)", contents.size(), size);
  auto owned = map_host_memory(size);
  std::memcpy(owned.get(), contents.data(), contents.size());
  uint8_t* host = owned.get();
  insert(PhysicalRegion{.base = base, .size = size, .kind = RegionKind::Rom, .host = host, .owned = std::move(owned)});
}

void PhysicalMemory::add_mmio(uint64_t base, uint64_t size, MmioHandler& handler) {
  insert(PhysicalRegion{.base = base, .size = size, .kind = RegionKind::Mmio, .mmio = &handler});
}

const PhysicalRegion* PhysicalMemory::find(uint64_t address) const {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), address,
                             [](uint64_t a, const PhysicalRegion& r) { return a < r.base; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return address - it->base < it->size ? &*it : nullptr;
}

uint8_t* PhysicalMemory::host_pointer(uint64_t address) const {
  const PhysicalRegion* r = find(address);
  return r && r->kind != RegionKind::Mmio ? r->host + (address - r->base) : nullptr;
}

void PhysicalMemory::write_bytes(uint64_t address, std::span<const uint8_t> bytes) {
  const uint64_t start = address, total = bytes.size();
  while (!bytes.empty()) {
    const PhysicalRegion* r = find(address);
    if (!r || r->kind == RegionKind::Mmio) throw invalid_argument("physical address 0x{:x} is not RAM or ROM", address);
    const size_t n = std::min<uint64_t>(bytes.size(), r->base + r->size - address);
    std::memcpy(r->host + (address - r->base), bytes.data(), n);
    bytes = bytes.subspan(n);
    address += n;
  }
  notify_written(start, total);
}

void PhysicalMemory::read_bytes(uint64_t address, std::span<uint8_t> bytes) const {
  while (!bytes.empty()) {
    const PhysicalRegion* r = find(address);
    if (!r || r->kind == RegionKind::Mmio) throw invalid_argument("physical address 0x{:x} is not RAM or ROM", address);
    const size_t n = std::min<uint64_t>(bytes.size(), r->base + r->size - address);
    std::memcpy(bytes.data(), r->host + (address - r->base), n);
    bytes = bytes.subspan(n);
    address += n;
  }
}

uint64_t PhysicalMemory::read(uint64_t address, unsigned size) {
  const PhysicalRegion* r = find(address);
  const uint64_t ones = size >= 8 ? ~0ull : (1ull << (8 * size)) - 1;
  if (!r || address + size > r->base + r->size) {
    // Unmapped (or straddling two regions): byte by byte.
    uint64_t value = 0;
    for (unsigned i = 0; i < size; ++i) {
      const PhysicalRegion* b = find(address + i);
      const uint64_t byte = !b ? 0xff
                            : b->kind == RegionKind::Mmio ? b->mmio->mmio_read(address + i - b->base, 1) & 0xff
                                                          : b->host[address + i - b->base];
      value |= byte << (8 * i);
    }
    return value;
  }
  if (r->kind == RegionKind::Mmio) return r->mmio->mmio_read(address - r->base, size) & ones;
  uint64_t value = 0;
  std::memcpy(&value, r->host + (address - r->base), size);
  return value;
}

void PhysicalMemory::write(uint64_t address, unsigned size, uint64_t value) {
  const PhysicalRegion* r = find(address);
  if (!r || address + size > r->base + r->size) {
    for (unsigned i = 0; i < size; ++i) {
      const PhysicalRegion* b = find(address + i);
      const uint8_t byte = static_cast<uint8_t>(value >> (8 * i));
      if (!b || b->kind == RegionKind::Rom) continue;
      if (b->kind == RegionKind::Mmio) b->mmio->mmio_write(address + i - b->base, 1, byte);
      else {
        b->host[address + i - b->base] = byte;
        notify_written(address + i, 1);
      }
    }
    return;
  }
  switch (r->kind) {
    case RegionKind::Ram:
      std::memcpy(r->host + (address - r->base), &value, size);
      notify_written(address, size);
      break;
    case RegionKind::Mmio: r->mmio->mmio_write(address - r->base, size, value); break;
    case RegionKind::Rom: break;  // writes to ROM are ignored
  }
}

uint64_t PhysicalMemory::ram_size() const {
  uint64_t total = 0;
  for (const PhysicalRegion& r : regions_) {
    if (r.kind == RegionKind::Ram) total += r.size;
  }
  return total;
}

}  // namespace kiln::emu
