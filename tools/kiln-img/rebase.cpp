// kiln-img rebase: change an image's backing file. Safe mode first copies into
// the image every unallocated range where the old and new backing differ, so
// the guest-visible contents stay the same; -u only rewrites the name.
#include <cstring>

#include <fmt/format.h>

#include "kiln/common/buffer.h"
#include "kiln/common/progress.h"
#include "tool.h"

namespace kiln::img {
namespace {

struct RebaseArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string source_cache;
  bool progress = false, quiet = false, unsafe = false, compress = false;
  std::string backing_file;
  bool backing_given = false;
  std::string backing_format;
  std::string filename;
};

constexpr uint64_t kChunk = 1 << 20;

void copy_differences(block::Image& image, block::Image* new_backing, bool show_progress) {
  const uint64_t size = image.size();
  const uint64_t new_size = new_backing ? new_backing->size() : 0;
  AlignedBuffer old_data(kChunk), new_data(kChunk);
  Progress progress(show_progress);
  progress.set_total(size);
  for (uint64_t offset = 0; offset < size;) {
    block::BlockStatus status = image.block_status(offset, size - offset);
    const uint64_t length = std::min(status.length, kChunk);
    if (!(status.flags & block::kStatusAllocated)) {
      auto current = old_data.span().first(length);
      image.read(offset, current);  // through the old backing chain
      auto replacement = new_data.span().first(length);
      std::memset(replacement.data(), 0, length);
      if (new_backing && offset < new_size) new_backing->read(offset, replacement.first(std::min(length, new_size - offset)));
      if (std::memcmp(current.data(), replacement.data(), length) != 0) image.write(offset, current);
    }
    offset += length;
    progress.advance(length);
  }
}

int run_rebase(const RebaseArgs& args) {
  if (!args.backing_given) throw invalid_argument("Must specify backing file (-b) or use '' as argument");
  const auto secrets = parse_objects(args.objects);
  auto image = open_image(args.filename, args.image, false, block::CacheMode::Writeback, secrets);
  const block::FormatDriver* driver = block::find_format(image->format());
  if (driver == nullptr || !driver->supports_backing()) {
    throw Error(ENOTSUP, fmt::format("Could not change the backing file to '{}': image format '{}' has no backing files", args.backing_file,
                                     image->format()));
  }
  std::string backing_format = args.backing_format;
  if (!args.unsafe) {
    std::unique_ptr<block::Image> new_backing;
    if (!args.backing_file.empty()) {
      ImageArgs backing_args{.format = args.backing_format, .force_share = true, .cache = args.source_cache};
      try {
        new_backing = open_image(resolve_backing_name(args.filename, args.backing_file), backing_args, true, block::CacheMode::Writeback,
                                 secrets);
      } catch (const Error& error) {
        throw with_context(error, fmt::format("Could not open new backing file '{}'", args.backing_file));
      }
      if (backing_format.empty()) backing_format = std::string(new_backing->format());
    }
    copy_differences(*image, new_backing.get(), args.progress && !args.quiet);
  }
  image->top().change_backing_file(args.backing_file, backing_format);
  image->flush();
  return 0;
}

}  // namespace

void register_rebase(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<RebaseArgs>();
  CLI::App* command = app.add_subcommand("rebase", "Change the backing file: rebase [-f FMT] [-u] -b BACKING [-F FMT] FILENAME");
  add_image_args(*command, args->image, args->objects);
  command->add_option("-t,--cache", args->image.cache, "Cache mode of the image");
  command->add_option("-T,--source-cache", args->source_cache, "Cache mode of the backing files");
  command->add_flag("-p,--progress", args->progress, "Show progress");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_flag("-u,--unsafe", args->unsafe, "Only change the name; do not compare contents");
  command->add_flag("-c,--compress", args->compress, "Compress copied data where the format can");
  command->add_option("-b,--backing", args->backing_file, "New backing file ('' for none)")->each([args](const std::string&) {
    args->backing_given = true;
  });
  command->add_option("-F,--backing-format", args->backing_format, "Format of the new backing file");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_rebase(*args); }; });
}

}  // namespace kiln::img
