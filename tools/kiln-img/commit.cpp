// kiln-img commit: write an image's data into its backing file (or a deeper
// base with -b), then empty the image unless -d.
#include <filesystem>

#include <fmt/format.h>

#include "kiln/common/buffer.h"
#include "kiln/common/progress.h"
#include "tool.h"

namespace kiln::img {
namespace {

struct CommitArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string base;
  bool keep = false;  // -d: do not empty the image
  bool progress = false, quiet = false;
  std::string filename;
};

constexpr uint64_t kChunk = 2 << 20;

bool same_file(const std::string& a, const std::string& b) {
  std::error_code error;
  return std::filesystem::equivalent(a, b, error);
}

int run_commit(const CommitArgs& args) {
  const auto secrets = parse_objects(args.objects);
  // Read the chain with shared locks so the base can be opened for writing below.
  ImageArgs read_args = args.image;
  read_args.force_share = true;
  auto chain = open_image(args.filename, read_args, true, block::CacheMode::Writeback, secrets);
  block::Node* base = chain->top().backing_child();
  if (base == nullptr) throw invalid_argument("Image does not have a backing file");
  int base_depth = 1;
  if (!args.base.empty()) {
    while (base != nullptr && !same_file(base->filename(), args.base)) {
      base = base->backing_child();
      ++base_depth;
    }
    if (base == nullptr) throw invalid_argument("Did not find '{}' in the backing chain of '{}'", args.base, args.filename);
  }
  ImageArgs base_args{.format = std::string(base->driver_name()), .cache = args.image.cache};
  auto target = open_image(base->filename(), base_args, false, block::CacheMode::Writeback, secrets);
  if (target->size() < chain->size()) target->truncate(chain->size(), block::Preallocation::Off, false);

  Progress progress(args.progress && !args.quiet);
  progress.set_total(chain->size());
  AlignedBuffer buffer(kChunk);
  for (uint64_t offset = 0; offset < chain->size();) {
    block::ChainStatus status = chain->chain_status(offset, chain->size() - offset);
    const uint64_t length = std::min(status.length, kChunk);
    const bool above_base = (status.flags & block::kStatusAllocated) && status.depth < base_depth;
    if (above_base) {
      if (block::reads_as_hole(status.flags)) {
        target->write_zeroes(offset, length, {});
      } else {
        auto data = buffer.span().first(length);
        chain->read(offset, data);
        target->write(offset, data);
      }
    }
    offset += length;
    progress.advance(length);
  }
  target->flush();
  progress.finish();
  target.reset();
  chain.reset();
  if (!args.keep) {
    ImageArgs top_args = args.image;
    auto top = open_image(args.filename, top_args, false, block::CacheMode::Writeback, secrets);
    top->top().make_empty();
    top->flush();
  }
  if (!args.quiet) fmt::print("Image committed.\n");
  return 0;
}

}  // namespace

void register_commit(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<CommitArgs>();
  CLI::App* command = app.add_subcommand("commit", "Write an image's data into its backing file: commit [-f FMT] [-b BASE] [-d] FILENAME");
  add_image_args(*command, args->image, args->objects, false);
  command->add_option("-t,--cache", args->image.cache, "Cache mode");
  command->add_option("-b,--base", args->base, "Commit into this image of the backing chain");
  command->add_flag("-d,--keep", args->keep, "Do not empty the image afterwards");
  command->add_flag("-p,--progress", args->progress, "Show progress");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_option("-r,--rate-limit", "Accepted for compatibility; commits run at full speed");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_commit(*args); }; });
}

}  // namespace kiln::img
