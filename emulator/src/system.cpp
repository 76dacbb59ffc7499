// Segmentation, modes, far control transfers and event delivery (system mode).
// Every function validates first and commits architectural state last, so a
// fault leaves registers, segment caches and CPL as they were (memory already
// written for stack frames or accessed bits stays written, as on hardware).
// Task switches are the exception the SDM makes: faults after the new task's
// state is loaded are raised in the new task.
#include "kiln/emulator/system.h"

#include <algorithm>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu {

namespace {

using namespace seg_attr;

bool fail(CpuState& s, Vector v, uint32_t error = 0) {
  s.exception = PendingException{.raised = true, .vector = v, .error_code = error};
  return false;
}
uint32_t selector_error(uint16_t selector) { return selector & 0xfffcu; }
bool null_selector(uint16_t selector) { return (selector & 0xfffcu) == 0; }

bool read_linear(Cpu& cpu, uint64_t address, unsigned bytes, uint64_t& out) {
  switch (bytes) {
    case 1: return cpu.read<1>(address, out);
    case 2: return cpu.read<2>(address, out);
    case 4: return cpu.read<4>(address, out);
    default: return cpu.read<8>(address, out);
  }
}
bool write_linear(Cpu& cpu, uint64_t address, unsigned bytes, uint64_t value) {
  switch (bytes) {
    case 1: return cpu.write<1>(address, value);
    case 2: return cpu.write<2>(address, value);
    case 4: return cpu.write<4>(address, value);
    default: return cpu.write<8>(address, value);
  }
}

// Linear addresses wrap at 4 GiB outside long mode.
uint64_t system_linear(const CpuState& s, uint64_t address) {
  return long_mode_active(s) ? address : address & 0xffffffffu;
}
// Descriptor tables, TSS and IDT are implicit supervisor accesses whatever the
// CPL (U/S as for CPL 0, never cached in the TLB, so no user access inherits them).
bool read_system(Cpu& cpu, uint64_t address, unsigned bytes, uint64_t& out) {
  return cpu.read_implicit(system_linear(cpu.state, address), bytes, out);
}
bool write_system(Cpu& cpu, uint64_t address, unsigned bytes, uint64_t value) {
  return cpu.write_implicit(system_linear(cpu.state, address), bytes, value);
}

uint64_t width_mask(unsigned bits) { return bits >= 64 ? ~uint64_t{0} : (uint64_t{1} << bits) - 1; }

// Stack pointer width of the current stack: 64 in 64-bit mode, else SS.B.
unsigned stack_bits(const CpuState& s) {
  if (s.mode.code == CodeSize::Bits64) return 64;
  return (s.seg_attrs[SS] & kDefaultBig) ? 32 : 16;
}
unsigned code_bits(const CpuState& s) {
  return s.mode.code == CodeSize::Bits64 ? 64 : s.mode.code == CodeSize::Bits32 ? 32 : 16;
}

// RSP after writing a `bits`-wide stack pointer (16-bit stacks keep the upper bits).
uint64_t merge_sp(uint64_t old_rsp, uint64_t sp, unsigned bits) {
  if (bits == 16) return (old_rsp & ~uint64_t{0xffff}) | (sp & 0xffff);
  return sp & width_mask(bits);
}

// Pushes on a stack given by its base, pointer and width; nothing but memory
// changes until the caller commits sp().
class StackWriter {
 public:
  StackWriter(Cpu& cpu, uint64_t ss_base, uint64_t sp, unsigned bits, bool supervisor)
      : cpu_(cpu), base_(ss_base), sp_(sp & width_mask(bits)), bits_(bits), supervisor_(supervisor) {}
  bool push(uint64_t value, unsigned bytes) {
    sp_ = (sp_ - bytes) & width_mask(bits_);
    uint64_t linear = bits_ == 64 ? sp_ : (base_ + sp_) & 0xffffffffu;
    if (bits_ == 64 && !canonical(linear)) return fail(cpu_.state, Vector::SS);
    // Pushes onto an inner-level stack are supervisor accesses before the CPL changes.
    if (supervisor_) return cpu_.write_implicit(linear, bytes, value);
    return write_linear(cpu_, linear, bytes, value);
  }
  uint64_t sp() const { return sp_; }

