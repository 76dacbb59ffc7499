// One emulated x86 CPU with the TCG-style execution loop: find or translate
// the TB at (pc, mode), run it on the interpreter, handle its exit.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "kiln/emulator/cpu_state.h"
#include "kiln/emulator/frontend.h"
#include "kiln/emulator/interpreter.h"
#include "kiln/emulator/io.h"
#include "kiln/emulator/memory.h"

namespace kiln::emu {

// What -d selects (QEMU's in_asm, op, op_opt, exec, cpu).
enum LogMask : uint32_t { kLogInAsm = 1, kLogOp = 2, kLogOpOpt = 4, kLogExec = 8, kLogCpu = 16 };
// Parses "in_asm,op,exec"; throws kiln::Error on an unknown item.
uint32_t parse_log_mask(std::string_view items);

struct TranslatedBlock {
  uint64_t pc = 0;
  uint32_t mode = 0;
  uint32_t guest_insns = 0;
  uint32_t guest_bytes = 0;
  ExecBlock exec;
};

// Translated blocks keyed by guest PC and CPU mode, with a direct-mapped
// front cache so the common lookup is one compare.
class TbCache {
 public:
  TranslatedBlock* find(uint64_t pc, uint32_t mode) {
    auto& slot = fast_[hash(pc, mode)];
    if (slot && slot->pc == pc && slot->mode == mode) return slot;
    auto it = blocks_.find(Key{pc, mode});
    if (it == blocks_.end()) return nullptr;
    slot = it->second.get();
    return slot;
  }
  TranslatedBlock* insert(std::unique_ptr<TranslatedBlock> tb);
  void flush();
  size_t size() const { return blocks_.size(); }

 private:
  struct Key {
    uint64_t pc;
    uint32_t mode;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const { return std::hash<uint64_t>()(k.pc * 31 + k.mode); }
  };
  static size_t hash(uint64_t pc, uint32_t mode) { return (pc ^ (pc >> 12) ^ mode) & (kFastSize - 1); }
  static constexpr size_t kFastSize = 4096;
  std::unordered_map<Key, std::unique_ptr<TranslatedBlock>, KeyHash> blocks_;
  std::vector<TranslatedBlock*> fast_ = std::vector<TranslatedBlock*>(kFastSize, nullptr);
};

// The source of external (maskable) interrupts, e.g. the machine's 8259 PIC.
// pending() may be asked at any TB boundary; acknowledge() is called once the
// CPU accepts the interrupt (IF set, no interrupt shadow) and returns the vector.
class InterruptController {
 public:
  virtual ~InterruptController() = default;
  virtual bool pending() = 0;
  virtual uint8_t acknowledge() = 0;
};

// System mode adds Reset (triple fault: the machine must reset) and ExitRequest
// (request_exit() was called; pending interrupts have been taken first).
enum class StopReason { InsnLimit, Exception, Halt, Syscall, Reset, ExitRequest };

struct RunResult {
  StopReason reason = StopReason::InsnLimit;
  uint64_t insns = 0;
};

struct CpuStats {
  uint64_t translations = 0;
  uint64_t blocks_executed = 0;
};

class Cpu {
 public:
  explicit Cpu(Memory& memory) : memory_(memory) {}

  CpuState state;

  // Runs until an exception, HLT, SYSCALL, or at least `max_insns` instructions.
  // In system mode exceptions and interrupts are delivered through the IDT
  // instead; HLT returns Halt and a later run() resumes once an interrupt is
  // deliverable; a triple fault returns Reset.
  RunResult run(uint64_t max_insns);

  void set_log(uint32_t mask, std::FILE* stream) {
    log_mask_ = mask;
    log_ = stream;
  }
  TranslateOptions& translate_options() { return options_; }
  void flush_translations() { cache_.flush(); }
  const CpuStats& stats() const { return stats_; }
  Memory& memory() { return memory_; }

