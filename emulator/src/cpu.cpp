#include "kiln/emulator/cpu.h"

#include <fmt/format.h>

#include "kiln/common/error.h"
#include "kiln/emulator/ir_passes.h"
#include "kiln/emulator/lazy_flags.h"
#include "kiln/emulator/system.h"

namespace kiln::emu {

uint32_t parse_log_mask(std::string_view items) {
  uint32_t mask = 0;
  while (!items.empty()) {
    size_t comma = items.find(',');
    std::string_view item = items.substr(0, comma);
    if (item == "in_asm") mask |= kLogInAsm;
    else if (item == "op") mask |= kLogOp;
    else if (item == "op_opt") mask |= kLogOpOpt;
    else if (item == "exec") mask |= kLogExec;
    else if (item == "cpu") mask |= kLogCpu;
    else if (!item.empty()) throw invalid_argument("unknown log item '{}' (valid: in_asm, op, op_opt, exec, cpu)", item);
    items = comma == std::string_view::npos ? std::string_view{} : items.substr(comma + 1);
  }
  return mask;
}

TranslatedBlock* TbCache::insert(std::unique_ptr<TranslatedBlock> tb) {
  Key key{tb->pc, tb->mode};
  TranslatedBlock* raw = tb.get();
  blocks_[key] = std::move(tb);
  fast_[hash(raw->pc, raw->mode)] = raw;
  return raw;
}

void TbCache::flush() {
  blocks_.clear();
  std::fill(fast_.begin(), fast_.end(), nullptr);
}

namespace {

bool canonical(uint64_t address) {
  return static_cast<uint64_t>(static_cast<int64_t>(address << 16) >> 16) == address;
}

}  // namespace

void Cpu::flush_tlb() {
  for (auto& way : tlb_)
    for (auto& e : way) e = TlbEntry{};
  tlb_generation_ = memory_.generation();
}

uint8_t* Cpu::translate_page(uint64_t address, Access access) {
  if (state.mode.code == CodeSize::Bits64 && !canonical(address)) {
    state.exception = PendingException{.raised = true, .vector = Vector::GP};
    return nullptr;
  }
  uint8_t* host = memory_.page_pointer(address, access);
  if (!host) {
    // Not present, user mode; bit 1 = write, bit 4 = instruction fetch.
    uint32_t error = 4 | (access == Access::Write ? 2 : 0) | (access == Access::Execute ? 16 : 0);
    state.exception = PendingException{.raised = true, .vector = Vector::PF, .error_code = error, .fault_address = address};
    return nullptr;
  }
  if (access != Access::Execute) {
    TlbEntry& e = tlb_[static_cast<int>(access)][(address >> 12) & (kTlbSize - 1)];
    e.tag = address & kPageMask;
    e.host = host;
  }
  return host;
}

bool Cpu::read_slow(uint64_t address, unsigned size, uint64_t& out) {
  uint8_t bytes[8] = {};
  // Translate every page the access touches before reading: a fault leaves nothing done.
  uint8_t* first = translate_page(address, Access::Read);
  if (!first) return false;
  uint64_t in_first = std::min<uint64_t>(size, kPageSize - (address & ~kPageMask));
  uint8_t* second = nullptr;
  if (in_first < size && !(second = translate_page(address + in_first, Access::Read))) {
    state.exception.fault_address = address + in_first;
    return false;
  }
  std::memcpy(bytes, first + (address & ~kPageMask), in_first);
  if (second) std::memcpy(bytes + in_first, second, size - in_first);
  out = 0;
  std::memcpy(&out, bytes, size);
  return true;
}

bool Cpu::write_slow(uint64_t address, unsigned size, uint64_t value) {
  uint8_t* first = translate_page(address, Access::Write);
  if (!first) return false;
  uint64_t in_first = std::min<uint64_t>(size, kPageSize - (address & ~kPageMask));
  uint8_t* second = nullptr;
  if (in_first < size && !(second = translate_page(address + in_first, Access::Write))) return false;
  uint8_t bytes[8];
  std::memcpy(bytes, &value, 8);
  std::memcpy(first + (address & ~kPageMask), bytes, in_first);
  if (second) std::memcpy(second, bytes + in_first, size - in_first);
  return true;
}

TranslatedBlock* Cpu::get_block(uint64_t pc) {
  const uint32_t mode = state.mode.key();
  if (TranslatedBlock* tb = cache_.find(pc, mode)) return tb;
  ir::Block raw;
  ir::Block block = translate_block(memory_, pc, state.mode, options_, (log_mask_ & kLogOp) ? &raw : nullptr);
  ++stats_.translations;
  if (log_ && (log_mask_ & kLogInAsm))
    fmt::print(log_, "IN:\n{}\n", disassemble(memory_, pc, state.mode, block.guest_insns));
  if (log_ && (log_mask_ & kLogOp)) fmt::print(log_, "OP:\n{}\n", ir::print(raw));
  if (log_ && (log_mask_ & kLogOpOpt)) fmt::print(log_, "OP after optimization:\n{}\n", ir::print(block));
  auto tb = std::make_unique<TranslatedBlock>();
  tb->pc = pc;
  tb->mode = mode;
  tb->guest_insns = block.guest_insns;
  tb->guest_bytes = block.guest_bytes;
  tb->exec = compile_for_interpreter(block);
  return cache_.insert(std::move(tb));
}

void Cpu::log_cpu_state() {
  static constexpr const char* kNames[] = {"RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI",
                                           "R8 ", "R9 ", "R10", "R11", "R12", "R13", "R14", "R15"};
  std::string line;
  for (int i = 0; i < 16; ++i) line += fmt::format("{}={:016x}{}", kNames[i], state.regs[i], i % 4 == 3 ? "\n" : " ");
  fmt::print(log_, "{}RIP={:016x} RFL={:08x}\n", line, state.rip, read_rflags(state));
}

bool Cpu::system_boundary(StopReason& reason) {
  const bool exit_requested =
      exit_request_.load(std::memory_order_relaxed) && exit_request_.exchange(false, std::memory_order_acquire);
  SystemState& sys = state.sys;
  // The interrupt shadow of STI / MOV SS / POP SS covers the rest of the block that set it.
  if (!sys.interrupt_shadow && (state.rflags_other & rflags::IF) && pic_ && pic_->pending()) {
    const uint8_t vector = pic_->acknowledge();
    sys.halted = false;
    if (!deliver_external_interrupt(*this, vector)) {
      reason = StopReason::Reset;
      return true;
    }
  }
  sys.interrupt_shadow = false;
  if (sys.halted) {
    reason = StopReason::Halt;
    return true;
  }
  if (exit_requested) {
    reason = StopReason::ExitRequest;
    return true;
  }
  return false;
}

RunResult Cpu::run(uint64_t max_insns) {
  RunResult result;
  state.exception = PendingException{};
  state.stop_request = 0;
  if (tlb_generation_ != memory_.generation()) {
    // Mappings changed: cached host pointers and translations may be stale.
    flush_tlb();
    cache_.flush();
  }
  const bool system = state.mode.system;
  // Delivered exceptions count against the budget too: a guest faulting in a loop
  // without completing an instruction must still return to the caller.
  uint64_t deliveries = 0;
  // The boundary check runs before each block, not after the last one, so an interrupt
  // shadow set by the last block survives until the next run().
  while (result.insns + deliveries < max_insns) {
    if (system && system_boundary(result.reason)) [[unlikely]]
      return result;
    TranslatedBlock* tb = get_block(state.rip);
    if (log_ && (log_mask_ & kLogExec))
      fmt::print(log_, "Trace 0: {} [{:016x}/{:x}]\n", static_cast<const void*>(tb), tb->pc, tb->mode);
    ExecResult r = interpret(*this, tb->exec, frame_);
    ++stats_.blocks_executed;
    result.insns += r.insns;
    state.tsc += r.insns;
    if (log_ && (log_mask_ & kLogCpu)) log_cpu_state();
    if (r.exception) {
      if (!system || exception_intercepted(static_cast<uint8_t>(state.exception.vector))) {
        result.reason = StopReason::Exception;
        return result;
      }
      // System mode: deliver through the IDT (a failure here is a triple fault).
      if (!deliver_exception(*this)) {
        result.reason = StopReason::Reset;
        return result;
      }
      ++deliveries;
      continue;
    }
    state.rip = r.next_pc;
    if (state.stop_request) {
      if (system && state.stop_request == kStopHalt) {
        // HLT (sys.halted set): the next boundary takes a deliverable interrupt or returns Halt.
        state.stop_request = 0;
        continue;
      }
      result.reason = state.stop_request & kStopHalt ? StopReason::Halt : StopReason::Syscall;
      return result;
    }
  }
  result.reason = system && state.sys.halted ? StopReason::Halt : StopReason::InsnLimit;
  return result;
}

}  // namespace kiln::emu
