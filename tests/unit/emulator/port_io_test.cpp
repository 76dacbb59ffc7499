// IN/OUT/INS/OUTS through the translator: sizes, DX/imm8 ports, REP, DF,
// address size, segment override, fault ordering, IOPL and the TSS I/O bitmap.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "kiln/emulator/cpu.h"
#include "kiln/emulator/lazy_flags.h"

namespace kiln::emu {
namespace {

constexpr uint64_t kCode = 0x10000;
constexpr uint64_t kData = 0x20000;
constexpr uint64_t kReadOnly = 0x22000;
constexpr uint64_t kTss = 0x30000;

// Records every access; reads return a per-port counter so each read differs.
struct RecordingDevice : IoHandler {
  struct Access {
    bool write;
    uint16_t port;
    unsigned size;
    uint32_t value;
  };
  std::vector<Access> log;
  uint32_t next_value = 0x44332211;
  uint32_t io_read(uint16_t port, unsigned size) override {
    uint32_t v = next_value;
    next_value += 0x01010101;
    log.push_back({false, port, size, v});
    return v;
  }
  void io_write(uint16_t port, unsigned size, uint32_t value) override { log.push_back({true, port, size, value}); }
};

struct Machine {
  FlatMemory memory;
  Cpu cpu{memory};
  IoBus bus;
  RecordingDevice device;
  uint8_t* data;
  explicit Machine(std::vector<uint8_t> code, CodeSize size = CodeSize::Bits32, bool system = true) {
    code.push_back(0xcc);  // INT3 stops the run
    cpu.set_exception_intercepts(~0u);  // no IDT here: exceptions come back from run()
    memory.map(kCode, kPageSize, kPermRead | kPermExec);
    memory.write_bytes(kCode, code);
    data = memory.map(kData, 2 * kPageSize, kPermRead | kPermWrite);
    memory.map(kReadOnly, kPageSize, kPermRead);
    memory.map(kTss, 2 * kPageSize, kPermRead | kPermWrite);
    bus.map(0x40, 8, device);
    bus.map(0x3f8, 8, device);
    cpu.set_io_bus(&bus);
    cpu.state.mode.code = size;
    cpu.state.mode.system = system;
    cpu.state.rip = kCode;
    cpu.state.regs[RSP] = kData + kPageSize;
  }
  uint64_t& reg(Reg r) { return cpu.state.regs[r]; }
  Vector run_to_exception() {
    RunResult r = cpu.run(10000);
    EXPECT_EQ(r.reason, StopReason::Exception);
    return cpu.state.exception.vector;
  }
  // Protected mode at CPL 3 with IOPL 0 and a 32-bit TSS whose bitmap starts at `map_offset`.
  void protect(uint16_t map_offset, uint32_t limit) {
    cpu.state.sys.cr0 |= cr0::PE;
    cpu.state.sys.cpl = 3;
    cpu.state.sys.tr = SegmentCache{.base = kTss, .limit = limit, .selector = 0x28, .attrs = 0x8b};
    std::vector<uint8_t> tss(2 * kPageSize, 0xff);
    std::fill(tss.begin(), tss.begin() + 0x68, 0);
    tss[0x66] = static_cast<uint8_t>(map_offset);
    tss[0x67] = static_cast<uint8_t>(map_offset >> 8);
    memory.write_bytes(kTss, tss);
  }
  void allow_port(uint16_t map_offset, uint16_t port) {
    std::vector<uint8_t> byte(1);
    memory.read_bytes(kTss + map_offset + port / 8, byte);
    byte[0] = static_cast<uint8_t>(byte[0] & ~(1u << (port & 7)));
    memory.write_bytes(kTss + map_offset + port / 8, byte);
  }
};

TEST(PortIo, UserModeInAndOutAreUndefined) {
  Machine in({0xe4, 0x40}, CodeSize::Bits64, false);  // in al, 0x40
  EXPECT_EQ(in.run_to_exception(), Vector::UD);
  Machine out({0xee}, CodeSize::Bits64, false);  // out dx, al
  EXPECT_EQ(out.run_to_exception(), Vector::UD);
  EXPECT_TRUE(out.device.log.empty());
}

TEST(PortIo, InSizesAndPorts) {
  // in al, 0x41 ; mov dx, 0x3f9 ; in ax, dx ; in eax, dx  (then ebx = first, ecx = second)
  Machine m({0xe4, 0x41, 0x88, 0xc3, 0x66, 0xba, 0xf9, 0x03, 0x66, 0xed, 0x66, 0x89, 0xc1, 0xed});
  m.reg(RAX) = 0xaaaaaaaa;
  m.reg(RBX) = 0xbbbbbbbb;
  m.reg(RCX) = 0xcccccccc;
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  ASSERT_EQ(m.device.log.size(), 3u);
  EXPECT_EQ(m.device.log[0].port, 0x41);
  EXPECT_EQ(m.device.log[0].size, 1u);
  EXPECT_EQ(m.device.log[1].port, 0x3f9);
  EXPECT_EQ(m.device.log[1].size, 2u);
  EXPECT_EQ(m.device.log[2].size, 4u);
  EXPECT_EQ(m.reg(RBX), 0xbbbbbb11u);  // AL only
  EXPECT_EQ(m.reg(RCX), 0xcccc2312u);  // AX only
  EXPECT_EQ(m.reg(RAX), 0x46352413u);  // full EAX
}

TEST(PortIo, OutSizesAndUnmappedPortsReadAllOnes) {
  // mov eax, 0x12345678 ; out 0x42, al ; mov dx, 0x3fa ; out dx, ax ; out dx, eax ; mov dx, 0x1234 ; in eax, dx
  Machine m({0xb8, 0x78, 0x56, 0x34, 0x12, 0xe6, 0x42, 0x66, 0xba, 0xfa, 0x03, 0x66, 0xef, 0xef,
             0x66, 0xba, 0x34, 0x12, 0xed});
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  ASSERT_EQ(m.device.log.size(), 3u);
  EXPECT_TRUE(m.device.log[0].write);
  EXPECT_EQ(m.device.log[0].port, 0x42);
  EXPECT_EQ(m.device.log[0].value, 0x78u);
  EXPECT_EQ(m.device.log[1].value, 0x5678u);
  EXPECT_EQ(m.device.log[1].size, 2u);
  EXPECT_EQ(m.device.log[2].value, 0x12345678u);
  EXPECT_EQ(m.reg(RAX), 0xffffffffu);
}

TEST(PortIo, RepInsbFillsMemoryForwardAndBackward) {
  Machine m({0xf3, 0x6c});  // rep insb
  m.reg(RDX) = 0x40;
  m.reg(RDI) = kData + 0x10;
  m.reg(RCX) = 4;
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  EXPECT_EQ(m.reg(RCX), 0u);
  EXPECT_EQ(m.reg(RDI), kData + 0x14);
  EXPECT_EQ(m.data[0x10], 0x11);
  EXPECT_EQ(m.data[0x13], 0x14);
  EXPECT_EQ(m.device.log.size(), 4u);

  Machine b({0xfd, 0xf3, 0x66, 0x6d});  // std ; rep insw
  b.reg(RDX) = 0x40;
  b.reg(RDI) = kData + 0x10;
  b.reg(RCX) = 2;
  EXPECT_EQ(b.run_to_exception(), Vector::BP);
  EXPECT_EQ(b.reg(RDI), kData + 0x0c);
  EXPECT_EQ(b.data[0x10], 0x11);  // first word at 0x10, second at 0x0e
  EXPECT_EQ(b.data[0x0e], 0x12);
  EXPECT_EQ(b.device.log[0].size, 2u);
}

TEST(PortIo, RepWithZeroCountDoesNothing) {
  Machine m({0xf3, 0x6e});  // rep outsb
  m.reg(RDX) = 0x40;
  m.reg(RCX) = 0;
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  EXPECT_TRUE(m.device.log.empty());
}

TEST(PortIo, InsFaultsBeforeReadingThePort) {
  Machine m({0x6c});  // insb to a read-only page
  m.reg(RDX) = 0x40;
  m.reg(RDI) = kReadOnly + 8;
  EXPECT_EQ(m.run_to_exception(), Vector::PF);
  EXPECT_EQ(m.cpu.state.exception.fault_address, kReadOnly + 8);
  EXPECT_TRUE(m.device.log.empty());
  EXPECT_EQ(m.reg(RDI), kReadOnly + 8);
  EXPECT_EQ(m.cpu.state.rip, kCode);
}

TEST(PortIo, InsdAcrossIntoUnwritablePageFaultsFirst) {
  Machine m({0x6d});  // insd: 2 bytes in the data area, 2 in the read-only page after it
  m.reg(RDX) = 0x40;
  m.reg(RDI) = kData + 2 * kPageSize - 2;
  EXPECT_EQ(m.run_to_exception(), Vector::PF);
  EXPECT_EQ(m.cpu.state.exception.fault_address, kReadOnly);
  EXPECT_TRUE(m.device.log.empty());
}

TEST(PortIo, OutswWithSegmentOverrideAndSixteenBitAddresses) {
  // fs rep outsw with the 0x67 prefix: uses CX and SI, FS base added.
  Machine m({0x64, 0x67, 0xf3, 0x66, 0x6f});
  m.cpu.state.seg_base[FS] = kData;
  m.reg(RDX) = 0x3f8;
  m.reg(RSI) = 0xffff0100;  // only SI is used
  m.reg(RCX) = 0xffff0002;  // only CX is used
  m.data[0x100] = 0x34;
  m.data[0x101] = 0x12;
  m.data[0x102] = 0x78;
  m.data[0x103] = 0x56;
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  ASSERT_EQ(m.device.log.size(), 2u);
  EXPECT_EQ(m.device.log[0].value, 0x1234u);
  EXPECT_EQ(m.device.log[1].value, 0x5678u);
  EXPECT_EQ(m.reg(RSI), 0xffff0104u);
  EXPECT_EQ(m.reg(RCX), 0xffff0000u);
}

TEST(PortIo, OutsFaultLeavesThePortUntouched) {
  Machine m({0x6e});  // outsb from an unmapped address
  m.reg(RDX) = 0x40;
  m.reg(RSI) = 0x900000;
  EXPECT_EQ(m.run_to_exception(), Vector::PF);
  EXPECT_TRUE(m.device.log.empty());
}

TEST(PortIo, RealModeIgnoresIopl) {
  Machine m({0xe4, 0x40});
  m.cpu.state.sys.tr.attrs = 0;  // no usable TSS either
  m.cpu.state.sys.cpl = 3;       // meaningless without CR0.PE
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  EXPECT_EQ(m.device.log.size(), 1u);
}

TEST(PortIo, CplAtOrBelowIoplNeedsNoBitmap) {
  Machine m({0xe4, 0x40});
  m.protect(0x68, 0x67);  // no bitmap at all
  m.cpu.state.rflags_other |= 3u << 12;  // IOPL 3
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  EXPECT_EQ(m.device.log.size(), 1u);
}

TEST(PortIo, BitmapGrantsAndDeniesEachPort) {
  constexpr uint16_t kMap = 0x100;
  {
    Machine m({0xe4, 0x41});  // in al, 0x41: allowed
    m.protect(kMap, kMap + 0x2000);
    m.allow_port(kMap, 0x41);
    EXPECT_EQ(m.run_to_exception(), Vector::BP);
    EXPECT_EQ(m.device.log.size(), 1u);
  }
  {
    Machine m({0x66, 0xe5, 0x41});  // in ax, 0x41: port 0x42 is still denied
    m.protect(kMap, kMap + 0x2000);
    m.allow_port(kMap, 0x41);
    EXPECT_EQ(m.run_to_exception(), Vector::GP);
    EXPECT_EQ(m.cpu.state.exception.error_code, 0u);
    EXPECT_TRUE(m.device.log.empty());
    EXPECT_EQ(m.reg(RAX), 0u);
  }
  {
    Machine m({0x66, 0xba, 0xff, 0x03, 0x66, 0xef});  // out 0x3ff, ax: bits in two bitmap bytes
    m.protect(kMap, kMap + 0x2000);
    m.allow_port(kMap, 0x3ff);
    m.allow_port(kMap, 0x400);
    EXPECT_EQ(m.run_to_exception(), Vector::BP);
    ASSERT_EQ(m.device.log.size(), 1u);
    EXPECT_EQ(m.device.log[0].port, 0x3ff);
  }
}

TEST(PortIo, BitmapOutsideTheLimitIsDenied) {
  constexpr uint16_t kMap = 0x100;
  Machine m({0xe4, 0x40});
  // Port 0x40's byte is at kMap + 8; the processor reads it and the next byte.
  m.protect(kMap, kMap + 8);
  m.allow_port(kMap, 0x40);
  EXPECT_EQ(m.run_to_exception(), Vector::GP);
  Machine ok({0xe4, 0x40});
  ok.protect(kMap, kMap + 9);
  ok.allow_port(kMap, 0x40);
  EXPECT_EQ(ok.run_to_exception(), Vector::BP);
}

TEST(PortIo, SixteenBitTssHasNoBitmap) {
  Machine m({0xe4, 0x40});
  m.protect(0x100, 0x2000);
  m.allow_port(0x100, 0x40);
  m.cpu.state.sys.tr.attrs = 0x83;  // busy 16-bit TSS
  EXPECT_EQ(m.run_to_exception(), Vector::GP);
}

TEST(PortIo, OutsChecksPermissionBeforeTheMemoryOperand) {
  Machine m({0x6e});  // outsb from an unmapped address to a denied port
  m.protect(0x100, 0x2000);
  m.reg(RDX) = 0x40;
  m.reg(RSI) = 0x900000;
  EXPECT_EQ(m.run_to_exception(), Vector::GP);
}

TEST(PortIo, SixtyFourBitInsUsesRdi) {
  Machine m({0x48, 0x6d}, CodeSize::Bits64);  // rex.w insd (still 4 bytes)
  m.reg(RDX) = 0x40;
  m.reg(RDI) = kData;
  EXPECT_EQ(m.run_to_exception(), Vector::BP);
  EXPECT_EQ(m.reg(RDI), kData + 4);
  EXPECT_EQ(m.data[3], 0x44);
}

}  // namespace
}  // namespace kiln::emu
