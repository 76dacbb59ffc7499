#include "kiln/emulator/cpu.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <utility>

#include "kiln/common/error.h"
#include "kiln/emulator/ir_passes.h"
#include "kiln/emulator/lazy_flags.h"
#include "kiln/emulator/privileged.h"
#include "kiln/emulator/physical_memory.h"
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

// ---- TbCache ------------------------------------------------------------------

namespace {

void mark_bytes(uint64_t* bits, uint64_t from, uint64_t to) {
  for (uint64_t i = from; i < to; ++i) bits[i / 64] |= uint64_t{1} << (i % 64);
}

bool any_bytes(const uint64_t* bits, uint64_t from, uint64_t to) {
  for (uint64_t i = from; i < to; ++i)
    if (bits[i / 64] & (uint64_t{1} << (i % 64))) return true;
  return false;
}

bool span_overlaps(const TranslatedBlock& tb, uint64_t phys, uint64_t size) {
  for (const auto& span : tb.spans)
    if (phys < span.phys + span.size && span.phys < phys + size) return true;
  return false;
}

}  // namespace

TranslatedBlock* TbCache::insert_block(std::unique_ptr<TranslatedBlock> tb) {
  const Key key{tb->pc, tb->phys_pc, tb->cs_base, tb->mode};
  if (auto it = blocks_.find(key); it != blocks_.end()) retire(it->second.get());  // stale (another page mapping)
  TranslatedBlock* raw = tb.get();
  raw->cached = true;
  for (const auto& span : raw->spans) {
    CodePage& page = code_pages_[span.phys & kPageMask];
    page.blocks.push_back(raw);
    mark_bytes(page.bytes, span.phys & ~kPageMask, (span.phys & ~kPageMask) + span.size);
  }
  host_bytes_ += raw->host_bytes;
  fast_[hash(raw->pc, raw->phys_pc)] = raw;
  blocks_.emplace(key, std::move(tb));
  return raw;
}

void TbCache::retire(TranslatedBlock* tb) {
  if (!tb->cached) return;  // listed twice (two spans on one physical page) or already retired
  ++chain_generation_;
  for (const auto& span : tb->spans) {
    auto it = code_pages_.find(span.phys & kPageMask);
    if (it == code_pages_.end()) continue;
    CodePage& page = it->second;
    std::erase(page.blocks, tb);
    if (page.blocks.empty()) {
      code_pages_.erase(it);
      continue;
    }
    std::fill(std::begin(page.bytes), std::end(page.bytes), 0);
    for (const TranslatedBlock* other : page.blocks)
      for (const auto& s : other->spans)
        if ((s.phys & kPageMask) == it->first) mark_bytes(page.bytes, s.phys & ~kPageMask, (s.phys & ~kPageMask) + s.size);
  }
  TranslatedBlock*& slot = fast_[hash(tb->pc, tb->phys_pc)];
  if (slot == tb) slot = nullptr;
  host_bytes_ -= tb->host_bytes;
  tb->cached = false;
  auto it = blocks_.find(Key{tb->pc, tb->phys_pc, tb->cs_base, tb->mode});
  if (it != blocks_.end() && it->second.get() == tb) {
    retired_.push_back(std::move(it->second));
    blocks_.erase(it);
  }
}

bool TbCache::overlaps_code(uint64_t phys, uint64_t size) const {
  auto it = code_pages_.find(phys & kPageMask);
  return it != code_pages_.end() && any_bytes(it->second.bytes, phys & ~kPageMask, (phys & ~kPageMask) + size);
}

size_t TbCache::invalidate(uint64_t phys, uint64_t size) {
  auto it = code_pages_.find(phys & kPageMask);
  if (it == code_pages_.end() || !any_bytes(it->second.bytes, phys & ~kPageMask, (phys & ~kPageMask) + size)) return 0;
  std::vector<TranslatedBlock*> victims;
  for (TranslatedBlock* tb : it->second.blocks)
    if (span_overlaps(*tb, phys, size)) victims.push_back(tb);
  size_t count = 0;
  for (TranslatedBlock* tb : victims) {
    count += tb->cached;  // a block with two spans on the page is listed twice
    retire(tb);           // may erase the page entry
  }
  return count;
}