  // Devices and timers (any thread) ask the CPU to leave its current TB and
  // look at interrupts / stop requests; checked at every TB boundary.
  void request_exit() { exit_request_.store(true, std::memory_order_release); }
  void set_io_bus(IoBus* bus) { io_ = bus; }
  IoBus* io_bus() { return io_; }
  void set_interrupt_controller(InterruptController* pic) { pic_ = pic; }
  // System mode: exceptions whose vector bit is set (0..31; INT3/INTO included,
  // INT n not) are not delivered but stop run() with StopReason::Exception and the
  // state as user mode reports it (faults at the instruction, traps after it), like
  // a VMX exception bitmap: for debuggers (#BP, #DB) and tests without an IDT.
  void set_exception_intercepts(uint32_t vectors) { exception_intercepts_ = vectors; }
  bool exception_intercepted(uint8_t vector) const { return vector < 32 && ((exception_intercepts_ >> vector) & 1); }

  // TLB maintenance for MOV CR0/CR3/CR4, INVLPG and EFER writes. Flushing more
  // than the architecture requires is always correct; the soft MMU narrows it.
  void invalidate_tlb(bool include_global) {
    (void)include_global;
    flush_tlb();
  }
  void invalidate_tlb_page(uint64_t linear) {
    (void)linear;
    flush_tlb();
  }

  // Guest memory accessors used by the backends. On failure they fill
  // state.exception (#PF or #GP) and return false.
  template <unsigned Size>
  bool read(uint64_t address, uint64_t& out) {
    const TlbEntry& e = tlb_[0][(address >> 12) & (kTlbSize - 1)];
    if (e.tag == (address & kPageMask) && (address & ~kPageMask) <= kPageSize - Size) [[likely]] {
      out = 0;
      std::memcpy(&out, e.host + (address & ~kPageMask), Size);
      return true;
    }
    return read_slow(address, Size, out);
  }
  // Checks that `address` is accessible (fills the TLB); used before multi-part
  // stores so that a fault leaves memory untouched.
  bool probe(uint64_t address, Access access) {
    const TlbEntry& e = tlb_[static_cast<int>(access)][(address >> 12) & (kTlbSize - 1)];
    return e.tag == (address & kPageMask) || translate_page(address, access) != nullptr;
  }
  template <unsigned Size>
  bool write(uint64_t address, uint64_t value) {
    const TlbEntry& e = tlb_[1][(address >> 12) & (kTlbSize - 1)];
    if (e.tag == (address & kPageMask) && (address & ~kPageMask) <= kPageSize - Size) [[likely]] {
      std::memcpy(e.host + (address & ~kPageMask), &value, Size);
      return true;
    }
    return write_slow(address, Size, value);
  }

 private:
  struct TlbEntry {
    uint64_t tag = ~uint64_t{0};
    uint8_t* host = nullptr;
  };
  static constexpr size_t kTlbSize = 256;

  uint8_t* translate_page(uint64_t address, Access access);
  bool read_slow(uint64_t address, unsigned size, uint64_t& out);
  bool write_slow(uint64_t address, unsigned size, uint64_t value);
  void flush_tlb();
  TranslatedBlock* get_block(uint64_t pc);
  void log_cpu_state();
  // System mode, at a TB boundary: takes a deliverable external interrupt; returns
  // true with `reason` set when run() must return (halted, triple fault, exit request).
  bool system_boundary(StopReason& reason);

  Memory& memory_;
  IoBus* io_ = nullptr;
  InterruptController* pic_ = nullptr;
  uint32_t exception_intercepts_ = 0;
  std::atomic<bool> exit_request_{false};
  TbCache cache_;
  TranslateOptions options_;
  CpuStats stats_;
  std::vector<uint64_t> frame_;
  TlbEntry tlb_[2][kTlbSize];
  uint64_t tlb_generation_ = ~uint64_t{0};
  uint32_t log_mask_ = 0;
  std::FILE* log_ = nullptr;
};

}  // namespace kiln::emu
