// Guest instructions per second of the interpreter backend on compute-bound
// snippets, printed beside the same code run natively.
// Usage: kiln-emulator-bench [DIR]   (DIR holds snippet0.bin ... snippet2.bin)
#include <sys/mman.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include <fmt/format.h>

#include "kiln/emulator/cpu.h"

using namespace kiln::emu;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint64_t kCode = 0x400000, kData = 0x600000, kStack = 0x800000, kReturn = 0xdead0000;
constexpr size_t kDataSize = 65536;

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  return {std::istreambuf_iterator<char>(in), {}};
}

void fill(uint8_t* data) {
  for (size_t i = 0; i < kDataSize; ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
}

struct Result {
  double seconds;
  uint64_t value;
  uint64_t insns;
};

Result run_emulated(const std::vector<uint8_t>& code) {
  FlatMemory memory;
  memory.map(kCode, (code.size() + kPageSize - 1) & kPageMask, kPermRead | kPermExec);
  memory.write_bytes(kCode, code);
  uint8_t* data = memory.map(kData, kDataSize, kPermRead | kPermWrite);
  fill(data);
  uint8_t* stack = memory.map(kStack - kPageSize, kPageSize, kPermRead | kPermWrite);
  std::memcpy(stack + kPageSize - 8, &kReturn, 8);  // return address: unmapped, ends the run
  Cpu cpu(memory);
  cpu.state.rip = kCode;
  cpu.state.regs[RSP] = kStack - 8;
  cpu.state.regs[RDI] = kData;
  auto start = Clock::now();
  uint64_t insns = 0;
  for (;;) {
    RunResult r = cpu.run(~uint64_t{0});
    insns += r.insns;
    if (r.reason == StopReason::Exception) break;
  }
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (cpu.state.rip != kReturn) throw std::runtime_error(fmt::format("guest faulted at 0x{:x}", cpu.state.rip));
  return {secs, cpu.state.regs[RAX] & 0xffffffff, insns};
}

Result run_native(const std::vector<uint8_t>& code) {
  void* mem = mmap(nullptr, code.size(), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw std::runtime_error("mmap failed");
  std::memcpy(mem, code.data(), code.size());
  mprotect(mem, code.size(), PROT_READ | PROT_EXEC);
  std::vector<uint8_t> data(kDataSize);
  fill(data.data());
  auto fn = reinterpret_cast<uint32_t (*)(uint8_t*)>(mem);
  auto start = Clock::now();
  uint32_t v = fn(data.data());
  double secs = std::chrono::duration<double>(Clock::now() - start).count();
  munmap(mem, code.size());
  return {secs, v, 0};
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = argc > 1 ? argv[1] : KILN_BENCH_SNIPPET_DIR;
  static constexpr const char* kNames[] = {"integer loop", "sieve", "crc32 (bitwise)"};
  fmt::print("{:<16} {:>14} {:>12} {:>14} {:>12} {:>10}\n", "snippet", "guest insns", "emu s", "emu MIPS", "native s",
             "slowdown");
  for (int i = 0; i < 3; ++i) {
    auto code = read_file(fmt::format("{}/snippet{}.bin", dir, i));
    Result emu = run_emulated(code);
    Result nat = run_native(code);
    if (emu.value != nat.value) {
      fmt::print(stderr, "{}: result mismatch (emulated 0x{:x}, native 0x{:x})\n", kNames[i], emu.value, nat.value);
      return 1;
    }
    fmt::print("{:<16} {:>14} {:>12.3f} {:>14.1f} {:>12.4f} {:>9.0f}x\n", kNames[i], emu.insns, emu.seconds,
               emu.insns / emu.seconds / 1e6, nat.seconds, emu.seconds / nat.seconds);
  }
  return 0;
}
