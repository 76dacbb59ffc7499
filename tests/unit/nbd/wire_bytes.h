// Raw NBD bytes for tests that speak the protocol by hand: a builder for
// client messages and an Output that keeps everything the session sends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string_view>
#include <vector>

#include "session.h"
#include "wire.h"

namespace kiln::nbd::test {

class CaptureOutput final : public Output {
 public:
  void send(std::span<const std::span<const std::byte>> parts) override {
    std::lock_guard lock(mutex_);
    for (auto part : parts) bytes.insert(bytes.end(), part.begin(), part.end());
  }
  std::vector<std::byte> bytes;

 private:
  std::mutex mutex_;
};

class Bytes {
 public:
  Bytes& u16(uint16_t v) {
    data_.resize(data_.size() + 2);
    store16(data_.data() + data_.size() - 2, v);
    return *this;
  }
  Bytes& u32(uint32_t v) {
    data_.resize(data_.size() + 4);
    store32(data_.data() + data_.size() - 4, v);
    return *this;
  }
  Bytes& u64(uint64_t v) {
    data_.resize(data_.size() + 8);
    store64(data_.data() + data_.size() - 8, v);
    return *this;
  }
  Bytes& raw(std::string_view s) {
    for (char c : s) data_.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Bytes& fill(size_t n, char c) {
    data_.insert(data_.end(), n, static_cast<std::byte>(c));
    return *this;
  }
  const std::vector<std::byte>& data() const { return data_; }

 private:
  std::vector<std::byte> data_;
};

}  // namespace kiln::nbd::test