 private:
  Cpu& cpu_;
  uint64_t base_, sp_;
  unsigned bits_;
  bool supervisor_;
};

// Reads the current stack at RSP + offset (RETF/IRET frames).
bool read_stack(Cpu& cpu, uint64_t offset, unsigned bytes, uint64_t& out) {
  const CpuState& s = cpu.state;
  const unsigned bits = stack_bits(s);
  uint64_t sp = (s.regs[RSP] + offset) & width_mask(bits);
  uint64_t linear = bits == 64 ? sp : (s.seg_base[SS] + sp) & 0xffffffffu;
  if (bits == 64 && !canonical(linear)) return fail(cpu.state, Vector::SS);
  return read_linear(cpu, linear, bytes, out);
}

bool ldt_usable(const CpuState& s) { return !null_selector(s.sys.ldtr.selector) && (s.sys.ldtr.attrs & kPresent); }

// Linear address of the descriptor and whether it lies inside its table.
bool descriptor_address(const CpuState& s, uint16_t selector, unsigned size, uint64_t& address) {
  uint64_t base;
  uint32_t limit;
  if (selector & 4) {
    if (!ldt_usable(s)) return false;
    base = s.sys.ldtr.base;
    limit = s.sys.ldtr.limit;
  } else {
    base = s.sys.gdtr.base;
    limit = s.sys.gdtr.limit;
  }
  const uint32_t offset = selector & 0xfff8u;
  if (uint64_t{offset} + size - 1 > limit) return false;
  address = base + offset;
  return true;
}

// Reads a descriptor; `found` is false (and nothing raised) when the selector
// lies outside its table. Returns false only on a memory fault.
bool lookup_descriptor(Cpu& cpu, uint16_t selector, Descriptor& out, bool& found, bool wide = false) {
  uint64_t address = 0;
  found = descriptor_address(cpu.state, selector, wide ? 16 : 8, address);
  if (!found) return true;
  if (!read_system(cpu, address, 8, out.low)) return false;
  out.high = 0;
  return !wide || read_system(cpu, address + 8, 8, out.high);
}

// Sets the accessed bit of a code/data descriptor in memory (a locked write on hardware).
bool set_accessed(Cpu& cpu, uint16_t selector, const Descriptor& d) {
  if (d.low & (uint64_t{1} << 40)) return true;
  uint64_t address = 0;
  if (!descriptor_address(cpu.state, selector, 8, address)) return true;
  return write_system(cpu, address + 5, 1, ((d.low >> 40) & 0xff) | 1);
}

void load_cache(CpuState& s, Seg seg, uint16_t selector, const Descriptor& d) {
  s.seg_selector[seg] = selector;
  s.seg_base[seg] = d.base();
  s.seg_limit[seg] = d.limit();
  s.seg_attrs[seg] = static_cast<uint16_t>(d.attrs() | kAccessed);
}

// A null selector in a data segment register: unusable, base 0 (Intel behaviour).
void load_null(CpuState& s, Seg seg, uint16_t selector) {
  s.seg_selector[seg] = selector;
  s.seg_base[seg] = 0;
  s.seg_limit[seg] = 0;
  s.seg_attrs[seg] = static_cast<uint16_t>((selector & 3) << 5);  // not present: unusable
}

// CS := selector (RPL forced to the new CPL), CPL := cpl.
void commit_cs(CpuState& s, uint16_t selector, const Descriptor& d, unsigned cpl) {
  load_cache(s, CS, static_cast<uint16_t>((selector & ~3u) | cpl), d);
  s.sys.cpl = static_cast<uint8_t>(cpl);
  update_mode(s);
}

constexpr uint64_t kFlagVm = 1u << 17, kFlagIopl = 3u << 12;
bool vm86_active(const CpuState& s) { return in_protected_mode(s) && (s.rflags_other & kFlagVm); }
// Real mode and virtual-8086 mode: a segment load sets the selector and base = selector << 4.
bool real_style_segments(const CpuState& s) { return !in_protected_mode(s) || (s.rflags_other & kFlagVm); }

void commit_real_cs(CpuState& s, uint16_t selector) {
  s.seg_selector[CS] = selector;
  s.seg_base[CS] = uint64_t{selector} << 4;
  update_mode(s);
}

bool is_code(const Descriptor& d) { return !d.system() && (d.attrs() & kCode); }
bool is_conforming_code(const Descriptor& d) { return is_code(d) && (d.attrs() & kConforming); }
bool is_writable_data(const Descriptor& d) {
  return !d.system() && !(d.attrs() & kCode) && (d.attrs() & kWritable);
}
bool is_64bit_code(const Descriptor& d) { return (d.attrs() & kLong) && !(d.attrs() & kDefaultBig); }

// Offset check of a far transfer target in code segment `d`.
bool target_offset_ok(const CpuState& s, const Descriptor& d, uint64_t offset) {
  if (long_mode_active(s) && is_64bit_code(d)) return canonical(offset);
  return offset <= d.limit();
}

// The stack for privilege level `cpl` from the current TSS (legacy: SS and ESP; long mode: RSP, SS null).
bool tss_stack(Cpu& cpu, unsigned cpl, uint32_t ext, uint16_t& ss, uint64_t& sp) {
  CpuState& s = cpu.state;
  const SegmentCache& tr = s.sys.tr;
  const uint32_t ts_error = selector_error(tr.selector) | ext;
  if (long_mode_active(s)) {
    const uint32_t offset = 4 + 8 * cpl;
    if (offset + 7 > tr.limit) return fail(s, Vector::TS, ts_error);
    if (!read_system(cpu, tr.base + offset, 8, sp)) return false;
    ss = static_cast<uint16_t>(cpl);
    return true;
  }
  const bool tss32 = seg_attr::type(tr.attrs) == desc_type::kTss32Available ||
                     seg_attr::type(tr.attrs) == desc_type::kTss32Busy;
  const uint32_t offset = tss32 ? 4 + 8 * cpl : 2 + 4 * cpl;
  const unsigned sp_bytes = tss32 ? 4 : 2;
  if (offset + sp_bytes + 1 > tr.limit) return fail(s, Vector::TS, ts_error);
  uint64_t selector = 0;
  if (!read_system(cpu, tr.base + offset, sp_bytes, sp) || !read_system(cpu, tr.base + offset + sp_bytes, 2, selector))
    return false;
  ss = static_cast<uint16_t>(selector);
  return true;
}

// The new stack segment of an inner-privilege transfer (legacy mode): #TS / #SS checks.
bool check_inner_ss(Cpu& cpu, uint16_t ss, unsigned cpl, uint32_t ext, Descriptor& d) {
  CpuState& s = cpu.state;
  const uint32_t error = selector_error(ss) | ext;
  if (null_selector(ss)) return fail(s, Vector::TS, ext);
  bool found = false;
  if (!lookup_descriptor(cpu, ss, d, found)) return false;
  if (!found || (ss & 3u) != cpl || d.dpl() != cpl || !is_writable_data(d)) return fail(s, Vector::TS, error);
  if (!d.present()) return fail(s, Vector::SS, error);
  return true;
}

// The stack segment popped by RETF/IRET when returning to an outer level.
// `null_ok`: 64-bit mode returning to 64-bit code below CPL 3 may load a null SS.
bool check_outer_ss(Cpu& cpu, uint16_t ss, unsigned rpl, bool null_ok, Descriptor& d) {
  CpuState& s = cpu.state;
  if (null_selector(ss)) {
    if (!null_ok) return fail(s, Vector::GP);
    d = Descriptor{};
    return true;
  }
  bool found = false;
  if (!lookup_descriptor(cpu, ss, d, found)) return false;
  if (!found || (ss & 3u) != rpl || d.dpl() != rpl || !is_writable_data(d)) return fail(s, Vector::GP, selector_error(ss));
  if (!d.present()) return fail(s, Vector::SS, selector_error(ss));
  return true;
}

void commit_ss(CpuState& s, uint16_t ss, const Descriptor& d, unsigned cpl) {
  if (null_selector(ss)) {
    load_null(s, SS, ss);
    // A null SS in 64-bit mode keeps a usable, writable stack of the new privilege.
    s.seg_attrs[SS] = static_cast<uint16_t>(kS | kWritable | (cpl << 5));
  } else {
    load_cache(s, SS, ss, d);
  }
}

// After a return to an outer privilege level, data segments the new level may not use become null.
void null_inaccessible_segments(CpuState& s) {
  for (Seg seg : {ES, FS, GS, DS}) {
    const uint16_t a = s.seg_attrs[seg];
    const bool data_or_nonconforming = !(a & kCode) || !(a & kConforming);
    if ((a & kS) && data_or_nonconforming && seg_attr::dpl(a) < s.sys.cpl) {
      const uint64_t base = s.seg_base[seg];
      load_null(s, seg, 0);
      if (s.mode.code == CodeSize::Bits64 && (seg == FS || seg == GS)) s.seg_base[seg] = base;
    }
  }
}

// The code segment RETF/IRET return to: its RPL becomes the CPL and may not be
// below the current one; conforming code needs DPL <= RPL, other code DPL = RPL.
bool check_return_cs(Cpu& cpu, uint16_t selector, Descriptor& d) {
  CpuState& s = cpu.state;
  const unsigned rpl = selector & 3u;
  if (null_selector(selector)) return fail(s, Vector::GP);
  bool found = false;
  if (!lookup_descriptor(cpu, selector, d, found)) return false;
  const uint32_t error = selector_error(selector);
  if (!found || !is_code(d) || rpl < s.sys.cpl) return fail(s, Vector::GP, error);
  if (is_conforming_code(d) ? d.dpl() > rpl : d.dpl() != rpl) return fail(s, Vector::GP, error);
  if (long_mode_active(s) && (d.attrs() & kLong) && (d.attrs() & kDefaultBig)) return fail(s, Vector::GP, error);
  if (!d.present()) return fail(s, Vector::NP, error);
  return true;
}

// ---- task switches (32-bit TSS) ----
enum class TaskSource { Jump, Call, Iret, Interrupt };
constexpr uint64_t kFlagNT = 1u << 14;
constexpr uint32_t kTss32MinLimit = 0x67;

bool is_tss32(const Descriptor& d, bool busy) {
  return d.system() && d.type() == (busy ? desc_type::kTss32Busy : desc_type::kTss32Available);
}

// Sets or clears the busy bit of the TSS descriptor `selector` in the GDT.
bool set_tss_busy(Cpu& cpu, uint16_t selector, bool busy) {
  uint64_t address = 0, access = 0;
  if (!descriptor_address(cpu.state, selector, 8, address)) return true;
  if (!read_system(cpu, address + 5, 1, access)) return false;
  return write_system(cpu, address + 5, 1, busy ? access | 2 : access & ~uint64_t{2});
}

// A segment register of the incoming task: the normal checks, reported as #TS
// (or #SS / #NP for not present) with the selector.
bool load_task_segment(Cpu& cpu, Seg seg, uint16_t selector) {
  CpuState& s = cpu.state;
  if (!load_data_segment(cpu, seg, selector)) {
    if (s.exception.vector == Vector::GP) s.exception = PendingException{.raised = true, .vector = Vector::TS,
                                                                         .error_code = selector_error(selector)};
    return false;
  }
  return true;
}

// Switches to the task whose (checked, present) 32-bit TSS descriptor is `tss`.
// Faults before the state is saved leave the old task untouched; later ones are
// raised in the new task, as on hardware.
bool task_switch(Cpu& cpu, uint16_t selector, const Descriptor& tss, TaskSource source, uint64_t return_eip,
                 bool push_error, uint32_t error_code, uint32_t ext) {
  CpuState& s = cpu.state;
  const uint32_t error = selector_error(selector) | ext;
  if (!is_tss32(tss, source == TaskSource::Iret)) return fail(s, Vector::GP, error);  // 16-bit TSS: not implemented
  if (tss.limit() < kTss32MinLimit) return fail(s, Vector::TS, error);
  const SegmentCache old_tr = s.sys.tr;
  if (old_tr.limit < kTss32MinLimit) return fail(s, Vector::TS, selector_error(old_tr.selector) | ext);
  // Read the incoming state first.
  const uint64_t base = tss.base();
  uint64_t cr3 = 0, eip = 0, eflags = 0, regs[8] = {}, selectors[6] = {}, ldt = 0;
  if (!read_system(cpu, base + 0x1c, 4, cr3) || !read_system(cpu, base + 0x20, 4, eip) ||
      !read_system(cpu, base + 0x24, 4, eflags) || !read_system(cpu, base + 0x60, 2, ldt))
    return false;
  for (unsigned i = 0; i < 8; ++i)
    if (!read_system(cpu, base + 0x28 + 4 * i, 4, regs[i])) return false;
  for (unsigned i = 0; i < 6; ++i)
    if (!read_system(cpu, base + 0x48 + 4 * i, 2, selectors[i])) return false;
  // Save the outgoing state.
  uint64_t old_flags = read_rflags(s);
  if (source == TaskSource::Iret) old_flags &= ~kFlagNT;
  const uint64_t old_base = old_tr.base;
  if (!write_system(cpu, old_base + 0x20, 4, return_eip) || !write_system(cpu, old_base + 0x24, 4, old_flags))
    return false;
  for (unsigned i = 0; i < 8; ++i)
    if (!write_system(cpu, old_base + 0x28 + 4 * i, 4, s.regs[i])) return false;
  for (unsigned i = 0; i < 6; ++i)
    if (!write_system(cpu, old_base + 0x48 + 4 * i, 2, s.seg_selector[i])) return false;
  if (source == TaskSource::Jump || source == TaskSource::Iret) {
    if (!set_tss_busy(cpu, old_tr.selector, false)) return false;
  }
  const bool nested = source == TaskSource::Call || source == TaskSource::Interrupt;
  if (nested && !write_system(cpu, base, 2, old_tr.selector)) return false;
  if (source != TaskSource::Iret && !set_tss_busy(cpu, selector, true)) return false;

  // Commit: from here on faults belong to the new task.
  s.sys.tr = SegmentCache{.base = base, .limit = tss.limit(), .selector = selector,
                          .attrs = static_cast<uint16_t>(tss.attrs() | 2)};
  s.sys.cr0 |= cr0::TS;
  if ((s.sys.cr0 & cr0::PG) && cr3 != s.sys.cr3) {
    s.sys.cr3 = cr3;
    cpu.invalidate_tlb(false);
  }
  // Reserved bits 3, 5, 15 stay 0; VM is dropped (virtual-8086 tasks are not implemented).
  write_rflags(s, (eflags & 0x3d7fd7) | (nested ? kFlagNT : 0));
  s.rip = eip;
  for (unsigned i = 0; i < 8; ++i) s.regs[i] = regs[i];
  for (unsigned i = 0; i < 6; ++i) s.seg_selector[i] = static_cast<uint16_t>(selectors[i]);
  s.sys.ldtr.selector = static_cast<uint16_t>(ldt);
  // The LDT, then CS (which gives the CPL), then the other segments.
  const uint16_t ldt_selector = static_cast<uint16_t>(ldt);
  if (ldt_selector & 4) return fail(s, Vector::TS, selector_error(ldt_selector));
  if (!load_ldt(cpu, ldt_selector)) {
    if (s.exception.vector == Vector::GP || s.exception.vector == Vector::NP)
      s.exception = PendingException{.raised = true, .vector = Vector::TS, .error_code = selector_error(ldt_selector)};
    return false;
  }
  const uint16_t cs_selector = static_cast<uint16_t>(selectors[CS]);
  Descriptor cs;
  bool found = false;
  if (null_selector(cs_selector)) return fail(s, Vector::TS, 0);
  if (!lookup_descriptor(cpu, cs_selector, cs, found)) return false;
  const unsigned new_cpl = cs_selector & 3u;
  if (!found || !is_code(cs) || (is_conforming_code(cs) ? cs.dpl() > new_cpl : cs.dpl() != new_cpl))
    return fail(s, Vector::TS, selector_error(cs_selector));
  if (!cs.present()) return fail(s, Vector::NP, selector_error(cs_selector));
  if (!set_accessed(cpu, cs_selector, cs)) return false;
  commit_cs(s, cs_selector, cs, new_cpl);
  for (Seg seg : {SS, ES, DS, FS, GS})
    if (!load_task_segment(cpu, seg, static_cast<uint16_t>(selectors[seg]))) return false;
  s.sys.interrupt_shadow = s.sys.mov_ss_shadow = false;
  if (!target_offset_ok(s, cs, eip)) return fail(s, Vector::GP);
  if (push_error) {
    StackWriter stack(cpu, s.seg_base[SS], s.regs[RSP], stack_bits(s), false);
    if (!stack.push(error_code, 4)) return false;
    s.regs[RSP] = merge_sp(s.regs[RSP], stack.sp(), stack_bits(s));
  }
  return true;
}

// JMP/CALL/INT through a task gate or to a TSS: the TSS selector's checks.
bool switch_to_tss_selector(Cpu& cpu, uint16_t selector, TaskSource source, uint64_t return_eip, bool push_error,
                            uint32_t error_code, uint32_t ext) {
  CpuState& s = cpu.state;
  const uint32_t error = selector_error(selector) | ext;
  if (selector & 4) return fail(s, Vector::GP, error);
  Descriptor tss;
  bool found = false;
  if (!lookup_descriptor(cpu, selector, tss, found)) return false;
  if (!found || !is_tss32(tss, false)) return fail(s, Vector::GP, error);
  if (!tss.present()) return fail(s, Vector::NP, error);
  return task_switch(cpu, selector, tss, source, return_eip, push_error, error_code, ext);
}

enum class FarKind { Jump, Call };

uint64_t far_transfer(Cpu& cpu, uint16_t selector, uint64_t offset, unsigned bits, uint64_t return_offset,
                      FarKind kind) {
  CpuState& s = cpu.state;
  offset &= width_mask(bits);
  if (real_style_segments(s)) {
    if (kind == FarKind::Call) {
      const unsigned bytes = bits / 8;
      StackWriter stack(cpu, s.seg_base[SS], s.regs[RSP], stack_bits(s), false);
      if (!stack.push(s.seg_selector[CS], bytes) || !stack.push(return_offset, bytes)) return 0;
      s.regs[RSP] = merge_sp(s.regs[RSP], stack.sp(), stack_bits(s));
    }
    commit_real_cs(s, selector);
    return offset;
  }
  const unsigned cpl = s.sys.cpl, rpl = selector & 3u;
  const uint32_t error = selector_error(selector);
  if (null_selector(selector)) return fail(s, Vector::GP), 0;
  Descriptor d;
  bool found = false;
  if (!lookup_descriptor(cpu, selector, d, found)) return 0;
  if (!found) return fail(s, Vector::GP, error), 0;

  if (!d.system()) {
    if (!(d.attrs() & kCode)) return fail(s, Vector::GP, error), 0;
    if (d.attrs() & kConforming ? d.dpl() > cpl : (rpl > cpl || d.dpl() != cpl)) return fail(s, Vector::GP, error), 0;
    if (long_mode_active(s) && (d.attrs() & kLong) && (d.attrs() & kDefaultBig)) return fail(s, Vector::GP, error), 0;
    if (!d.present()) return fail(s, Vector::NP, error), 0;
    if (!target_offset_ok(s, d, offset)) return fail(s, Vector::GP), 0;
    uint64_t new_rsp = s.regs[RSP];
    if (kind == FarKind::Call) {
      const unsigned bytes = bits / 8;
      StackWriter stack(cpu, s.seg_base[SS], s.regs[RSP], stack_bits(s), false);
      if (!stack.push(s.seg_selector[CS], bytes) || !stack.push(return_offset, bytes)) return 0;
      new_rsp = merge_sp(s.regs[RSP], stack.sp(), stack_bits(s));
    }
    if (!set_accessed(cpu, selector, d)) return 0;
    s.regs[RSP] = new_rsp;
    commit_cs(s, selector, d, cpl);
    return offset;
  }

  // System descriptor: call gate, or (legacy mode) a task gate or TSS: task switch.
  const bool lma = long_mode_active(s);
  const unsigned type = d.type();
  const TaskSource task_source = kind == FarKind::Jump ? TaskSource::Jump : TaskSource::Call;
  if (!lma && (type == desc_type::kTss32Available || type == desc_type::kTss16Available)) {
    if (d.dpl() < cpl || d.dpl() < rpl) return fail(s, Vector::GP, error), 0;
    if (!d.present()) return fail(s, Vector::NP, error), 0;
    if (!task_switch(cpu, selector, d, task_source, return_offset, false, 0, 0)) return 0;
    return s.rip;
  }
  if (!lma && type == desc_type::kTaskGate) {
    if (d.dpl() < cpl || d.dpl() < rpl) return fail(s, Vector::GP, error), 0;
    if (!d.present()) return fail(s, Vector::NP, error), 0;
    if (!switch_to_tss_selector(cpu, d.gate_selector(), task_source, return_offset, false, 0, 0)) return 0;
    return s.rip;
  }
  const bool gate = lma ? type == desc_type::kCallGate32 : (type == desc_type::kCallGate32 || type == desc_type::kCallGate16);
  if (!gate) return fail(s, Vector::GP, error), 0;
  if (lma) {
    if (!lookup_descriptor(cpu, selector, d, found, true)) return 0;
    if (!found || ((d.high >> 40) & 0x1f) != 0) return fail(s, Vector::GP, error), 0;
  }
  if (d.dpl() < cpl || d.dpl() < rpl) return fail(s, Vector::GP, error), 0;
  if (!d.present()) return fail(s, Vector::NP, error), 0;
  const uint16_t target = d.gate_selector();
  const uint32_t target_error = selector_error(target);
  if (null_selector(target)) return fail(s, Vector::GP), 0;
  Descriptor cs;
  if (!lookup_descriptor(cpu, target, cs, found)) return 0;
  if (!found || !is_code(cs) || cs.dpl() > cpl) return fail(s, Vector::GP, target_error), 0;
  if (lma && !is_64bit_code(cs)) return fail(s, Vector::GP, target_error), 0;
  const bool conforming = is_conforming_code(cs);
  if (kind == FarKind::Jump && !conforming && cs.dpl() != cpl) return fail(s, Vector::GP, target_error), 0;
  if (!cs.present()) return fail(s, Vector::NP, target_error), 0;
  const unsigned gate_bits = lma ? 64 : type == desc_type::kCallGate32 ? 32 : 16;
  const uint64_t target_offset = lma ? d.gate_offset64() : gate_bits == 16 ? d.gate_offset() & 0xffff : d.gate_offset();
  if (!target_offset_ok(s, cs, target_offset)) return fail(s, Vector::GP), 0;

  if (kind == FarKind::Jump) {
    if (!set_accessed(cpu, target, cs)) return 0;
    commit_cs(s, target, cs, cpl);
    return target_offset;
  }
  const unsigned bytes = gate_bits / 8;
  const uint64_t old_rsp = s.regs[RSP];
  if (!conforming && cs.dpl() < cpl) {
    // Call to an inner level: new stack from the TSS, parameters copied.
    const unsigned new_cpl = cs.dpl();
    uint16_t ss = 0;
    uint64_t sp = 0;
    if (!tss_stack(cpu, new_cpl, 0, ss, sp)) return 0;
    Descriptor ss_desc;
    unsigned new_stack_bits = 64;
    if (!lma) {
      if (!check_inner_ss(cpu, ss, new_cpl, 0, ss_desc)) return 0;
      new_stack_bits = (ss_desc.attrs() & kDefaultBig) ? 32 : 16;
    }
    const unsigned params = lma ? 0 : d.gate_param_count();
    uint64_t values[32];
    for (unsigned i = 0; i < params; ++i)
      if (!read_stack(cpu, uint64_t{i} * bytes, bytes, values[i])) return 0;
    StackWriter stack(cpu, lma ? 0 : ss_desc.base(), sp, new_stack_bits, true);
    if (!stack.push(s.seg_selector[SS], bytes) || !stack.push(old_rsp, bytes)) return 0;
    for (unsigned i = params; i-- > 0;)
      if (!stack.push(values[i], bytes)) return 0;
    if (!stack.push(s.seg_selector[CS], bytes) || !stack.push(return_offset, bytes)) return 0;
    if (!set_accessed(cpu, target, cs) || (!lma && !set_accessed(cpu, ss, ss_desc))) return 0;
    commit_ss(s, ss, ss_desc, new_cpl);
    s.regs[RSP] = merge_sp(old_rsp, stack.sp(), new_stack_bits);
    commit_cs(s, target, cs, new_cpl);
    return target_offset;
  }
  StackWriter stack(cpu, s.seg_base[SS], old_rsp, stack_bits(s), false);
  if (!stack.push(s.seg_selector[CS], bytes) || !stack.push(return_offset, bytes)) return 0;
  if (!set_accessed(cpu, target, cs)) return 0;
  s.regs[RSP] = merge_sp(old_rsp, stack.sp(), stack_bits(s));
  commit_cs(s, target, cs, cpl);
  return target_offset;
}

enum class EventClass { Benign, Contributory, PageFault };
EventClass event_class(uint8_t vector) {
  switch (vector) {
    case 0: case 10: case 11: case 12: case 13: return EventClass::Contributory;
    case 14: return EventClass::PageFault;
    default: return EventClass::Benign;
  }
}

// Runs one event through the double-fault rules until it is delivered.
bool deliver_with_nesting(Cpu& cpu, uint8_t vector, EventKind kind, uint32_t error_code) {
  CpuState& s = cpu.state;
  // Bounded: every failed delivery either escalates towards #DF or replaces a benign event.
  for (int attempt = 0; attempt < 8; ++attempt) {
    s.exception = PendingException{};
    if (deliver_event(cpu, vector, kind, error_code, s.rip)) return true;
    const PendingException second = s.exception;
    s.exception = PendingException{};
    if (kind == EventKind::Exception && vector == static_cast<uint8_t>(Vector::DF)) return false;  // triple fault
    const uint8_t second_vector = static_cast<uint8_t>(second.vector);
    if (second.vector == Vector::PF) s.sys.cr2 = second.fault_address;
    const EventClass first = kind == EventKind::Exception ? event_class(vector) : EventClass::Benign;
    const EventClass next = event_class(second_vector);
    if ((first == EventClass::Contributory && next == EventClass::Contributory) ||
        (first == EventClass::PageFault && next != EventClass::Benign)) {
      vector = static_cast<uint8_t>(Vector::DF);
      error_code = 0;
    } else {
      vector = second_vector;
      error_code = second.error_code;
    }
    kind = EventKind::Exception;
  }
  return false;
}

}  // namespace

