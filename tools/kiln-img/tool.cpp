#include "tool.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "kiln/common/key_value.h"
#include "kiln/common/size.h"

namespace kiln::img {

std::map<std::string, std::string> parse_objects(const std::vector<std::string>& objects) {
  std::map<std::string, std::string> secrets;
  for (const std::string& text : objects) {
    KeyValueList list = parse_key_value_list(text);
    if (list.empty()) throw invalid_argument("Invalid --object '{}'", text);
    std::string type = list.front().second.empty() ? list.front().first : list.front().second;
    if (list.front().first == "qom-type") type = list.front().second;
    if (type != "secret") throw invalid_argument("Invalid object type '{}' (kiln-img supports 'secret')", type);
    std::string id, data, file;
    for (size_t i = 1; i < list.size(); ++i) {
      const auto& [key, value] = list[i];
      if (key == "id") id = value;
      else if (key == "data") data = value;
      else if (key == "file") file = value;
      else if (key == "format" && value == "raw") continue;
      else throw invalid_argument("Invalid parameter '{}' for object secret", key);
    }
    if (id.empty()) throw invalid_argument("Parameter 'id' is missing in --object '{}'", text);
    if (!file.empty()) {
      std::ifstream in(file, std::ios::binary);
      if (!in) throw system_error(errno, "Could not read secret file '{}'", file);
      std::ostringstream contents;
      contents << in.rdbuf();
      data = contents.str();
    }
    secrets[id] = data;
  }
  return secrets;
}

block::CacheMode parse_cache_or_throw(const std::string& name, block::CacheMode fallback) {
  if (name.empty()) return fallback;
  auto mode = block::parse_cache_mode(name);
  if (!mode) throw invalid_argument("Invalid cache option: {}", name);
  return *mode;
}

std::unique_ptr<block::Image> open_image(const std::string& name, const ImageArgs& args, bool read_only,
                                         block::CacheMode default_cache, const std::map<std::string, std::string>& secrets) {
  block::OpenOptions options;
  options.format = args.format;
  options.read_only = read_only;
  options.force_share = args.force_share;
  options.cache = parse_cache_or_throw(args.cache, default_cache);
  options.secrets = secrets;
  if (args.force_share && !read_only) throw invalid_argument("force-share=on can only be used with read-only images");
  std::string filename = name;
  if (args.image_opts) {
    filename.clear();
    for (auto& [key, value] : parse_key_value_list(name)) {
      if (key == "driver") options.format = value;
      else if (key == "file.filename" || key == "file") filename = value;
      else if (key == "file.driver") {
        if (value != "file") throw invalid_argument("Unknown protocol '{}'", value);
      } else if (key == "cache.direct") {
        if (value == "on") options.cache = block::CacheMode::None;
      } else if (key == "file.locking") options.locking = value != "off";
      else if (key == "force-share") options.force_share = value == "on";
      else options.driver_options.emplace_back(key, value);
    }
    if (filename.empty()) throw invalid_argument("--image-opts '{}' names no file (file.filename=...)", name);
  }
  return block::Image::open(filename, options);
}

uint64_t parse_image_size(const std::string& text) {
  auto size = parse_size(text);
  if (!size || *size > (uint64_t{1} << 63) - 1) {
    throw invalid_argument("Invalid image size specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, "
                           "gigabytes, terabytes, petabytes and exabytes.");
  }
  return *size;
}

OutputFormat parse_output_format(const std::string& text) {
  if (text == "human") return OutputFormat::Human;
  if (text == "json") return OutputFormat::Json;
  throw invalid_argument("--output must be used with human or json as argument.");
}

std::string resolve_backing_name(const std::string& image_filename, const std::string& backing) {
  if (backing.empty() || backing.front() == '/' || backing.find("://") != std::string::npos) return backing;
  std::filesystem::path directory = std::filesystem::path(image_filename).parent_path();
  if (directory.empty()) return backing;
  return (directory / backing).string();
}

void add_image_args(CLI::App& command, ImageArgs& args, std::vector<std::string>& objects, bool with_force_share) {
  command.add_option("-f,--format", args.format, "Image format (probed when omitted)");
  if (with_force_share) command.add_flag("-U,--force-share", args.force_share, "Open the image read-only without taking its lock exclusively");
  command.add_flag("--image-opts", args.image_opts, "Treat the file name as an option string (driver=...,file.filename=...)");
  command.add_option("--object", objects, "Define an object such as secret,id=ID,data=TEXT")->allow_extra_args(false);
}

}  // namespace kiln::img

namespace kiln::img {

std::string join_options(const std::vector<std::string>& options) {
  std::string joined;
  for (const std::string& option : options) {
    if (option.empty()) continue;
    if (!joined.empty()) joined += ',';
    joined += option;
  }
  return joined;
}

void print_create_options_help(const block::FormatDriver& driver) {
  fmt::print("Supported {} options:\n", driver.name());
  for (const block::CreateOptionSpec& spec : driver.create_options()) {
    const char* type = "<str>";
    switch (spec.type) {
      case block::CreateOptionSpec::Type::Size: type = "<size>"; break;
      case block::CreateOptionSpec::Type::Bool: type = "<bool (on/off)>"; break;
      case block::CreateOptionSpec::Type::Number: type = "<num>"; break;
      case block::CreateOptionSpec::Type::String: break;
    }
    fmt::print("  {:<22} - {}\n", spec.name + "=" + type, spec.help);
  }
  fmt::print("\nThe protocol level may support further options.\nSpecify the target filename to include those options.\n");
}

}  // namespace kiln::img