void TbCache::flush() {
  ++chain_generation_;
  for (auto& [key, tb] : blocks_) {
    tb->cached = false;
    retired_.push_back(std::move(tb));
  }
  blocks_.clear();
  code_pages_.clear();
  std::fill(fast_.begin(), fast_.end(), nullptr);
  host_bytes_ = 0;
}

// ---- Code fetch -------------------------------------------------------------------

// The frontend's view of guest code for one translation: RIP-relative
// addresses become linear ones (CS base + RIP), pages are translated for
// execution through the CPU's TLB and MMU, and the physical bytes read are
// recorded as the block's spans. Code in MMIO (or unmapped) space is read
// through PhysicalMemory and makes the block uncacheable.
class CodeFetcher final : public Memory {
 public:
  // `cs_limit`: the last offset code may be fetched from (CS limit), beyond it #GP(0).
  CodeFetcher(Cpu& cpu, uint64_t cs_base, bool wrap32, Privilege privilege, uint64_t cs_limit = ~uint64_t{0})
      : cpu_(cpu), cs_base_(cs_base), wrap32_(wrap32), privilege_(privilege), cs_limit_(cs_limit) {}

  uint8_t* page_pointer(uint64_t address, Access) override {
    Page* page = page_for(linear(address));
    return page ? page->host : nullptr;
  }

  size_t fetch_code(uint64_t address, uint8_t* out, size_t want, uint64_t& fault_address) override {
    size_t got = 0;
    const size_t requested = want;
    if (cs_limit_ != ~uint64_t{0}) want = address > cs_limit_ ? 0 : std::min<uint64_t>(want, cs_limit_ - address + 1);
    while (got < want) {
      const uint64_t at = linear(address + got);
      Page* page = page_for(at);
      if (!page) {
        fault_address = address + got;
        break;
      }
      const uint64_t offset = at & ~kPageMask;
      const size_t n = std::min<size_t>(want - got, kPageSize - offset);
      if (page->host) {
        std::memcpy(out + got, page->host + offset, n);
      } else {
        PhysicalMemory* physical = cpu_.memory_.physical_memory();
        for (size_t i = 0; i < n; ++i)
          out[got + i] = physical ? static_cast<uint8_t>(physical->read(page->phys + offset + i, 1)) : 0xff;
      }
      page->lo = std::min<uint64_t>(page->lo, offset);
      page->hi = std::max<uint64_t>(page->hi, offset + n);
      got += n;
    }
    if (got == want && want < requested) {  // stopped by the CS limit
      fault_address = address + got;
      fault_ = PendingException{.raised = true, .vector = Vector::GP};
    }
    last_fetch_ = address;
    last_got_ = got;
    last_short_ = got < want;
    return got;
  }

  PendingException fetch_fault(uint64_t address) override {
    PendingException f = fault_;
    f.raised = true;
    f.fault_address = linear(address);
    return f;
  }

  // False for code read through PhysicalMemory and for blocks ending in a fetch fault (the
  // fault must be re-evaluated: a page that becomes present needs no INVLPG).
  bool cacheable(uint64_t pc, uint64_t guest_bytes) const {
    return cacheable_ && !(last_short_ && last_fetch_ >= pc + guest_bytes);
  }
  // The physical bytes of the block at `pc` that translated `guest_bytes` bytes: the
  // fetcher reads ahead up to 15 bytes per instruction, which must not count as code
  // (stores just behind a block would restart it); an undecodable last instruction
  // (not in guest_bytes) counts with the bytes fetched for it.
  std::vector<TranslatedBlock::Span> spans(uint64_t pc, uint64_t guest_bytes) const {
    uint64_t end = pc + guest_bytes;
    if (last_fetch_ >= end) end = last_fetch_ + last_got_;
    const uint64_t begin = linear(pc), length = end - pc;
    std::vector<TranslatedBlock::Span> out;
    for (const Page& p : pages_) {
      const uint64_t lo = std::max(p.linear_page + p.lo, begin), hi = std::min(p.linear_page + p.hi, begin + length);
      if (hi > lo) out.push_back({p.linear_page, p.phys + (lo - p.linear_page), static_cast<uint32_t>(hi - lo)});
    }
    return out;
  }

 private:
  struct Page {
    uint64_t linear_page;
    uint64_t phys;   // physical page
    uint8_t* host;   // nullptr: read through PhysicalMemory
    uint64_t lo, hi; // offsets of the bytes fetched
  };

