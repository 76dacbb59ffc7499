// kiln-img create: make a new image, optionally on a backing file.
#include <fmt/format.h>

#include "tool.h"

namespace kiln::img {
namespace {

struct CreateArgs {
  std::string format = "raw";
  std::string backing_file;
  std::string backing_format;
  std::vector<std::string> options;
  std::vector<std::string> objects;
  std::string filename;
  std::string size;
  bool quiet = false;
  bool unsafe = false;
};

bool wants_help(const KeyValueList& list) {
  for (const auto& [key, value] : list) {
    if ((key == "help" || key == "?") && value.empty()) return true;
  }
  return false;
}

int run_create(const CreateArgs& args) {
  const block::FormatDriver* driver = block::find_format(args.format);
  if (driver == nullptr) throw invalid_argument("Unknown file format '{}'", args.format);
  const std::string option_text = join_options(args.options);
  if (wants_help(parse_key_value_list(option_text))) {
    print_create_options_help(*driver);
    return 0;
  }
  if (args.filename.empty()) throw invalid_argument("Expecting image file name");
  try {
    block::CreateOptions options = block::parse_create_options(*driver, option_text);
    options.secrets = parse_objects(args.objects);
    const bool size_in_options = options.find("size") != nullptr;
    if (!args.size.empty()) {
      if (size_in_options) throw invalid_argument("The image size must be specified only once");
      options.size = parse_image_size(args.size);
    }
    std::string backing_file = args.backing_file.empty() ? options.get("backing_file") : args.backing_file;
    std::string backing_format = args.backing_format.empty() ? options.get("backing_fmt") : args.backing_format;
    if (!backing_file.empty()) {
      if (!driver->supports_backing()) throw invalid_argument("Backing file not supported for file format '{}'", args.format);
      std::erase_if(options.values, [](const auto& kv) { return kv.first == "backing_file" || kv.first == "backing_fmt"; });
      options.values.emplace_back("backing_file", backing_file);
      if (!args.unsafe || (args.size.empty() && !size_in_options)) {
        ImageArgs backing_args{.format = backing_format, .force_share = true};
        auto backing = open_image(resolve_backing_name(args.filename, backing_file), backing_args, true);
        if (backing_format.empty()) backing_format = std::string(backing->format());
        if (args.size.empty() && !size_in_options) options.size = backing->size();
      }
      if (!backing_format.empty()) options.values.emplace_back("backing_fmt", backing_format);
    } else if (!backing_format.empty()) {
      throw invalid_argument("Backing format given without a backing file (-F needs -b)");
    } else if (args.size.empty() && !size_in_options) {
      throw invalid_argument("Image creation needs a size parameter");
    }
    std::erase_if(options.values, [](const auto& kv) { return kv.first == "size"; });
    if (!args.quiet) {
      // Printed before the work, as qemu-img does, so a slow preallocation shows what it is doing.
      block::CreateOptions summary_options = options;
      fmt::print("Formatting '{}', {}\n", args.filename, driver->creation_summary(summary_options));
      std::fflush(stdout);
    }
    block::create_image(args.filename, args.format, options);
  } catch (const Error& error) {
    throw with_context(error, args.filename);
  }
  return 0;
}

}  // namespace

void register_create(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<CreateArgs>();
  CLI::App* command = app.add_subcommand("create", "Create a new image: create [-f FMT] [-b BACKING [-F FMT]] [-o OPTIONS] FILENAME [SIZE]");
  command->add_option("-f,--format", args->format, "Image format (default raw)");
  command->add_option("-b,--backing", args->backing_file, "Backing file");
  command->add_option("-F,--backing-format", args->backing_format, "Backing file format");
  command->add_option("-o,--options", args->options, "Format options key=value,... ('-o help' lists them)")->allow_extra_args(false);
  command->add_option("--object", args->objects, "Define an object such as secret,id=ID,data=TEXT")->allow_extra_args(false);
  command->add_flag("-q,--quiet", args->quiet, "Print nothing on success");
  command->add_flag("-u,--unsafe", args->unsafe, "Do not open the backing file to verify it");
  command->add_option("filename", args->filename, "Image file to create");
  command->add_option("size", args->size, "Virtual size (k, M, G, T, P, E suffixes)");
  command->callback([&runner, args] { runner = [args] { return run_create(*args); }; });
}

}  // namespace kiln::img
