// kiln-x86-run: runs a flat x86 binary in the translator (user mode, no OS),
// for tests and for looking at translations with -d in_asm,op,op_opt,exec,cpu.
// SYSCALL implements just exit (60) and write (1) to stdout/stderr, Linux numbering.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <span>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "kiln/common/error.h"
#include "kiln/emulator/cpu.h"
#include "kiln/emulator/lazy_flags.h"

using namespace kiln::emu;

int main(int argc, char** argv) {
  CLI::App app{"Run a flat x86 binary in the Kiln translator"};
  std::string file, log_items, log_file;
  uint64_t load_address = 0x400000, stack_size = 1 << 20, max_insns = 1'000'000'000;
  unsigned bits = 64;
  app.add_option("file", file, "flat binary to load")->required();
  app.add_option("--load", load_address, "load and entry address");
  app.add_option("--bits", bits, "code size: 16, 32 or 64")->check(CLI::IsMember({16, 32, 64}));
  app.add_option("--max-insns", max_insns, "stop after this many instructions");
  app.add_option("-d", log_items, "log items: in_asm,op,op_opt,exec,cpu");
  app.add_option("-D", log_file, "write the log to this file instead of stderr");
  CLI11_PARSE(app, argc, argv);

  try {
    std::ifstream in(file, std::ios::binary);
    if (!in) throw kiln::system_error(errno, "Could not open '{}'", file);
    std::vector<uint8_t> image{std::istreambuf_iterator<char>(in), {}};
    FlatMemory memory;
    uint64_t image_size = (image.size() + kPageSize - 1) & kPageMask;
    if (image_size == 0) image_size = kPageSize;
    memory.map(load_address, image_size, kPermRead | kPermWrite | kPermExec);
    memory.write_bytes(load_address, image);
    const uint64_t stack_top = bits == 64 ? 0x7fff0000 : 0x7ff0000;
    memory.map(stack_top - stack_size, stack_size, kPermRead | kPermWrite);

    Cpu cpu(memory);
    cpu.state.mode.code = bits == 64 ? CodeSize::Bits64 : bits == 32 ? CodeSize::Bits32 : CodeSize::Bits16;
    cpu.state.rip = load_address;
    cpu.state.regs[RSP] = stack_top - 64;
    std::FILE* log = stderr;
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> owned_log(nullptr, std::fclose);
    if (!log_file.empty()) {
      owned_log.reset(std::fopen(log_file.c_str(), "w"));
      if (!owned_log) throw kiln::system_error(errno, "Could not open log file '{}'", log_file);
      log = owned_log.get();
    }
    if (!log_items.empty()) cpu.set_log(parse_log_mask(log_items), log);

    uint64_t executed = 0;
    while (executed < max_insns) {
      RunResult r = cpu.run(max_insns - executed);
      executed += r.insns;
      if (r.reason == StopReason::Syscall) {
        uint64_t nr = cpu.state.regs[RAX];
        if (nr == 60 || nr == 231) return static_cast<int>(cpu.state.regs[RDI] & 0xff);
        if (nr == 1) {
          // The guest chooses the length: copy through a bounded buffer, and
          // stop at the first unmapped byte as write(2) would (-EFAULT).
          std::FILE* out = cpu.state.regs[RDI] == 2 ? stderr : stdout;
          std::vector<uint8_t> chunk(kPageSize);
          uint64_t done = 0;
          const uint64_t length = cpu.state.regs[RDX];
          try {
            while (done < length) {
              const uint64_t address = cpu.state.regs[RSI] + done;
              const uint64_t piece = std::min<uint64_t>(length - done, kPageSize - (address & ~kPageMask));
              memory.read_bytes(address, std::span(chunk).first(piece));
              std::fwrite(chunk.data(), 1, piece, out);
              done += piece;
            }
          } catch (const kiln::Error&) {
          }
          cpu.state.regs[RAX] = done > 0 || length == 0 ? done : static_cast<uint64_t>(-14);  // EFAULT
        } else {
          cpu.state.regs[RAX] = static_cast<uint64_t>(-38);  // ENOSYS
        }
        continue;
      }
      if (r.reason == StopReason::Halt) {
        fmt::print(stderr, "kiln-x86-run: halted at 0x{:x} after {} instructions\n", cpu.state.rip, executed);
        return 0;
      }
      if (r.reason == StopReason::Exception) {
        fmt::print(stderr, "kiln-x86-run: guest exception {} (error 0x{:x}, address 0x{:x}) at rip 0x{:x}\n",
                   static_cast<int>(cpu.state.exception.vector), cpu.state.exception.error_code,
                   cpu.state.exception.fault_address, cpu.state.rip);
        return 128;
      }
    }
    fmt::print(stderr, "kiln-x86-run: instruction limit reached\n");
    return 0;
  } catch (const kiln::Error& e) {
    fmt::print(stderr, "kiln-x86-run: {}\n", e.what());
    return 1;
  }
}