void update_mode(CpuState& s) {
  const uint16_t cs = s.seg_attrs[CS];
  if (in_protected_mode(s) && long_mode_active(s) && (cs & kLong)) s.mode.code = CodeSize::Bits64;
  else s.mode.code = (cs & kDefaultBig) ? CodeSize::Bits32 : CodeSize::Bits16;
  s.mode.flat = (s.seg_base[CS] | s.seg_base[DS] | s.seg_base[ES] | s.seg_base[SS]) == 0;
  s.mode.stack_bits = (s.seg_attrs[SS] & kDefaultBig) ? 32 : 16;
  uint8_t checked = 0;
  if (in_protected_mode(s) && s.mode.code != CodeSize::Bits64) {
    for (unsigned seg = ES; seg <= GS; ++seg) {
      const uint16_t a = s.seg_attrs[seg];
      const bool usable = (a & kPresent) && (a & kS);
      const bool code = a & kCode;
      // Code segments (never writable) and read-only data are checked for the access type too.
      const bool flat4g = s.seg_limit[seg] == 0xffffffffu && !code && !(a & kExpandDown) && (a & kWritable);
      if (!usable || !flat4g) checked |= static_cast<uint8_t>(1u << seg);
    }
  }
  s.mode.checked_segments = checked;
  s.mode.vm86 = vm86_active(s);
  s.mode.cs_limited = in_protected_mode(s) && s.mode.code != CodeSize::Bits64 && s.seg_limit[CS] != 0xffffffffu;
}

