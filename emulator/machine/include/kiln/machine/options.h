// qemu-system-x86_64's command line for kiln-system-x86_64: single-dash long
// options (-kernel, -nographic ...), "-device driver,key=value" lists, size
// suffixes for -m. Parsed with CLI11 after the qemu spellings are normalised.
#pragma once

#include <string>
#include <vector>

#include "kiln/machine/pc_machine.h"

namespace kiln::machine {

struct CommandLine {
  MachineConfig config;
  bool exit_now = false;  // --help / -version printed
  int exit_status = 0;
};

// Throws kiln::Error with a qemu-style message ("-m 1X: ...") on bad input.
// `kvm_device` is checked for -accel kvm (tests pass a path that does not exist).
CommandLine parse_command_line(const std::vector<std::string>& args, const std::string& kvm_device = "/dev/kvm");

// -m's size: "128" (MiB), "512k", "1G", "size=2G". Throws on a bad value.
uint64_t parse_memory_size(std::string_view text);

}  // namespace kiln::machine
