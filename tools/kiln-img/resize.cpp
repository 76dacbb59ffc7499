// kiln-img resize: grow or (with --shrink) shrink an image.
#include <fmt/format.h>

#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {
namespace {

struct ResizeArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string preallocation = "off";
  bool quiet = false;
  bool shrink = false;
  std::string filename;
  std::string size;
};

int run_resize(const ResizeArgs& args) {
  std::string text = args.size;
  int relative = 0;
  if (!text.empty() && (text.front() == '+' || text.front() == '-')) {
    relative = text.front() == '+' ? 1 : -1;
    text.erase(0, 1);
  }
  auto amount = parse_size(text);
  if (!amount || *amount > (uint64_t{1} << 63) - 1) {
    throw invalid_argument("Invalid size '{}': expects a non-negative number below 2^63 with an optional k, M, G, T, P or E suffix",
                           args.size);
  }
  auto prealloc = block::parse_preallocation(args.preallocation);
  if (!prealloc) throw invalid_argument("Invalid preallocation mode: '{}'", args.preallocation);
  auto image = open_image(args.filename, args.image, false, block::CacheMode::Writeback, parse_objects(args.objects));
  const uint64_t current = image->size();
  uint64_t target = *amount;
  if (relative > 0) target = current + *amount;
  if (relative < 0) {
    if (*amount > current) throw invalid_argument("New image size must be positive");
    target = current - *amount;
  }
  if (target < current && !args.shrink) {
    throw invalid_argument("Use the --shrink option to perform a shrink operation (shrinking deletes all data beyond the new end).");
  }
  try {
    image->truncate(target, *prealloc, args.shrink);
    image->flush();
  } catch (const Error& error) {
    throw with_context(error, "Error resizing image");
  }
  if (!args.quiet) fmt::print("Image resized.\n");
  return 0;
}

}  // namespace

void register_resize(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<ResizeArgs>();
  CLI::App* command = app.add_subcommand("resize", "Change an image's size: resize [-f FMT] [--shrink] FILENAME [+|-]SIZE (use -- before a negative size)");
  add_image_args(*command, args->image, args->objects, false);
  command->add_option("--preallocation", args->preallocation, "Preallocation of the new space: off, falloc, full, metadata");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_flag("--shrink", args->shrink, "Allow shrinking");
  command->add_option("filename", args->filename, "Image file")->required();
  command->add_option("size", args->size, "New size, or +SIZE / -SIZE relative to the current one")->required();
  command->callback([&runner, args] { runner = [args] { return run_resize(*args); }; });
}

}  // namespace kiln::img
