// kiln-img check: consistency check and repair, with qemu-img check's output
// and exit codes (0 clean, 1 check failed, 2 corruptions, 3 leaks only, 63 unsupported).
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "tool.h"

namespace kiln::img {
namespace {

struct CheckArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string output = "human";
  std::string repair;
  bool quiet = false;
  std::string filename;
};

void print_human(const block::CheckResult& result, bool quiet) {
  for (const std::string& message : result.messages) fmt::print(stderr, "{}\n", message);
  if (quiet) return;
  if (result.corruptions_fixed > 0 || result.leaks_fixed > 0) {
    fmt::print("The following inconsistencies were found and repaired:\n\n    {} leaked clusters\n    {} corruptions\n\n",
               result.leaks_fixed, result.corruptions_fixed);
  }
  if (result.corruptions == 0 && result.leaks == 0 && result.check_errors == 0) {
    fmt::print("No errors were found on the image.\n");
  } else {
    if (result.corruptions > 0) {
      fmt::print("\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.\n",
                 result.corruptions);
    }
    if (result.leaks > 0) {
      fmt::print("\n{} leaked clusters were found on the image.\nThis means waste of disk space, but no harm to data.\n", result.leaks);
    }
    if (result.check_errors > 0) {
      fmt::print("\n{} internal errors have occurred during the check.\n", result.check_errors);
    }
  }
  if (result.total_clusters != 0 && result.allocated_clusters > 0) {
    const double total = static_cast<double>(result.total_clusters);
    const double allocated = static_cast<double>(result.allocated_clusters);
    fmt::print("{}/{} = {:.2f}% allocated, {:.2f}% fragmented, {:.2f}% compressed clusters\n", result.allocated_clusters,
               result.total_clusters, allocated * 100.0 / total, static_cast<double>(result.fragmented_clusters) * 100.0 / allocated,
               static_cast<double>(result.compressed_clusters) * 100.0 / allocated);
  }
  if (result.image_end_offset != 0) fmt::print("Image end offset: {}\n", result.image_end_offset);
}

void print_json(const block::CheckResult& result, const block::Image& image) {
  nlohmann::ordered_json json;
  if (result.image_end_offset != 0) json["image-end-offset"] = result.image_end_offset;
  if (result.corruptions != 0) json["corruptions"] = result.corruptions;
  if (result.leaks != 0) json["leaks"] = result.leaks;
  if (result.corruptions_fixed != 0) json["corruptions-fixed"] = result.corruptions_fixed;
  if (result.leaks_fixed != 0) json["leaks-fixed"] = result.leaks_fixed;
  if (result.total_clusters != 0) json["total-clusters"] = result.total_clusters;  // qemu omits an unset count
  json["check-errors"] = result.check_errors;
  if (result.allocated_clusters != 0) {
    json["allocated-clusters"] = result.allocated_clusters;
    json["fragmented-clusters"] = result.fragmented_clusters;
    json["compressed-clusters"] = result.compressed_clusters;
  }
  json["filename"] = image.filename();
  json["format"] = std::string(image.format());
  fmt::print("{}\n", json.dump(4));
}

int run_check(const CheckArgs& args) {
  const OutputFormat output = parse_output_format(args.output);
  block::CheckRepair repair = block::CheckRepair::None;
  if (args.repair == "leaks") repair = block::CheckRepair::Leaks;
  else if (args.repair == "all") repair = block::CheckRepair::All;
  else if (!args.repair.empty()) throw invalid_argument("Unknown option value for -r (expecting 'leaks' or 'all'): {}", args.repair);
  std::unique_ptr<block::Image> image =
      open_image(args.filename, args.image, repair == block::CheckRepair::None, block::CacheMode::Writeback, parse_objects(args.objects));
  block::CheckResult result;
  try {
    result = image->top().check(repair);
  } catch (const Error& error) {
    if (error.errno_value() == ENOTSUP) {
      fmt::print(stderr, "kiln-img: {}\n", error.what());
      return 63;
    }
    fmt::print(stderr, "kiln-img: Check failed: {}\n", error.what());
    return 1;
  }
  if (output == OutputFormat::Json) {
    print_json(result, *image);
  } else {
    print_human(result, args.quiet);
  }
  if (result.check_errors > 0) return 1;
  if (result.corruptions > 0) return 2;
  if (result.leaks > 0) return 3;
  return 0;
}

}  // namespace

void register_check(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<CheckArgs>();
  CLI::App* command = app.add_subcommand("check", "Check an image for consistency: check [-f FMT] [--output=human|json] [-r leaks|all] FILENAME");
  add_image_args(*command, args->image, args->objects);
  command->add_option("--output", args->output, "Output format: human or json");
  command->add_option("-r,--repair", args->repair, "Repair leaks, or all errors");
  command->add_option("-T,--cache", args->image.cache, "Cache mode");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_check(*args); }; });
}

}  // namespace kiln::img
