// Crash safety. A writer process does random allocating writes, zero writes,
// discards, compressed writes and periodic flushes on a qcow2 image and is
// killed with SIGKILL at a random moment, many times over. After each kill
// kiln's and qemu-img's checks must find no corruption (leaks are allowed),
// and every sector must read what it held at the last completed flush or what
// one of the requests issued after it wrote there.
//
// Every written 512-byte sector is stamped with the id of the request that
// wrote it and its own sector number, so one read of the image tells which
// request each sector came from. The writer logs the request it is starting
// (a plain write: the page cache outlives the process) and, after each
// completed flush, the last flushed request (with fdatasync). Requests are
// drawn from a generator seeded by (seed, iteration), so the checker replays
// the same sequence.
//
// KILN_CRASH_SEED=<n> replays a run; KILN_CRASH_ITERATIONS overrides the count.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <thread>
#include <unordered_map>

#include "helpers.h"
#include "qcow2/node.h"

#ifndef KILN_CRASH_ITERATIONS
#define KILN_CRASH_ITERATIONS 8
#endif
#ifndef KILN_CRASH_SUITE
#define KILN_CRASH_SUITE Qcow2Crash
#endif

namespace kiln::block::test {
namespace {

constexpr uint64_t kSector = 512;
constexpr uint64_t kImageSize = 24ull << 20;
constexpr uint64_t kBackingId = 1;           // stamp of the backing file's sectors
constexpr uint64_t kGarbage = ~0ull;         // a sector that is neither zero nor a valid stamp
constexpr uint64_t kNone = ~0ull;            // log value: nothing started / flushed yet

uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Id, sector number, then one repeated word (compressible, so compressed
// writes really compress).
void stamp(std::byte* out, uint64_t id, uint64_t sector) {
  const uint64_t filler = mix(id * 0x100000001b3ull + sector);
  std::memcpy(out, &id, 8);
  std::memcpy(out + 8, &sector, 8);
  for (uint64_t i = 16; i < kSector; i += 8) std::memcpy(out + i, &filler, 8);
}

uint64_t decode(const std::byte* in, uint64_t sector) {
  static const std::byte zeroes[kSector] = {};
  if (std::memcmp(in, zeroes, kSector) == 0) return 0;
  uint64_t id;
  std::memcpy(&id, in, 8);
  std::byte expected[kSector];
  stamp(expected, id, sector);
  return std::memcmp(in, expected, kSector) == 0 ? id : kGarbage;
}

enum class Kind { Write, Zero, ZeroUnmap, Discard, Compressed, Flush };

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::Write: return "write";
    case Kind::Zero: return "zero";
    case Kind::ZeroUnmap: return "zero-unmap";
    case Kind::Discard: return "discard";
    case Kind::Compressed: return "compressed-write";
    case Kind::Flush: return "flush";
  }
  return "?";
}

struct Op {
  Kind kind = Kind::Flush;
  uint64_t offset = 0, length = 0;
  uint64_t id = 0;
};

struct Variant {
  std::string name;
  std::string create_options;
  uint64_t cluster_size;
  bool backing = false;
  bool lazy = false;
};

// The request sequence of one writer run.
class OpStream {
 public:
  OpStream(uint64_t seed, uint64_t iteration, const Variant& variant)
      : rng_(mix(seed ^ mix(iteration))), cluster_(variant.cluster_size), iteration_(iteration) {}

  Op next() {
    Op op;
    op.id = ((iteration_ + 1) << 32) | count_++;
    const uint64_t r = rng_() % 100;
    if (r < 45) {
      op.kind = Kind::Write;
    } else if (r < 57) {
      op.kind = Kind::Zero;
    } else if (r < 66) {
      op.kind = Kind::ZeroUnmap;
    } else if (r < 76) {
      op.kind = Kind::Discard;
    } else if (r < 82) {
      op.kind = Kind::Compressed;
    } else if (r < 90) {
      op.kind = Kind::Flush;
      return op;
    } else {
      op.kind = Kind::Write;
    }
    if (op.kind == Kind::Compressed) {
      op.offset = rng_() % (kImageSize / cluster_) * cluster_;
      op.length = cluster_;
      return op;
    }
    // Mostly small requests, sometimes several clusters; half cluster aligned.
    const uint64_t max_sectors = (rng_() % 4 == 0 ? 4 * cluster_ : cluster_) / kSector;
    op.length = (1 + rng_() % max_sectors) * kSector;
    op.offset = rng_() % ((kImageSize - op.length) / kSector + 1) * kSector;
    if (rng_() % 2 == 0) {
      op.offset = op.offset / cluster_ * cluster_;
      op.length = std::min(kImageSize - op.offset, (op.length + cluster_ - 1) / cluster_ * cluster_);
    }
    return op;
  }

