// kiln-img dd: copy a block range of one image into a new image (dd syntax).
// count= counts input blocks after skip=, as dd(1) and qemu-img's manual say.
#include <fmt/format.h>

#include "kiln/common/buffer.h"
#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {
namespace {

struct DdArgs {
  ImageArgs image;
  std::string target_format = "raw";
  std::vector<std::string> operands;
};

struct DdOperands {
  uint64_t block_size = 512;
  std::optional<uint64_t> count;
  uint64_t skip = 0;
  std::string input, output;
};

DdOperands parse_operands(const std::vector<std::string>& operands) {
  DdOperands result;
  for (const std::string& operand : operands) {
    const size_t equals = operand.find('=');
    if (equals == std::string::npos) throw invalid_argument("unrecognized operand {}", operand);
    const std::string key = operand.substr(0, equals);
    const std::string value = operand.substr(equals + 1);
    if (key == "if") {
      result.input = value;
    } else if (key == "of") {
      result.output = value;
    } else if (key == "bs") {
      auto size = parse_size(value);
      if (!size || *size == 0 || *size > 2147483647) throw invalid_argument("Invalid bs specified. Must be between 1 and 2147483647.");
      result.block_size = *size;
    } else if (key == "count") {
      auto count = parse_size(value);
      if (!count) throw invalid_argument("Invalid count specified. Must be between 0 and 9223372036854775807.");
      result.count = *count;
    } else if (key == "skip") {
      auto skip = parse_size(value);
      if (!skip) throw invalid_argument("Invalid skip specified. Must be between 0 and 9223372036854775807.");
      result.skip = *skip;
    } else {
      throw invalid_argument("unrecognized operand {}", operand);
    }
  }
  if (result.input.empty() || result.output.empty()) throw invalid_argument("Must specify both input and output files");
  return result;
}

int run_dd(const DdArgs& args) {
  DdOperands operands = parse_operands(args.operands);
  auto input = open_image(operands.input, args.image, true);
  const uint64_t input_size = input->size();
  if (operands.skip > input_size / operands.block_size) {
    throw invalid_argument("Cannot skip to offset {}: '{}' is only {} bytes", operands.skip * operands.block_size, operands.input, input_size);
  }
  const uint64_t start = operands.skip * operands.block_size;
  uint64_t length = input_size - start;
  if (operands.count && *operands.count <= length / operands.block_size) length = *operands.count * operands.block_size;

  const block::FormatDriver* driver = block::find_format(args.target_format);
  if (driver == nullptr) throw invalid_argument("Unknown file format '{}'", args.target_format);
  block::CreateOptions create;
  create.size = length;
  try {
    block::create_image(operands.output, args.target_format, create);
  } catch (const Error& error) {
    throw with_context(error, operands.output);
  }
  block::OpenOptions target_options;
  target_options.format = args.target_format;
  auto output = block::Image::open(operands.output, target_options);

  // The new image reads as zeroes: copy only what is not.
  constexpr uint64_t kChunk = 2 << 20;
  AlignedBuffer buffer(kChunk);
  for (uint64_t done = 0; done < length;) {
    block::ChainStatus status = input->chain_status(start + done, length - done);
    const bool hole = block::reads_as_hole(status.flags);
    const uint64_t step = hole ? status.length : std::min(status.length, kChunk);
    if (!hole) {
      auto data = buffer.span().first(step);
      input->read(start + done, data);
      if (!is_zero(data)) output->write(done, data);
    }
    done += step;
  }
  output->flush();
  return 0;
}

}  // namespace

void register_dd(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<DdArgs>();
  CLI::App* command = app.add_subcommand("dd", "Copy with dd syntax: dd [-f FMT] [-O FMT] [bs=N] [count=N] [skip=N] if=INPUT of=OUTPUT");
  command->add_option("-f,--format", args->image.format, "Input format (probed when omitted)");
  command->add_option("-O,--output-format", args->target_format, "Output format (default raw)");
  command->add_flag("-U,--force-share", args->image.force_share, "Open the input without exclusive locks");
  command->add_flag("--image-opts", args->image.image_opts, "The input name is an option string");
  command->add_option("operands", args->operands, "bs= count= skip= if= of=");
  command->callback([&runner, args] { runner = [args] { return run_dd(*args); }; });
}

}  // namespace kiln::img
