// Differential testing of the translator against the host CPU: random user-mode
// instruction sequences run natively in a forked, sandboxed child and in the
// emulator from identical registers and memory; the final states must match.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "kiln/emulator/cpu_state.h"

namespace kiln::emu::difftest {

// Fixed guest layout, identical natively and in the emulator (below 4 GiB for 32-bit code).
constexpr uint64_t kCodeBase = 0x10000000;
constexpr uint64_t kCodeSize = 0x10000;
constexpr uint64_t kDataBase = 0x10100000;
constexpr uint64_t kDataSize = 0x2000;
constexpr uint64_t kStackTop = kDataBase + 0x1000;  // pushes use the first page, pops may read the second

enum class Outcome { Trap, Segv, DivideError, Illegal, Bus, Other, Timeout };
std::string outcome_name(Outcome o);

struct MachineState {
  uint64_t regs[16] = {};
  uint64_t rip = 0;
  uint64_t rflags = 0;
  uint64_t xmm[16][2] = {};
  uint32_t mxcsr = 0x1f80;
  // x87 state in FXSAVE terms: ST(i) in stack order (MMX registers are the
  // physical registers' significands), abridged tag word, FSW with TOP.
  uint16_t fcw = 0x37f, fsw = 0;
  uint8_t ftw = 0;
  X87Reg st[8] = {};
  std::vector<uint8_t> data;  // kDataSize bytes
  Outcome outcome = Outcome::Other;
};

struct Sequence {
  bool bits32 = false;
  std::vector<uint8_t> code;   // the sequence proper; ends with INT3
  uint64_t start = 0;          // guest address of code[0]
  uint64_t undefined_flags = 0;  // RFLAGS bits the final state may legitimately differ in
  // Undefined RFLAGS bits before each instruction (for faults in mid-sequence).
  std::vector<std::pair<uint64_t, uint64_t>> undefined_at;
  MachineState initial;        // registers, flags and data at entry
  std::string listing;         // disassembly for failure reports
};

class Generator {
 public:
  explicit Generator(uint64_t seed, bool bits32) : rng_(seed), bits32_(bits32) {}
  Sequence generate(unsigned units);

 private:
  std::mt19937_64 rng_;
  bool bits32_;
};

// Runs natively in a forked child. Throws kiln::Error on harness failure.
MachineState run_native(const Sequence& seq);
MachineState run_emulated(const Sequence& seq, bool optimise = true);

// Empty when equal, else a report of the differences.
std::string compare(const Sequence& seq, const MachineState& native, const MachineState& emulated);

// Whether the host can run native sequences in this mode (32-bit needs the kernel's
// compatibility-mode support).
bool native_mode_available(bool bits32);

// Runs `count` sequences from `seed`; returns failure reports (at most `max_failures`).
struct DiffSummary {
  unsigned sequences = 0;
  unsigned native_instructions = 0;
  std::vector<std::string> failures;
};
DiffSummary run_campaign(uint64_t seed, unsigned count, bool bits32, unsigned max_failures = 3, bool optimise = true);

}  // namespace kiln::emu::difftest
