// Shared pieces of kiln-img's commands: opening images the way qemu-img's
// options describe, exit codes, and output helpers.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "kiln/block/image.h"
#include "kiln/common/error.h"

namespace kiln::img {

// Ends a command with an exit code after its output has been printed.
struct ExitCode {
  int code;
};

// Options most commands share (-f, -U, -t/-T, --object, --image-opts).
struct ImageArgs {
  std::string format;
  bool force_share = false;
  std::string cache;
  bool image_opts = false;
};

// Secrets from every --object secret,id=...,data=...|file=... on the command line.
std::map<std::string, std::string> parse_objects(const std::vector<std::string>& objects);

// Opens `name` as qemu-img would: with --image-opts the name is
// "driver=FMT,file.filename=PATH,key=value..." instead of a file name.
std::unique_ptr<block::Image> open_image(const std::string& name, const ImageArgs& args, bool read_only,
                                         block::CacheMode default_cache = block::CacheMode::Writeback,
                                         const std::map<std::string, std::string>& secrets = {});

block::CacheMode parse_cache_or_throw(const std::string& name, block::CacheMode fallback);

// Size argument with qemu-img's suffixes; throws qemu-img's message when invalid.
uint64_t parse_image_size(const std::string& text);

// "human" or "json" from --output.
enum class OutputFormat { Human, Json };
OutputFormat parse_output_format(const std::string& text);

// The directory-relative resolution qemu uses for backing file names.
std::string resolve_backing_name(const std::string& image_filename, const std::string& backing);

// Command registration: each command adds a subcommand and a runner.
using Runner = std::function<int()>;
void register_create(CLI::App& app, Runner& runner);
void register_info(CLI::App& app, Runner& runner);
void register_check(CLI::App& app, Runner& runner);
void register_convert(CLI::App& app, Runner& runner);
void register_compare(CLI::App& app, Runner& runner);
void register_map(CLI::App& app, Runner& runner);
void register_measure(CLI::App& app, Runner& runner);
void register_resize(CLI::App& app, Runner& runner);
void register_dd(CLI::App& app, Runner& runner);
void register_bench(CLI::App& app, Runner& runner);
void register_snapshot(CLI::App& app, Runner& runner);
void register_amend(CLI::App& app, Runner& runner);
void register_rebase(CLI::App& app, Runner& runner);
void register_commit(CLI::App& app, Runner& runner);

// Adds -f, -U, --image-opts, --object to a subcommand.
void add_image_args(CLI::App& command, ImageArgs& args, std::vector<std::string>& objects, bool with_force_share = true);

}  // namespace kiln::img

namespace kiln::img {
// qemu-img's snapshot table ("Snapshot list:" header and rows), also used by info.
void print_snapshot_table(const std::vector<block::SnapshotInfo>& snapshots);
nlohmann::ordered_json snapshot_json(const block::SnapshotInfo& snapshot);
// The joined text of repeated -o options.
std::string join_options(const std::vector<std::string>& options);
// Prints a driver's "-o help" list.
void print_create_options_help(const block::FormatDriver& driver);
}  // namespace kiln::img
