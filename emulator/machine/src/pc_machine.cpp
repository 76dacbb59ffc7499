#include "kiln/machine/pc_machine.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <new>

#include "kiln/common/error.h"
#include "kiln/emulator/system.h"

namespace kiln::machine {

using emu::Access;
using emu::RegionKind;

// Takes the device lock around every port access from the CPU. ISA devices
// with 8-bit registers see a wider access as consecutive byte accesses, as
// the bus splits it (bytes beyond the device's ports float high).
class PcMachine::LockedIo final : public emu::IoHandler {
 public:
  LockedIo(std::mutex& lock, emu::IoHandler& device, uint16_t first, uint32_t count, bool byte_wide)
      : lock_(lock), device_(device), first_(first), count_(count), byte_wide_(byte_wide) {}
  uint32_t io_read(uint16_t port, unsigned size) override {
    std::lock_guard guard(lock_);
    if (!byte_wide_ || size == 1) return device_.io_read(port, size);
    uint32_t value = 0;
    for (unsigned i = 0; i < size; ++i) {
      const uint32_t byte = owns(port + i) ? device_.io_read(static_cast<uint16_t>(port + i), 1) & 0xff : 0xff;
      value |= byte << (8 * i);
    }
    return value;
  }
  void io_write(uint16_t port, unsigned size, uint32_t value) override {
    std::lock_guard guard(lock_);
    if (!byte_wide_ || size == 1) return device_.io_write(port, size, value);
    for (unsigned i = 0; i < size; ++i)
      if (owns(port + i)) device_.io_write(static_cast<uint16_t>(port + i), 1, (value >> (8 * i)) & 0xff);
  }

 private:
  bool owns(uint32_t port) const { return port - first_ < count_; }
  std::mutex& lock_;
  emu::IoHandler& device_;
  uint32_t first_, count_;
  bool byte_wide_;
};

// The CPU's view of the PIC: pending() is a lock-free read of the INTR line
// (asked at every block boundary), acknowledge() runs the INTA cycle.
class PcMachine::PicInterface final : public emu::InterruptController {
 public:
  explicit PicInterface(PcMachine& machine) : machine_(machine) {}
  bool pending() override { return machine_.interrupt_line_.load(std::memory_order_acquire); }
  uint8_t acknowledge() override {
    std::lock_guard guard(machine_.lock_);
    return machine_.pic_.acknowledge();
  }

