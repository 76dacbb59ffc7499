#include "kiln/machine/multiboot.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>

#include "kiln/common/error.h"
#include "kiln/emulator/memory.h"

namespace kiln::machine {

namespace {

constexpr uint32_t kHeaderMagic = 0x1badb002;
constexpr size_t kSearchLimit = 8192;
constexpr uint32_t kFlagPageAlign = 1u << 0, kFlagMemoryInfo = 1u << 1, kFlagVideoMode = 1u << 2,
                   kFlagAddresses = 1u << 16;
constexpr uint32_t kUnderstoodRequired = kFlagPageAlign | kFlagMemoryInfo | kFlagVideoMode;
// Boot information flags.
constexpr uint32_t kInfoMemory = 1u << 0, kInfoBootDevice = 1u << 1, kInfoCmdline = 1u << 2, kInfoModules = 1u << 3,
                   kInfoMemoryMap = 1u << 6, kInfoLoaderName = 1u << 9;
// Conventional memory ends at 639 KiB: the top KiB is the EBDA on a PC (and
// qemu's firmware reports it so; guest tests compare against it).
constexpr uint64_t kLowMemoryEnd = 0x9fc00, kHoleStart = 0xa0000, kBiosStart = 0xf0000, kHighMemoryStart = 0x100000,
                   k4GiB = 1ull << 32;
constexpr uint64_t kInfoAreaLow = 0x9000;  // below 640 KiB, above the real-mode IVT/BDA
constexpr uint32_t kInfoSize = 88;         // up to the VBE fields (framebuffer not provided)

uint32_t le32(std::span<const uint8_t> bytes, size_t offset) {
  uint32_t v;
  std::memcpy(&v, bytes.data() + offset, 4);
  return v;
}
uint16_t le16(std::span<const uint8_t> bytes, size_t offset) {
  uint16_t v;
  std::memcpy(&v, bytes.data() + offset, 2);
  return v;
}

struct Header {
  size_t offset;  // in the file
  uint32_t flags, header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr;
};

std::optional<Header> find_header(std::span<const uint8_t> kernel) {
  const size_t limit = std::min(kernel.size(), kSearchLimit);
  for (size_t off = 0; off + 12 <= limit; off += 4) {
    if (le32(kernel, off) != kHeaderMagic) continue;
    const uint32_t flags = le32(kernel, off + 4);
    if (static_cast<uint32_t>(kHeaderMagic + flags + le32(kernel, off + 8)) != 0) continue;
    Header h{.offset = off, .flags = flags};
    if (flags & kFlagAddresses) {
      if (off + 32 > kernel.size()) return std::nullopt;
      h.header_addr = le32(kernel, off + 12);
      h.load_addr = le32(kernel, off + 16);
      h.load_end_addr = le32(kernel, off + 20);
      h.bss_end_addr = le32(kernel, off + 24);
      h.entry_addr = le32(kernel, off + 28);
    }
    return h;
  }
  return std::nullopt;
}

// Copies `bytes` to physical `address` and zero-fills up to `zero_end`, checking RAM bounds.
void place(emu::PhysicalMemory& memory, uint64_t address, std::span<const uint8_t> bytes, uint64_t zero_end,
           uint64_t ram_below_4g, std::string_view what) {
  const uint64_t end = std::max<uint64_t>(address + bytes.size(), zero_end);
  if (end > ram_below_4g || address > end)
    throw invalid_argument("{} (0x{:x}-0x{:x}) does not fit in guest RAM (0x{:x} bytes)", what, address, end, ram_below_4g);
  memory.write_bytes(address, bytes);
  std::vector<uint8_t> zeroes(zero_end > address + bytes.size() ? zero_end - address - bytes.size() : 0);
  if (!zeroes.empty()) memory.write_bytes(address + bytes.size(), zeroes);
}

struct Loaded {
  uint32_t entry;
  uint64_t start, end;  // physical range of the image and its bss
};

// Loads an a.out-kludge image.
Loaded load_aout(emu::PhysicalMemory& memory, std::span<const uint8_t> kernel, const Header& h,
                                        uint64_t ram_below_4g) {
  if (h.header_addr < h.load_addr || h.header_addr - h.load_addr > h.offset)
    throw invalid_argument("invalid kernel header: Multiboot load address 0x{:x} is after the header (0x{:x})",
                           h.load_addr, h.header_addr);
  const size_t file_offset = h.offset - (h.header_addr - h.load_addr);
  size_t size = kernel.size() - file_offset;
  if (h.load_end_addr != 0) {
    if (h.load_end_addr < h.load_addr)
      throw invalid_argument("invalid kernel header: Multiboot load_end_addr 0x{:x} is below load_addr 0x{:x}",
                             h.load_end_addr, h.load_addr);
    size = std::min<size_t>(size, h.load_end_addr - h.load_addr);
  }
  const uint64_t load_end = uint64_t{h.load_addr} + size;
  uint64_t end = load_end;
  if (h.bss_end_addr != 0) {
    if (h.bss_end_addr < load_end)
      throw invalid_argument("invalid kernel header: Multiboot bss_end_addr 0x{:x} is below the loaded image end 0x{:x}",
                             h.bss_end_addr, load_end);
    end = h.bss_end_addr;
  }
  place(memory, h.load_addr, kernel.subspan(file_offset, size), end, ram_below_4g, "kernel image");
  return {h.entry_addr, h.load_addr, end};
}

Loaded load_elf32(emu::PhysicalMemory& memory, std::span<const uint8_t> kernel,
                                         uint64_t ram_below_4g) {
  if (kernel.size() < 52 || std::memcmp(kernel.data(), "\x7f" "ELF", 4) != 0)
    throw invalid_argument("invalid kernel header: Multiboot kernel without address fields (flag 16) must be ELF");
  if (kernel[4] == 2) throw invalid_argument("Cannot load x86-64 image, give a 32bit one.");
  if (kernel[4] != 1 || kernel[5] != 1 || le16(kernel, 18) != 3)
    throw invalid_argument("invalid kernel header: not a little-endian 32-bit x86 ELF file");
  const uint32_t entry = le32(kernel, 24), phoff = le32(kernel, 28);
  const uint16_t phentsize = le16(kernel, 42), phnum = le16(kernel, 44);
  if (phentsize < 32 || phoff > kernel.size() || uint64_t{phnum} * phentsize > kernel.size() - phoff)
    throw invalid_argument("invalid kernel header: ELF program headers lie outside the file");
  uint64_t start = ~0ull, end = 0;
  uint32_t physical_entry = entry;
  bool loaded = false;
  for (uint16_t i = 0; i < phnum; ++i) {
    const size_t ph = phoff + size_t{i} * phentsize;
    if (le32(kernel, ph) != 1) continue;  // PT_LOAD
    const uint32_t offset = le32(kernel, ph + 4), vaddr = le32(kernel, ph + 8), paddr = le32(kernel, ph + 12);
    const uint32_t filesz = le32(kernel, ph + 16), memsz = le32(kernel, ph + 20);
    if (filesz > memsz || offset > kernel.size() || filesz > kernel.size() - offset)
      throw invalid_argument("invalid kernel header: ELF segment {} lies outside the file", i);
    place(memory, paddr, kernel.subspan(offset, filesz), uint64_t{paddr} + memsz, ram_below_4g, "kernel segment");
    // The entry point is virtual; the Multiboot machine state has paging off.
    if (entry >= vaddr && entry - vaddr < memsz) physical_entry = entry - vaddr + paddr;
    start = std::min<uint64_t>(start, paddr);
    end = std::max<uint64_t>(end, uint64_t{paddr} + memsz);
    loaded = true;
  }
  if (!loaded) throw invalid_argument("invalid kernel header: the ELF file has no loadable segments");
  return {physical_entry, start, end};
}

// Sequential allocator for the boot information area.
class InfoArea {
 public:
  InfoArea(emu::PhysicalMemory& memory, uint64_t base, uint64_t limit) : memory_(memory), next_(base), limit_(limit) {}
  uint32_t put(std::span<const uint8_t> bytes, uint64_t align = 4) {
    next_ = (next_ + align - 1) & ~(align - 1);
    if (next_ + bytes.size() > limit_) throw invalid_argument("Multiboot boot information does not fit in guest RAM");
    const uint64_t at = next_;
    memory_.write_bytes(at, bytes);
    next_ += bytes.size();
    return static_cast<uint32_t>(at);
  }
  uint32_t put_string(std::string_view s) {
    std::vector<uint8_t> bytes(s.begin(), s.end());
    bytes.push_back(0);
    return put(bytes, 1);
  }

