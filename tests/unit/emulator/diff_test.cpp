// Quick differential run: random sequences natively vs emulated.
// KILN_DIFF_SEED=<n> replays a run; KILN_DIFF_COUNT=<n> changes its length.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "diff_harness.h"

namespace kiln::emu::difftest {
namespace {

uint64_t seed_from_env() {
  if (const char* s = std::getenv("KILN_DIFF_SEED")) return std::strtoull(s, nullptr, 0);
  return std::random_device{}() | (static_cast<uint64_t>(std::random_device{}()) << 32);
}

unsigned count_from_env(unsigned fallback) {
  if (const char* s = std::getenv("KILN_DIFF_COUNT")) return static_cast<unsigned>(std::strtoul(s, nullptr, 0));
  return fallback;
}

void run(bool bits32, unsigned count, bool optimise = true) {
  if (!native_mode_available(bits32))
    GTEST_SKIP() << "the host cannot run " << (bits32 ? 32 : 64) << "-bit code natively here";
  const uint64_t seed = seed_from_env();
  std::printf("differential %d-bit: seed %llu (replay with KILN_DIFF_SEED=%llu), %u sequences\n", bits32 ? 32 : 64,
              static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed), count);
  DiffSummary summary = run_campaign(seed, count, bits32, 3, optimise);
  for (const auto& f : summary.failures) ADD_FAILURE() << f;
  EXPECT_GT(summary.sequences, 0u);
}

#ifndef KILN_DIFF_QUICK_COUNT
#define KILN_DIFF_QUICK_COUNT 1500
#endif

#ifndef KILN_DIFF_SUITE
#define KILN_DIFF_SUITE EmulatorDiff
#endif

TEST(KILN_DIFF_SUITE, Random64BitSequencesMatchHost) { run(false, count_from_env(KILN_DIFF_QUICK_COUNT)); }
TEST(KILN_DIFF_SUITE, Random32BitSequencesMatchHost) { run(true, count_from_env(KILN_DIFF_QUICK_COUNT)); }
// The frontend's IR before the passes must already be right (the passes only preserve it).
TEST(KILN_DIFF_SUITE, UnoptimisedIrMatchesHost) { run(false, count_from_env(KILN_DIFF_QUICK_COUNT) / 4, false); }

}  // namespace
}  // namespace kiln::emu::difftest
