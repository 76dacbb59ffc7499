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
  uint64_t pc = 0;       // RIP of its first instruction
  uint64_t phys_pc = 0;  // physical address of its first byte
  uint64_t cs_base = 0;  // CS base it was fetched with (0 in 64-bit and user mode)
  uint32_t mode = 0;
  uint32_t guest_insns = 0;
  uint32_t guest_bytes = 0;
  // The physical code bytes it was translated from, one span per linear page
  // (a second one when its last instruction, or a CS base that is not page
  // aligned, carries the code into the next page).
  struct Span {
    uint64_t linear_page;
    uint64_t phys;  // first byte
    uint32_t size;
  };
  std::vector<Span> spans;
  size_t host_bytes = 0;  // what it costs in the cache (counted against the size limit)
  bool cached = false;    // registered in the TbCache (false: a one-off block)
  // Successors seen at run time (block chaining without code patching): a link
  // holds while the cache's chain generation is unchanged, which every block
  // removal and every TLB invalidation bumps; the successor must also match
  // RIP, mode key and CS base. Skips the lookup's PC translation and hashing.
  struct Link {
    uint64_t generation = 0;
    TranslatedBlock* tb = nullptr;
  };
  Link links[2];
  uint8_t next_link = 0;
  ExecBlock exec;
};

// Translated blocks keyed by RIP, physical address of the first byte, CS base
// and CPU mode (RIP too because blocks embed RIP values: the same physical code
// reached through another linear address is another block), with a
// direct-mapped front cache so the common lookup is one compare. Every block is
// registered on the physical pages its code came from; writes to those bytes
// invalidate it. Blocks removed while they may still run (invalidation by a
// store inside the running block, flushes from helpers) are retired and freed
// by release_retired() between blocks.
class TbCache {
 public:
  TranslatedBlock* find(uint64_t pc, uint64_t phys_pc, uint64_t cs_base, uint32_t mode) {
    TranslatedBlock*& slot = fast_[hash(pc, phys_pc)];
    if (slot && slot->pc == pc && slot->phys_pc == phys_pc && slot->mode == mode && slot->cs_base == cs_base)
      return slot;
    auto it = blocks_.find(Key{pc, phys_pc, cs_base, mode});
    if (it == blocks_.end()) return nullptr;
    slot = it->second.get();
    return slot;
  }
  // Takes the block and registers its code pages; `new_code_page(phys_page)` is
  // called for every page that did not hold translated code before.
  template <typename NewPage>
  TranslatedBlock* insert(std::unique_ptr<TranslatedBlock> tb, NewPage&& new_code_page) {
    for (const auto& span : tb->spans)
      if (!code_pages_.contains(span.phys & kPageMask)) new_code_page(span.phys & kPageMask);
    return insert_block(std::move(tb));
  }
  // True when [phys, phys + size) (within one page) overlaps translated code.
  bool overlaps_code(uint64_t phys, uint64_t size) const;
  bool is_code_page(uint64_t phys_page) const { return code_pages_.contains(phys_page); }
  // Invalidates every block with code in [phys, phys + size) (within one page); returns how many.
  size_t invalidate(uint64_t phys, uint64_t size);
  void flush();
  // See TranslatedBlock::links.
  uint64_t chain_generation() const { return chain_generation_; }
  void break_chains() { ++chain_generation_; }
  void release_retired() {
    if (!retired_.empty()) retired_.clear();
  }
  size_t size() const { return blocks_.size(); }
  size_t host_bytes() const { return host_bytes_; }

 private:
  struct Key {
    uint64_t pc;
    uint64_t phys_pc;
    uint64_t cs_base;
    uint32_t mode;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<uint64_t>()(k.phys_pc * 31 + k.pc * 7 + k.cs_base * 3 + k.mode);
    }
  };
  // The blocks with code on one physical page, and which of its bytes hold code.
  struct CodePage {
    std::vector<TranslatedBlock*> blocks;
    uint64_t bytes[kPageSize / 64] = {};
  };
  TranslatedBlock* insert_block(std::unique_ptr<TranslatedBlock> tb);
  // Unregisters `tb` and moves it to retired_ (it may be running).
  void retire(TranslatedBlock* tb);
  static size_t hash(uint64_t pc, uint64_t phys_pc) { return (pc ^ phys_pc ^ (phys_pc >> 12)) & (kFastSize - 1); }
  static constexpr size_t kFastSize = 4096;
  std::unordered_map<Key, std::unique_ptr<TranslatedBlock>, KeyHash> blocks_;
  std::unordered_map<uint64_t, CodePage> code_pages_;
  std::vector<std::unique_ptr<TranslatedBlock>> retired_;
  std::vector<TranslatedBlock*> fast_ = std::vector<TranslatedBlock*>(kFastSize, nullptr);
  size_t host_bytes_ = 0;
  uint64_t chain_generation_ = 1;
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
  uint64_t tb_cache_flushes = 0;   // whole-cache flushes because the size limit was reached
  uint64_t tb_invalidations = 0;   // blocks dropped because their code was written
  uint64_t smc_restarts = 0;       // stores into the running block: its instruction re-run alone
};