  uint64_t linear(uint64_t address) const {
    const uint64_t a = address + cs_base_;
    return wrap32_ ? a & 0xffffffff : a;
  }

  Page* page_for(uint64_t at) {
    const uint64_t page = at & kPageMask;
    for (Page& p : pages_)
      if (p.linear_page == page) return &p;
    // Translation must not leave a pending exception behind: the block runs later.
    const PendingException saved = cpu_.state.exception;
    Cpu::PageRef ref;
    const bool ok = cpu_.access_page(at, Access::Execute, privilege_, ref);
    fault_ = cpu_.state.exception;
    cpu_.state.exception = saved;
    if (!ok) return nullptr;
    if (!ref.host) cacheable_ = false;
    pages_.push_back(Page{page, ref.phys, ref.host, kPageSize, 0});
    return &pages_.back();
  }

  Cpu& cpu_;
  uint64_t cs_base_;
  bool wrap32_;
  Privilege privilege_;
  uint64_t cs_limit_;
  std::vector<Page> pages_;
  PendingException fault_;
  bool cacheable_ = true;
  uint64_t last_fetch_ = 0, last_got_ = 0;  // the last instruction fetch (RIP, bytes)
  bool last_short_ = false;                  // ... stopped at an unfetchable byte
};

// ---- Cpu: memory ------------------------------------------------------------------

Cpu::Cpu(Memory& memory) : memory_(memory) {
  if (PhysicalMemory* physical = memory_.physical_memory())
    physical->set_write_observer([this](uint64_t address, uint64_t size) { invalidate_code(address, size); }, this);
}

Cpu::~Cpu() {
  if (PhysicalMemory* physical = memory_.physical_memory()) physical->clear_write_observer(this);
}

void Cpu::invalidate_code(uint64_t phys, uint64_t size) {
  while (size > 0) {
    const uint64_t n = std::min<uint64_t>(size, kPageSize - (phys & ~kPageMask));
    if (cache_.is_code_page(phys & kPageMask)) stats_.tb_invalidations += cache_.invalidate(phys, n);
    phys += n;
    size -= n;
  }
}

void Cpu::flush_tlb() {
  cache_.break_chains();  // links skip the execute TLB
  for (auto& way : tlb_)
    for (auto& e : way) e = TlbEntry{};
  tlb_has_large_ = false;
  tlb_generation_ = memory_.generation();
}

void Cpu::invalidate_tlb(bool include_global) {
  if (include_global || !(state.sys.cr4 & cr4::PGE)) return flush_tlb();
  cache_.break_chains();
  for (auto& way : tlb_)
    for (auto& e : way)
      if (!e.global) e = TlbEntry{};
}

void Cpu::invalidate_tlb_page(uint64_t linear) {
  cache_.break_chains();
  if (tlb_has_large_) {
    // Any entry of the (possibly large) mapping holding `linear`.
    for (auto& way : tlb_)
      for (auto& e : way)
        if (e.tag != TlbEntry{}.tag && (((e.tag & kPageMask) ^ linear) >> e.page_shift) == 0) e = TlbEntry{};
    return;
  }
  for (auto& way : tlb_) {
    TlbEntry& e = way[(linear >> 12) & (kTlbSize - 1)];
    if ((e.tag & kPageMask) == (linear & kPageMask)) e = TlbEntry{};
  }
}

void Cpu::check_tlb_privilege() {
  const bool user = data_privilege() == Privilege::User;
  if (user != tlb_user_) {
    flush_tlb();
    tlb_user_ = user;
  }
}

void Cpu::code_page_added(uint64_t phys_page) {
  // Stores to the page must see the code from now on: their entries go slow.
  for (TlbEntry& e : tlb_[static_cast<int>(Access::Write)])
    if (e.phys == phys_page && e.host) e.tag |= kTagSlow;
}

