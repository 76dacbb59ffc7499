#include "kiln/emulator/memory.h"

#include <algorithm>
#include <cstring>

#include "kiln/common/error.h"

namespace kiln::emu {

bool Memory::translate(uint64_t linear, Access access, Privilege, const CpuState& cpu, Translation& out) {
  out = Translation{};
  if (access != Access::Execute && cpu.mode.code == CodeSize::Bits64 && !canonical(linear)) {
    out.vector = Vector::GP;
    return false;
  }
  uint8_t* host = page_pointer(linear, access);
  if (!host) {
    // Not present, user mode; bit 1 = write, bit 4 = instruction fetch.
    out.error_code = pf::U | (access == Access::Write ? pf::W : 0) | (access == Access::Execute ? pf::ID : 0);
    return false;
  }
  out.physical = linear;
  out.host = host;
  return true;
}

size_t Memory::fetch_code(uint64_t address, uint8_t* out, size_t want, uint64_t& fault_address) {
  size_t got = 0;
  while (got < want) {
    const uint64_t at = address + got;
    uint8_t* page = page_pointer(at, Access::Execute);
    if (!page) {
      fault_address = at;
      break;
    }
    const size_t n = std::min<size_t>(want - got, kPageSize - (at & ~kPageMask));
    std::memcpy(out + got, page + (at & ~kPageMask), n);
    got += n;
  }
  return got;
}

FlatMemory::Region* FlatMemory::find(uint64_t address) {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), address,
                             [](uint64_t a, const Region& r) { return a < r.base; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return address - it->base < it->size ? &*it : nullptr;
}

void FlatMemory::insert(Region region) {
  if ((region.base | region.size) & ~kPageMask || region.size == 0 || region.base + region.size < region.base)
    throw invalid_argument("guest memory region 0x{:x}+0x{:x} is not page aligned", region.base, region.size);
  for (const Region& r : regions_)
    if (region.base < r.base + r.size && r.base < region.base + region.size)
      throw invalid_argument("guest memory region 0x{:x}+0x{:x} overlaps 0x{:x}+0x{:x}", region.base, region.size,
                             r.base, r.size);
  auto it = std::upper_bound(regions_.begin(), regions_.end(), region.base,
                             [](uint64_t a, const Region& r) { return a < r.base; });
  regions_.insert(it, std::move(region));
  changed();
}

uint8_t* FlatMemory::map(uint64_t base, uint64_t size, uint8_t perms) {
  auto owned = std::make_unique<uint8_t[]>(size);
  uint8_t* host = owned.get();
  insert(Region{base, size, host, perms, std::move(owned)});
  return host;
}

void FlatMemory::map_host(uint64_t base, std::span<uint8_t> host, uint8_t perms) {
  insert(Region{base, host.size(), host.data(), perms, nullptr});
}

void FlatMemory::unmap_all() {
  regions_.clear();
  changed();
}

void FlatMemory::set_perms(uint64_t base, uint8_t perms) {
  Region* r = find(base);
  if (!r) throw invalid_argument("no guest memory region at 0x{:x}", base);
  r->perms = perms;
  changed();
}

uint8_t* FlatMemory::page_pointer(uint64_t address, Access access) {
  Region* r = find(address);
  if (!r) return nullptr;
  static constexpr uint8_t kNeed[] = {kPermRead, kPermWrite, kPermExec};
  if (!(r->perms & kNeed[static_cast<int>(access)])) return nullptr;
  return r->host + ((address & kPageMask) - r->base);
}

void FlatMemory::write_bytes(uint64_t address, std::span<const uint8_t> bytes) {
  while (!bytes.empty()) {
    Region* r = find(address);
    if (!r) throw invalid_argument("guest address 0x{:x} is not mapped", address);
    size_t n = std::min<uint64_t>(bytes.size(), r->base + r->size - address);
    std::memcpy(r->host + (address - r->base), bytes.data(), n);
    bytes = bytes.subspan(n);
    address += n;
  }
}

void FlatMemory::read_bytes(uint64_t address, std::span<uint8_t> bytes) {
  while (!bytes.empty()) {
    Region* r = find(address);
    if (!r) throw invalid_argument("guest address 0x{:x} is not mapped", address);
    size_t n = std::min<uint64_t>(bytes.size(), r->base + r->size - address);
    std::memcpy(bytes.data(), r->host + (address - r->base), n);
    bytes = bytes.subspan(n);
    address += n;
  }
}

}  // namespace kiln::emu
