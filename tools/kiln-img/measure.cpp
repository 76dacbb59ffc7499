// kiln-img measure: host space a new image would need.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "tool.h"

namespace kiln::img {
namespace {

struct MeasureArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string output = "human";
  std::string target_format = "raw";
  std::vector<std::string> options;
  std::string size;
  std::string snapshot;
  std::vector<std::string> filenames;
};

// Bytes of the image that hold data (not holes), through the backing chain.
uint64_t allocated_bytes(block::Image& image) {
  uint64_t allocated = 0;
  for (uint64_t offset = 0; offset < image.size();) {
    block::ChainStatus status = image.chain_status(offset, image.size() - offset);
    const bool hole = block::reads_as_hole(status.flags);
    if (!hole) allocated += status.length;
    offset += status.length;
  }
  return allocated;
}

int run_measure(const MeasureArgs& args) {
  const OutputFormat output = parse_output_format(args.output);
  if (!args.size.empty() && !args.filenames.empty()) throw invalid_argument("--size N cannot be used together with a filename.");
  if (args.size.empty() && args.filenames.empty()) throw invalid_argument("Either --size N or one filename must be specified.");
  if (args.filenames.size() > 1) throw invalid_argument("At most one filename argument is allowed.");
  const block::FormatDriver* driver = block::find_format(args.target_format);
  if (driver == nullptr) throw invalid_argument("Unknown file format '{}'", args.target_format);
  block::CreateOptions options = block::parse_create_options(*driver, join_options(args.options));
  uint64_t size = 0;
  uint64_t allocated = 0;
  std::optional<uint64_t> bitmaps;
  if (!args.size.empty()) {
    size = parse_image_size(args.size);
    allocated = size;
  } else {
    auto image = open_image(args.filenames.front(), args.image, true, block::CacheMode::Writeback, parse_objects(args.objects));
    size = image->size();
    allocated = allocated_bytes(*image);
    bitmaps = driver->measure_bitmaps(image->top(), options);
  }
  options.size = size;
  std::erase_if(options.values, [](const auto& kv) { return kv.first == "size"; });
  block::MeasureResult result = driver->measure(size, allocated, options);
  if (bitmaps) result.bitmaps = bitmaps;
  if (output == OutputFormat::Json) {
    nlohmann::ordered_json json;
    if (result.bitmaps) json["bitmaps"] = *result.bitmaps;
    json["required"] = result.required;
    json["fully-allocated"] = result.fully_allocated;
    fmt::print("{}\n", json.dump(4));
  } else {
    fmt::print("required size: {}\nfully allocated size: {}\n", result.required, result.fully_allocated);
    if (result.bitmaps) fmt::print("bitmaps size: {}\n", *result.bitmaps);
  }
  return 0;
}

}  // namespace

void register_measure(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<MeasureArgs>();
  CLI::App* command = app.add_subcommand("measure", "Space needed for a new image: measure [-O FMT] [-o OPTIONS] (--size N | FILENAME)");
  add_image_args(*command, args->image, args->objects);
  command->add_option("--output", args->output, "Output format: human or json");
  command->add_option("-O,--output-format", args->target_format, "Format of the new image (default raw)");
  command->add_option("-o,--options", args->options, "Options of the new image")->allow_extra_args(false);
  command->add_option("--size", args->size, "Measure an empty image of this size");
  command->add_option("-l,--snapshot", args->snapshot, "Measure a snapshot of the source");
  command->add_option("filename", args->filenames, "Source image");
  command->callback([&runner, args] { runner = [args] { return run_measure(*args); }; });
}

}  // namespace kiln::img
