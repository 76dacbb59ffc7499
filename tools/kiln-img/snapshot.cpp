// kiln-img snapshot: list, create, apply and delete internal snapshots.
#include <ctime>

#include <fmt/format.h>

#include "kiln/common/size.h"
#include "tool.h"

namespace kiln::img {

nlohmann::ordered_json snapshot_json(const block::SnapshotInfo& snapshot) {
  nlohmann::ordered_json entry;
  if (snapshot.icount != UINT64_MAX) entry["icount"] = snapshot.icount;
  entry["vm-clock-nsec"] = snapshot.vm_clock_nsec % 1000000000;
  entry["name"] = snapshot.name;
  entry["date-sec"] = snapshot.date_sec;
  entry["date-nsec"] = snapshot.date_nsec;
  entry["vm-clock-sec"] = snapshot.vm_clock_nsec / 1000000000;
  entry["id"] = snapshot.id;
  entry["vm-state-size"] = snapshot.vm_state_size;
  return entry;
}

void print_snapshot_table(const std::vector<block::SnapshotInfo>& snapshots) {
  fmt::print("Snapshot list:\n");
  fmt::print("{:<9} {:<17} {:>7}{:>20}{:>13}{:>11}\n", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT");
  for (const auto& snapshot : snapshots) {
    std::time_t date = snapshot.date_sec;
    std::tm local{};
    localtime_r(&date, &local);
    char date_text[32];
    std::strftime(date_text, sizeof date_text, "%Y-%m-%d %H:%M:%S", &local);
    const uint64_t clock_ms = snapshot.vm_clock_nsec / 1000000;
    const std::string clock = fmt::format("{:02}:{:02}:{:02}.{:03}", clock_ms / 3600000, clock_ms / 60000 % 60, clock_ms / 1000 % 60,
                                          clock_ms % 1000);
    const std::string icount = snapshot.icount == UINT64_MAX ? "" : std::to_string(snapshot.icount);
    fmt::print("{:<9} {:<17} {:>7}{:>20}{:>13}{:>11}\n", snapshot.id, snapshot.name, format_size_iec(snapshot.vm_state_size), date_text,
               clock, icount);
  }
}

namespace {

struct SnapshotArgs {
  ImageArgs image;
  std::vector<std::string> objects;
  bool list = false;
  std::string apply, create, remove;
  bool quiet = false;
  std::string filename;
};

int run_snapshot(const SnapshotArgs& args) {
  const int actions = args.list + !args.apply.empty() + !args.create.empty() + !args.remove.empty();
  if (actions > 1) throw invalid_argument("Cannot mix '-l', '-a', '-c', '-d'");
  const bool list = actions == 0 || args.list;
  auto image = open_image(args.filename, args.image, list, block::CacheMode::Writeback, parse_objects(args.objects));
  block::Node& node = image->top();
  if (list) {
    auto snapshots = node.list_snapshots();
    if (!snapshots.empty()) print_snapshot_table(snapshots);
    return 0;
  }
  if (!args.create.empty()) node.create_snapshot(args.create);
  if (!args.apply.empty()) node.apply_snapshot(args.apply);
  if (!args.remove.empty()) node.delete_snapshot(args.remove);
  image->flush();
  return 0;
}

}  // namespace

void register_snapshot(CLI::App& app, Runner& runner) {
  auto args = std::make_shared<SnapshotArgs>();
  CLI::App* command = app.add_subcommand("snapshot", "Internal snapshots: snapshot [-l | -a SNAPSHOT | -c SNAPSHOT | -d SNAPSHOT] FILENAME");
  add_image_args(*command, args->image, args->objects);
  command->add_flag("-l,--list", args->list, "List snapshots");
  command->add_option("-a,--apply", args->apply, "Revert the image to a snapshot");
  command->add_option("-c,--create", args->create, "Create a snapshot");
  command->add_option("-d,--delete", args->remove, "Delete a snapshot");
  command->add_flag("-q,--quiet", args->quiet, "Quiet");
  command->add_option("filename", args->filename, "Image file")->required();
  command->callback([&runner, args] { runner = [args] { return run_snapshot(*args); }; });
}

}  // namespace kiln::img
