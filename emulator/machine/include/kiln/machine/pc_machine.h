// The first PC machine: RAM, the ISA devices (8259 PIC pair, 8254 PIT with
// port 0x61, MC146818 RTC/CMOS, 16550A UARTs on COM1..COM4, isa-debug-exit, ports 0x80/0x92)
// and one CPU, booted straight into a Multiboot kernel. run() drives the CPU
// in chunks and sleeps on a condition variable while the guest halts.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/mmu.h"
#include "kiln/emulator/memory.h"
#include "kiln/emulator/physical_memory.h"
#include "kiln/machine/char_backend.h"
#include "kiln/machine/clock.h"
#include "kiln/machine/misc_devices.h"
#include "kiln/machine/multiboot.h"
#include "kiln/machine/pic.h"
#include "kiln/machine/pit.h"
#include "kiln/machine/rtc.h"
#include "kiln/machine/uart.h"

namespace kiln::machine {

struct DebugExitConfig {
  uint16_t iobase = 0x501;  // qemu's defaults
  uint16_t iosize = 2;
};

struct MachineConfig {
  uint64_t ram_size = 128ull << 20;
  std::string kernel, append, initrd;
  // Backend specs for COM1, COM2, ... ("none": no UART at that position).
  std::vector<std::string> serial;
  std::optional<DebugExitConfig> debug_exit;
  bool no_reboot = false;
  uint32_t log_mask = 0;
  std::string log_file;
};

class PcMachine {
 public:
  static constexpr uint64_t kRamBelow4gLimit = 0xc0000000;  // RAM above 3 GiB moves to 4 GiB

  explicit PcMachine(MachineConfig config);
  ~PcMachine();
  PcMachine(const PcMachine&) = delete;
  PcMachine& operator=(const PcMachine&) = delete;

  // Runs until the guest exits (isa-debug-exit), resets with -no-reboot, or
  // fails. Returns the process exit status.
  int run();
  // Ends run() with `status` (any thread), as qemu's "quit" does.
  void shutdown(int status);

  emu::Cpu& cpu() { return cpu_; }
  // What the CPU sees of the PIC (also set on the Cpu).
  emu::InterruptController& interrupt_controller();
  emu::PhysicalMemory& physical_memory() { return physical_; }

 private:
  // Serialises device accesses from the CPU thread, the timer thread and input threads.
  class LockedIo;
  class PicInterface;
  void boot(bool clear_ram);
  void reset_devices();
  void request_exit(int status);
  void request_reset();
  void timer_loop();
  // Waits while the CPU is halted; returns false when the machine must stop.
  void wait_for_interrupt();
  void set_serial_irq(unsigned index, bool level);

  MachineConfig config_;
  std::vector<uint8_t> kernel_;
  std::vector<MultibootModule> modules_;
  emu::PhysicalMemory physical_;
  emu::SoftMmu memory_{physical_};
  emu::Cpu cpu_{memory_};
  emu::IoBus bus_;
  HostClock clock_;

  std::mutex lock_;                      // the device lock
  std::condition_variable wake_;         // interrupt pending, exit or reset requested
  std::condition_variable timer_wake_;   // PIT reprogrammed or shutdown
  std::condition_variable rx_space_;     // a UART freed receive room
  std::atomic<bool> interrupt_line_{false};
  int exit_status_ = -1;                 // >= 0 once an exit was requested
  bool reset_requested_ = false;
  bool stopping_ = false;
  uint8_t serial_irq_levels_ = 0;        // per UART, for IRQ3/IRQ4 sharing

  Pic8259 pic_;
  std::unique_ptr<Pit8254> pit_;
  std::unique_ptr<Mc146818Rtc> rtc_;
  // COM1..COM4 (null where -serial none or not given).
  std::array<std::unique_ptr<CharBackend>, 4> backends_;
  std::array<std::unique_ptr<Uart16550>, 4> uarts_;
  std::unique_ptr<DebugExit> debug_exit_;
  PostPort post_;
  std::unique_ptr<SystemControlPortA> port92_;
  std::vector<std::unique_ptr<LockedIo>> locked_;
  std::unique_ptr<PicInterface> pic_interface_;
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> log_{nullptr, std::fclose};
  std::thread timer_;
};

}  // namespace kiln::machine