bool Cpu::access_page(uint64_t address, Access access, Privilege privilege, PageRef& out) {
  const bool use_tlb = privilege != Privilege::Implicit;
  TlbEntry* entry = nullptr;
  if (use_tlb) {
    if ((privilege == Privilege::User) != tlb_user_) check_tlb_privilege();
    entry = &tlb_[static_cast<int>(access)][(address >> 12) & (kTlbSize - 1)];
    if ((entry->tag & ~kTagSlow) == (address & kPageMask)) {
      out = PageRef{entry->host, entry->phys};
      // A page that lost all its code takes the fast path again.
      if ((entry->tag & kTagSlow) && entry->host && access == Access::Write && !cache_.is_code_page(entry->phys))
        entry->tag &= ~kTagSlow;
      return true;
    }
  }
  Translation t;
  if (!memory_.translate(address, access, privilege, state, t)) {
    state.exception = PendingException{.raised = true, .vector = t.vector, .error_code = t.error_code, .fault_address = address};
    return false;
  }
  out = PageRef{t.host, t.physical & kPageMask};
  if (use_tlb && t.cacheable) {
    const bool slow = !t.host || (access == Access::Write && cache_.is_code_page(out.phys));
    *entry = TlbEntry{.tag = (address & kPageMask) | (slow ? kTagSlow : 0),
                      .host = t.host,
                      .phys = out.phys,
                      .page_shift = static_cast<uint8_t>(std::countr_zero(t.page_size)),
                      .global = t.global};
    if (t.page_size > kPageSize) tlb_has_large_ = true;
  }
  return true;
}

namespace {

// Reads/writes `size` bytes at `offset` of a page that has no host memory (MMIO, ROM writes, holes).
void physical_read(PhysicalMemory* physical, uint64_t address, uint8_t* out, unsigned size) {
  if (!physical) return std::memset(out, 0xff, size), void();
  if (size == 1 || size == 2 || size == 4 || size == 8) {
    const uint64_t v = physical->read(address, size);
    std::memcpy(out, &v, size);
    return;
  }
  for (unsigned i = 0; i < size; ++i) out[i] = static_cast<uint8_t>(physical->read(address + i, 1));
}

void physical_write(PhysicalMemory* physical, uint64_t address, const uint8_t* in, unsigned size) {
  if (!physical) return;
  if (size == 1 || size == 2 || size == 4 || size == 8) {
    uint64_t v = 0;
    std::memcpy(&v, in, size);
    return physical->write(address, size, v);
  }
  for (unsigned i = 0; i < size; ++i) physical->write(address + i, 1, in[i]);
}

}  // namespace

bool Cpu::read_slow(uint64_t address, unsigned size, uint64_t& out, Privilege privilege) {
  // Translate every page the access touches before reading: a fault leaves nothing done.
  PageRef first, second;
  if (!access_page(address, Access::Read, privilege, first)) return false;
  const uint64_t offset = address & ~kPageMask;
  const unsigned in_first = static_cast<unsigned>(std::min<uint64_t>(size, kPageSize - offset));
  if (in_first < size && !access_page(address + in_first, Access::Read, privilege, second)) return false;
  uint8_t bytes[8] = {};
  PhysicalMemory* physical = memory_.physical_memory();
  if (first.host) std::memcpy(bytes, first.host + offset, in_first);
  else physical_read(physical, first.phys + offset, bytes, in_first);
  if (in_first < size) {
    if (second.host) std::memcpy(bytes + in_first, second.host, size - in_first);
    else physical_read(physical, second.phys, bytes + in_first, size - in_first);
  }
  out = 0;
  std::memcpy(&out, bytes, size);
  return true;
}

