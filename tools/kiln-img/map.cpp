// kiln-img map: where an image's data lives (which layer, which host offset).
#include <fmt/format.h>

#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {
namespace {

struct MapArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string output = "human";
  std::string start_offset = "0";
  std::string max_length;
  std::string filename;
};

struct MapEntry {
  uint64_t start = 0;
  uint64_t length = 0;
  int depth = 0;
  bool present = false;
  bool zero = false;
  bool data = false;
  bool has_offset = false;
  uint64_t offset = 0;
  std::string file;

  // Whether `next` continues this entry (same kind, contiguous on the host too).
  bool continues(const MapEntry& next) const {
    if (next.start != start + length || next.depth != depth || next.present != present || next.zero != zero || next.data != data ||
        next.has_offset != has_offset || next.file != file) {
      return false;
    }
    return !has_offset || next.offset == offset + length;
  }
};

// qemu prints hex with "%#x", which shows zero as "0".
std::string hex(uint64_t value) { return value == 0 ? "0" : fmt::format("{:#x}", value); }

void print_json_entry(const MapEntry& entry, bool first) {
  fmt::print("{}{{ \"start\": {}, \"length\": {}, \"depth\": {}, \"present\": {}, \"zero\": {}, \"data\": {}", first ? "[" : ",\n",
             entry.start, entry.length, entry.depth, entry.present, entry.zero, entry.data);
  if (entry.has_offset) fmt::print(", \"offset\": {}", entry.offset);
  fmt::print("}}");
}

void print_human_entry(const MapEntry& entry) {
  // As qemu: ranges that read as zeroes are left out even when stored (e.g. holes of a static VDI file).
  if (!entry.data || entry.zero || !entry.has_offset) return;
  fmt::print("{:<16}{:<16}{:<16}{}\n", hex(entry.start), hex(entry.length), hex(entry.offset), entry.file);
}

int run_map(const MapArgs& args) {
  const OutputFormat output = parse_output_format(args.output);
  auto image = open_image(args.filename, args.image, true, block::CacheMode::Writeback, parse_objects(args.objects));
  auto start = parse_size(args.start_offset);
  if (!start) throw invalid_argument("Invalid start offset specified! You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
  uint64_t end = image->size();
  if (!args.max_length.empty()) {
    auto length = parse_size(args.max_length);
    if (!length) throw invalid_argument("Invalid max length specified! You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    end = std::min(end, *start + *length);
  }
  if (output == OutputFormat::Human) fmt::print("{:<16}{:<16}{:<16}{}\n", "Offset", "Length", "Mapped to", "File");
  std::optional<MapEntry> pending;
  bool first = true;
  auto emit = [&](const MapEntry& entry) {
    if (output == OutputFormat::Json) {
      print_json_entry(entry, first);
    } else {
      print_human_entry(entry);
    }
    first = false;
  };
  for (uint64_t offset = *start; offset < end;) {
    block::ChainStatus status = image->chain_status(offset, end - offset);
    MapEntry entry;
    entry.start = offset;
    entry.length = status.length;
    entry.depth = status.depth;
    entry.present = status.flags & block::kStatusAllocated;
    entry.zero = status.flags & block::kStatusZero;
    entry.data = status.flags & block::kStatusData;
    entry.has_offset = (status.flags & block::kStatusOffsetValid) != 0;
    entry.offset = status.host_offset;
    entry.file = status.host_file;
    if (pending && pending->continues(entry)) {
      pending->length += entry.length;
    } else {
      if (pending) emit(*pending);
      pending = entry;
    }
    offset += status.length;
  }
  if (!pending && output == OutputFormat::Json) {
    pending = MapEntry{.start = *start};  // qemu-img lists an empty range as one entry
  }
  if (pending) emit(*pending);
  if (output == OutputFormat::Json) fmt::print("{}]\n", first ? "[" : "");
  return 0;
}

}  // namespace

void register_map(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<MapArgs>();
  CLI::App* command = app.add_subcommand("map", "Show where an image's data is: map [-f FMT] [--output=human|json] FILENAME");
  add_image_args(*command, args->image, args->objects);
  command->add_option("--output", args->output, "Output format: human or json");
  command->add_option("-s,--start-offset", args->start_offset, "Start at this guest offset");
  command->add_option("-l,--max-length", args->max_length, "Map at most this many bytes");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_map(*args); }; });
}

}  // namespace kiln::img