 private:
  PcMachine& machine_;
};

namespace {

constexpr uint16_t kSerialBase[4] = {0x3f8, 0x2f8, 0x3e8, 0x2e8};
constexpr unsigned kSerialIrq[4] = {4, 3, 4, 3};
constexpr uint64_t kMinRam = 2ull << 20;
constexpr uint64_t kLowRamCutoff = 0xe0000000;  // with this much RAM or more, part of it moves above 4 GiB
constexpr uint64_t k4GiB = 1ull << 32;
constexpr uint64_t kRunChunk = 1 << 20;         // instructions per Cpu::run call

}  // namespace

PcMachine::PcMachine(MachineConfig config) : config_(std::move(config)) {
  if (config_.kernel.empty())
    throw invalid_argument("no -kernel given: booting from firmware or disks is not supported yet");
  if (config_.ram_size < kMinRam) throw invalid_argument("RAM size must be at least 2 MiB");
  config_.ram_size = (config_.ram_size + emu::kPageSize - 1) & emu::kPageMask;
  kernel_ = read_boot_file(config_.kernel, "kernel");
  if (!has_multiboot_header(kernel_))
    throw invalid_argument("invalid kernel header: '{}' is not a Multiboot kernel (other boot protocols are not supported yet)",
                           config_.kernel);
  if (!config_.initrd.empty()) {
    modules_ = parse_initrd_list(config_.initrd);
    for (MultibootModule& m : modules_) m.contents = read_boot_file(m.path, "module");
  }

  const uint64_t below = config_.ram_size >= kLowRamCutoff ? kRamBelow4gLimit : config_.ram_size;
  try {
    physical_.add_ram(0, below);
    if (config_.ram_size > below) physical_.add_ram(k4GiB, config_.ram_size - below);
  } catch (const std::bad_alloc&) {
    throw system_error(ENOMEM, "cannot set up guest memory 'pc.ram'");  // qemu's wording
  } catch (const Error&) {
    throw system_error(ENOMEM, "cannot set up guest memory 'pc.ram'");
  }

  if (!config_.log_file.empty()) {
    log_.reset(std::fopen(config_.log_file.c_str(), "w"));
    if (!log_) throw system_error(errno, "Could not open log file '{}'", config_.log_file);
  }
  if (config_.log_mask) cpu_.set_log(config_.log_mask, log_ ? log_.get() : stderr);

  // Devices. Every callback below runs with lock_ held.
  pic_.set_output_callback([this](bool level) {
    interrupt_line_.store(level, std::memory_order_release);
    if (level) {
      cpu_.request_exit();
      wake_.notify_all();
    }
  });
  pit_ = std::make_unique<Pit8254>(clock_, [this](bool level) { pic_.set_irq(0, level); },
                                   [this] { timer_wake_.notify_all(); });
  auto map = [this](uint16_t first, uint32_t count, emu::IoHandler& device, bool byte_wide = true) {
    locked_.push_back(std::make_unique<LockedIo>(lock_, device, first, count, byte_wide));
    bus_.map(first, count, *locked_.back());
  };
  map(0x20, 2, pic_);
  map(0xa0, 2, pic_);
  map(0x4d0, 2, pic_);
  map(0x40, 4, *pit_);
  map(0x61, 1, *pit_);
  map(0x80, 1, post_);
  const int64_t unix_now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch()).count();
  rtc_ = std::make_unique<Mc146818Rtc>(
      clock_, unix_now - static_cast<int64_t>(clock_.now_ns()), config_.ram_size,
      [this](bool level) { pic_.set_irq(8, level); }, [this] { timer_wake_.notify_all(); });
  map(0x70, 2, *rtc_);
  port92_ = std::make_unique<SystemControlPortA>([this] { request_reset(); });
  map(0x92, 1, *port92_);
  if (config_.serial.size() > 4) throw invalid_argument("-serial: too many serial ports (at most 4)");
  CharBackendOptions backend_options{.on_quit = [this] {
                                       std::lock_guard guard(lock_);
                                       request_exit(0);
                                     }};
  for (size_t i = 0; i < config_.serial.size(); ++i) {
    if (config_.serial[i] == "none") continue;  // as qemu: no device at this position
    try {
      backends_[i] = open_char_backend(config_.serial[i], backend_options);
    } catch (const Error& e) {
      throw with_context(e, fmt::format("-serial {}", config_.serial[i]));
    }
    uarts_[i] = std::make_unique<Uart16550>(
        kSerialBase[i], *backends_[i], [this, i](bool level) { set_serial_irq(static_cast<unsigned>(i), level); },
        [this] { rx_space_.notify_all(); });
    map(kSerialBase[i], 8, *uarts_[i]);
  }
  if (config_.debug_exit) {
    debug_exit_ = std::make_unique<DebugExit>([this](int status) { request_exit(status); });
    map(config_.debug_exit->iobase, config_.debug_exit->iosize, *debug_exit_, false);  // takes the whole value
  }
  pic_interface_ = std::make_unique<PicInterface>(*this);
  cpu_.set_io_bus(&bus_);
  cpu_.set_interrupt_controller(pic_interface_.get());

  boot(false);
  for (size_t i = 0; i < uarts_.size(); ++i)
    if (uarts_[i]) backends_[i]->start_input(*uarts_[i], lock_, rx_space_);
  timer_ = std::thread([this] { timer_loop(); });
}

PcMachine::~PcMachine() {
  {
    std::lock_guard guard(lock_);
    stopping_ = true;
    timer_wake_.notify_all();
  }
  if (timer_.joinable()) timer_.join();
  for (auto& backend : backends_) backend.reset();  // stops the input threads before the UARTs they feed go away
}

void PcMachine::set_serial_irq(unsigned index, bool level) {
  if (level) serial_irq_levels_ |= static_cast<uint8_t>(1u << index);
  else serial_irq_levels_ &= static_cast<uint8_t>(~(1u << index));
  // COM1/COM3 share IRQ4 and COM2/COM4 IRQ3: the line is the OR of its UARTs.
  const unsigned irq = kSerialIrq[index];
  bool line = false;
  for (unsigned i = 0; i < uarts_.size(); ++i)
    if (uarts_[i] && kSerialIrq[i] == irq && (serial_irq_levels_ & (1u << i))) line = true;
  pic_.set_irq(irq, line);
}

void PcMachine::request_exit(int status) {
  if (exit_status_ < 0) exit_status_ = status;
  cpu_.request_exit();
  wake_.notify_all();
}

emu::InterruptController& PcMachine::interrupt_controller() { return *pic_interface_; }

void PcMachine::shutdown(int status) {
  std::lock_guard guard(lock_);
  request_exit(status);
}

void PcMachine::request_reset() {
  reset_requested_ = true;
  cpu_.request_exit();
  wake_.notify_all();
}

void PcMachine::reset_devices() {
  std::lock_guard guard(lock_);
  pic_.reset();
  interrupt_line_.store(false);
  pit_->reset();
  // The RTC and CMOS are battery backed: they keep time and contents across resets.
  for (auto& uart : uarts_)
    if (uart) uart->reset();
  port92_->reset();
  serial_irq_levels_ = 0;
  reset_requested_ = false;
}