 private:
  std::mt19937_64 rng_;
  uint64_t cluster_;
  uint64_t iteration_;
  uint64_t count_ = 0;
};

uint64_t env_number(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 0) : fallback;
}

void log_value(int fd, uint64_t slot, uint64_t value) {
  if (::pwrite(fd, &value, 8, static_cast<off_t>(slot * 8)) != 8) ::_exit(4);
}

// Per sector: the stamp id it reads as (0 zero).
using Model = std::vector<uint64_t>;

// What `op` leaves in the sectors it covers (discard: whole clusters only).
template <typename F>
void effect(const Op& op, uint64_t cluster_size, F&& set) {
  uint64_t begin = op.offset, end = op.offset + op.length;
  if (op.kind == Kind::Flush) return;
  if (op.kind == Kind::Discard) {
    begin = (begin + cluster_size - 1) / cluster_size * cluster_size;
    end = end / cluster_size * cluster_size;
  }
  const bool data = op.kind == Kind::Write || op.kind == Kind::Compressed;
  for (uint64_t s = begin / kSector; s < end / kSector; ++s) {
    if (op.kind == Kind::Compressed) set(s, 0);  // discarded first; the last value set is the final one
    set(s, data ? op.id : 0);
  }
}

std::vector<std::byte> load(const std::string& name) {
  std::ifstream in(name, std::ios::binary | std::ios::ate);
  std::vector<std::byte> data(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(data.size()));
  return data;
}

// Checks an image left by a crash after requests `ops`, of which [0, stable)
// were followed by a completed flush: both checks find no corruption, kiln and
// qemu read the same, and each sector holds its state at the flush or what a
// later request left there. `model` (per sector, at the previous crash) becomes
// what the image holds now.
void verify_crashed(const std::string& file, const std::string& raw, const Variant& variant, const std::vector<Op>& ops,
                    uint64_t stable, Model& model) {
  for (uint64_t k = 0; k < stable; ++k) effect(ops[k], variant.cluster_size, [&](uint64_t s, uint64_t v) { model[s] = v; });
  std::unordered_map<uint64_t, std::vector<uint64_t>> maybe;
  for (uint64_t k = stable; k < ops.size(); ++k) {
    effect(ops[k], variant.cluster_size, [&](uint64_t s, uint64_t v) { maybe[s].push_back(v); });
  }

  // Data first: qemu reads the image as it was left (dirty or not).
  CommandResult convert = run(fmt::format("qemu-img convert -f qcow2 -O raw '{}' '{}'", file, raw));
  ASSERT_EQ(convert.status, 0) << convert.output;
  const std::vector<std::byte> seen = load(raw);
  ASSERT_EQ(seen.size(), kImageSize);
  {
    auto image = open_image(file, true);
    std::vector<std::byte> ours(kImageSize);
    image->read(0, ours);
    ASSERT_TRUE(ours == seen) << "kiln and qemu read the crashed image differently";
  }
  int bad = 0;
  for (uint64_t s = 0; s < model.size(); ++s) {
    const uint64_t value = decode(seen.data() + s * kSector, s);
    auto it = maybe.find(s);
    const bool allowed = value == model[s] || (it != maybe.end() && std::find(it->second.begin(), it->second.end(), value) != it->second.end());
    if (!allowed && bad++ < 5) {
      std::string history;
      for (const Op& op : ops) {
        if (op.kind != Kind::Flush && op.offset <= s * kSector && s * kSector < op.offset + op.length) {
          history += fmt::format(" {}#{}(0x{:x}+0x{:x})", kind_name(op.kind), op.id & 0xffffffff, op.offset, op.length);
        }
      }
      ADD_FAILURE() << fmt::format("sector {} (offset 0x{:x}) reads {:#x}; at the last flush (after request {}) it held {:#x}; requests since:{}",
                                   s, s * kSector, value, stable, model[s], history.empty() ? " none" : history);
    }
    model[s] = value;
  }
  ASSERT_EQ(bad, 0) << bad << " sectors hold neither their flushed nor a later written content";

  if (variant.lazy) {
    // Lazy refcounts leave the refcounts stale on purpose: opening read-write repairs them.
    open_image(file).reset();
  }
  CommandResult q = run(fmt::format("qemu-img check -f qcow2 '{}'", file));
  ASSERT_TRUE(q.status == 0 || q.status == 3) << "qemu-img check exit " << q.status << ":\n" << q.output;
  {
    auto image = open_image(file, true);
    CheckResult c = image->top().check(CheckRepair::None);
    ASSERT_EQ(c.corruptions + c.check_errors, 0u) << (c.messages.empty() ? "" : c.messages[0]) << "\nqemu-img check:\n" << q.output;
  }
  if (q.status == 3) {
    // Leaked clusters are allowed after a crash; kiln's repair must leave an image qemu finds clean.
    {
      auto image = open_image(file);
      CheckResult fixed = image->top().check(CheckRepair::Leaks);
      ASSERT_EQ(fixed.leaks + fixed.corruptions, 0u);
    }
    CommandResult again = run(fmt::format("qemu-img check -f qcow2 '{}'", file));
    ASSERT_EQ(again.status, 0) << again.output;
  }
}