bool read_descriptor(Cpu& cpu, uint16_t selector, Descriptor& out, bool wide) {
  bool found = false;
  if (!lookup_descriptor(cpu, selector, out, found, wide)) return false;
  if (!found) return fail(cpu.state, Vector::GP, selector_error(selector));
  return true;
}

bool load_data_segment(Cpu& cpu, Seg seg, uint16_t selector) {
  CpuState& s = cpu.state;
  if (real_style_segments(s)) {
    // Real mode: only selector and base change (limit and attributes stay, as on hardware).
    s.seg_selector[seg] = selector;
    s.seg_base[seg] = uint64_t{selector} << 4;
    if (seg == SS) s.sys.interrupt_shadow = s.sys.mov_ss_shadow = true;
    update_mode(s);
    return true;
  }
  const unsigned cpl = s.sys.cpl, rpl = selector & 3u;
  const uint32_t error = selector_error(selector);
  if (null_selector(selector)) {
    if (seg == SS) {
      if (!(s.mode.code == CodeSize::Bits64 && cpl != 3 && rpl == cpl)) return fail(s, Vector::GP);
      commit_ss(s, selector, Descriptor{}, cpl);
      s.sys.interrupt_shadow = s.sys.mov_ss_shadow = true;
    } else {
      load_null(s, seg, selector);
    }
    update_mode(s);
    return true;
  }
  Descriptor d;
  if (!read_descriptor(cpu, selector, d)) return false;
  if (seg == SS) {
    if (rpl != cpl || !is_writable_data(d) || d.dpl() != cpl) return fail(s, Vector::GP, error);
    if (!d.present()) return fail(s, Vector::SS, error);
  } else {
    if (d.system() || ((d.attrs() & kCode) && !(d.attrs() & kReadable))) return fail(s, Vector::GP, error);
    if (!is_conforming_code(d) && (rpl > d.dpl() || cpl > d.dpl())) return fail(s, Vector::GP, error);
    if (!d.present()) return fail(s, Vector::NP, error);
  }
  if (!set_accessed(cpu, selector, d)) return false;
  load_cache(s, seg, selector, d);
  if (seg == SS) s.sys.interrupt_shadow = s.sys.mov_ss_shadow = true;
  update_mode(s);
  return true;
}

