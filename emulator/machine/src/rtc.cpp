#include "kiln/machine/rtc.h"

#include <algorithm>

namespace kiln::machine {

namespace {

constexpr unsigned kSeconds = 0x00, kMinutes = 0x02, kHours = 0x04, kWeekday = 0x06, kDay = 0x07, kMonth = 0x08,
                   kYear = 0x09, kRegA = 0x0a, kRegB = 0x0b, kRegC = 0x0c, kRegD = 0x0d, kCentury = 0x32;
constexpr uint8_t kRegBSet = 0x80, kRegBPeriodicIe = 0x40, kRegBAlarmIe = 0x20, kRegBUpdateIe = 0x10,
                  kRegBBinary = 0x04, kRegB24Hour = 0x02;
constexpr uint8_t kFlagIrq = 0x80, kFlagPeriodic = 0x40, kFlagAlarm = 0x20, kFlagUpdate = 0x10;
constexpr int64_t kNsPerSecond = 1'000'000'000;
constexpr int64_t kMaxAlarmScan = 86400;  // an alarm recurs at least daily
constexpr int64_t kUpdateInProgressNs = 244'000;  // UIP is set this long before each update

// Days since 1970-01-01 of a civil date, and back (proleptic Gregorian).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}
void civil_from_days(int64_t z, int64_t& y, unsigned& m, unsigned& d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<int64_t>(yoe) + era * 400 + (m <= 2);
}

}  // namespace

Mc146818Rtc::Mc146818Rtc(const Clock& clock, int64_t unix_ns_at_zero, uint64_t ram_size,
                         std::function<void(bool)> irq8, std::function<void()> reprogrammed)
    : clock_(clock), unix_ns_at_zero_(unix_ns_at_zero), ram_size_(ram_size), irq8_(std::move(irq8)),
      reprogrammed_(std::move(reprogrammed)) {
  reset();
}

// Periodic interrupt period from register A's rate select (only with the
// 32.768 kHz time base running): 2^(rate-1) / 32768 s; rates 1 and 2 act as 8 and 9.
uint64_t Mc146818Rtc::periodic_ns() const {
  unsigned rate = cmos_[kRegA] & 0x0f;
  if (rate == 0 || (cmos_[kRegA] & 0x70) != 0x20) return 0;
  if (rate < 3) rate += 7;
  return (uint64_t{1} << (rate - 1)) * kNsPerSecond / 32768;
}

bool Mc146818Rtc::alarm_matches(int64_t seconds) {
  load_time_registers(seconds);
  // Alarm bytes with the two top bits set match any value.
  auto match = [&](unsigned alarm, unsigned time) { return (cmos_[alarm] & 0xc0) == 0xc0 || cmos_[alarm] == cmos_[time]; };
  return match(0x01, kSeconds) && match(0x03, kMinutes) && match(0x05, kHours);
}

void Mc146818Rtc::collect_flags() {
  const uint64_t now = clock_.now_ns();
  if (now <= flags_since_ns_) return;
  if (const uint64_t period = periodic_ns(); period && now / period > flags_since_ns_ / period)
    pending_flags_ |= kFlagPeriodic;
  if (!(cmos_[kRegB] & kRegBSet)) {
    // Updates happen at each second boundary of the wall clock.
    const auto second_of = [&](uint64_t t) {
      const int64_t ns = unix_ns_at_zero_ + static_cast<int64_t>(t);
      return (ns >= 0 ? ns : ns - (kNsPerSecond - 1)) / kNsPerSecond;
    };
    const int64_t first = second_of(flags_since_ns_) + 1, last = second_of(now);
    if (last >= first) {
      pending_flags_ |= kFlagUpdate;
      const std::array<uint8_t, 128> saved = cmos_;  // alarm_matches() loads the time registers
      for (int64_t s = std::max(first, last - kMaxAlarmScan + 1); s <= last; ++s)
        if (alarm_matches(s + offset_seconds_)) {
          pending_flags_ |= kFlagAlarm;
          break;
        }
      cmos_ = saved;
    }
  }
  flags_since_ns_ = now;
}

uint8_t Mc146818Rtc::interrupt_flags() const {
  const uint8_t enabled = cmos_[kRegB] & (kRegBPeriodicIe | kRegBAlarmIe | kRegBUpdateIe);
  return (pending_flags_ & enabled) ? kFlagIrq : 0;  // the IE bits line up with PF, AF, UF
}

void Mc146818Rtc::update_irq() {
  const bool level = interrupt_flags() != 0;
  if (level != irq_level_) {
    irq_level_ = level;
    if (irq8_) irq8_(level);
  }
}

bool Mc146818Rtc::update() {
  const bool was = irq_level_;
  collect_flags();
  update_irq();
  return irq_level_ && !was;
}

std::optional<uint64_t> Mc146818Rtc::next_event_ns() const {
  if (irq_level_) return std::nullopt;  // nothing more to signal until register C is read
  const uint64_t now = clock_.now_ns();
  std::optional<uint64_t> next;
  if (const uint64_t period = periodic_ns(); period && (cmos_[kRegB] & kRegBPeriodicIe))
    next = (now / period + 1) * period;
  if ((cmos_[kRegB] & (kRegBAlarmIe | kRegBUpdateIe)) && !(cmos_[kRegB] & kRegBSet)) {
    const int64_t wall = unix_ns_at_zero_ + static_cast<int64_t>(now);
    const int64_t into = ((wall % kNsPerSecond) + kNsPerSecond) % kNsPerSecond;
    const uint64_t boundary = now + static_cast<uint64_t>(kNsPerSecond - into);
    next = next ? std::min(*next, boundary) : boundary;
  }
  return next;
}

void Mc146818Rtc::reset() {
  cmos_.fill(0);
  cmos_[kRegA] = 0x26;  // 32.768 kHz time base, 1024 Hz periodic rate
  cmos_[kRegB] = kRegB24Hour;
  cmos_[kRegD] = 0x80;  // valid RAM and time
  // The PC's memory-size bytes, as firmware reads them: base memory in KiB,
  // extended memory above 1 MiB in KiB (at most 65535), memory above 16 MiB
  // and above 4 GiB in 64 KiB units.
  const uint64_t below_4g = ram_size_ >= 0xe0000000 ? 0xc0000000 : ram_size_;
  const uint64_t above_4g = ram_size_ - below_4g;
  cmos_[0x15] = 0x80;
  cmos_[0x16] = 0x02;
  const uint64_t extended = below_4g > (1u << 20) ? std::min<uint64_t>((below_4g >> 10) - 1024, 0xffff) : 0;
  cmos_[0x17] = cmos_[0x30] = static_cast<uint8_t>(extended);
  cmos_[0x18] = cmos_[0x31] = static_cast<uint8_t>(extended >> 8);
  const uint64_t above_16m = below_4g > (16u << 20) ? std::min<uint64_t>((below_4g - (16u << 20)) >> 16, 0xffff) : 0;
  cmos_[0x34] = static_cast<uint8_t>(above_16m);
  cmos_[0x35] = static_cast<uint8_t>(above_16m >> 8);
  const uint64_t high = above_4g >> 16;
  cmos_[0x5b] = static_cast<uint8_t>(high);
  cmos_[0x5c] = static_cast<uint8_t>(high >> 8);
  cmos_[0x5d] = static_cast<uint8_t>(high >> 16);
  cmos_[0x5f] = 0;  // CPUs - 1
  unsigned sum = 0;
  for (unsigned i = 0x10; i <= 0x2d; ++i) sum += cmos_[i];
  cmos_[0x2e] = static_cast<uint8_t>(sum >> 8);
  cmos_[0x2f] = static_cast<uint8_t>(sum);
  index_ = 0;
  nmi_masked_ = false;
  pending_flags_ = 0;
  flags_since_ns_ = clock_.now_ns();
  if (irq_level_ && irq8_) irq8_(false);
  irq_level_ = false;
}

int64_t Mc146818Rtc::now_seconds() const {
  const int64_t ns = unix_ns_at_zero_ + static_cast<int64_t>(clock_.now_ns());
  return (ns >= 0 ? ns / 1'000'000'000 : (ns - 999'999'999) / 1'000'000'000) + offset_seconds_;
}

uint8_t Mc146818Rtc::encode(unsigned value) const {
  if (cmos_[kRegB] & kRegBBinary) return static_cast<uint8_t>(value);
  return static_cast<uint8_t>(((value / 10) << 4) | (value % 10));
}

unsigned Mc146818Rtc::decode(uint8_t value) const {
  if (cmos_[kRegB] & kRegBBinary) return value;
  return (value >> 4) * 10 + (value & 0xf);
}

void Mc146818Rtc::load_time_registers(int64_t seconds) {
  const int64_t days = (seconds >= 0 ? seconds : seconds - 86399) / 86400;
  const int64_t in_day = seconds - days * 86400;
  int64_t year;
  unsigned month, day;
  civil_from_days(days, year, month, day);
  const unsigned hour = static_cast<unsigned>(in_day / 3600);
  cmos_[kSeconds] = encode(static_cast<unsigned>(in_day % 60));
  cmos_[kMinutes] = encode(static_cast<unsigned>(in_day / 60 % 60));
  if (cmos_[kRegB] & kRegB24Hour) {
    cmos_[kHours] = encode(hour);
  } else {
    const unsigned h12 = hour % 12 == 0 ? 12 : hour % 12;
    cmos_[kHours] = static_cast<uint8_t>(encode(h12) | (hour >= 12 ? 0x80 : 0));
  }
  cmos_[kWeekday] = encode(static_cast<unsigned>(((days % 7) + 7 + 4) % 7 + 1));  // 1970-01-01 was a Thursday; Sunday = 1
  cmos_[kDay] = encode(day);
  cmos_[kMonth] = encode(month);
  cmos_[kYear] = encode(static_cast<unsigned>(((year % 100) + 100) % 100));
  cmos_[kCentury] = encode(static_cast<unsigned>(year / 100));
}

int64_t Mc146818Rtc::time_from_registers() const {
  unsigned hour;
  if (cmos_[kRegB] & kRegB24Hour) {
    hour = decode(cmos_[kHours]);
  } else {
    hour = decode(static_cast<uint8_t>(cmos_[kHours] & 0x7f)) % 12 + ((cmos_[kHours] & 0x80) ? 12 : 0);
  }
  const int64_t year = int64_t{decode(cmos_[kCentury])} * 100 + decode(cmos_[kYear]);
  const unsigned month = std::clamp(decode(cmos_[kMonth]), 1u, 12u);
  const unsigned day = std::clamp(decode(cmos_[kDay]), 1u, 31u);
  return days_from_civil(year, month, day) * 86400 + int64_t{hour} * 3600 + int64_t{decode(cmos_[kMinutes])} * 60 +
         decode(cmos_[kSeconds]);
}

uint8_t Mc146818Rtc::read_register(unsigned index) {
  const bool setting = cmos_[kRegB] & kRegBSet;
  switch (index) {
    case kSeconds: case kMinutes: case kHours: case kWeekday: case kDay: case kMonth: case kYear: case kCentury:
      if (!setting) load_time_registers(now_seconds());
      return cmos_[index];
    case kRegA: {
      const int64_t ns = unix_ns_at_zero_ + static_cast<int64_t>(clock_.now_ns());
      const int64_t into_second = ((ns % 1'000'000'000) + 1'000'000'000) % 1'000'000'000;
      const bool uip = !setting && into_second >= 1'000'000'000 - kUpdateInProgressNs;
      return static_cast<uint8_t>((cmos_[kRegA] & 0x7f) | (uip ? 0x80 : 0));
    }
    case kRegC: {
      // Reading C returns and clears the flags, and drops IRQ8.
      collect_flags();
      const uint8_t value = static_cast<uint8_t>(pending_flags_ | interrupt_flags());
      pending_flags_ = 0;
      update_irq();
      if (reprogrammed_) reprogrammed_();
      return value;
    }
    default: return cmos_[index];
  }
}

void Mc146818Rtc::write_register(unsigned index, uint8_t value) {
  switch (index) {
    case kRegA:
      collect_flags();
      cmos_[kRegA] = value & 0x7f;  // UIP is read-only
      if (reprogrammed_) reprogrammed_();
      return;
    case kRegB: {
      collect_flags();
      struct Notify {
        Mc146818Rtc& rtc;
        ~Notify() {
          rtc.update_irq();  // enabling an interrupt whose flag is already set raises IRQ8
          if (rtc.reprogrammed_) rtc.reprogrammed_();
        }
      } notify{*this};
      const bool was_setting = cmos_[kRegB] & kRegBSet;
      const bool setting = value & kRegBSet;
      if (!was_setting && setting) load_time_registers(now_seconds());  // freeze the registers
      if (!setting && !was_setting && ((value ^ cmos_[kRegB]) & (kRegBBinary | kRegB24Hour))) {
        cmos_[kRegB] = value;  // a format change takes effect at the next read
        return;
      }
      if (was_setting && !setting) {
        const int64_t wanted = time_from_registers();
        cmos_[kRegB] = value;
        offset_seconds_ += wanted - now_seconds();
        return;
      }
      cmos_[kRegB] = value;
      return;
    }
    case kRegC: case kRegD: return;  // read-only
    case kSeconds: case kMinutes: case kHours: case kDay: case kMonth: case kYear: case kCentury:
      if (!(cmos_[kRegB] & kRegBSet)) {
        // The clock keeps running from the written value.
        load_time_registers(now_seconds());
        cmos_[index] = value;
        offset_seconds_ += time_from_registers() - now_seconds();
        return;
      }
      cmos_[index] = value;
      return;
    default: cmos_[index] = value; return;
  }
}

uint32_t Mc146818Rtc::io_read(uint16_t port, unsigned) {
  if (port == 0x71) return read_register(index_);
  return 0xff;  // the index register is write-only
}

void Mc146818Rtc::io_write(uint16_t port, unsigned, uint32_t value) {
  if (port == 0x70) {
    index_ = value & 0x7f;
    nmi_masked_ = value & 0x80;
    return;
  }
  if (port == 0x71) write_register(index_, static_cast<uint8_t>(value));
}

}  // namespace kiln::machine