uint64_t pick_seed(const Variant& variant, uint64_t iterations, const char* what) {
  const uint64_t seed = env_number("KILN_CRASH_SEED", std::random_device{}() | (uint64_t(std::random_device{}()) << 32));
  std::printf("[ crash    ] %s, %s: seed %llu (replay with KILN_CRASH_SEED=%llu), %llu iterations\n", what, variant.name.c_str(),
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), static_cast<unsigned long long>(iterations));
  std::fflush(stdout);
  return seed;
}

// Creates the image (and its backing file) and returns the initial model.
Model prepare(const TempDir& dir, const std::string& file, const Variant& variant) {
  Model model(kImageSize / kSector, 0);
  std::string options = variant.create_options;
  if (variant.backing) {
    // The backing file holds stamped data in every other MiB.
    const std::string base = dir.file("base.raw");
    std::vector<std::byte> data(kImageSize);
    for (uint64_t s = 0; s < kImageSize / kSector; ++s) {
      if ((s * kSector >> 20) % 2 == 0) {
        stamp(data.data() + s * kSector, kBackingId, s);
        model[s] = kBackingId;
      }
    }
    std::ofstream(base, std::ios::binary).write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    options += (options.empty() ? "" : ",") + std::string("backing_file=") + base + ",backing_fmt=raw";
  }
  create_qcow2(file, kImageSize, options);
  return model;
}

// Applies one request to a node (or image).
template <typename Target>
void apply(Target& target, const Op& op, std::vector<std::byte>& buffer) {
  switch (op.kind) {
    case Kind::Write:
    case Kind::Compressed:
      for (uint64_t s = 0; s < op.length / kSector; ++s) stamp(buffer.data() + s * kSector, op.id, op.offset / kSector + s);
      if (op.kind == Kind::Write) {
        target.write(op.offset, std::span<const std::byte>(buffer).first(op.length), {});
      } else {
        // Compressed writes may not replace allocated clusters (as in qemu): discard first.
        target.discard(op.offset, op.length);
        target.write_compressed(op.offset, std::span<const std::byte>(buffer).first(op.length));
      }
      break;
    case Kind::Zero: target.write_zeroes(op.offset, op.length, {}); break;
    case Kind::ZeroUnmap: target.write_zeroes(op.offset, op.length, {.may_unmap = true}); break;
    case Kind::Discard: target.discard(op.offset, op.length); break;
    case Kind::Flush: target.flush(); break;
  }
}