 private:
  emu::PhysicalMemory& memory_;
  uint64_t next_, limit_;
};

template <typename T>
void append(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof value);
  std::memcpy(out.data() + at, &value, sizeof value);
}

}  // namespace

std::vector<uint8_t> read_boot_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw system_error(errno, "could not open {} file '{}'", what, path);
  std::vector<uint8_t> bytes{std::istreambuf_iterator<char>(in), {}};
  if (in.bad()) throw system_error(errno, "could not read {} file '{}'", what, path);
  return bytes;
}

std::vector<MultibootModule> parse_initrd_list(std::string_view list) {
  std::vector<MultibootModule> modules;
  std::string current;
  auto finish = [&] {
    MultibootModule m;
    m.command_line = current;
    m.path = current.substr(0, current.find(' '));
    if (m.path.empty()) throw invalid_argument("-initrd: empty module name in '{}'", list);
    modules.push_back(std::move(m));
    current.clear();
  };
  for (size_t i = 0; i < list.size(); ++i) {
    if (list[i] == ',') {
      if (i + 1 < list.size() && list[i + 1] == ',') {
        current += ',';
        ++i;
        continue;
      }
      finish();
      continue;
    }
    current += list[i];
  }
  finish();
  return modules;
}

bool has_multiboot_header(std::span<const uint8_t> kernel) { return find_header(kernel).has_value(); }