class Cpu {
 public:
  explicit Cpu(Memory& memory);
  ~Cpu();
  Cpu(const Cpu&) = delete;
  Cpu& operator=(const Cpu&) = delete;

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
  // Size limit of the TB cache (host bytes of translated code, default 32 MiB);
  // reaching it flushes the whole cache (CpuStats::tb_cache_flushes).
  void set_tb_cache_limit(size_t bytes) { tb_cache_limit_ = bytes; }
  size_t tb_cache_limit() const { return tb_cache_limit_; }
  const TbCache& tb_cache() const { return cache_; }
  // Drops translated code in [phys, phys + size) (stores by the CPU do this
  // themselves; PhysicalMemory writes reach it through its write observer).
  void invalidate_code(uint64_t phys, uint64_t size);
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

  // TLB maintenance for MOV CR0/CR3/CR4, INVLPG and EFER writes.
  // invalidate_tlb(false) keeps global entries when CR4.PGE is set (MOV CR3);
  // invalidate_tlb(true) drops everything (CR0/CR4 paging bits, EFER).
  // invalidate_tlb_page drops the translation of `linear` (the whole large page
  // for a 2/4 MiB or 1 GiB mapping), global or not, as INVLPG does.
  // The TLB holds entries of one privilege class (user: CPL 3, or supervisor);
  // it is flushed when the CPL crosses between the two (checked before each
  // block and in the slow path), so U/S checks are never bypassed.
  void invalidate_tlb(bool include_global);
  void invalidate_tlb_page(uint64_t linear);
  // Call after changing state.sys.cpl (or mode.system) when memory accesses
  // follow before the current block ends (e.g. inside an exception-delivery
  // helper); the run loop checks this by itself before every block.
  void privilege_changed() { check_tlb_privilege(); }

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
    return read_slow(address, Size, out, data_privilege());
  }
  // Checks that `address` is accessible (fills the TLB); used before multi-part
  // stores so that a fault leaves memory untouched.
  bool probe(uint64_t address, Access access) {
    const TlbEntry& e = tlb_[static_cast<int>(access)][(address >> 12) & (kTlbSize - 1)];
    return e.tag == (address & kPageMask) || probe_slow(address, access);
  }
  template <unsigned Size>
  bool write(uint64_t address, uint64_t value) {
    const TlbEntry& e = tlb_[1][(address >> 12) & (kTlbSize - 1)];
    if (e.tag == (address & kPageMask) && (address & ~kPageMask) <= kPageSize - Size) [[likely]] {
      std::memcpy(e.host + (address & ~kPageMask), &value, Size);
      return true;
    }
    return write_slow(address, Size, value, data_privilege());
  }
  // Implicit supervisor accesses to system structures (GDT, LDT, IDT, TSS) at
  // any CPL: U/S checks as for CPL 0, SMAP regardless of RFLAGS.AC, never
  // cached in the TLB. `size` 1..8; same failure convention as read/write.
  bool read_implicit(uint64_t linear, unsigned size, uint64_t& out) {
    return read_slow(linear, size, out, Privilege::Implicit);
  }
  bool write_implicit(uint64_t linear, unsigned size, uint64_t value) {
    return write_slow(linear, size, value, Privilege::Implicit);
  }
  // True between a store abandoned because it hit the running block's own code
  // (it returned false with a placeholder exception) and the run loop's restart
  // of that instruction: code that stores on behalf of an instruction (helpers,
  // exception delivery) must just return its failure, not deliver a fault.
  bool smc_restart_pending() const { return smc_restart_; }
  // Linear -> physical with the current privilege (a full walk, with its
  // accessed/dirty updates, bypassing the TLB). False with state.exception filled.
  bool translate_linear(uint64_t linear, Access access, uint64_t& physical);


 private:
  friend class CodeFetcher;
  // A TLB entry caches one 4 KiB page of a translation. `tag` is the linear
  // page, with kTagSlow set when accesses must take the slow path although the
  // translation is known (MMIO, ROM writes, writes to pages holding translated
  // code): the fast paths never match such a tag.
  struct alignas(32) TlbEntry {
    uint64_t tag = ~uint64_t{0};
    uint8_t* host = nullptr;
    uint64_t phys = 0;       // physical page
    uint8_t page_shift = 0;  // log2 of the mapping size: INVLPG drops every entry of a large page
    bool global = false;
  };
  static constexpr size_t kTlbSize = 256;
  static constexpr uint64_t kTagSlow = 1;
  // The page an access goes to: host memory, or PhysicalMemory when host is null.
  struct PageRef {
    uint8_t* host = nullptr;
    uint64_t phys = 0;  // physical page
  };

  Privilege data_privilege() const {
    return state.mode.system && state.sys.cpl != 3 ? Privilege::Supervisor : Privilege::User;
  }
  // Translates the page of `address` through the TLB or the MMU; fills
  // state.exception (with the fault address) on failure.
  bool access_page(uint64_t address, Access access, Privilege privilege, PageRef& out);
  bool read_slow(uint64_t address, unsigned size, uint64_t& out, Privilege privilege);
  bool write_slow(uint64_t address, unsigned size, uint64_t value, Privilege privilege);
  bool probe_slow(uint64_t address, Access access);
  void flush_tlb();
  void check_tlb_privilege();
  void code_page_added(uint64_t phys_page);
  TranslatedBlock* get_block(uint64_t pc, bool single_insn);
  // Run-loop steps: the block at state.rip (nullptr: its first byte faults,
  // state.exception and CR2 are set); after a block, whether it stopped for an
  // SMC restart (then just loop); CR2 for a #PF leaving a block.
  TranslatedBlock* next_block();
  // The CS base code is fetched with: 0 in 64-bit code and in user mode.
  uint64_t fetch_cs_base() const {
    return state.mode.system && state.mode.code != CodeSize::Bits64 ? state.seg_base[CS] : 0;
  }
  // The block that just completed normally: next_block() may follow its links.
  void chained_from(TranslatedBlock* tb);
  bool restart_after_smc(const ExecResult& r);
  void note_page_fault();
  void log_cpu_state();
  // System mode, at a TB boundary: takes a deliverable external interrupt; returns
  // true with `reason` set when run() must return (halted, triple fault, exit request).
  bool system_boundary(StopReason& reason);
  // System mode, after an instruction that started with RFLAGS.TF set and completed: true
  // with the #DB trap pending (DR6.BS set) unless MOV SS, an event delivery or HLT suppress it.
  bool single_step_trap();
  static constexpr uint64_t kDr6SingleStep = 1u << 14;

  Memory& memory_;
  IoBus* io_ = nullptr;
  InterruptController* pic_ = nullptr;
  uint32_t exception_intercepts_ = 0;
  std::atomic<bool> exit_request_{false};
  TbCache cache_;
  TranslateOptions options_;
  CpuStats stats_;
  std::vector<uint64_t> frame_;
  TlbEntry tlb_[3][kTlbSize];  // read, write, execute
  uint64_t tlb_generation_ = ~uint64_t{0};
  bool tlb_user_ = true;        // privilege class of the TLB's entries
  bool tlb_has_large_ = false;  // some entry comes from a large page (INVLPG must scan)
  size_t tb_cache_limit_ = size_t{32} << 20;
  TranslatedBlock* current_tb_ = nullptr;     // the block being executed
  std::unique_ptr<TranslatedBlock> one_off_;  // an uncached block (single step after SMC, MMIO code)
  bool smc_restart_ = false;  // a store hit the running block: re-run its instruction alone
  bool single_insn_next_ = false;
  TranslatedBlock* chain_from_ = nullptr;
  uint64_t chain_generation_ = 0;  // of the cache when chain_from_ completed
  uint32_t log_mask_ = 0;
  std::FILE* log_ = nullptr;
};

}  // namespace kiln::emu