bool load_ldt(Cpu& cpu, uint16_t selector) {
  CpuState& s = cpu.state;
  if (null_selector(selector)) {
    s.sys.ldtr = SegmentCache{.base = 0, .limit = 0, .selector = selector, .attrs = 0};
    return true;
  }
  const uint32_t error = selector_error(selector);
  if (selector & 4) return fail(s, Vector::GP, error);
  Descriptor d;
  if (!read_descriptor(cpu, selector, d, long_mode_active(s))) return false;
  if (!d.system() || d.type() != desc_type::kLdt) return fail(s, Vector::GP, error);
  if (!d.present()) return fail(s, Vector::NP, error);
  s.sys.ldtr = SegmentCache{.base = long_mode_active(s) ? d.base64() : d.base(),
                            .limit = d.limit(),
                            .selector = selector,
                            .attrs = d.attrs()};
  return true;
}

bool load_task_register(Cpu& cpu, uint16_t selector) {
  CpuState& s = cpu.state;
  const uint32_t error = selector_error(selector);
  if (null_selector(selector)) return fail(s, Vector::GP);
  if (selector & 4) return fail(s, Vector::GP, error);
  const bool lma = long_mode_active(s);
  Descriptor d;
  if (!read_descriptor(cpu, selector, d, lma)) return false;
  const bool available = d.type() == desc_type::kTss32Available || (!lma && d.type() == desc_type::kTss16Available);
  if (!d.system() || !available) return fail(s, Vector::GP, error);
  if (!d.present()) return fail(s, Vector::NP, error);
  uint64_t address = 0;
  descriptor_address(s, selector, 8, address);
  // Mark busy (type bit 1).
  if (!write_system(cpu, address + 5, 1, ((d.low >> 40) & 0xff) | 2)) return false;
  s.sys.tr = SegmentCache{.base = lma ? d.base64() : d.base(),
                          .limit = d.limit(),
                          .selector = selector,
                          .attrs = static_cast<uint16_t>(d.attrs() | 2)};
  return true;
}

bool exception_has_error_code(uint8_t vector) {
  switch (vector) {
    case 8: case 10: case 11: case 12: case 13: case 14: case 17: case 21: case 29: case 30: return true;
    default: return false;
  }
}