bool Cpu::write_slow(uint64_t address, unsigned size, uint64_t value, Privilege privilege) {
  PageRef first, second;
  if (!access_page(address, Access::Write, privilege, first)) return false;
  const uint64_t offset = address & ~kPageMask;
  const unsigned in_first = static_cast<unsigned>(std::min<uint64_t>(size, kPageSize - offset));
  if (in_first < size && !access_page(address + in_first, Access::Write, privilege, second)) return false;
  // Self-modifying code: a store into translated code invalidates those blocks. When it hits
  // the running block itself, whose later instructions may be the ones modified, the store is
  // abandoned like a fault (nothing of the instruction is done yet) and the run loop re-executes
  // that instruction as a block of its own, which then stores and ends.
  uint8_t bytes[8];
  std::memcpy(bytes, &value, 8);
  // (Rewriting code bytes with their own values changes nothing: no invalidation.)
  // Only RAM (host memory) holds cached code: ROM does not change and code read
  // from MMIO is never cached.
  const bool code_first = first.host && cache_.overlaps_code(first.phys + offset, in_first) &&
                          std::memcmp(first.host + offset, bytes, in_first) != 0;
  const bool code_second = in_first < size && second.host && cache_.overlaps_code(second.phys, size - in_first) &&
                           std::memcmp(second.host, bytes + in_first, size - in_first) != 0;
  if ((code_first || code_second) && current_tb_ && current_tb_->cached && current_tb_->guest_insns > 1 &&
      ((code_first && span_overlaps(*current_tb_, first.phys + offset, in_first)) ||
       (code_second && span_overlaps(*current_tb_, second.phys, size - in_first)))) {
    smc_restart_ = true;
    ++stats_.smc_restarts;
    state.exception = PendingException{.raised = true, .vector = Vector::GP};  // replaced by the restart
    return false;
  }
  PhysicalMemory* physical = memory_.physical_memory();
  if (first.host) std::memcpy(first.host + offset, bytes, in_first);
  else physical_write(physical, first.phys + offset, bytes, in_first);
  if (in_first < size) {
    if (second.host) std::memcpy(second.host, bytes + in_first, size - in_first);
    else physical_write(physical, second.phys, bytes + in_first, size - in_first);
  }
  if (code_first) stats_.tb_invalidations += cache_.invalidate(first.phys + offset, in_first);
  if (code_second) stats_.tb_invalidations += cache_.invalidate(second.phys, size - in_first);
  return true;
}

bool Cpu::probe_slow(uint64_t address, Access access) {
  PageRef page;
  return access_page(address, access, data_privilege(), page);
}

bool Cpu::translate_linear(uint64_t linear, Access access, uint64_t& physical) {
  Translation t;
  if (!memory_.translate(linear, access, data_privilege(), state, t)) {
    state.exception = PendingException{.raised = true, .vector = t.vector, .error_code = t.error_code, .fault_address = linear};
    return false;
  }
  physical = t.physical;
  return true;
}

// ---- Cpu: blocks ------------------------------------------------------------------

TranslatedBlock* Cpu::get_block(uint64_t pc, bool single_insn) {
  const uint32_t mode = state.mode.key();
  // System mode fetches at CS base + RIP (the base is 0 in 64-bit mode, linear addresses wrap
  // at 4 GiB outside it); user mode keeps fetching at RIP.
  const bool system = state.mode.system, bits64 = state.mode.code == CodeSize::Bits64;
  const uint64_t cs_base = fetch_cs_base();
  const bool wrap32 = system && !bits64;
  const uint64_t linear = wrap32 ? (pc + cs_base) & 0xffffffff : pc + cs_base;
  const Privilege privilege = data_privilege();
  if (state.mode.cs_limited && pc > state.seg_limit[CS]) [[unlikely]] {  // the limit is checked before paging
    state.exception = PendingException{.raised = true, .vector = Vector::GP};
    return nullptr;
  }
  uint64_t phys;
  const TlbEntry& e = tlb_[static_cast<int>(Access::Execute)][(linear >> 12) & (kTlbSize - 1)];
  if (e.tag == (linear & kPageMask)) [[likely]] {
    phys = e.phys | (linear & ~kPageMask);
  } else {
    PageRef page;
    if (!access_page(linear, Access::Execute, privilege, page)) return nullptr;  // the first byte faults
    phys = page.phys | (linear & ~kPageMask);
  }
  bool force_uncached = false;
  if (!single_insn) {
    if (TranslatedBlock* tb = cache_.find(pc, phys, cs_base, mode)) [[likely]] {
      bool valid = true;
      // Code continuing on other pages: those must still map to the same physical pages.
      for (size_t i = 1; valid && i < tb->spans.size(); ++i) {
        const PendingException saved = state.exception;
        PageRef page;
        valid = access_page(tb->spans[i].linear_page, Access::Execute, privilege, page) &&
                page.phys == (tb->spans[i].phys & kPageMask);
        state.exception = saved;
      }
      // A block translated under a larger CS limit may not reach beyond the current one.
      if (valid && state.mode.cs_limited && tb->pc + tb->guest_bytes > uint64_t{state.seg_limit[CS]} + 1) valid = false;
      if (valid) return tb;
      force_uncached = true;  // its key is taken: translate this one as a one-off block
    }
  }
  CodeFetcher fetcher(*this, cs_base, wrap32, privilege, state.mode.cs_limited ? state.seg_limit[CS] : ~uint64_t{0});
  TranslateOptions options = options_;
  if (single_insn) options.max_insns = 1;
  ir::Block raw;
  ir::Block block = translate_block(fetcher, pc, state.mode, options, (log_mask_ & kLogOp) ? &raw : nullptr);
  // Before logging, whose disassembly fetches again:
  std::vector<TranslatedBlock::Span> spans = fetcher.spans(pc, block.guest_bytes);
  const bool cacheable = !single_insn && !force_uncached && fetcher.cacheable(pc, block.guest_bytes) && !spans.empty();
  ++stats_.translations;
  if (log_ && (log_mask_ & kLogInAsm))
    fmt::print(log_, "IN:\n{}\n", disassemble(fetcher, pc, state.mode, block.guest_insns));
  if (log_ && (log_mask_ & kLogOp)) fmt::print(log_, "OP:\n{}\n", ir::print(raw));
  if (log_ && (log_mask_ & kLogOpOpt)) fmt::print(log_, "OP after optimization:\n{}\n", ir::print(block));
  auto tb = std::make_unique<TranslatedBlock>();
  tb->pc = pc;
  tb->phys_pc = phys;
  tb->cs_base = cs_base;
  tb->mode = mode;
  tb->guest_insns = block.guest_insns;
  tb->guest_bytes = block.guest_bytes;
  tb->spans = std::move(spans);
  tb->exec = compile_for_interpreter(block);
  tb->host_bytes = sizeof(TranslatedBlock) + tb->spans.size() * sizeof(TranslatedBlock::Span) +
                   tb->exec.code.size() * sizeof(ExecInst) + tb->exec.frame_template.size() * sizeof(uint64_t);
  if (!cacheable) {
    one_off_ = std::move(tb);
    return one_off_.get();
  }
  if (cache_.size() > 0 && cache_.host_bytes() + tb->host_bytes > tb_cache_limit_) {
    cache_.flush();
    ++stats_.tb_cache_flushes;
  }
  return cache_.insert(std::move(tb), [this](uint64_t page) { code_page_added(page); });
}