// The child: issues requests until killed.
[[noreturn]] void run_writer(const std::string& file, const std::string& log_file, const Variant& variant, uint64_t seed,
                             uint64_t iteration) {
  try {
    const int log = ::open(log_file.c_str(), O_WRONLY);
    if (log < 0) ::_exit(3);
    // A small L2 cache so tables are evicted (written) between flushes.
    auto image = open_image(file, false, {{"l2-cache-size", std::to_string(2 * variant.cluster_size)}});
    OpStream ops(seed, iteration, variant);
    std::vector<std::byte> buffer(4 * variant.cluster_size);
    for (uint64_t k = 0;; ++k) {
      const Op op = ops.next();
      log_value(log, 0, k);
      apply(*image, op, buffer);
      if (op.kind == Kind::Flush) {
        log_value(log, 1, k);
        if (::fdatasync(log) != 0) ::_exit(4);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "writer: %s\n", e.what());
    ::_exit(2);
  }
}

// SIGKILL: the page cache survives, so this catches what the order of the
// driver's writes (not of its flushes) leaves on disk at any moment.
void crash_loop(const Variant& variant, uint64_t iterations) {
  const uint64_t seed = pick_seed(variant, iterations, "SIGKILL");
  TempDir dir;
  const std::string file = dir.file("crash.qcow2");
  const std::string log_file = dir.file("writer.log");
  const std::string raw = dir.file("readback.raw");
  Model model = prepare(dir, file, variant);
  std::mt19937_64 timing(mix(seed + 1));

  for (uint64_t iteration = 0; iteration < iterations; ++iteration) {
    SCOPED_TRACE(fmt::format("{} seed {} iteration {}", variant.name, seed, iteration));
    {
      std::ofstream log(log_file, std::ios::binary | std::ios::trunc);
      const uint64_t none[2] = {kNone, kNone};
      log.write(reinterpret_cast<const char*>(none), sizeof none);
    }
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) run_writer(file, log_file, variant, seed, iteration);
    std::this_thread::sleep_for(std::chrono::microseconds(5000 + timing() % 150000));
    ::kill(child, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the writer failed on its own (status " << status << ")";

    uint64_t logged[2];
    {
      std::ifstream log(log_file, std::ios::binary);
      log.read(reinterpret_cast<char*>(logged), sizeof logged);
    }
    const uint64_t started = logged[0], flushed = logged[1];
    OpStream replay(seed, iteration, variant);
    std::vector<Op> ops;
    if (started != kNone) {
      for (uint64_t k = 0; k <= started; ++k) ops.push_back(replay.next());
    }
    verify_crashed(file, raw, variant, ops, flushed == kNone ? 0 : flushed + 1, model);
    if (::testing::Test::HasFailure()) return;
  }
}

// A protocol node over memory with a volatile write cache: writes are visible
// at once but durable only after flush(). A power cut keeps the durable bytes
// plus an arbitrary subset of the later writes, each applied whole, not at
// all, or torn into a random subset of its 512-byte sectors.
class PowerLossFile final : public Node {
 public:
  explicit PowerLossFile(const std::string& name) : name_(name), current_(load(name)), durable_(current_) {}

  std::string_view driver_name() const override { return "power-loss-file"; }
  const std::string& filename() const override { return name_; }
  uint64_t size() const override { return current_.size(); }
  bool read_only() const override { return false; }
  void read(uint64_t offset, std::span<std::byte> buffer) override {
    std::memset(buffer.data(), 0, buffer.size());
    if (offset < current_.size()) {
      std::memcpy(buffer.data(), current_.data() + offset, std::min<uint64_t>(buffer.size(), current_.size() - offset));
    }
  }
  void write(uint64_t offset, std::span<const std::byte> data, WriteFlags flags) override {
    store(current_, offset, data);
    pending_.push_back({offset, std::vector<std::byte>(data.begin(), data.end())});
    if (flags.fua) flush();
  }
  void write_zeroes(uint64_t offset, uint64_t length, ZeroFlags) override {
    write(offset, std::vector<std::byte>(length), {});
  }
  // qcow2 punches freed clusters: they read as zeroes (or, lost, keep their bytes).
  void discard(uint64_t offset, uint64_t length) override {
    if (offset >= current_.size()) return;
    write(offset, std::vector<std::byte>(std::min<uint64_t>(length, current_.size() - offset)), {});
  }
  void flush() override {
    durable_ = current_;
    pending_.clear();
  }
  void truncate(uint64_t new_size, Preallocation, bool) override {
    current_.resize(new_size);
    durable_.resize(new_size);
  }
  BlockStatus block_status(uint64_t offset, uint64_t length) override {
    return {.length = std::min<uint64_t>(length, current_.size() - offset), .flags = kStatusData | kStatusAllocated};
  }

  std::vector<std::byte> after_power_cut(std::mt19937_64& rng) const {
    std::vector<std::byte> image = durable_;
    for (const Pending& p : pending_) {
      const uint64_t fate = rng() % 3;
      if (fate == 0) continue;
      if (fate == 1 || p.data.size() <= kSector) {
        store(image, p.offset, p.data);
        continue;
      }
      for (uint64_t at = 0; at < p.data.size(); at += kSector) {
        if (rng() % 2) store(image, p.offset + at, std::span(p.data).subspan(at, std::min<uint64_t>(kSector, p.data.size() - at)));
      }
    }
    return image;
  }
  size_t pending_writes() const { return pending_.size(); }

 private:
  struct Pending {
    uint64_t offset;
    std::vector<std::byte> data;
  };
  static void store(std::vector<std::byte>& target, uint64_t offset, std::span<const std::byte> data) {
    if (target.size() < offset + data.size()) target.resize(offset + data.size());
    std::memcpy(target.data() + offset, data.data(), data.size());
  }
  std::string name_;
  std::vector<std::byte> current_;
  std::vector<std::byte> durable_;
  std::vector<Pending> pending_;
};

// Power loss: only flushed writes are sure to survive, in any order among the
// rest, so this checks the driver's flush ordering (data and refcounts before
// L2 tables, L2 before L1, refcount decrements last). Needs no backing file
// (the node is opened without a context).
void power_loss_loop(const Variant& variant, uint64_t iterations) {
  const uint64_t seed = pick_seed(variant, iterations, "power loss");
  TempDir dir;
  const std::string file = dir.file("crash.qcow2");
  const std::string raw = dir.file("readback.raw");
  Model model = prepare(dir, file, variant);
  std::mt19937_64 rng(mix(seed + 2));
  std::vector<std::byte> buffer(4 * variant.cluster_size);
  for (uint64_t iteration = 0; iteration < iterations; ++iteration) {
    SCOPED_TRACE(fmt::format("{} seed {} iteration {}", variant.name, seed, iteration));
    std::vector<Op> ops;
    uint64_t stable = 0;
    std::vector<std::byte> survivor;
    {
      PowerLossFile disk(file);
      qcow2::OpenSettings settings;
      settings.l2_cache_bytes = 2 * variant.cluster_size;  // evictions between flushes
      qcow2::Qcow2Node node(nullptr, disk, settings, nullptr);
      OpStream stream(seed, iteration, variant);
      const uint64_t requests = 1 + rng() % 300;
      for (uint64_t k = 0; k < requests; ++k) {
        ops.push_back(stream.next());
        apply(node, ops.back(), buffer);
        if (ops.back().kind == Kind::Flush) stable = k + 1;
      }
      survivor = disk.after_power_cut(rng);
      // The node's destructor writes into `disk` only, after the cut.
    }
    std::ofstream(file, std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(survivor.data()), static_cast<std::streamsize>(survivor.size()));
    verify_crashed(file, raw, variant, ops, stable, model);
    if (::testing::Test::HasFailure()) return;
  }
}

const std::vector<Variant>& variants() {
  static const std::vector<Variant> list = {
      {"plain-64k", "cluster_size=65536", 65536},
      {"backing-16k", "cluster_size=16384", 16384, true},
      {"lazy-refcounts-4k", "cluster_size=4096,lazy_refcounts=on", 4096, false, true},
      {"extended-l2-backing-64k", "cluster_size=65536,extended_l2=on", 65536, true},
      {"extended-l2-16k", "cluster_size=16384,extended_l2=on", 16384},
  };
  return list;
}

uint64_t iterations() { return env_number("KILN_CRASH_ITERATIONS", KILN_CRASH_ITERATIONS); }

TEST(KILN_CRASH_SUITE, Plain) { crash_loop(variants()[0], iterations()); }
TEST(KILN_CRASH_SUITE, WithBackingFile) { crash_loop(variants()[1], iterations()); }
TEST(KILN_CRASH_SUITE, LazyRefcounts) { crash_loop(variants()[2], iterations()); }
TEST(KILN_CRASH_SUITE, ExtendedL2WithBackingFile) { crash_loop(variants()[3], iterations()); }
TEST(KILN_CRASH_SUITE, PowerLossPlain) { power_loss_loop(variants()[0], iterations()); }
TEST(KILN_CRASH_SUITE, PowerLossLazyRefcounts) { power_loss_loop(variants()[2], iterations()); }
TEST(KILN_CRASH_SUITE, PowerLossExtendedL2) { power_loss_loop(variants()[4], iterations()); }

}  // namespace
}  // namespace kiln::block::test