bool deliver_event(Cpu& cpu, uint8_t vector, EventKind kind, uint32_t error_code, uint64_t return_rip) {
  CpuState& s = cpu.state;
  const uint64_t old_flags = read_rflags(s);
  if (!in_protected_mode(s)) {
    // Real mode: IVT entry (IP, CS), 16-bit frame FLAGS, CS, IP.
    uint64_t entry = 0;
    if (uint64_t{vector} * 4 + 3 > s.sys.idtr.limit) return fail(s, Vector::GP);
    if (!read_system(cpu, s.sys.idtr.base + uint64_t{vector} * 4, 4, entry)) return false;
    StackWriter stack(cpu, s.seg_base[SS], s.regs[RSP], stack_bits(s), false);
    if (!stack.push(old_flags, 2) || !stack.push(s.seg_selector[CS], 2) || !stack.push(return_rip, 2)) return false;
    s.regs[RSP] = merge_sp(s.regs[RSP], stack.sp(), stack_bits(s));
    write_rflags(s, old_flags & ~(rflags::IF | rflags::TF | rflags::AC | (uint64_t{1} << 16)));
    commit_real_cs(s, static_cast<uint16_t>(entry >> 16));
    s.rip = entry & 0xffff;
    return true;
  }

  const bool lma = long_mode_active(s);
  const bool software = kind == EventKind::Software || kind == EventKind::SoftwareException;
  const uint32_t ext = software ? 0 : 1;
  const uint32_t idt_error = uint32_t{vector} * 8 + 2 + ext;
  const unsigned entry_size = lma ? 16 : 8;
  if (uint64_t{vector} * entry_size + entry_size - 1 > s.sys.idtr.limit) return fail(s, Vector::GP, idt_error);
  Descriptor gate;
  const uint64_t entry = s.sys.idtr.base + uint64_t{vector} * entry_size;
  if (!read_system(cpu, entry, 8, gate.low)) return false;
  if (lma && !read_system(cpu, entry + 8, 8, gate.high)) return false;
  const unsigned type = gate.type();
  bool valid_type;
  if (lma) valid_type = !gate.system() ? false : (type == desc_type::kInterruptGate32 || type == desc_type::kTrapGate32) &&
                                                     ((gate.high >> 40) & 0x1f) == 0;
  else valid_type = gate.system() && (type == desc_type::kInterruptGate16 || type == desc_type::kTrapGate16 ||
                                      type == desc_type::kInterruptGate32 || type == desc_type::kTrapGate32 ||
                                      type == desc_type::kTaskGate);
  if (!valid_type) return fail(s, Vector::GP, idt_error);
  const unsigned cpl = s.sys.cpl;
  const bool from_vm86 = vm86_active(s);
  // Virtual-8086 mode (no VME): INT n is IOPL-sensitive (INT3, INTO and INT1 are not).
  if (from_vm86 && kind == EventKind::Software && (old_flags & kFlagIopl) != kFlagIopl) return fail(s, Vector::GP);
  if (software && gate.dpl() < cpl) return fail(s, Vector::GP, idt_error - ext);
  if (!gate.present()) return fail(s, Vector::NP, idt_error);
  const bool push_error = kind == EventKind::Exception && exception_has_error_code(vector);
  if (type == desc_type::kTaskGate)
    return switch_to_tss_selector(cpu, gate.gate_selector(), TaskSource::Interrupt, return_rip, push_error, error_code,
                                  ext);

  const uint16_t target = gate.gate_selector();
  if (null_selector(target)) return fail(s, Vector::GP, ext);
  const uint32_t target_error = selector_error(target) | ext;
  Descriptor cs;
  bool found = false;
  if (!lookup_descriptor(cpu, target, cs, found)) return false;
  if (!found || !is_code(cs) || cs.dpl() > cpl) return fail(s, Vector::GP, target_error);
  if (!cs.present()) return fail(s, Vector::NP, target_error);
  if (lma && !is_64bit_code(cs)) return fail(s, Vector::GP, target_error);
  // From virtual-8086 mode only to a ring-0 non-conforming segment through a 32-bit gate.
  const bool gate32 = type == desc_type::kInterruptGate32 || type == desc_type::kTrapGate32;
  if (from_vm86 && (is_conforming_code(cs) || cs.dpl() != 0 || !gate32)) return fail(s, Vector::GP, target_error);
  const unsigned gate_bits = lma ? 64 : (type == desc_type::kInterruptGate32 || type == desc_type::kTrapGate32) ? 32 : 16;
  const uint64_t offset = lma ? gate.gate_offset64() : gate_bits == 16 ? gate.gate_offset() & 0xffff : gate.gate_offset();
  if (!target_offset_ok(s, cs, offset)) return fail(s, Vector::GP, ext);
  const bool inner = !is_conforming_code(cs) && cs.dpl() < cpl;
  const unsigned new_cpl = inner ? cs.dpl() : cpl;
  const unsigned bytes = gate_bits / 8;

  uint16_t new_ss = s.seg_selector[SS];
  Descriptor ss_desc;
  uint64_t sp = s.regs[RSP];
  uint64_t ss_base = s.seg_base[SS];
  unsigned sp_bits = stack_bits(s);
  if (lma) {
    sp_bits = 64;
    ss_base = 0;
    if (gate.gate_ist() != 0) {
      const uint32_t offset_in_tss = 0x24 + 8 * (gate.gate_ist() - 1);
      if (offset_in_tss + 7 > s.sys.tr.limit) return fail(s, Vector::TS, selector_error(s.sys.tr.selector) | ext);
      if (!read_system(cpu, s.sys.tr.base + offset_in_tss, 8, sp)) return false;
      if (inner) new_ss = static_cast<uint16_t>(new_cpl);
    } else if (inner) {
      if (!tss_stack(cpu, new_cpl, ext, new_ss, sp)) return false;
    }
    sp &= ~uint64_t{15};
  } else if (inner) {
    if (!tss_stack(cpu, new_cpl, ext, new_ss, sp)) return false;
    if (!check_inner_ss(cpu, new_ss, new_cpl, ext, ss_desc)) return false;
    ss_base = ss_desc.base();
    sp_bits = (ss_desc.attrs() & kDefaultBig) ? 32 : 16;
  }

  StackWriter stack(cpu, ss_base, sp, sp_bits, inner);
  if (from_vm86 && (!stack.push(s.seg_selector[GS], 4) || !stack.push(s.seg_selector[FS], 4) ||
                    !stack.push(s.seg_selector[DS], 4) || !stack.push(s.seg_selector[ES], 4)))
    return false;
  if (lma || inner) {
    if (!stack.push(s.seg_selector[SS], bytes) || !stack.push(s.regs[RSP], bytes)) return false;
  }
  if (!stack.push(old_flags, bytes) || !stack.push(s.seg_selector[CS], bytes) || !stack.push(return_rip, bytes))
    return false;
  if (push_error && !stack.push(error_code, bytes)) return false;
  if (!set_accessed(cpu, target, cs)) return false;
  if (inner && !lma && !set_accessed(cpu, new_ss, ss_desc)) return false;

  if (inner) commit_ss(s, new_ss, ss_desc, new_cpl);
  if (from_vm86)
    for (Seg seg : {ES, DS, FS, GS}) load_null(s, seg, 0);
  s.regs[RSP] = merge_sp(s.regs[RSP], stack.sp(), sp_bits);
  uint64_t flags = old_flags & ~(rflags::TF | (uint64_t{1} << 14) /*NT*/ | (uint64_t{1} << 16) /*RF*/ | (uint64_t{1} << 17) /*VM*/);
  if (type == desc_type::kInterruptGate32 || type == desc_type::kInterruptGate16) flags &= ~rflags::IF;
  write_rflags(s, flags);
  commit_cs(s, target, cs, new_cpl);
  s.rip = offset;
  return true;
}

bool deliver_exception(Cpu& cpu) {
  CpuState& s = cpu.state;
  const PendingException e = s.exception;
  if (e.vector == Vector::PF) s.sys.cr2 = e.fault_address;
  return deliver_with_nesting(cpu, static_cast<uint8_t>(e.vector), EventKind::Exception, e.error_code);
}

bool deliver_external_interrupt(Cpu& cpu, uint8_t vector) {
  return deliver_with_nesting(cpu, vector, EventKind::External, 0);
}

// ---- helpers ----