TranslatedBlock* Cpu::next_block() {
  // A block removed since it ran (and about to be freed) breaks the chains first.
  TranslatedBlock* from = chain_from_ != nullptr && chain_generation_ == cache_.chain_generation() ? chain_from_ : nullptr;
  chain_from_ = nullptr;
  cache_.release_retired();  // no block is running here
  check_tlb_privilege();
  const bool single = std::exchange(single_insn_next_, false);
  const uint32_t mode = state.mode.key();
  const uint64_t cs_base = fetch_cs_base();
  const uint64_t generation = cache_.chain_generation();
  // Blocks under a CS limit below 4 GiB are validated against it in get_block: no chaining.
  if (from != nullptr && !single && !state.mode.cs_limited) {
    for (const TranslatedBlock::Link& link : from->links) {
      const TranslatedBlock* to = link.tb;
      if (link.generation == generation && to->pc == state.rip && to->mode == mode && to->cs_base == cs_base) [[likely]]
        return link.tb;
    }
  }
  TranslatedBlock* tb = get_block(state.rip, single);
  if (!tb) {
    note_page_fault();
    return nullptr;
  }
  // Translating may have flushed the cache (size limit): then `from` is gone.
  if (from != nullptr && tb->cached && cache_.chain_generation() == generation) {
    from->links[from->next_link] = {generation, tb};
    from->next_link ^= 1;
  }
  return tb;
}

void Cpu::chained_from(TranslatedBlock* tb) {
  chain_from_ = tb->cached ? tb : nullptr;
  chain_generation_ = cache_.chain_generation();
}

bool Cpu::restart_after_smc(const ExecResult& r) {
  if (!std::exchange(smc_restart_, false) || !r.exception) return false;
  // A store into the running block's code: re-run the storing instruction on its own (see write_slow).
  state.exception = PendingException{};
  single_insn_next_ = true;
  state.rip = r.next_pc;
  return true;
}

