// Feeds raw client bytes to kiln-nbd's protocol state machine (handshake,
// options, compact and extended requests) over a 1 MiB in-memory export.
// Replies are discarded; the fuzzer looks for crashes, hangs and
// out-of-bounds accesses. The seed go_extended negotiates extended headers.
#include <cstring>
#include <mutex>
#include <vector>

#include "kiln/common/error.h"
#include "session.h"

namespace {

using namespace kiln;

class MemoryNode final : public block::Node {
 public:
  MemoryNode() : data_(1 << 20) {}
  std::string_view driver_name() const override { return "memory"; }
  const std::string& filename() const override { return name_; }
  uint64_t size() const override { return data_.size(); }
  bool read_only() const override { return false; }
  void read(uint64_t offset, std::span<std::byte> buffer) override {
    check(offset, buffer.size());
    std::memcpy(buffer.data(), data_.data() + offset, buffer.size());
  }
  void write(uint64_t offset, std::span<const std::byte> data, block::WriteFlags) override {
    check(offset, data.size());
    std::memcpy(data_.data() + offset, data.data(), data.size());
  }
  void flush() override {}
  block::BlockStatus block_status(uint64_t offset, uint64_t length) override {
    check(offset, length);
    // Alternate 64 KiB data and zero extents so reads produce hole chunks.
    const uint64_t extent_end = (offset / 65536 + 1) * 65536;
    const bool zero = (offset / 65536) % 2 == 1;
    return {.length = std::min(length, extent_end - offset),
            .flags = zero ? block::kStatusZero : (block::kStatusData | block::kStatusAllocated)};
  }

 private:
  void check(uint64_t offset, uint64_t length) const {
    if (offset > data_.size() || length > data_.size() - offset) __builtin_trap();  // the session must range-check
  }
  std::string name_ = "memory";
  std::vector<std::byte> data_;
};

class NullOutput final : public nbd::Output {
 public:
  void send(std::span<const std::span<const std::byte>> parts) override {
    for (auto part : parts) total += part.size();
  }
  size_t total = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static MemoryNode node;
  nbd::ExportConfig config{.node = &node, .name = "", .description = "fuzz", .allocation_depth = true};
  config.discard_unmap = true;
  NullOutput output;
  nbd::InlineExecutor executor;
  // The first byte picks whether TLS is required (so both option paths are reached).
  const bool tls = size > 0 && (data[0] & 1);
  nbd::Session session(config, nbd::SessionLimits{}, output, executor, tls, tls);
  session.start();
  size_t done = size > 0 ? 1 : 0;
  while (done < size && !session.finished()) {
    if (session.tls_pending()) session.tls_started();  // pretend the handshake succeeded
    auto in = session.input();
    if (in.empty()) break;
    const size_t n = std::min(in.size(), size - done);
    std::memcpy(in.data(), data + done, n);
    session.consumed(n);
    done += n;
  }
  session.drain();
  return 0;
}
