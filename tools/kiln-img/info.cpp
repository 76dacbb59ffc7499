// kiln-img info: what an image is — format, sizes, backing chain, snapshots
// and the format's own details — as qemu-img info prints it.
#include <algorithm>

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {
namespace {

using ordered_json = nlohmann::ordered_json;

struct InfoArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  std::string output = "human";
  bool backing_chain = false;
  std::string filename;
};

// nlohmann::json sorts object keys; put them back in the order the driver
// names (format_specific_info_order), unlisted keys last.
ordered_json in_driver_order(const nlohmann::json& value, const std::vector<std::string>& order) {
  if (value.is_array()) {
    ordered_json list = ordered_json::array();
    for (const auto& element : value) list.push_back(in_driver_order(element, order));
    return list;
  }
  if (!value.is_object()) return ordered_json::parse(value.dump());
  std::vector<std::string> keys;
  for (const auto& item : value.items()) keys.push_back(item.key());
  auto rank = [&](const std::string& key) {
    return static_cast<size_t>(std::find(order.begin(), order.end(), key) - order.begin());
  };
  std::stable_sort(keys.begin(), keys.end(), [&](const std::string& a, const std::string& b) { return rank(a) < rank(b); });
  ordered_json result = ordered_json::object();
  for (const std::string& key : keys) result[key] = in_driver_order(value.at(key), order);
  return result;
}

// JSON as qemu prints it: dump(4), except that an empty list spans two lines
// ("[" and an indented "]"), as QEMU's JSON writer does.
std::string qemu_json(const ordered_json& value) {
  std::string text = value.dump(4), out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    const size_t indent = line.find_first_not_of(' ');
    const size_t at = line.rfind("[]");
    const bool empty_list = at != std::string_view::npos && (at + 2 == line.size() || (at + 3 == line.size() && line.back() == ',')) &&
                            (at == indent || line.substr(0, at).ends_with("\": "));
    if (empty_list) {
      out.append(line.substr(0, at + 1)).append("\n").append(indent, ' ').append("]").append(line.substr(at + 2));
    } else {
      out.append(line);
    }
    if (end < text.size()) out += '\n';
    start = end + 1;
  }
  return out;
}

// One image's facts in qemu-img's JSON key order.
ordered_json node_info(block::Node& node) {
  ordered_json info;
  std::vector<block::SnapshotInfo> snapshots = node.list_snapshots();
  if (!snapshots.empty()) {
    ordered_json list = ordered_json::array();
    for (const auto& snapshot : snapshots) list.push_back(snapshot_json(snapshot));
    info["snapshots"] = list;
  }
  const std::string backing = node.backing_filename();
  if (!backing.empty() && !node.backing_format().empty()) info["backing-filename-format"] = node.backing_format();
  info["virtual-size"] = node.size();
  info["filename"] = node.filename();
  if (node.cluster_size() != 0) info["cluster-size"] = node.cluster_size();
  info["format"] = std::string(node.driver_name());
  if (int64_t allocated = node.allocated_size(); allocated >= 0) info["actual-size"] = allocated;
  if (node.encrypted()) info["encrypted"] = true;
  if (nlohmann::json specific = node.format_specific_info(); !specific.is_null()) {
    std::vector<std::string> order = node.format_specific_info_order();
    order.insert(order.begin(), {"type", "data"});
    info["format-specific"] = in_driver_order(specific, order);
  }
  if (!backing.empty()) {
    info["full-backing-filename"] = resolve_backing_name(node.filename(), backing);
    info["backing-filename"] = backing;
  }
  info["dirty-flag"] = node.dirty();
  return info;
}

std::string human_value(const ordered_json& value) {
  if (value.is_string()) return value.get<std::string>();
  return value.dump();
}

std::string human_key(std::string key) {
  std::replace(key.begin(), key.end(), '-', ' ');
  return key;
}

