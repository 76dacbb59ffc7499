// Multiboot v1 (0.6.96) loader for -kernel: ELF32 kernels and the a.out
// kludge (header flag 16), modules from -initrd, and the boot information
// (memory sizes, memory map with the 640 KiB - 1 MiB hole, command line,
// modules, boot loader name "kiln").
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kiln/emulator/physical_memory.h"

namespace kiln::machine {

constexpr uint32_t kMultibootBootloaderMagic = 0x2badb002;

struct MultibootModule {
  std::string path;         // file to load
  std::string command_line; // "path args" as given (the module's string)
  std::vector<uint8_t> contents;
};

struct MultibootBoot {
  uint32_t entry = 0;
  uint32_t info_address = 0;  // EBX
  uint64_t kernel_end = 0;    // first byte after the kernel image and bss
};

// Reads a whole file; kiln::Error "could not open <what> file 'path': reason".
std::vector<uint8_t> read_boot_file(const std::string& path, std::string_view what);

// Splits qemu's -initrd list: "file1 args,file2" (",," is a literal comma).
std::vector<MultibootModule> parse_initrd_list(std::string_view list);

// Whether `kernel` has a valid Multiboot header in its first 8192 bytes.
bool has_multiboot_header(std::span<const uint8_t> kernel);

// Loads kernel and modules into RAM (the map must hold RAM at 0 and 1 MiB)
// and writes the boot information. `command_line` is what the kernel sees
// (qemu passes "kernel-path append"). Throws kiln::Error on a bad image.
MultibootBoot load_multiboot(emu::PhysicalMemory& memory, std::span<const uint8_t> kernel,
                             const std::string& command_line, const std::vector<MultibootModule>& modules,
                             uint64_t ram_below_4g, uint64_t ram_above_4g);

}  // namespace kiln::machine
