// The PC machine's parts: 16550A UART, 8259A PIC pair, 8254 PIT (fake clock),
// Multiboot loader (a.out kludge, ELF32, bad images), the qemu-style command
// line, and whole-machine runs of tiny kernels.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "kiln/common/error.h"
#include "kiln/machine/char_backend.h"
#include "kiln/machine/clock.h"
#include "kiln/machine/multiboot.h"
#include "kiln/machine/options.h"
#include "kiln/machine/pc_machine.h"
#include "kiln/machine/pic.h"
#include "kiln/machine/pit.h"
#include "kiln/machine/rtc.h"
#include "kiln/machine/uart.h"

namespace kiln::machine {
namespace {

// ---- UART -------------------------------------------------------------------

struct RecordingBackend : CharBackend {
  std::string written;
  void write(std::span<const uint8_t> bytes) override { written.append(bytes.begin(), bytes.end()); }
};

struct UartFixture : ::testing::Test {
  RecordingBackend backend;
  bool irq = false;
  int space_notifications = 0;
  Uart16550 uart{0x3f8, backend, [this](bool level) { irq = level; }, [this] { ++space_notifications; }};
  uint8_t in(unsigned reg) { return static_cast<uint8_t>(uart.io_read(static_cast<uint16_t>(0x3f8 + reg), 1)); }
  void out(unsigned reg, uint8_t v) { uart.io_write(static_cast<uint16_t>(0x3f8 + reg), 1, v); }
  void receive(std::string_view s) { uart.receive(std::span(reinterpret_cast<const uint8_t*>(s.data()), s.size())); }
};

TEST_F(UartFixture, ResetStateAndScratch) {
  EXPECT_EQ(in(5), 0x60);  // THRE, TEMT
  EXPECT_EQ(in(2), 0x01);  // no FIFO, nothing pending
  EXPECT_EQ(in(6) & 0xf0, 0xb0);
  out(7, 0x5a);
  EXPECT_EQ(in(7), 0x5a);
  EXPECT_FALSE(irq);
}

TEST_F(UartFixture, DivisorLatchBehindDlab) {
  out(3, 0x83);
  out(0, 0x34);
  out(1, 0x12);
  EXPECT_EQ(in(0), 0x34);
  EXPECT_EQ(in(1), 0x12);
  out(3, 0x03);
  out(1, 0x05);
  EXPECT_EQ(in(1), 0x05);  // IER again
  out(3, 0x83);
  EXPECT_EQ(in(1), 0x12);
  EXPECT_TRUE(backend.written.empty());
}

TEST_F(UartFixture, TransmitGoesToTheBackend) {
  out(0, 'o');
  out(0, 'k');
  EXPECT_EQ(backend.written, "ok");
  EXPECT_EQ(in(5) & 0x60, 0x60);
}

TEST_F(UartFixture, ThrEmptyInterrupt) {
  out(1, 0x02);
  EXPECT_TRUE(irq);
  EXPECT_EQ(in(2), 0x02);
  EXPECT_FALSE(irq);         // reading IIR acknowledged it
  EXPECT_EQ(in(2), 0x01);
  out(0, 'x');               // transmitted at once: THR empty again
  EXPECT_TRUE(irq);
  out(1, 0x00);
  EXPECT_FALSE(irq);
}

TEST_F(UartFixture, ReceiveDataAndTriggerLevels) {
  out(2, 0xc7);  // FIFO, trigger 14
  EXPECT_EQ(uart.receive_space(), 16u);
  out(1, 0x01);
  receive("a");
  EXPECT_TRUE(irq);
  EXPECT_EQ(in(2), 0xcc);  // below the trigger level: character timeout
  EXPECT_EQ(in(5) & 1, 1);
  receive("bcdefghijklmn");
  EXPECT_EQ(uart.receive_space(), 2u);
  EXPECT_EQ(in(2), 0xc4);  // at the trigger level
  std::string got;
  while (in(5) & 1) got += static_cast<char>(in(0));
  EXPECT_EQ(got, "abcdefghijklmn");
  EXPECT_FALSE(irq);
  EXPECT_GT(space_notifications, 0);
  out(2, 0x00);  // no FIFO: one holding register
  EXPECT_EQ(uart.receive_space(), 1u);
}

TEST_F(UartFixture, OverrunAndLineStatusInterrupt) {
  out(2, 0x07);
  out(1, 0x04);
  out(4, 0x10);  // loopback
  for (int i = 0; i < 17; ++i) out(0, static_cast<uint8_t>('A' + i));
  EXPECT_TRUE(irq);
  EXPECT_EQ(in(2), 0xc6);
  EXPECT_EQ(in(5) & 0x03, 0x03);
  EXPECT_EQ(in(5) & 0x03, 0x01);  // OE cleared by the read
  EXPECT_FALSE(irq);
  EXPECT_EQ(in(0), 'A');
  EXPECT_TRUE(backend.written.empty());
}

TEST_F(UartFixture, LoopbackModemLinesAndDeltas) {
  out(4, 0x10);
  EXPECT_EQ(uart.receive_space(), 0u);  // the backend is cut off in loopback
  in(6);
  out(1, 0x08);
  out(4, 0x12);  // RTS -> CTS
  EXPECT_TRUE(irq);
  EXPECT_EQ(in(2), 0x00);  // modem status
  const uint8_t msr = in(6);
  EXPECT_EQ(msr & 0xf0, 0x10);
  EXPECT_EQ(msr & 0x01, 0x01);  // delta CTS
  EXPECT_EQ(in(6) & 0x0f, 0);   // deltas clear on read
  EXPECT_FALSE(irq);
  out(4, 0x1f);
  EXPECT_EQ(in(6) & 0xf0, 0xf0);
  out(4, 0x1b);  // OUT1 (RI) falls: trailing edge
  EXPECT_EQ(in(6) & 0x04, 0x04);
  out(4, 0x03);
  EXPECT_EQ(uart.receive_space(), 1u);
}

// ---- PIC --------------------------------------------------------------------

struct PicFixture : ::testing::Test {
  Pic8259 pic;
  std::vector<bool> outputs;
  PicFixture() {
    pic.set_output_callback([this](bool level) { outputs.push_back(level); });
    init(0x11, 0x20, 0x28, 0x01);
  }
  void init(uint8_t icw1, uint8_t master_base, uint8_t slave_base, uint8_t icw4) {
    pic.io_write(0x20, 1, icw1);
    pic.io_write(0x21, 1, master_base);
    pic.io_write(0x21, 1, 0x04);
    pic.io_write(0x21, 1, icw4);
    pic.io_write(0xa0, 1, icw1);
    pic.io_write(0xa1, 1, slave_base);
    pic.io_write(0xa1, 1, 0x02);
    pic.io_write(0xa1, 1, icw4);
  }
  uint8_t read_isr(uint16_t cmd = 0x20) {
    pic.io_write(cmd, 1, 0x0b);
    return static_cast<uint8_t>(pic.io_read(cmd, 1));
  }
  uint8_t read_irr(uint16_t cmd = 0x20) {
    pic.io_write(cmd, 1, 0x0a);
    return static_cast<uint8_t>(pic.io_read(cmd, 1));
  }
  void pulse(unsigned irq) {
    pic.set_irq(irq, true);
    pic.set_irq(irq, false);
  }
};

TEST_F(PicFixture, InitialisationClearsMaskAndDeliversVector) {
  EXPECT_EQ(pic.io_read(0x21, 1), 0u);  // ICW1 cleared the mask
  EXPECT_FALSE(pic.output());
  pulse(0);
  EXPECT_TRUE(pic.output());
  ASSERT_FALSE(outputs.empty());
  EXPECT_TRUE(outputs.back());
  EXPECT_EQ(read_irr(), 0x01);
  EXPECT_EQ(pic.acknowledge(), 0x20);
  EXPECT_FALSE(pic.output());
  EXPECT_EQ(read_isr(), 0x01);
  EXPECT_EQ(read_irr(), 0x00);
  pic.io_write(0x20, 1, 0x20);  // non-specific EOI
  EXPECT_EQ(read_isr(), 0x00);
}

TEST_F(PicFixture, PriorityAndNesting) {
  pulse(3);
  pulse(1);
  EXPECT_EQ(pic.acknowledge(), 0x21);  // IRQ1 first
  EXPECT_FALSE(pic.output());          // IRQ3 waits behind IRQ1 in service
  pic.io_write(0x20, 1, 0x20);
  EXPECT_TRUE(pic.output());
  EXPECT_EQ(pic.acknowledge(), 0x23);
  pulse(0);  // a higher level interrupts the IRQ3 handler
  EXPECT_TRUE(pic.output());
  EXPECT_EQ(pic.acknowledge(), 0x20);
  EXPECT_EQ(read_isr(), 0x09);
  pic.io_write(0x20, 1, 0x20);  // ends IRQ0, the highest in service
  EXPECT_EQ(read_isr(), 0x08);
  pic.io_write(0x20, 1, 0x63);  // specific EOI for IRQ3
  EXPECT_EQ(read_isr(), 0x00);
}

TEST_F(PicFixture, MaskedRequestsWaitInIrr) {
  pic.io_write(0x21, 1, 0x10);
  pulse(4);
  EXPECT_FALSE(pic.output());
  EXPECT_EQ(read_irr(), 0x10);
  pic.io_write(0x21, 1, 0x00);
  EXPECT_TRUE(pic.output());
  EXPECT_EQ(pic.acknowledge(), 0x24);
}

TEST_F(PicFixture, CascadedSlave) {
  pulse(10);
  EXPECT_TRUE(pic.output());
  EXPECT_EQ(pic.acknowledge(), 0x2a);
  EXPECT_EQ(read_isr(0x20), 0x04);
  EXPECT_EQ(read_isr(0xa0), 0x04);
  pic.io_write(0xa0, 1, 0x20);
  pic.io_write(0x20, 1, 0x20);
  EXPECT_EQ(read_isr(0x20), 0x00);
  EXPECT_EQ(read_isr(0xa0), 0x00);
  pic.io_write(0xa1, 1, 0x04);  // mask IRQ10 at the slave
  pulse(10);
  EXPECT_FALSE(pic.output());
}

TEST_F(PicFixture, EdgeLatchesLevelFollowsTheLine) {
  pulse(5);  // edge: latched after the line dropped
  EXPECT_TRUE(pic.output());
  EXPECT_EQ(pic.acknowledge(), 0x25);
  pic.io_write(0x20, 1, 0x20);
  pic.io_write(0x4d0, 1, 0x20);  // IRQ5 level triggered (ELCR)
  EXPECT_EQ(pic.io_read(0x4d0, 1), 0x20u);
  pic.set_irq(5, true);
  EXPECT_TRUE(pic.output());
  pic.set_irq(5, false);
  EXPECT_FALSE(pic.output());     // the request went away
  pic.set_irq(5, true);
  EXPECT_EQ(pic.acknowledge(), 0x25);
  pic.io_write(0x20, 1, 0x20);
  EXPECT_TRUE(pic.output());      // still asserted: requests again
  pic.io_write(0x4d0, 1, 0x07);   // IRQ0-2 cannot be level triggered
  EXPECT_EQ(pic.io_read(0x4d0, 1), 0x00u);
}

TEST_F(PicFixture, SpuriousInterrupt) {
  pic.io_write(0x4d0, 1, 0x08);
  pic.set_irq(3, true);
  pic.set_irq(3, false);  // gone before the acknowledge cycle
  EXPECT_EQ(pic.acknowledge(), 0x27);
  EXPECT_EQ(read_isr(), 0x00);
}

TEST_F(PicFixture, AutoEoi) {
  init(0x11, 0x20, 0x28, 0x03);
  pulse(2 + 4);
  EXPECT_EQ(pic.acknowledge(), 0x26);
  EXPECT_EQ(read_isr(), 0x00);
}

TEST_F(PicFixture, RotateOnNonSpecificEoi) {
  pulse(1);
  EXPECT_EQ(pic.acknowledge(), 0x21);
  pic.io_write(0x20, 1, 0xa0);  // rotate: IRQ1 becomes the lowest priority
  pulse(1);
  pulse(4);
  EXPECT_EQ(pic.acknowledge(), 0x24);
}

TEST_F(PicFixture, SpecialFullyNestedLetsTheSlaveNest) {
  pulse(10);
  EXPECT_EQ(pic.acknowledge(), 0x2a);
  pulse(9);  // higher priority on the slave while IRQ10 is in service
  EXPECT_FALSE(pic.output());  // fully nested: the master's IR2 is in service
  pic.io_write(0xa0, 1, 0x20);
  pic.io_write(0x20, 1, 0x20);
  EXPECT_EQ(pic.acknowledge(), 0x29);
  pic.io_write(0xa0, 1, 0x20);
  pic.io_write(0x20, 1, 0x20);

  init(0x11, 0x20, 0x28, 0x11);  // master in special fully nested mode
  pulse(10);
  EXPECT_EQ(pic.acknowledge(), 0x2a);
  pulse(9);
  EXPECT_TRUE(pic.output());
  EXPECT_EQ(pic.acknowledge(), 0x29);
}

TEST_F(PicFixture, PollCommand) {
  pulse(6);
  pic.io_write(0x20, 1, 0x0c);
  EXPECT_EQ(pic.io_read(0x20, 1), 0x86u);
  EXPECT_EQ(read_isr(), 0x40);
  pic.io_write(0x20, 1, 0x0c);
  EXPECT_EQ(pic.io_read(0x20, 1), 0x00u);
}

// ---- PIT --------------------------------------------------------------------

struct PitFixture : ::testing::Test {
  FakeClock clock;
  std::vector<bool> irq0;
  int reprogrammed = 0;
  Pit8254 pit{clock, [this](bool level) { irq0.push_back(level); }, [this] { ++reprogrammed; }};
  static uint64_t ns_for_ticks(uint64_t ticks) { return (ticks * 1'000'000'000 + Pit8254::kFrequency - 1) / Pit8254::kFrequency; }
  void out(uint16_t port, uint8_t v) { pit.io_write(port, 1, v); }
  uint8_t in(uint16_t port) { return static_cast<uint8_t>(pit.io_read(port, 1)); }
  unsigned rising_edges() const {
    unsigned n = 0;
    for (size_t i = 0; i < irq0.size(); ++i) n += irq0[i] && (i == 0 || !irq0[i - 1]);
    return n;
  }
};

TEST_F(PitFixture, PowerOnState) {
  // Channel 0 runs in mode 3 with count 65536 (18.2 Hz); channel 2's gate is low, OUT high.
  ASSERT_TRUE(pit.next_irq_ns());
  EXPECT_EQ(*pit.next_irq_ns(), ns_for_ticks(0x10000));
  out(0x43, 0xc2 | 0x08);  // read-back status of channels 0 and 2
  EXPECT_EQ(in(0x40), 0x80 | 0x36);
  EXPECT_EQ(in(0x42), 0x80 | 0x36);
  EXPECT_EQ(in(0x61) & 0x21, 0x20);
}

TEST_F(PitFixture, RateGeneratorRaisesIrq0EveryPeriod) {
  out(0x43, 0x34);
  out(0x40, 1000 & 0xff);
  out(0x40, 1000 >> 8);
  EXPECT_GT(reprogrammed, 0);
  ASSERT_TRUE(pit.next_irq_ns());
  EXPECT_EQ(*pit.next_irq_ns(), ns_for_ticks(1000));
  clock.set(ns_for_ticks(999));
  EXPECT_FALSE(pit.update());
  clock.set(ns_for_ticks(1000));
  EXPECT_TRUE(pit.update());
  EXPECT_EQ(rising_edges(), 1u);
  EXPECT_EQ(*pit.next_irq_ns(), ns_for_ticks(2000));
  clock.set(ns_for_ticks(5500));  // missed periods coalesce
  EXPECT_TRUE(pit.update());
  EXPECT_EQ(rising_edges(), 2u);
  EXPECT_EQ(*pit.next_irq_ns(), ns_for_ticks(6000));
}

TEST_F(PitFixture, CounterReadsAndLatch) {
  out(0x43, 0x34);
  out(0x40, 0x00);
  out(0x40, 0x10);  // 4096
  clock.set(ns_for_ticks(96));
  out(0x43, 0x00);  // latch channel 0
  clock.set(ns_for_ticks(500));
  const unsigned latched = in(0x40) | (in(0x40) << 8);
  EXPECT_EQ(latched, 4000u);
  const unsigned live = in(0x40) | (in(0x40) << 8);
  EXPECT_EQ(live, 3596u);
}

TEST_F(PitFixture, LowByteOnlyAccessAndReadBackStatus) {
  out(0x43, 0x10 | 0x04);  // channel 0, lobyte only, mode 2
  out(0x40, 200);
  clock.set(ns_for_ticks(50));
  EXPECT_EQ(in(0x40), 150);
  out(0x43, 0xe2);  // read-back: status of channel 0
  EXPECT_EQ(in(0x40), 0x80 | 0x14);  // OUT high, count loaded, lobyte, mode 2
}

TEST_F(PitFixture, ModeZeroInterruptOnTerminalCount) {
  out(0x43, 0x30);  // channel 0, lobyte/hibyte, mode 0
  out(0x40, 100);
  out(0x40, 0);
  clock.set(ns_for_ticks(100));
  EXPECT_TRUE(pit.update());
  ASSERT_FALSE(irq0.empty());
  EXPECT_TRUE(irq0.back());  // OUT stays high
  EXPECT_FALSE(pit.next_irq_ns());
  clock.set(ns_for_ticks(1000));
  EXPECT_FALSE(pit.update());
  out(0x43, 0x30);  // a new control word drops OUT
  EXPECT_FALSE(irq0.back());
}

TEST_F(PitFixture, SquareWaveCountsByTwo) {
  out(0x43, 0x36);
  out(0x40, 100);
  out(0x40, 0);
  clock.set(ns_for_ticks(10));
  EXPECT_EQ(in(0x40) | (in(0x40) << 8), 80);
  clock.set(ns_for_ticks(100));
  EXPECT_TRUE(pit.update());
}

TEST_F(PitFixture, ChannelTwoGateAndOutputOnPort61) {
  out(0x43, 0xb0);  // channel 2, lobyte/hibyte, mode 0
  out(0x42, 100);
  out(0x42, 0);
  clock.set(ns_for_ticks(500));
  EXPECT_EQ(in(0x61) & 0x20, 0x00);  // gate low: not counting
  out(0x61, 0x01);
  EXPECT_EQ(in(0x61) & 0x21, 0x01);
  clock.set(ns_for_ticks(599));
  EXPECT_EQ(in(0x61) & 0x20, 0x00);
  clock.set(ns_for_ticks(600));
  EXPECT_EQ(in(0x61) & 0x20, 0x20);
  EXPECT_TRUE(irq0.empty());  // channel 2 has no interrupt
}

// ---- RTC ---------------------------------------------------------------------

struct RtcFixture : ::testing::Test {
  FakeClock clock;
  // 2024-02-29 23:59:58 UTC, a Thursday.
  static constexpr int64_t kStart = 1709251198ll * 1'000'000'000;
  Mc146818Rtc rtc{clock, kStart, 64ull << 20};
  uint8_t read(uint8_t index) {
    rtc.io_write(0x70, 1, index);
    return static_cast<uint8_t>(rtc.io_read(0x71, 1));
  }
  void write(uint8_t index, uint8_t value) {
    rtc.io_write(0x70, 1, index);
    rtc.io_write(0x71, 1, value);
  }
};

TEST_F(RtcFixture, ReadsHostTimeInBcd) {
  EXPECT_EQ(read(0x00), 0x58);
  EXPECT_EQ(read(0x02), 0x59);
  EXPECT_EQ(read(0x04), 0x23);
  EXPECT_EQ(read(0x06), 5);  // Thursday (Sunday = 1)
  EXPECT_EQ(read(0x07), 0x29);
  EXPECT_EQ(read(0x08), 0x02);
  EXPECT_EQ(read(0x09), 0x24);
  EXPECT_EQ(read(0x32), 0x20);
  clock.advance(2'000'000'000);  // across midnight into March 1st
  EXPECT_EQ(read(0x00), 0x00);
  EXPECT_EQ(read(0x04), 0x00);
  EXPECT_EQ(read(0x07), 0x01);
  EXPECT_EQ(read(0x08), 0x03);
  EXPECT_EQ(read(0x0d), 0x80);
  // Periodic ticks, an update, and the alarm (its registers are 00:00:00) matched at midnight.
  EXPECT_EQ(read(0x0c), 0x70);
  EXPECT_EQ(read(0x0c), 0x00);
}

TEST_F(RtcFixture, InterruptFlagsAndIrq8) {
  std::vector<bool> irq8;
  int reprogrammed = 0;
  Mc146818Rtc r(clock, kStart + 500'000'000, 64ull << 20, [&](bool level) { irq8.push_back(level); },
                [&] { ++reprogrammed; });
  auto rd = [&](uint8_t i) {
    r.io_write(0x70, 1, i);
    return static_cast<uint8_t>(r.io_read(0x71, 1));
  };
  auto wr = [&](uint8_t i, uint8_t v) {
    r.io_write(0x70, 1, i);
    r.io_write(0x71, 1, v);
  };
  EXPECT_FALSE(r.next_event_ns());  // no interrupt enabled
  // Update-ended interrupt: due at the next second boundary (0.5 s away).
  wr(0x0b, 0x12);
  EXPECT_GT(reprogrammed, 0);
  ASSERT_TRUE(r.next_event_ns());
  EXPECT_EQ(*r.next_event_ns(), 500'000'000u);
  clock.set(499'999'999);
  EXPECT_FALSE(r.update());
  clock.set(500'000'000);
  EXPECT_TRUE(r.update());
  ASSERT_EQ(irq8.size(), 1u);
  EXPECT_TRUE(irq8.back());
  EXPECT_EQ(rd(0x0c) & 0x90, 0x90);  // IRQF and UF (PF runs too: rate 6 is the default)
  EXPECT_FALSE(irq8.back());
  // Periodic at 1024 Hz (rate 6): PF after a period, IRQ8 with PIE.
  wr(0x0b, 0x42);
  ASSERT_TRUE(r.next_event_ns());
  EXPECT_EQ(*r.next_event_ns(), 500'000'000u + 976'562u - 500'000'000u % 976'562u);
  clock.advance(1'000'000);
  EXPECT_TRUE(r.update());
  EXPECT_EQ(rd(0x0c) & 0xc0, 0xc0);
  wr(0x0a, 0x20);  // rate 0: no periodic flag any more
  clock.advance(10'000'000);
  EXPECT_EQ(rd(0x0c) & 0x40, 0x00);
  // Alarm at hh:mm:ss = 00:00:05: the wall clock passes midnight at clock time 1.5 s.
  wr(0x0b, 0x02);
  wr(0x01, 0x05);
  wr(0x03, 0x00);
  wr(0x05, 0xc0);  // any hour
  rd(0x0c);
  clock.set(6'400'000'000);
  EXPECT_EQ(rd(0x0c) & 0x20, 0x00);
  clock.set(6'600'000'000);
  EXPECT_EQ(rd(0x0c) & 0xa0, 0x20);  // AF, no IRQF without AIE
  wr(0x0b, 0x22);                    // AIE: the next match raises IRQ8 (a day later)
  clock.set(6'600'000'000 + 86'400'000'000'000);
  EXPECT_TRUE(r.update());
  EXPECT_EQ(rd(0x0c) & 0xa0, 0xa0);
}

TEST_F(RtcFixture, UpdateInProgressBitAtTheEndOfEachSecond) {
  EXPECT_EQ(read(0x0a), 0x26);
  clock.advance(999'800'000);
  EXPECT_EQ(read(0x0a), 0xa6);
  clock.advance(300'000);
  EXPECT_EQ(read(0x0a), 0x26);
}

TEST_F(RtcFixture, SetBitFreezesAndSetsTheTime) {
  write(0x0b, 0x82);
  write(0x04, 0x07);
  write(0x02, 0x30);
  write(0x00, 0x00);
  clock.advance(5'000'000'000);
  EXPECT_EQ(read(0x00), 0x00);  // frozen while SET
  write(0x0b, 0x02);
  clock.advance(3'000'000'000);
  EXPECT_EQ(read(0x04), 0x07);
  EXPECT_EQ(read(0x02), 0x30);
  EXPECT_EQ(read(0x00), 0x03);
  EXPECT_EQ(read(0x07), 0x29);  // the date stayed
  write(0x00, 0x10);            // a write without SET: the clock runs on from it
  clock.advance(1'000'000'000);
  EXPECT_EQ(read(0x00), 0x11);
}

TEST_F(RtcFixture, BinaryAndTwelveHourFormats) {
  write(0x0b, 0x06);
  EXPECT_EQ(read(0x04), 23);
  EXPECT_EQ(read(0x00), 58);
  write(0x0b, 0x00);
  EXPECT_EQ(read(0x04), 0x80 | 0x11);  // 11 PM
}

TEST_F(RtcFixture, MemorySizeBytesAndNmiMask) {
  EXPECT_EQ(read(0x15) | (read(0x16) << 8), 640);
  EXPECT_EQ(read(0x17) | (read(0x18) << 8), 63 * 1024);
  EXPECT_EQ(read(0x30) | (read(0x31) << 8), 63 * 1024);
  EXPECT_EQ(read(0x34) | (read(0x35) << 8), 48 * 16);
  unsigned sum = 0;
  for (uint8_t i = 0x10; i <= 0x2d; ++i) sum += read(i);
  EXPECT_EQ((read(0x2e) << 8) | read(0x2f), sum);
  write(0x50, 0xab);  // plain CMOS RAM
  EXPECT_EQ(read(0x50), 0xab);
  rtc.io_write(0x70, 1, 0x80 | 0x50);
  EXPECT_TRUE(rtc.nmi_masked());
  EXPECT_EQ(rtc.io_read(0x71, 1), 0xabu);
  Mc146818Rtc big(clock, kStart, 6ull << 30);  // 6 GiB: 3 GiB below 4 GiB, 3 GiB above
  auto big_read = [&](uint8_t index) {
    big.io_write(0x70, 1, index);
    return big.io_read(0x71, 1);
  };
  // 3 GiB above 4 GiB in 64 KiB units: 0x00c000.
  EXPECT_EQ(big_read(0x5b), 0x00u);
  EXPECT_EQ(big_read(0x5c), 0xc0u);
  EXPECT_EQ(big_read(0x5d), 0x00u);
  EXPECT_EQ(big_read(0x30) | (big_read(0x31) << 8), 0xffffu);  // extended memory saturates
}

// ---- Multiboot ----------------------------------------------------------------

void put32(std::vector<uint8_t>& v, size_t at, uint32_t x) {
  if (v.size() < at + 4) v.resize(at + 4);
  std::memcpy(v.data() + at, &x, 4);
}
void put16(std::vector<uint8_t>& v, size_t at, uint16_t x) {
  if (v.size() < at + 2) v.resize(at + 2);
  std::memcpy(v.data() + at, &x, 2);
}
uint32_t get32(emu::PhysicalMemory& m, uint64_t a) { return static_cast<uint32_t>(m.read(a, 4)); }
std::string get_string(emu::PhysicalMemory& m, uint64_t a) {
  std::string s;
  for (char c; (c = static_cast<char>(m.read(a++, 1))) != 0;) s += c;
  return s;
}

// An a.out-kludge image whose header sits `header_offset` bytes into the file.
std::vector<uint8_t> aout_kernel(uint32_t flags = 0x00010003, size_t header_offset = 0, uint32_t bss = 0x2000) {
  std::vector<uint8_t> k(header_offset + 64, 0x90);
  const uint32_t load = 0x100000, header = load + static_cast<uint32_t>(header_offset);
  put32(k, header_offset, 0x1badb002);
  put32(k, header_offset + 4, flags);
  put32(k, header_offset + 8, static_cast<uint32_t>(-(0x1badb002 + flags)));
  put32(k, header_offset + 12, header);
  put32(k, header_offset + 16, load);
  put32(k, header_offset + 20, load + static_cast<uint32_t>(k.size()));
  put32(k, header_offset + 24, load + static_cast<uint32_t>(k.size()) + bss);
  put32(k, header_offset + 28, header + 32);
  return k;
}

struct MultibootFixture : ::testing::Test {
  emu::PhysicalMemory memory;
  static constexpr uint64_t kRam = 4ull << 20;
  MultibootFixture() { memory.add_ram(0, kRam); }
};

TEST_F(MultibootFixture, AoutKludgeAndBootInformation) {
  std::vector<uint8_t> kernel = aout_kernel();
  // Dirty the bss area first: the loader must zero it.
  std::vector<uint8_t> junk(0x2000, 0xee);
  memory.write_bytes(0x100000 + kernel.size(), junk);
  std::vector<MultibootModule> modules = parse_initrd_list("/m/one arg1 arg2,/m/two");
  modules[0].contents = {1, 2, 3};
  modules[1].contents = std::vector<uint8_t>(5000, 7);
  const MultibootBoot boot = load_multiboot(memory, kernel, "/k/kernel console=ttyS0", modules, kRam, 0);
  EXPECT_EQ(boot.entry, 0x100020u);
  EXPECT_EQ(memory.read(0x100000, 4), 0x1badb002u);
  EXPECT_EQ(memory.read(0x100000 + kernel.size() + 0x1fff, 1), 0u);
  const uint64_t info = boot.info_address;
  EXPECT_LT(info, 0xa0000u);
  EXPECT_EQ(get32(memory, info) & 0x24f, 0x24fu);
  EXPECT_EQ(get32(memory, info + 4), 639u);
  EXPECT_EQ(get32(memory, info + 8), (kRam >> 10) - 1024);
  EXPECT_EQ(get_string(memory, get32(memory, info + 16)), "/k/kernel console=ttyS0");
  EXPECT_EQ(get_string(memory, get32(memory, info + 64)), "kiln");
  ASSERT_EQ(get32(memory, info + 20), 2u);
  const uint64_t mods = get32(memory, info + 24);
  const uint32_t m0 = get32(memory, mods), m0_end = get32(memory, mods + 4);
  const uint32_t m1 = get32(memory, mods + 16), m1_end = get32(memory, mods + 20);
  EXPECT_EQ(m0 % 4096, 0u);
  EXPECT_GE(m0, boot.kernel_end);
  EXPECT_EQ(m0_end - m0, 3u);
  EXPECT_EQ(memory.read(m0 + 2, 1), 3u);
  EXPECT_EQ(m1 % 4096, 0u);
  EXPECT_GE(m1, m0_end);
  EXPECT_EQ(m1_end - m1, 5000u);
  EXPECT_EQ(get_string(memory, get32(memory, mods + 8)), "/m/one arg1 arg2");
  EXPECT_EQ(get_string(memory, get32(memory, mods + 24)), "/m/two");
  // Memory map: RAM below the EBDA, reserved holes, RAM from 1 MiB to the top.
  const uint32_t map_length = get32(memory, info + 44), map = get32(memory, info + 48);
  std::vector<std::tuple<uint64_t, uint64_t, uint32_t>> entries;
  for (uint64_t p = map; p < map + map_length; p += get32(memory, p) + 4)
    entries.emplace_back(memory.read(p + 4, 8), memory.read(p + 12, 8), get32(memory, p + 20));
  ASSERT_EQ(entries.size(), 4u);
  EXPECT_EQ(entries[0], std::make_tuple(uint64_t{0}, uint64_t{0x9fc00}, 1u));
  EXPECT_EQ(std::get<2>(entries[1]), 2u);
  EXPECT_EQ(std::get<2>(entries[2]), 2u);
  EXPECT_EQ(entries[3], std::make_tuple(uint64_t{0x100000}, kRam - 0x100000, 1u));
}

TEST_F(MultibootFixture, HeaderFoundUpTo8192Bytes) {
  EXPECT_TRUE(has_multiboot_header(aout_kernel(0x00010000, 8192 - 32)));
  EXPECT_FALSE(has_multiboot_header(aout_kernel(0x00010000, 8192)));
  std::vector<uint8_t> bad = aout_kernel();
  put32(bad, 8, 0);  // checksum
  EXPECT_FALSE(has_multiboot_header(bad));
  const MultibootBoot boot = load_multiboot(memory, aout_kernel(0x00010000, 4096), "k ", {}, kRam, 0);
  EXPECT_EQ(boot.entry, 0x100000u + 4096 + 32);
}

TEST_F(MultibootFixture, RejectsBadImages) {
  auto message = [&](std::vector<uint8_t> k) -> std::string {
    try {
      load_multiboot(memory, k, "k", {}, kRam, 0);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(message(std::vector<uint8_t>(100, 0)).find("invalid kernel header"), std::string::npos);
  EXPECT_NE(message(aout_kernel(0x00010008)).find("unsupported Multiboot features"), std::string::npos);
  std::vector<uint8_t> big = aout_kernel(0x00010000, 0, 8u << 20);
  EXPECT_NE(message(big).find("does not fit"), std::string::npos);
  std::vector<uint8_t> inverted = aout_kernel();
  put32(inverted, 16, 0x200000);  // load_addr after header_addr
  EXPECT_NE(message(inverted).find("invalid kernel header"), std::string::npos);
  // Without flag 16 the kernel must be ELF.
  EXPECT_NE(message(aout_kernel(0x00000003)).find("must be ELF"), std::string::npos);
}

// A 32-bit ELF kernel linked at 0xc0100000 and loaded at 1 MiB (paddr != vaddr).
std::vector<uint8_t> elf_kernel(uint8_t elf_class = 1, uint32_t filesz = 0x40, uint32_t memsz = 0x1000) {
  std::vector<uint8_t> k(0x1000, 0);
  std::memcpy(k.data(), "\x7f" "ELF", 4);
  k[4] = elf_class;
  k[5] = 1;
  k[6] = 1;
  put16(k, 16, 2);   // ET_EXEC
  put16(k, 18, 3);   // EM_386
  put32(k, 20, 1);
  put32(k, 24, 0xc0100010);  // entry (virtual)
  put32(k, 28, 52);          // phoff
  put16(k, 40, 52);
  put16(k, 42, 32);
  put16(k, 44, 1);
  put32(k, 52, 1);           // PT_LOAD
  put32(k, 56, 0x800);       // offset
  put32(k, 60, 0xc0100000);  // vaddr
  put32(k, 64, 0x100000);    // paddr
  put32(k, 68, filesz);
  put32(k, 72, memsz);
  // The Multiboot header inside the segment (flags without 16).
  put32(k, 0x800, 0x1badb002);
  put32(k, 0x804, 3);
  put32(k, 0x808, static_cast<uint32_t>(-(0x1badb002 + 3)));
  k[0x810] = 0xf4;
  return k;
}

TEST_F(MultibootFixture, Elf32Kernel) {
  std::vector<uint8_t> junk(0x1000, 0xee);
  memory.write_bytes(0x100000, junk);
  const MultibootBoot boot = load_multiboot(memory, elf_kernel(), "k", {}, kRam, 0);
  EXPECT_EQ(boot.entry, 0x100010u);  // translated to the physical address
  EXPECT_EQ(memory.read(0x100010, 1), 0xf4u);
  EXPECT_EQ(memory.read(0x100040, 1), 0u);  // memsz beyond filesz is zeroed
  EXPECT_EQ(boot.kernel_end, 0x101000u);
}

TEST_F(MultibootFixture, ElfErrors) {
  auto message = [&](std::vector<uint8_t> k) -> std::string {
    try {
      load_multiboot(memory, k, "k", {}, kRam, 0);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(message(elf_kernel(2)), "Cannot load x86-64 image, give a 32bit one.");
  EXPECT_NE(message(elf_kernel(1, 0x2000, 0x2000)).find("outside the file"), std::string::npos);
  EXPECT_NE(message(elf_kernel(1, 0x40, 0x30)).find("outside the file"), std::string::npos);  // filesz > memsz
}

TEST(MultibootFiles, MissingFileAndInitrdList) {
  try {
    read_boot_file("/nonexistent/kernel", "kernel");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "could not open kernel file '/nonexistent/kernel': No such file or directory");
  }
  auto modules = parse_initrd_list("a b,,c,d");
  ASSERT_EQ(modules.size(), 2u);
  EXPECT_EQ(modules[0].path, "a");
  EXPECT_EQ(modules[0].command_line, "a b,c");
  EXPECT_EQ(modules[1].path, "d");
  EXPECT_THROW(parse_initrd_list("a,"), Error);
}

// ---- Command line -----------------------------------------------------------

CommandLine parse(std::vector<std::string> args) { return parse_command_line(args, "/nonexistent/kvm"); }
std::string parse_error(std::vector<std::string> args) {
  try {
    parse(std::move(args));
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(CommandLine, QemuStyleOptions) {
  CommandLine c = parse({"-accel", "tcg", "-nographic", "-no-reboot", "-display", "none", "-monitor", "none", "-serial",
                         "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-kernel", "k.bin", "-append",
                         "-x console=ttyS0", "-initrd", "m1 a,m2", "-m", "256M", "-smp", "1", "-machine", "q35",
                         "-d", "in_asm,cpu", "-D", "log.txt", "-serial", "file:/tmp/com2"});
  const MachineConfig& m = c.config;
  EXPECT_EQ(m.kernel, "k.bin");
  EXPECT_EQ(m.append, "-x console=ttyS0");
  EXPECT_EQ(m.initrd, "m1 a,m2");
  EXPECT_EQ(m.ram_size, 256ull << 20);
  EXPECT_EQ(m.serial, (std::vector<std::string>{"stdio", "file:/tmp/com2"}));
  EXPECT_TRUE(m.no_reboot);
  ASSERT_TRUE(m.debug_exit);
  EXPECT_EQ(m.debug_exit->iobase, 0xf4);
  EXPECT_EQ(m.debug_exit->iosize, 4);
  EXPECT_EQ(m.log_mask, emu::kLogInAsm | emu::kLogCpu);
  EXPECT_EQ(m.log_file, "log.txt");
}

TEST(CommandLine, DefaultsAndNographicSerial) {
  CommandLine c = parse({"-kernel", "k"});
  EXPECT_EQ(c.config.ram_size, 128ull << 20);
  EXPECT_EQ(c.config.serial, std::vector<std::string>{"null"});
  EXPECT_FALSE(c.config.debug_exit);
  EXPECT_EQ(parse({"-kernel", "k", "-nographic"}).config.serial, std::vector<std::string>{"mon:stdio"});
  EXPECT_EQ(parse({"-kernel", "k", "-nographic", "-serial", "none"}).config.serial, std::vector<std::string>{"none"});
  CommandLine d = parse({"--kernel=k", "-device", "isa-debug-exit"});
  EXPECT_EQ(d.config.kernel, "k");
  EXPECT_EQ(d.config.debug_exit->iobase, 0x501);
  EXPECT_EQ(d.config.debug_exit->iosize, 2);
}

TEST(CommandLine, MemorySizes) {
  EXPECT_EQ(parse_memory_size("64"), 64ull << 20);
  EXPECT_EQ(parse_memory_size("512k"), 512ull << 10);
  EXPECT_EQ(parse_memory_size("2G"), 2ull << 30);
  EXPECT_EQ(parse_memory_size("1.5G"), 3ull << 29);
  EXPECT_EQ(parse_memory_size("size=1G"), 1ull << 30);
  EXPECT_THROW(parse_memory_size("1X"), Error);
  EXPECT_THROW(parse_memory_size(""), Error);
  EXPECT_THROW(parse_memory_size("-5"), Error);
  EXPECT_TRUE(parse_error({"-m", "1X"}).starts_with("-m 1X: Parameter 'size' expects a non-negative number below 2^64\n"));
}

TEST(CommandLine, Errors) {
  EXPECT_EQ(parse_error({"-foo"}), "-foo: invalid option");
  EXPECT_EQ(parse_error({"-kernel"}), "-kernel: requires an argument");
  EXPECT_EQ(parse_error({"-device", "e1000"}), "-device e1000: 'e1000' is not a valid device model name");
  EXPECT_EQ(parse_error({"-device", "isa-debug-exit,foo=1"}),
            "-device isa-debug-exit,foo=1: Property 'isa-debug-exit.foo' not found");
  EXPECT_EQ(parse_error({"-device", "isa-debug-exit,iosize=3"}),
            "-device isa-debug-exit,iosize=3: Property 'isa-debug-exit.iosize' doesn't take value '3'");
  EXPECT_NE(parse_error({"-accel", "kvm"}).find("KVM is not available"), std::string::npos);
  EXPECT_NE(parse_error({"-enable-kvm"}).find("KVM is not available"), std::string::npos);
  EXPECT_EQ(parse_error({"-accel", "hvf"}), "-accel hvf: invalid accelerator hvf");
  EXPECT_EQ(parse_error({"-machine", "virt"}), "unsupported machine type");
  EXPECT_NE(parse_error({"-smp", "2"}).find("only one CPU"), std::string::npos);
  EXPECT_EQ(parse_error({"-initrd", "x"}), "-initrd only allowed with -kernel option");
  EXPECT_EQ(parse_error({"-append", "x"}), "-append only allowed with -kernel option");
  EXPECT_NE(parse_error({"-d", "bogus"}).find("unknown log item"), std::string::npos);
  EXPECT_NE(parse_error({"-display", "gtk"}).find("only 'none'"), std::string::npos);
  EXPECT_EQ(parse_error({"-serial", "stdio", "-serial", "stdio"}), "cannot use stdio by multiple character devices");
  EXPECT_NE(parse_error({"disk.img"}).find("not supported"), std::string::npos);
  EXPECT_NE(parse_error({"-serial", "a", "-serial", "b", "-serial", "c", "-serial", "d", "-serial", "e"})
                .find("too many serial ports"),
            std::string::npos);
}

TEST(CharBackends, Names) {
  CharBackendOptions options;
  EXPECT_NO_THROW(open_char_backend("none", options));
  EXPECT_NO_THROW(open_char_backend("null", options));
  try {
    open_char_backend("bogus", options);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "'bogus' is not a valid char driver");
  }
  EXPECT_THROW(open_char_backend("file:/nonexistent/dir/x", options), Error);
  EXPECT_THROW(open_char_backend("unix:/nonexistent/dir/sock", options), Error);  // client: nobody listens
  EXPECT_THROW(open_char_backend("unix:/tmp/x,bogus", options), Error);
}

TEST(CharBackends, UnixSocketServerCarriesBothDirections) {
  char pattern[] = "/tmp/kiln-socket-test-XXXXXX";
  const std::string dir = ::mkdtemp(pattern);
  const std::string path = dir + "/com1";
  CharBackendOptions options;
  auto backend = open_char_backend("unix:" + path + ",server,nowait", options);
  std::mutex lock;
  std::condition_variable space;
  bool irq = false;
  Uart16550 uart(0x3f8, *backend, [&](bool level) { irq = level; }, [&] { space.notify_all(); });
  {
    std::lock_guard guard(lock);
    uart.io_write(0x3f8, 1, 'x');  // nobody connected: dropped
    uart.io_write(0x3fa, 1, 0x01);  // FIFO on
  }
  backend->start_input(uart, lock, space);

  const int client = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::connect(client, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  // 20 bytes: more than the receive FIFO holds, so delivery has to wait for room.
  const std::string input = "0123456789abcdefghij";
  ASSERT_EQ(::write(client, input.data(), input.size()), static_cast<ssize_t>(input.size()));
  std::string received;
  for (int i = 0; i < 2000 && received.size() < input.size(); ++i) {
    {
      std::lock_guard guard(lock);
      while (uart.io_read(0x3fd, 1) & 1) received += static_cast<char>(uart.io_read(0x3f8, 1));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(received, input);
  // The accept happened on the input thread: output now reaches the client.
  {
    std::lock_guard guard(lock);
    uart.io_write(0x3f8, 1, 'o');
    uart.io_write(0x3f8, 1, 'k');
  }
  char reply[2] = {};
  ASSERT_EQ(::recv(client, reply, 2, MSG_WAITALL), 2);
  EXPECT_EQ(std::string(reply, 2), "ok");
  ::close(client);
  backend.reset();  // joins the input thread, removes the socket
  EXPECT_FALSE(std::filesystem::exists(path));
  std::filesystem::remove_all(dir);
}

// mon:stdio reads standard input: point fd 0 at a pipe for the test.
TEST(CharBackends, MonStdioEscapes) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const int saved_stdin = ::dup(STDIN_FILENO);
  ASSERT_GE(saved_stdin, 0);
  ASSERT_EQ(::dup2(fds[0], STDIN_FILENO), STDIN_FILENO);
  ::close(fds[0]);
  std::atomic<bool> quit{false};
  CharBackendOptions options;
  options.on_quit = [&] { quit = true; };
  {
    auto backend = open_char_backend("mon:stdio", options);
    std::mutex lock;
    std::condition_variable space;
    RecordingBackend unused;
    Uart16550 uart(0x3f8, unused, {}, [&] { space.notify_all(); });
    uart.io_write(0x3fa, 1, 0x01);  // FIFO
    backend->start_input(uart, lock, space);
    const char input[] = "a\x01\x01" "b\x03\x01x" "ignored";
    ASSERT_EQ(::write(fds[1], input, sizeof input - 1), static_cast<ssize_t>(sizeof input - 1));
    for (int i = 0; i < 2000 && !quit; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_TRUE(quit);
    std::string received;
    {
      std::lock_guard guard(lock);
      while (uart.io_read(0x3fd, 1) & 1) received += static_cast<char>(uart.io_read(0x3f8, 1));
    }
    EXPECT_EQ(received, "a\x01" "b\x03");  // Ctrl-A Ctrl-A is one Ctrl-A; Ctrl-C goes to the guest
  }
  ::close(fds[1]);
  ::dup2(saved_stdin, STDIN_FILENO);
  ::close(saved_stdin);
}

// ---- Whole machine ------------------------------------------------------------

class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/kiln-machine-test-XXXXXX";
    path_ = ::mkdtemp(pattern);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string file(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

std::string write_file(const std::string& path, std::span<const uint8_t> bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  return path;
}
std::string read_text(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// mov dx, 0x3f8; mov al, 'h'; out dx, al; mov al, 'i'; out dx, al; mov al, 0x15; out 0xf4, al; hlt
constexpr uint8_t kSerialExitKernel[] = {
    0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10,
    0x00, 0x2f, 0x00, 0x10, 0x00, 0x2f, 0x00, 0x10, 0x00, 0x20, 0x00, 0x10, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x68,
    0xee, 0xb0, 0x69, 0xee, 0xb0, 0x15, 0xe6, 0xf4, 0xf4};
// mov al, 1; out 0x92, al; hlt
constexpr uint8_t kResetKernel[] = {0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4,
                                    0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10, 0x00, 0x25, 0x00, 0x10, 0x00,
                                    0x25, 0x00, 0x10, 0x00, 0x20, 0x00, 0x10, 0x00, 0xb0, 0x01, 0xe6, 0x92, 0xf4};
// Sets ESP, puts a code descriptor at GDT slot 0x10 and an interrupt gate for vector
// 0x20 at the reset GDTR/IDTR (base 0), programs the PIC (vectors 0x20) and
// PIT channel 0 (mode 2, 1 ms), sets IF with POPFD and halts. Prints 'W' when
// HLT returns without delivering IRQ0 (no IDT delivery yet) or 'I' from the
// IRQ0 handler once the CPU delivers it; exits with isa-debug-exit 0 either way.
constexpr uint8_t kHaltTimerKernel[] = {
    0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10,
    0x00, 0x98, 0x00, 0x10, 0x00, 0x98, 0x00, 0x10, 0x00, 0x20, 0x00, 0x10, 0x00, 0xbc, 0x00, 0x00, 0x09, 0x00, 0xc7,
    0x05, 0x10, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0xc7, 0x05, 0x14, 0x00, 0x00, 0x00, 0x00, 0x9a, 0xcf, 0x00,
    0xb8, 0x8d, 0x00, 0x10, 0x00, 0x66, 0xa3, 0x00, 0x01, 0x00, 0x00, 0x66, 0xc7, 0x05, 0x02, 0x01, 0x00, 0x00, 0x10,
    0x00, 0x66, 0xc7, 0x05, 0x04, 0x01, 0x00, 0x00, 0x00, 0x8e, 0xc1, 0xe8, 0x10, 0x66, 0xa3, 0x06, 0x01, 0x00, 0x00,
    0xb0, 0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21, 0xb0, 0xfe, 0xe6,
    0x21, 0xb0, 0x34, 0xe6, 0x43, 0xb0, 0xa9, 0xe6, 0x40, 0xb0, 0x04, 0xe6, 0x40, 0x9c, 0x81, 0x0c, 0x24, 0x00, 0x02,
    0x00, 0x00, 0x9d, 0xf4, 0xb0, 0x57, 0xeb, 0x02, 0xb0, 0x49, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xb0, 0x00, 0xe6, 0xf4};

MachineConfig machine_config(const TempDir& dir, std::span<const uint8_t> kernel) {
  MachineConfig config;
  config.ram_size = 4ull << 20;
  config.kernel = write_file(dir.file("kernel.bin"), kernel);
  config.serial = {"file:" + dir.file("com1.txt")};
  config.debug_exit = DebugExitConfig{.iobase = 0xf4, .iosize = 4};
  config.no_reboot = true;
  return config;
}

TEST(PcMachine, SerialOutputAndDebugExitStatus) {
  TempDir dir;
  int status;
  {
    PcMachine machine(machine_config(dir, kSerialExitKernel));
    EXPECT_EQ(machine.cpu().state.regs[emu::RAX], kMultibootBootloaderMagic);
    EXPECT_EQ(machine.cpu().state.sys.cr0 & emu::cr0::PE, emu::cr0::PE);
    EXPECT_EQ(machine.cpu().state.rflags_other & emu::rflags::IF, 0u);
    status = machine.run();
  }
  EXPECT_EQ(status, (0x15 << 1) | 1);
  EXPECT_EQ(read_text(dir.file("com1.txt")), "hi");
}

TEST(PcMachine, ResetRequestWithNoRebootEndsTheRun) {
  TempDir dir;
  PcMachine machine(machine_config(dir, kResetKernel));
  EXPECT_EQ(machine.run(), 0);
}

// mov dx, 0x3f8; mov al, 'B'; out dx, al; mov al, 1; out 0x92, al; hlt
constexpr uint8_t kBootAndResetKernel[] = {
    0x02, 0xb0, 0xad, 0x1b, 0x00, 0x00, 0x01, 0x00, 0xfe, 0x4f, 0x51, 0xe4, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10,
    0x00, 0x2c, 0x00, 0x10, 0x00, 0x2c, 0x00, 0x10, 0x00, 0x20, 0x00, 0x10, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x42,
    0xee, 0xb0, 0x01, 0xe6, 0x92, 0xf4};

TEST(PcMachine, ResetRebootsIntoTheKernelAgain) {
  TempDir dir;
  MachineConfig config = machine_config(dir, kBootAndResetKernel);
  config.no_reboot = false;
  PcMachine machine(config);
  std::thread runner([&] { EXPECT_EQ(machine.run(), 7); });
  std::string out;
  for (int i = 0; i < 5000 && out.size() < 3; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    out = read_text(dir.file("com1.txt"));
  }
  machine.shutdown(7);
  runner.join();
  EXPECT_GE(out.size(), 3u);
  EXPECT_EQ(out.find_first_not_of('B'), std::string::npos) << out;
}

TEST(PcMachine, HaltSleepsUntilTheTimerInterrupt) {
  TempDir dir;
  int status;
  {
    PcMachine machine(machine_config(dir, kHaltTimerKernel));
    // POPFD changes IF only once privileged flag semantics exist; set it here
    // so HLT has something to wait for.
    machine.cpu().state.rflags_other |= emu::rflags::IF;
    status = machine.run();
  }
  EXPECT_EQ(status, 1);
  const std::string out = read_text(dir.file("com1.txt"));
  EXPECT_TRUE(out == "W" || out == "I") << out;
}

TEST(PcMachine, DevicesReachTheCpuThroughThePic) {
  TempDir dir;
  MachineConfig config = machine_config(dir, kSerialExitKernel);
  config.serial.push_back("null");  // COM2 on IRQ3
  PcMachine machine(config);
  emu::IoBus& bus = *machine.cpu().io_bus();
  emu::InterruptController& pic = machine.interrupt_controller();
  EXPECT_EQ(bus.read(0x21, 1), 0xb8u);  // firmware mask: IRQ3 and IRQ4 masked
  bus.write(0x3f9, 1, 0x02);           // COM1: THR-empty interrupt
  EXPECT_FALSE(pic.pending());
  bus.write(0x21, 1, 0xa8);  // unmask IRQ4
  EXPECT_TRUE(pic.pending());
  EXPECT_EQ(pic.acknowledge(), 0x0c);  // vector base 0x08 + 4
  EXPECT_FALSE(pic.pending());
  EXPECT_EQ(bus.read(0x3fa, 1), 0x02u);  // IIR: THR empty, acknowledged by the read
  bus.write(0x20, 1, 0x20);
  EXPECT_FALSE(pic.pending());
  bus.write(0x2f9, 1, 0x02);  // COM2 raises IRQ3
  bus.write(0x21, 1, 0xa0);
  EXPECT_TRUE(pic.pending());
  EXPECT_EQ(pic.acknowledge(), 0x0b);
  EXPECT_EQ(bus.read(0x3fb, 2), 0x0000u);  // 16-bit read: LCR and MCR of COM1, split into bytes
}

TEST(PcMachine, SerialNoneLeavesThePortOut) {
  TempDir dir;
  MachineConfig config = machine_config(dir, kSerialExitKernel);
  config.serial = {"none", "file:" + dir.file("com2.txt")};
  int status;
  {
    PcMachine machine(config);
    status = machine.run();
  }
  EXPECT_EQ(status, (0x15 << 1) | 1);
  EXPECT_EQ(read_text(dir.file("com2.txt")), "");
  EXPECT_FALSE(std::filesystem::exists(dir.file("com1.txt")));
}

TEST(PcMachine, BadKernels) {
  TempDir dir;
  MachineConfig config;
  config.kernel = dir.file("missing");
  EXPECT_THROW(PcMachine{config}, Error);
  const uint8_t text[] = {'h', 'e', 'l', 'l', 'o'};
  config.kernel = write_file(dir.file("text"), text);
  try {
    PcMachine machine(config);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid kernel header"), std::string::npos);
  }
  config.kernel.clear();
  EXPECT_THROW(PcMachine{config}, Error);
}

}  // namespace
}  // namespace kiln::machine
