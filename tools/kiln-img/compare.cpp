// kiln-img compare: are two images' guest-visible contents the same?
// Exit 0 identical, 1 different, 2 error, as qemu-img compare.
#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "kiln/common/buffer.h"
#include "kiln/common/progress.h"
#include "tool.h"

namespace kiln::img {
namespace {

constexpr uint64_t kChunk = 2 << 20;
constexpr uint64_t kSector = 512;

struct CompareArgs {
  std::string format1, format2, cache;
  std::vector<std::string> objects;
  bool progress = false, quiet = false, strict = false, force_share = false, image_opts = false;
  std::string filename1, filename2;
};

bool is_hole(const block::ChainStatus& status) {
  return block::reads_as_hole(status.flags);
}

// Offset of the first 512-byte sector that differs, if any.
std::optional<uint64_t> first_difference(std::span<const std::byte> a, std::span<const std::byte> b) {
  if (std::memcmp(a.data(), b.data(), a.size()) == 0) return std::nullopt;
  for (uint64_t sector = 0; sector < a.size(); sector += kSector) {
    const size_t length = static_cast<size_t>(std::min<uint64_t>(kSector, a.size() - sector));
    if (std::memcmp(a.data() + sector, b.data() + sector, length) != 0) return sector;
  }
  return std::nullopt;
}

// First non-zero sector of `image` in [offset, end), if any.
std::optional<uint64_t> first_nonzero(block::Image& image, uint64_t offset, uint64_t end, AlignedBuffer& buffer) {
  while (offset < end) {
    block::ChainStatus status = image.chain_status(offset, end - offset);
    if (is_hole(status)) {
      offset += status.length;
      continue;
    }
    const uint64_t length = std::min(status.length, kChunk);
    std::span<std::byte> data = buffer.span().first(length);
    image.read(offset, data);
    for (uint64_t sector = 0; sector < length; sector += kSector) {
      if (!is_zero(data.subspan(sector, std::min<uint64_t>(kSector, length - sector)))) return offset + sector;
    }
    offset += length;
  }
  return std::nullopt;
}

int run_compare(const CompareArgs& args) {
  auto secrets = parse_objects(args.objects);
  ImageArgs first_args{.format = args.format1, .force_share = args.force_share, .cache = args.cache, .image_opts = args.image_opts};
  ImageArgs second_args{.format = args.format2, .force_share = args.force_share, .cache = args.cache, .image_opts = args.image_opts};
  auto first = open_image(args.filename1, first_args, true, block::CacheMode::Writeback, secrets);
  auto second = open_image(args.filename2, second_args, true, block::CacheMode::Writeback, secrets);
  auto say = [&](const std::string& text) {
    if (!args.quiet) fmt::print("{}\n", text);
  };
  const uint64_t size1 = first->size();
  const uint64_t size2 = second->size();
  if (args.strict && size1 != size2) {
    say("Strict mode: Image size mismatch!");
    return 1;
  }
  const uint64_t common = std::min(size1, size2);
  Progress progress(args.progress && !args.quiet);
  progress.set_total(std::max(size1, size2));
  AlignedBuffer buffer1(kChunk), buffer2(kChunk);
  uint64_t offset = 0;
  while (offset < common) {
    block::ChainStatus status1 = first->chain_status(offset, common - offset);
    block::ChainStatus status2 = second->chain_status(offset, common - offset);
    const uint64_t length = std::min({status1.length, status2.length, kChunk});
    if (args.strict && is_hole(status1) != is_hole(status2)) {
      say(fmt::format("Strict mode: Offset {} block status mismatch!", offset));
      return 1;
    }
    if (!(is_hole(status1) && is_hole(status2))) {
      auto data1 = buffer1.span().first(length);
      auto data2 = buffer2.span().first(length);
      first->read(offset, data1);
      second->read(offset, data2);
      if (auto difference = first_difference(data1, data2)) {
        say(fmt::format("Content mismatch at offset {}!", offset + *difference));
        return 1;
      }
    }
    offset += length;
    progress.advance(length);
  }
  if (size1 != size2) {
    say("Warning: Image size mismatch!");
    block::Image& larger = size1 > size2 ? *first : *second;
    if (auto nonzero = first_nonzero(larger, common, larger.size(), buffer1)) {
      say(fmt::format("Content mismatch at offset {}!", *nonzero));
      return 1;
    }
  }
  progress.finish();
  say("Images are identical.");
  return 0;
}

}  // namespace

void register_compare(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<CompareArgs>();
  CLI::App* command = app.add_subcommand("compare", "Compare two images' contents: compare [-f FMT] [-F FMT] [-s] FILENAME1 FILENAME2");
  command->add_option("-f,--a-format", args->format1, "Format of the first image");
  command->add_option("-F,--b-format", args->format2, "Format of the second image");
  command->add_option("-T,--cache", args->cache, "Cache mode for both images");
  command->add_option("--object", args->objects, "Define an object such as secret,id=ID,data=TEXT")->allow_extra_args(false);
  command->add_flag("-p,--progress", args->progress, "Show progress");
  command->add_flag("-q,--quiet", args->quiet, "Quiet: exit code only");
  command->add_flag("-s,--strict", args->strict, "Strict: sizes and allocation must match too");
  command->add_flag("-U,--force-share", args->force_share, "Open without exclusive locks");
  command->add_flag("--image-opts", args->image_opts, "File names are option strings");
  command->add_option("filename1", args->filename1, "First image")->required();
  command->add_option("filename2", args->filename2, "Second image")->required();
  command->callback([&runner, args] {
    runner = [args] {
      try {
        return run_compare(*args);
      } catch (const Error& error) {
        std::fflush(stdout);
        fmt::print(stderr, "kiln-img: {}\n", error.what());
        return 2;
      }
    };
  });
}

}  // namespace kiln::img