uint64_t helper_load_segment(Cpu& cpu, uint64_t seg, uint64_t selector, uint64_t no_shadow, uint64_t) {
  const bool shadow_before = cpu.state.sys.interrupt_shadow, mov_ss_shadow_before = cpu.state.sys.mov_ss_shadow;
  if (load_data_segment(cpu, static_cast<Seg>(seg), static_cast<uint16_t>(selector)) && no_shadow) {
    cpu.state.sys.interrupt_shadow = shadow_before;  // LSS loads SS without the MOV SS shadow
    cpu.state.sys.mov_ss_shadow = mov_ss_shadow_before;
  }
  return 0;
}

uint64_t helper_read_selector(Cpu& cpu, uint64_t seg, uint64_t, uint64_t, uint64_t) {
  return cpu.state.seg_selector[seg];
}

uint64_t helper_far_jump(Cpu& cpu, uint64_t selector, uint64_t offset, uint64_t bits, uint64_t next_offset) {
  return far_transfer(cpu, static_cast<uint16_t>(selector), offset, static_cast<unsigned>(bits), next_offset,
                      FarKind::Jump);
}

uint64_t helper_far_call(Cpu& cpu, uint64_t selector, uint64_t offset, uint64_t bits, uint64_t return_offset) {
  return far_transfer(cpu, static_cast<uint16_t>(selector), offset, static_cast<unsigned>(bits), return_offset,
                      FarKind::Call);
}

uint64_t helper_far_return(Cpu& cpu, uint64_t bits, uint64_t pop_bytes, uint64_t, uint64_t) {
  CpuState& s = cpu.state;
  const unsigned bytes = static_cast<unsigned>(bits / 8);
  uint64_t offset = 0, selector_raw = 0;
  if (!read_stack(cpu, 0, bytes, offset) || !read_stack(cpu, bytes, bytes, selector_raw)) return 0;
  const uint16_t selector = static_cast<uint16_t>(selector_raw);
  const unsigned old_bits = stack_bits(s);
  if (real_style_segments(s)) {
    s.regs[RSP] = merge_sp(s.regs[RSP], s.regs[RSP] + 2 * bytes + pop_bytes, old_bits);
    commit_real_cs(s, selector);
    return offset;
  }
  Descriptor cs;
  if (!check_return_cs(cpu, selector, cs)) return 0;
  const unsigned rpl = selector & 3u;
  if (!target_offset_ok(s, cs, offset)) return fail(s, Vector::GP), 0;
  if (rpl == s.sys.cpl) {
    if (!set_accessed(cpu, selector, cs)) return 0;
    s.regs[RSP] = merge_sp(s.regs[RSP], s.regs[RSP] + 2 * bytes + pop_bytes, old_bits);
    commit_cs(s, selector, cs, rpl);
    return offset;
  }
  // Return to an outer level: SS:RSP follow the parameters.
  uint64_t new_sp = 0, ss_raw = 0;
  if (!read_stack(cpu, 2 * bytes + pop_bytes, bytes, new_sp) || !read_stack(cpu, 3 * bytes + pop_bytes, bytes, ss_raw))
    return 0;
  const uint16_t ss = static_cast<uint16_t>(ss_raw);
  const bool to_64bit = long_mode_active(s) && is_64bit_code(cs);
  Descriptor ss_desc;
  if (!check_outer_ss(cpu, ss, rpl, to_64bit && rpl != 3 && s.mode.code == CodeSize::Bits64, ss_desc)) return 0;
  if (!set_accessed(cpu, selector, cs) || (!null_selector(ss) && !set_accessed(cpu, ss, ss_desc))) return 0;
  const unsigned new_bits = to_64bit ? 64 : (ss_desc.attrs() & kDefaultBig) ? 32 : 16;
  commit_ss(s, ss, ss_desc, rpl);
  s.regs[RSP] = merge_sp(s.regs[RSP], new_sp + pop_bytes, new_bits);
  commit_cs(s, selector, cs, rpl);
  null_inaccessible_segments(s);
  return offset;
}

namespace {
// IRET at CPL 0 (32-bit, legacy protected mode) with VM set in the popped EFLAGS: the
// frame continues with ESP, SS, ES, DS, FS, GS; every segment gets base = selector << 4,
// a 64 KiB limit and DPL-3 data attributes; CPL becomes 3. Returns the new IP.
uint64_t iret_to_vm86(Cpu& cpu, uint64_t eip, uint16_t cs, uint64_t flags) {
  CpuState& s = cpu.state;
  uint64_t rest[6] = {};  // ESP, SS, ES, DS, FS, GS
  for (unsigned i = 0; i < 6; ++i)
    if (!read_stack(cpu, 12 + 4 * i, 4, rest[i])) return 0;
  const uint16_t selectors[6] = {static_cast<uint16_t>(rest[2]), cs, static_cast<uint16_t>(rest[1]),
                                 static_cast<uint16_t>(rest[3]), static_cast<uint16_t>(rest[4]),
                                 static_cast<uint16_t>(rest[5])};  // in Seg order
  for (unsigned seg = ES; seg <= GS; ++seg) {
    s.seg_selector[seg] = selectors[seg];
    s.seg_base[seg] = uint64_t{selectors[seg]} << 4;
    s.seg_limit[seg] = 0xffff;
    s.seg_attrs[seg] = 0xf3;
  }
  write_rflags(s, (flags & 0x3f7fd5) | rflags::kFixed);
  s.regs[RSP] = rest[0] & 0xffffffffu;
  s.sys.cpl = 3;
  update_mode(s);
  return eip & 0xffff;
}
}  // namespace