MultibootBoot load_multiboot(emu::PhysicalMemory& memory, std::span<const uint8_t> kernel,
                             const std::string& command_line, const std::vector<MultibootModule>& modules,
                             uint64_t ram_below_4g, uint64_t ram_above_4g) {
  const std::optional<Header> header = find_header(kernel);
  if (!header) throw invalid_argument("invalid kernel header: no Multiboot header in the first 8192 bytes");
  const uint32_t unknown = header->flags & 0xffff & ~kUnderstoodRequired;
  if (unknown) throw invalid_argument("kernel requires unsupported Multiboot features (flags 0x{:x})", unknown);

  MultibootBoot boot;
  const Loaded image = (header->flags & kFlagAddresses) ? load_aout(memory, kernel, *header, ram_below_4g)
                                                        : load_elf32(memory, kernel, ram_below_4g);
  boot.entry = image.entry;
  boot.kernel_end = image.end;
  const uint64_t end = image.end;

  // Modules follow the kernel, each page aligned (whether or not flag 0 asks).
  std::vector<uint8_t> module_list;
  uint64_t next = (end + emu::kPageSize - 1) & emu::kPageMask;
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  for (const MultibootModule& m : modules) {
    place(memory, next, m.contents, next + m.contents.size(), ram_below_4g, fmt::format("module '{}'", m.path));
    ranges.emplace_back(static_cast<uint32_t>(next), static_cast<uint32_t>(next + m.contents.size()));
    next = (next + m.contents.size() + emu::kPageSize - 1) & emu::kPageMask;
  }

  // The information goes below 640 KiB unless the kernel itself lives there.
  const bool kernel_low = image.start < kHoleStart && image.end > kInfoAreaLow;
  InfoArea area(memory, kernel_low ? next : kInfoAreaLow, kernel_low ? ram_below_4g : kLowMemoryEnd);

  const uint32_t cmdline = area.put_string(command_line);
  const uint32_t loader_name = area.put_string("kiln");
  for (size_t i = 0; i < modules.size(); ++i) {
    const uint32_t string = area.put_string(modules[i].command_line);
    append<uint32_t>(module_list, ranges[i].first);
    append<uint32_t>(module_list, ranges[i].second);
    append<uint32_t>(module_list, string);
    append<uint32_t>(module_list, 0);
  }
  const uint32_t mods_addr = module_list.empty() ? 0 : area.put(module_list);

  std::vector<uint8_t> map;
  auto entry_of = [&](uint64_t base, uint64_t length, uint32_t type) {
    append<uint32_t>(map, 20);
    append<uint64_t>(map, base);
    append<uint64_t>(map, length);
    append<uint32_t>(map, type);
  };
  entry_of(0, kLowMemoryEnd, 1);
  entry_of(kLowMemoryEnd, kHoleStart - kLowMemoryEnd, 2);
  entry_of(kBiosStart, kHighMemoryStart - kBiosStart, 2);
  entry_of(kHighMemoryStart, ram_below_4g - kHighMemoryStart, 1);
  if (ram_above_4g) entry_of(k4GiB, ram_above_4g, 1);
  const uint32_t mmap_addr = area.put(map);

  std::vector<uint8_t> info;
  append<uint32_t>(info, kInfoMemory | kInfoBootDevice | kInfoCmdline | kInfoModules | kInfoMemoryMap | kInfoLoaderName);
  append<uint32_t>(info, kLowMemoryEnd / 1024);                                   // mem_lower (KiB)
  append<uint32_t>(info, static_cast<uint32_t>((ram_below_4g - kHighMemoryStart) / 1024));  // mem_upper (KiB)
  append<uint32_t>(info, 0xffffffff);                                             // boot_device: none
  append<uint32_t>(info, cmdline);
  append<uint32_t>(info, static_cast<uint32_t>(modules.size()));
  append<uint32_t>(info, mods_addr);
  for (int i = 0; i < 4; ++i) append<uint32_t>(info, 0);  // syms
  append<uint32_t>(info, static_cast<uint32_t>(map.size()));
  append<uint32_t>(info, mmap_addr);
  append<uint32_t>(info, 0);  // drives_length
  append<uint32_t>(info, 0);  // drives_addr
  append<uint32_t>(info, 0);  // config_table
  append<uint32_t>(info, loader_name);
  append<uint32_t>(info, 0);  // apm_table
  info.resize(kInfoSize, 0);
  boot.info_address = area.put(info, 8);
  return boot;
}

}  // namespace kiln::machine
