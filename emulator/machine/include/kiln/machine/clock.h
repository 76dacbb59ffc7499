// Time source for devices that follow host time (the PIT). Tests use a fake clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace kiln::machine {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic nanoseconds since an arbitrary origin.
  virtual uint64_t now_ns() const = 0;
};

// steady_clock, counted from construction.
class HostClock final : public Clock {
 public:
  uint64_t now_ns() const override {
    return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(Steady::now() - origin_).count());
  }
  // The steady_clock time point of `ns` on this clock (for condition-variable deadlines).
  std::chrono::steady_clock::time_point time_point(uint64_t ns) const { return origin_ + std::chrono::nanoseconds(ns); }

 private:
  using Steady = std::chrono::steady_clock;
  Steady::time_point origin_ = Steady::now();
};

class FakeClock final : public Clock {
 public:
  uint64_t now_ns() const override { return now_; }
  void advance(uint64_t ns) { now_ += ns; }
  void set(uint64_t ns) { now_ = ns; }

 private:
  uint64_t now_ = 0;
};

}  // namespace kiln::machine