uint64_t helper_iret(Cpu& cpu, uint64_t bits, uint64_t next_offset, uint64_t, uint64_t) {
  CpuState& s = cpu.state;
  constexpr uint64_t kNT = 1u << 14, kRF = 1u << 16, kVM = 1u << 17, kVIF = 1u << 19, kVIP = 1u << 20,
                     kIOPL = 3u << 12;
  const unsigned bytes = static_cast<unsigned>(bits / 8);
  const uint64_t old_flags = read_rflags(s);
  const bool from_vm86 = vm86_active(s);
  // Virtual-8086 mode (no VME): IRET is IOPL-sensitive, then works as in real mode (IOPL kept).
  if (from_vm86 && (old_flags & kIOPL) != kIOPL) return fail(s, Vector::GP), 0;
  if (in_protected_mode(s) && !from_vm86 && (old_flags & kNT)) {
    if (long_mode_active(s)) return fail(s, Vector::GP), 0;
    // Return to the task in the back link of the current TSS (which must be a busy TSS).
    uint64_t link = 0;
    if (!read_system(cpu, s.sys.tr.base, 2, link)) return 0;
    const uint16_t selector = static_cast<uint16_t>(link);
    const uint32_t error = selector_error(selector);
    if (selector & 4) return fail(s, Vector::TS, error), 0;
    Descriptor tss;
    bool found = false;
    if (!lookup_descriptor(cpu, selector, tss, found)) return 0;
    if (!found || !is_tss32(tss, true)) return fail(s, Vector::TS, error), 0;
    if (!tss.present()) return fail(s, Vector::NP, error), 0;
    if (!task_switch(cpu, selector, tss, TaskSource::Iret, next_offset, false, 0, 0)) return 0;
    return s.rip;
  }
  uint64_t offset = 0, selector_raw = 0, flags = 0;
  if (!read_stack(cpu, 0, bytes, offset) || !read_stack(cpu, bytes, bytes, selector_raw) ||
      !read_stack(cpu, 2 * bytes, bytes, flags))
    return 0;
  const uint16_t selector = static_cast<uint16_t>(selector_raw);
  const unsigned old_bits = stack_bits(s);
  if (real_style_segments(s)) {
    uint64_t changeable = bits == 16 ? 0xffff : 0x257fd5;  // VM, VIF, VIP keep their values
    if (from_vm86) changeable &= ~kIOPL;
    write_rflags(s, (old_flags & ~changeable) | (flags & changeable));
    s.regs[RSP] = merge_sp(s.regs[RSP], s.regs[RSP] + 3 * bytes, old_bits);
    commit_real_cs(s, selector);
    return offset;
  }
  if (bits != 16 && (flags & kVM) && s.sys.cpl == 0 && !long_mode_active(s)) return iret_to_vm86(cpu, offset, selector, flags);
  Descriptor cs;
  if (!check_return_cs(cpu, selector, cs)) return 0;
  const unsigned cpl = s.sys.cpl, rpl = selector & 3u;
  if (!target_offset_ok(s, cs, offset)) return fail(s, Vector::GP), 0;
  // Flags the new image may change at the current (old) privilege.
  uint64_t changeable = rflags::kArith | rflags::TF | rflags::DF | kNT;
  if (bits != 16) changeable |= kRF | rflags::AC | rflags::ID;
  if (cpl == 0) changeable |= kIOPL | (bits != 16 ? kVIF | kVIP : 0);
  if (cpl <= ((old_flags & kIOPL) >> 12)) changeable |= rflags::IF;
  if (bits == 16) changeable &= 0xffff;
  const uint64_t new_flags = (old_flags & ~changeable) | (flags & changeable);

  const bool pops_stack = rpl > cpl || s.mode.code == CodeSize::Bits64;
  if (!pops_stack) {
    if (!set_accessed(cpu, selector, cs)) return 0;
    s.regs[RSP] = merge_sp(s.regs[RSP], s.regs[RSP] + 3 * bytes, old_bits);
    write_rflags(s, new_flags);
    commit_cs(s, selector, cs, rpl);
    return offset;
  }
  uint64_t new_sp = 0, ss_raw = 0;
  if (!read_stack(cpu, 3 * bytes, bytes, new_sp) || !read_stack(cpu, 4 * bytes, bytes, ss_raw)) return 0;
  const uint16_t ss = static_cast<uint16_t>(ss_raw);
  const bool to_64bit = long_mode_active(s) && is_64bit_code(cs);
  Descriptor ss_desc;
  if (!check_outer_ss(cpu, ss, rpl, to_64bit && rpl != 3, ss_desc)) return 0;
  if (!set_accessed(cpu, selector, cs) || (!null_selector(ss) && !set_accessed(cpu, ss, ss_desc))) return 0;
  const unsigned new_bits = to_64bit ? 64 : (ss_desc.attrs() & kDefaultBig) ? 32 : 16;
  write_rflags(s, new_flags);
  commit_ss(s, ss, ss_desc, rpl);
  s.regs[RSP] = merge_sp(s.regs[RSP], new_sp, new_bits);
  commit_cs(s, selector, cs, rpl);
  if (rpl > cpl) null_inaccessible_segments(s);
  return offset;
}

uint64_t helper_software_interrupt(Cpu& cpu, uint64_t vector, uint64_t length, uint64_t kind, uint64_t) {
  CpuState& s = cpu.state;
  const uint64_t next = (s.rip + length) & width_mask(code_bits(s));
  if ((kind & kSoftwareInterruptInto) && !(read_rflags(s) & rflags::OF)) return next;  // INTO without overflow
  if (static_cast<EventKind>(kind & 0xff) != EventKind::Software && cpu.exception_intercepted(static_cast<uint8_t>(vector))) {
    s.rip = next;  // reported as a trap, after the instruction
    return fail(s, static_cast<Vector>(vector)), 0;
  }
  if (!deliver_event(cpu, static_cast<uint8_t>(vector), static_cast<EventKind>(kind & 0xff), 0, next)) return 0;
  s.sys.event_delivered = true;
  return s.rip;
}

uint64_t helper_segment_check(Cpu& cpu, uint64_t linear, uint64_t packed, uint64_t, uint64_t) {
  CpuState& s = cpu.state;
  const unsigned seg = packed & 0xff, access = static_cast<unsigned>(packed >> 24);
  const uint64_t size = std::max<uint64_t>(1, (packed >> 8) & 0xffff);
  const uint16_t a = s.seg_attrs[seg];
  const uint64_t offset = (linear - s.seg_base[seg]) & 0xffffffffu, last = offset + size - 1;
  const uint32_t limit = s.seg_limit[seg];
  const bool code = a & kCode;
  bool ok = (a & kPresent) && (a & kS);
  if (ok && !code && (a & kExpandDown)) ok = offset > limit && last <= ((a & kDefaultBig) ? 0xffffffffu : 0xffffu);
  else if (ok) ok = last <= limit;
  if (ok && (access & kSegmentWrite)) ok = !code && (a & kWritable);
  if (ok && (access & kSegmentRead)) ok = !code || (a & kReadable);
  if (!ok) fail(s, seg == SS ? Vector::SS : Vector::GP);
  return 0;
}

uint64_t helper_check_selector(Cpu& cpu, uint64_t selector_raw, uint64_t which, uint64_t source, uint64_t) {
  CpuState& s = cpu.state;
  // Not recognised in real mode.
  if (real_style_segments(s)) return fail(s, Vector::UD), 0;
  const uint16_t selector = static_cast<uint16_t>(selector_raw);
  uint64_t flags = read_rflags(s) & ~rflags::ZF;
  if (which == 4) {  // ARPL: raise the destination's RPL to the source's
    const bool adjust = (selector & 3u) < (source & 3u);
    write_rflags(s, flags | (adjust ? rflags::ZF : 0));
    return adjust ? (selector & ~3u) | (source & 3u) : selector;
  }
  uint64_t result = 0;
  bool ok = false;
  Descriptor d;
  bool found = false;
  if (!null_selector(selector)) {
    if (!lookup_descriptor(cpu, selector, d, found)) return 0;
  }
  if (found) {
    const unsigned cpl = s.sys.cpl, rpl = selector & 3u;
    const bool privileged_ok = d.dpl() >= cpl && d.dpl() >= rpl;
    const bool lma = long_mode_active(s);
    if (which <= 1) {  // LAR, LSL
      bool type_ok;
      if (!d.system()) {
        type_ok = true;
      } else {
        const unsigned t = d.type();
        if (lma) type_ok = t == desc_type::kLdt || t == desc_type::kTss32Available || t == desc_type::kTss32Busy ||
                           (which == 0 && t == desc_type::kCallGate32);
        else type_ok = t == desc_type::kTss16Available || t == desc_type::kLdt || t == desc_type::kTss16Busy ||
                       t == desc_type::kTss32Available || t == desc_type::kTss32Busy ||
                       (which == 0 && (t == desc_type::kCallGate16 || t == desc_type::kTaskGate ||
                                       t == desc_type::kCallGate32));
      }
      ok = type_ok && (is_conforming_code(d) || privileged_ok);
      result = which == 0 ? (d.low >> 32) & 0x00f0ff00 : d.limit();
    } else if (which == 2) {  // VERR
      ok = !d.system() && (!(d.attrs() & kCode) || (d.attrs() & kReadable)) && (is_conforming_code(d) || privileged_ok);
    } else {  // VERW
      ok = is_writable_data(d) && privileged_ok;
    }
  }
  if (ok) flags |= rflags::ZF;
  write_rflags(s, flags);
  return result;
}

}  // namespace kiln::emu