void PcMachine::boot(bool clear_ram) {
  // A reboot starts from clean RAM, as after the firmware reloads the kernel
  // (fresh RAM is already zero).
  if (clear_ram)
    for (const emu::PhysicalRegion& r : physical_.regions())
      if (r.kind == RegionKind::Ram) std::memset(r.host, 0, r.size);
  reset_devices();
  {
    // What PC firmware leaves behind for the kernel (the state qemu's SeaBIOS
    // hands over): PIT channel 0 at 18.2 Hz in mode 2, the interrupts it uses
    // unmasked (IRQ0-2, 6, 8, 12-14) with vectors 0x08 and 0x70.
    std::lock_guard guard(lock_);
    pit_->io_write(0x43, 1, 0x34);
    pit_->io_write(0x40, 1, 0);
    pit_->io_write(0x40, 1, 0);
    pic_.io_write(0x21, 1, 0xb8);
    pic_.io_write(0xa1, 1, 0x8e);
  }
  const uint64_t below = std::min(config_.ram_size, physical_.regions().front().size);
  const std::string command_line = fmt::format("{} {}", config_.kernel, config_.append);
  const MultibootBoot boot = load_multiboot(physical_, kernel_, command_line, modules_, below, config_.ram_size - below);

  // The Multiboot machine state: flat 4 GiB 32-bit segments, protected mode,
  // paging off, interrupts off, A20 on.
  emu::CpuState& s = cpu_.state;
  s = emu::CpuState{};
  s.regs[emu::RAX] = kMultibootBootloaderMagic;
  s.regs[emu::RBX] = boot.info_address;
  s.rip = boot.entry;
  s.rflags_other = emu::rflags::kFixed;
  for (unsigned seg = emu::ES; seg <= emu::GS; ++seg) {
    const bool code = seg == emu::CS;
    s.seg_base[seg] = 0;
    s.seg_limit[seg] = 0xffffffff;
    s.seg_selector[seg] = code ? 0x10 : 0x18;
    s.seg_attrs[seg] = code ? 0xc09b : 0xc093;  // G, D/B, present, DPL 0, code exec/read or data read/write
  }
  s.sys.cr0 = emu::cr0::PE | emu::cr0::ET;
  s.sys.cpl = 0;
  s.mode = emu::CpuMode{.code = emu::CodeSize::Bits32, .flat = true, .system = true};
  emu::update_mode(s);  // stack width and segment checks from the caches above
  cpu_.flush_translations();
  cpu_.invalidate_tlb(true);
}

void PcMachine::timer_loop() {
  // The PIT (IRQ0) and RTC (IRQ8) deadlines. At most one interrupt per 20 us:
  // a guest programming a tiny period must not make this thread spin (late
  // events coalesce in the devices).
  constexpr uint64_t kMinIntervalNs = 20'000;
  std::unique_lock guard(lock_);
  uint64_t not_before = 0;
  while (!stopping_) {
    if (clock_.now_ns() >= not_before) {
      const bool pit_raised = pit_->update();
      const bool rtc_raised = rtc_->update();
      if (pit_raised || rtc_raised) not_before = clock_.now_ns() + kMinIntervalNs;
    }
    std::optional<uint64_t> next = pit_->next_irq_ns();
    if (const std::optional<uint64_t> rtc_next = rtc_->next_event_ns()) next = next ? std::min(*next, *rtc_next) : *rtc_next;
    if (next)
      timer_wake_.wait_until(guard, clock_.time_point(std::max(*next, not_before)));
    else
      timer_wake_.wait(guard);
  }
}

void PcMachine::wait_for_interrupt() {
  std::unique_lock guard(lock_);
  wake_.wait(guard, [this] {
    return exit_status_ >= 0 || reset_requested_ ||
           (interrupt_line_.load() && (cpu_.state.rflags_other & emu::rflags::IF));
  });
}

int PcMachine::run() {
  for (;;) {
    const emu::RunResult result = cpu_.run(kRunChunk);
    {
      std::lock_guard guard(lock_);
      if (exit_status_ >= 0) return exit_status_;
    }
    bool reset = result.reason == emu::StopReason::Reset;
    {
      std::lock_guard guard(lock_);
      reset = reset || reset_requested_;
    }
    if (reset) {
      if (config_.no_reboot) return 0;  // as qemu: a reset request ends the run
      boot(true);
      continue;
    }
    switch (result.reason) {
      case emu::StopReason::Halt:
        wait_for_interrupt();
        break;
      case emu::StopReason::Exception: {
        // TEMPORARY until exceptions are delivered through the IDT (system mode
        // then never returns Exception): report and stop.
        const emu::PendingException& e = cpu_.state.exception;
        fmt::print(stderr, "kiln-system-x86_64: guest exception {} (error code 0x{:x}, address 0x{:x}) at 0x{:x}\n",
                   static_cast<int>(e.vector), e.error_code, e.fault_address, cpu_.state.rip);
        return 1;
      }
      case emu::StopReason::Syscall:
        fmt::print(stderr, "kiln-system-x86_64: SYSCALL at 0x{:x} is not supported yet\n", cpu_.state.rip);
        return 1;
      default: break;
    }
  }
}

}  // namespace kiln::machine
