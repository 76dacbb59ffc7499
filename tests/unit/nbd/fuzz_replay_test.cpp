// Runs the libFuzzer target's entry point over its seed corpus and over
// deterministic random mutations of it, so the quick suite exercises the
// byte-level parser without the clang fuzz build.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::vector<uint8_t>> load_corpus() {
  std::vector<std::vector<uint8_t>> seeds;
  for (const auto& entry : std::filesystem::directory_iterator(KILN_NBD_FUZZ_CORPUS)) {
    std::ifstream file(entry.path(), std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  }
  return seeds;
}

TEST(NbdFuzzReplay, SeedCorpusRuns) {
  auto seeds = load_corpus();
  ASSERT_GE(seeds.size(), 4u);
  for (const auto& seed : seeds) EXPECT_EQ(LLVMFuzzerTestOneInput(seed.data(), seed.size()), 0);
}

TEST(NbdFuzzReplay, MutatedInputsDoNotCrash) {
  auto seeds = load_corpus();
  std::mt19937 random(12345);
  for (int round = 0; round < 3000; ++round) {
    std::vector<uint8_t> input = seeds[random() % seeds.size()];
    const int edits = 1 + random() % 8;
    for (int e = 0; e < edits && !input.empty(); ++e) {
      switch (random() % 4) {
        case 0:
          input[random() % input.size()] = static_cast<uint8_t>(random());
          break;
        case 1:
          input.resize(random() % (input.size() + 1));
          break;
        case 2:
          input.insert(input.begin() + random() % input.size(), static_cast<uint8_t>(random()));
          break;
        default: {
          const size_t at = random() % input.size();
          input[at] = 0xff;  // lengths and counts at their maximum
          break;
        }
      }
    }
    EXPECT_EQ(LLVMFuzzerTestOneInput(input.data(), input.size()), 0);
  }
}

}  // namespace