// qemu's human rendering of a QAPI object: nested objects and lists indented.
void print_nested(const ordered_json& value, int indent) {
  const std::string pad(static_cast<size_t>(indent), ' ');
  if (value.is_array()) {
    for (size_t i = 0; i < value.size(); ++i) {
      if (value[i].is_object() || value[i].is_array()) {
        fmt::print("{}[{}]:\n", pad, i);
        print_nested(value[i], indent + 4);
      } else {
        fmt::print("{}[{}]: {}\n", pad, i, human_value(value[i]));  // a list of scalars, e.g. bitmap flags
      }
    }
    return;
  }
  for (const auto& [key, member] : value.items()) {
    if (member.is_object() || member.is_array()) {
      fmt::print("{}{}:\n", pad, human_key(key));
      print_nested(member, indent + 4);
    } else {
      fmt::print("{}{}: {}\n", pad, human_key(key), human_value(member));
    }
  }
}

void print_human(block::Node& node, const ordered_json& info) {
  fmt::print("image: {}\n", node.filename());
  fmt::print("file format: {}\n", node.driver_name());
  fmt::print("virtual size: {} ({} bytes)\n", format_size_iec(node.size()), node.size());
  if (info.contains("actual-size")) {
    fmt::print("disk size: {}\n", format_size_iec(info["actual-size"].get<uint64_t>()));
  } else {
    fmt::print("disk size: unavailable\n");
  }
  if (node.cluster_size() != 0) fmt::print("cluster_size: {}\n", node.cluster_size());
  if (node.encrypted()) fmt::print("encrypted: yes\n");
  if (info.contains("backing-filename")) {
    const std::string backing = info["backing-filename"];
    const std::string full = info["full-backing-filename"];
    if (full != backing) {
      fmt::print("backing file: {} (actual path: {})\n", backing, full);
    } else {
      fmt::print("backing file: {}\n", backing);
    }
    if (info.contains("backing-filename-format")) {
      fmt::print("backing file format: {}\n", info["backing-filename-format"].get<std::string>());
    }
  }
  std::vector<block::SnapshotInfo> snapshots = node.list_snapshots();
  if (!snapshots.empty()) print_snapshot_table(snapshots);
  if (info.contains("format-specific")) {
    const ordered_json& specific = info["format-specific"];
    fmt::print("Format specific information:\n");
    print_nested(specific.contains("data") ? specific["data"] : specific, 4);
  }
}

int run_info(const InfoArgs& args) {
  const OutputFormat output = parse_output_format(args.output);
  // Locks as qemu-img info: raw readers share writes; formats with cached
  // metadata (qcow2) do not, so -U is needed while a writer holds the image.
  const ImageArgs& image_args = args.image;
  auto secrets = parse_objects(args.objects);
  std::unique_ptr<block::Image> image;
  if (args.backing_chain) {
    image = open_image(args.filename, image_args, true, block::CacheMode::Writeback, secrets);
  } else {
    // Without --backing-chain the backing file need not exist, as with qemu-img.
    block::OpenOptions open;
    open.format = image_args.format;
    open.read_only = true;
    open.force_share = image_args.force_share;
    open.no_backing = true;
    open.secrets = secrets;
    if (image_args.image_opts) {
      image = open_image(args.filename, image_args, true, block::CacheMode::Writeback, secrets);
    } else {
      image = block::Image::open(args.filename, open);
    }
  }
  std::vector<block::Node*> chain{&image->top()};
  if (args.backing_chain) {
    while (block::Node* backing = chain.back()->backing_child()) chain.push_back(backing);
  }
  ordered_json all = ordered_json::array();
  for (size_t i = 0; i < chain.size(); ++i) {
    ordered_json info = node_info(*chain[i]);
    if (output == OutputFormat::Human) {
      if (i > 0) fmt::print("\n");
      print_human(*chain[i], info);
    }
    all.push_back(std::move(info));
  }
  if (output == OutputFormat::Json) {
    fmt::print("{}\n", qemu_json(args.backing_chain ? all : all[0]));
  }
  return 0;
}

}  // namespace

void register_info(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<InfoArgs>();
  CLI::App* command = app.add_subcommand("info", "Show facts about an image: info [-f FMT] [--output=human|json] [--backing-chain] [-U] FILENAME");
  add_image_args(*command, args->image, args->objects);
  command->add_option("--output", args->output, "Output format: human or json");
  command->add_flag("--backing-chain", args->backing_chain, "Show every image of the backing chain");
  command->add_option("-t,--cache", args->image.cache, "Cache mode for the image");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_info(*args); }; });
}

}  // namespace kiln::img
