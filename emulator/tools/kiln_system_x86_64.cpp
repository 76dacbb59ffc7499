// kiln-system-x86_64: a PC emulator with qemu-system-x86_64's command line.
// Today it boots Multiboot kernels (-kernel) on the TCG-style interpreter.
#include <fmt/format.h>

#include <csignal>

#include <string>
#include <vector>

#include "kiln/common/error.h"
#include "kiln/machine/options.h"
#include "kiln/machine/pc_machine.h"

int main(int argc, char** argv) {
  // A closed serial peer or output pipe must not kill the emulator.
  std::signal(SIGPIPE, SIG_IGN);
  try {
    const std::vector<std::string> args(argv + 1, argv + argc);
    kiln::machine::CommandLine command_line = kiln::machine::parse_command_line(args);
    if (command_line.exit_now) return command_line.exit_status;
    kiln::machine::PcMachine machine(std::move(command_line.config));
    return machine.run();
  } catch (const kiln::Error& e) {
    fmt::print(stderr, "kiln-system-x86_64: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "kiln-system-x86_64: {}\n", e.what());
    return 1;
  }
}