void Cpu::note_page_fault() {
  // CR2 is written when the #PF is raised.
  if (state.mode.system && state.exception.raised && state.exception.vector == Vector::PF)
    state.sys.cr2 = state.exception.fault_address;
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

bool Cpu::single_step_trap() {
  SystemState& sys = state.sys;
  // No trap after MOV SS / POP SS (the next instruction's covers both), after an instruction
  // that delivered an event (its handler starts with TF clear), or after HLT.
  const bool suppressed = std::exchange(sys.mov_ss_shadow, false) | std::exchange(sys.event_delivered, false) ||
                          (state.stop_request & kStopHalt);
  if (suppressed) return false;
  sys.dr[6] |= kDr6SingleStep;
  state.exception = PendingException{.raised = true, .vector = Vector::DB};
  return true;
}

RunResult Cpu::run(uint64_t max_insns) {
  RunResult result;
  state.exception = PendingException{};
  state.stop_request = 0;
  chain_from_ = nullptr;  // the caller may have changed anything
  if (state.mode.system) refresh_fpu_mode(state);  // CR0/CR4 may have been set directly (reset, loaders)
  if (tlb_generation_ != memory_.generation()) {
    // Mappings changed: cached host pointers and translations may be stale.
    flush_tlb();
    cache_.flush();
  }
  const bool system = state.mode.system;
  // Delivered exceptions count against the budget too: a guest faulting in a loop
  // without completing an instruction must still return to the caller.
  uint64_t deliveries = 0;
  // An exception left the block (or its first byte could not be fetched): true
  // when run() returns; in system mode it is delivered through the IDT instead.
  auto take_exception = [&] {
    note_page_fault();
    if (!system || exception_intercepted(static_cast<uint8_t>(state.exception.vector))) {
      result.reason = StopReason::Exception;
      return true;
    }
    if (!deliver_exception(*this)) {  // a failure here is a triple fault
      result.reason = StopReason::Reset;
      return true;
    }
    ++deliveries;
    return false;
  };
  // The boundary check runs before each block, not after the last one, so an interrupt
  // shadow set by the last block survives until the next run().
  while (result.insns + deliveries < max_insns) {
    if (system && system_boundary(result.reason)) [[unlikely]]
      return result;
    // Single step: TF at the start of an instruction traps after it, so a stepped block
    // holds one instruction (an uncached translation: stepping is rare and slow anyway).
    const bool stepping = system && (state.rflags_other & rflags::TF);
    if (stepping) [[unlikely]] {
      single_insn_next_ = true;
      state.sys.mov_ss_shadow = state.sys.event_delivered = false;
    }
    TranslatedBlock* tb = next_block();
    if (!tb) {  // the block's first byte cannot be fetched (state.exception set)
      if (take_exception()) return result;
      continue;
    }
    if (log_ && (log_mask_ & kLogExec))
      fmt::print(log_, "Trace 0: {} [{:016x}/{:x}]\n", static_cast<const void*>(tb), tb->pc, tb->mode);
    current_tb_ = tb;
    ExecResult r = interpret(*this, tb->exec, frame_);
    current_tb_ = nullptr;
    ++stats_.blocks_executed;
    result.insns += r.insns;
    state.tsc += r.insns;
    if (log_ && (log_mask_ & kLogCpu)) log_cpu_state();
    if (restart_after_smc(r)) continue;
    if (r.exception) {
      if (take_exception()) return result;
      continue;
    }
    state.rip = r.next_pc;
    chained_from(tb);
    if (stepping && single_step_trap()) [[unlikely]] {
      if (take_exception()) return result;
      continue;
    }
    if (state.stop_request) {
      if (system && state.stop_request == kStopHalt) {
        // HLT (sys.halted set): the next boundary takes a deliverable interrupt or returns Halt.
        state.stop_request = 0;
        continue;
      }
      result.reason = state.stop_request & kStopHalt ? StopReason::Halt : StopReason::Syscall;
      return result;
    }
    // A device or timer thread asked for attention (interrupt, exit, reset);
    // system mode takes pending interrupts first, at the next boundary.
    if (!system && exit_request_.load(std::memory_order_acquire)) [[unlikely]] {
      exit_request_.store(false, std::memory_order_relaxed);
      result.reason = StopReason::ExitRequest;
      return result;
    }
  }
  result.reason = system && state.sys.halted ? StopReason::Halt : StopReason::InsnLimit;
  return result;
}

}  // namespace kiln::emu
