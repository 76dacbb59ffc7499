// kiln-img amend: change format options of an existing image.
#include <fmt/format.h>

#include "tool.h"

namespace kiln::img {
namespace {

struct AmendArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::vector<std::string> options;
  bool progress = false;
  bool quiet = false;
  bool force = false;
  std::string filename;
};

int run_amend(const AmendArgs& args) {
  const std::string text = join_options(args.options);
  if (text.empty()) throw invalid_argument("Must specify options (-o)");
  KeyValueList list = parse_key_value_list(text);
  const bool help = std::any_of(list.begin(), list.end(), [](auto& kv) { return (kv.first == "help" || kv.first == "?") && kv.second.empty(); });
  if (help) {
    const std::string format = args.image.format.empty() ? "raw" : args.image.format;
    const block::FormatDriver* driver = block::find_format(format);
    if (driver == nullptr) throw invalid_argument("Unknown file format '{}'", format);
    print_create_options_help(*driver);
    return 0;
  }
  if (args.filename.empty()) throw invalid_argument("Expecting one image file name");
  auto image = open_image(args.filename, args.image, false, block::CacheMode::Writeback, parse_objects(args.objects));
  image->top().amend(list);
  image->flush();
  return 0;
}

}  // namespace

void register_amend(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<AmendArgs>();
  CLI::App* command = app.add_subcommand("amend", "Change format options: amend [-f FMT] -o OPTIONS FILENAME");
  add_image_args(*command, args->image, args->objects, false);
  command->add_option("-o,--options", args->options, "Options to change ('-o help' lists them)")->allow_extra_args(false);
  command->add_option("-t,--cache", args->image.cache, "Cache mode");
  command->add_flag("-p,--progress", args->progress, "Show progress");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_flag("--force", args->force, "Allow unsafe operations");
  command->add_option("filename", args->filename, "Image file");
  command->callback([&runner, args] { runner = [args] { return run_amend(*args); }; });
}

}  // namespace kiln::img
