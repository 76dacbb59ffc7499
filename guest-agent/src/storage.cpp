// File systems and disks: fsfreeze (with the hook script), fstrim, fsinfo,
// disks and disk statistics, all read from sysfs/procfs under SystemPaths.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <sstream>

#include <fmt/format.h>

#include "freeze.h"
#include "internal.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "kiln/common/log.h"

namespace kiln::ga {

namespace {

void run_hook(const std::string& hook, const char* action) {
  if (hook.empty()) return;
  if (::access(hook.c_str(), X_OK) != 0) {
    throw CommandError(fmt::format("can't access fsfreeze hook '{}': {}", hook, kiln::errno_text(errno)));
  }
  pid_t pid = ::fork();
  if (pid < 0) throw kiln::system_error(errno, "failed to run fsfreeze hook '{}'", hook);
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd >= 0) {
      ::dup2(null_fd, 0);
      ::dup2(null_fd, 1);
      ::dup2(null_fd, 2);
    }
    ::execl(hook.c_str(), hook.c_str(), action, static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw CommandError(fmt::format("fsfreeze hook has failed with status {}", WIFEXITED(status) ? WEXITSTATUS(status) : -1));
  }
}

}  // namespace

FreezeState::FreezeState(const AgentConfig& config) : config_(config) {}

FreezeState::~FreezeState() { thaw_all_quietly(); }

std::int64_t FreezeState::freeze(const std::optional<std::vector<std::string>>& mountpoints) {
  if (frozen_) throw CommandError("Command guest-fsfreeze-freeze has been disabled: the agent is in frozen state");
  run_hook(config_.fsfreeze_hook, "freeze");
  std::vector<MountEntry> mounts = real_mounts(config_.paths);
  std::vector<std::string> targets;
  if (mountpoints) {
    for (const auto& wanted : *mountpoints) {
      bool known = false;
      for (const auto& mount : mounts) known = known || mount.mountpoint == wanted;
      if (!known) throw CommandError(fmt::format("mount point '{}' not found", wanted));
      targets.push_back(wanted);
    }
  } else {
    // Freeze in reverse mount order so that nested file systems go first.
    for (auto it = mounts.rbegin(); it != mounts.rend(); ++it) targets.push_back(it->mountpoint);
  }
  frozen_ = true;  // from here on, a failure thaws what was frozen
  std::int64_t count = 0;
  for (const auto& target : targets) {
    UniqueFd fd(::open(target.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) {
      int err = errno;
      thaw_all_quietly();
      throw CommandError(fmt::format("failed to open {}: {}", target, kiln::errno_text(err)));
    }
    if (::ioctl(fd.get(), FIFREEZE) < 0) {
      int err = errno;
      // Not supported (tmpfs-like) or already frozen by someone else: skip, as qemu-ga does.
      if (err == EOPNOTSUPP || err == EBUSY) continue;
      thaw_all_quietly();
      throw CommandError(fmt::format("failed to freeze {}: {}", target, kiln::errno_text(err)));
    }
    frozen_paths_.push_back(target);
    ++count;
  }
  return count;
}

std::int64_t FreezeState::thaw() {
  std::int64_t count = 0;
  int first_error = 0;
  std::string failed;
  for (const auto& path : frozen_paths_) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid() || ::ioctl(fd.get(), FITHAW) < 0) {
      if (errno != EINVAL && !first_error) {  // EINVAL: it was not frozen
        first_error = errno;
        failed = path;
      }
      continue;
    }
    ++count;
  }
  frozen_paths_.clear();
  bool was_frozen = frozen_;
  frozen_ = false;
  if (first_error) throw CommandError(fmt::format("failed to thaw {}: {}", failed, kiln::errno_text(first_error)));
  if (was_frozen) run_hook(config_.fsfreeze_hook, "thaw");
  return count;
}

void FreezeState::thaw_all_quietly() {
  if (!frozen_) return;
  try {
    thaw();
  } catch (const std::exception& error) {
    kiln::log::error("{}", error.what());
  }
}

namespace {

// PCI address from a sysfs device path like .../pci0000:00/0000:00:02.0/virtio1/block/vda
Json pci_address(const std::string& device_path) {
  Json address = {{"domain", -1}, {"bus", -1}, {"slot", -1}, {"function", -1}};
  size_t pos = 0;
  std::string last;
  while ((pos = device_path.find('/', pos)) != std::string::npos) {
    ++pos;
    size_t end = device_path.find('/', pos);
    std::string part = device_path.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    unsigned domain, bus, slot, function;
    char tail;
    if (std::sscanf(part.c_str(), "%x:%x:%x.%x%c", &domain, &bus, &slot, &function, &tail) == 4) {
      address = {{"domain", domain}, {"bus", bus}, {"slot", slot}, {"function", function}};
    }
  }
  return address;
}

std::string real_path(const std::string& path) {
  char buffer[PATH_MAX];
  if (!::realpath(path.c_str(), buffer)) return {};
  return buffer;
}

// GuestDiskAddress for a whole disk's sysfs folder (/sys/dev/block/M:m resolved).
Json disk_address(const std::string& sys_path, const std::string& name) {
  Json address = {{"pci-controller", pci_address(sys_path)}, {"bus", 0}, {"target", 0}, {"unit", 0}};
  std::string bus_type = "unknown";
  unsigned host, channel, target, lun;
  bool scsi = false;
  size_t pos = 0;
  while ((pos = sys_path.find('/', pos)) != std::string::npos) {
    ++pos;
    std::string part = sys_path.substr(pos, sys_path.find('/', pos) - pos);
    if (std::sscanf(part.c_str(), "%u:%u:%u:%u", &host, &channel, &target, &lun) == 4) scsi = true;
  }
  if (sys_path.find("/nvme/") != std::string::npos) bus_type = "nvme";
  else if (sys_path.find("/usb") != std::string::npos) bus_type = "usb";
  else if (sys_path.find("/ata") != std::string::npos) bus_type = "sata";
  else if (scsi) bus_type = "scsi";
  else if (sys_path.find("/virtio") != std::string::npos) bus_type = "virtio";
  else if (sys_path.find("/virtual/") != std::string::npos) bus_type = "virtual";
  if (scsi) {
    address["bus"] = channel;
    address["target"] = target;
    address["unit"] = lun;
  }
  address["bus-type"] = bus_type;
  address["dev"] = "/dev/" + name;
  return address;
}

// For a partition, the sysfs folder of its whole disk; for a disk, itself.
std::string whole_disk_path(const std::string& sys_path) {
  if (::access((sys_path + "/partition").c_str(), F_OK) == 0) return sys_path.substr(0, sys_path.rfind('/'));
  return sys_path;
}

std::string base_name(const std::string& path) { return path.substr(path.rfind('/') + 1); }

// Disk addresses behind a block device: itself, or the disks under a device-mapper/md stack.
void collect_disks(const std::string& sys_path, Json& disks, int depth) {
  if (depth > 8) return;
  auto slaves = list_directory(sys_path + "/slaves");
  if (!slaves.empty()) {
    for (const auto& slave : slaves) collect_disks(real_path(sys_path + "/slaves/" + slave), disks, depth + 1);
    return;
  }
  std::string disk = whole_disk_path(sys_path);
  if (disk.find("/virtual/") != std::string::npos) return;  // loop, ram: no hardware address
  disks.push_back(disk_address(disk, base_name(disk)));
}

}  // namespace

void register_storage_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config, FreezeState& freeze) {
  dispatcher.add({"guest-fsfreeze-status", {}, [&](const Json&) {
                    return Json(freeze.frozen() ? "frozen" : "thawed");
                  }});
  dispatcher.add({"guest-fsfreeze-freeze", {}, [&](const Json&) { return Json(freeze.freeze(std::nullopt)); }});
  dispatcher.add({"guest-fsfreeze-freeze-list", {{"mountpoints", ParamType::Array, true}}, [&](const Json& args) {
                    std::optional<std::vector<std::string>> list;
                    if (auto it = args.find("mountpoints"); it != args.end()) {
                      list.emplace();
                      for (size_t i = 0; i < it->size(); ++i) {
                        if (!(*it)[i].is_string()) qmp::throw_bad_type(fmt::format("mountpoints[{}]", i), ParamType::Str);
                        list->push_back((*it)[i].get<std::string>());
                      }
                    }
                    return Json(freeze.freeze(list));
                  }});
  dispatcher.add({"guest-fsfreeze-thaw", {}, [&](const Json&) { return Json(freeze.thaw()); }});

  const SystemPaths& paths = config.paths;
  dispatcher.add({"guest-fstrim", {{"minimum", ParamType::Int, true}}, [&paths](const Json& args) {
                    std::int64_t minimum = optional_arg<std::int64_t>(args, "minimum").value_or(0);
                    Json results = Json::array();
                    for (const auto& mount : real_mounts(paths)) {
                      Json result = {{"path", mount.mountpoint}};
                      UniqueFd fd(::open(mount.mountpoint.c_str(), O_RDONLY | O_CLOEXEC));
                      fstrim_range range{0, ~0ull, std::uint64_t(minimum)};
                      if (!fd.valid()) {
                        result["error"] = kiln::errno_text(errno);
                      } else if (::ioctl(fd.get(), FITRIM, &range) < 0) {
                        if (errno == ENOTTY || errno == EOPNOTSUPP) continue;  // no discard support
                        result["error"] = kiln::errno_text(errno);
                      } else {
                        result["trimmed"] = range.len;
                        result["minimum"] = range.minlen;
                      }
                      results.push_back(std::move(result));
                    }
                    return Json{{"paths", results}};
                  }});

  dispatcher.add({"guest-get-fsinfo", {}, [&paths](const Json&) {
                    Json list = Json::array();
                    for (const auto& mount : real_mounts(paths)) {
                      std::string sys_path = real_path(fmt::format("{}/dev/block/{}:{}", paths.sysfs_root, mount.major, mount.minor));
                      Json info = {{"mountpoint", mount.mountpoint}, {"type", mount.fstype}, {"disk", Json::array()}};
                      info["name"] = sys_path.empty() ? base_name(mount.device) : base_name(sys_path);
                      if (!sys_path.empty()) collect_disks(sys_path, info["disk"], 0);
                      struct statvfs stats;
                      if (::statvfs(mount.mountpoint.c_str(), &stats) == 0) {
                        std::uint64_t block = stats.f_frsize;
                        info["total-bytes"] = std::uint64_t(stats.f_blocks - (stats.f_bfree - stats.f_bavail)) * block;
                        info["used-bytes"] = std::uint64_t(stats.f_blocks - stats.f_bfree) * block;
                        info["total-bytes-privileged"] = std::uint64_t(stats.f_blocks) * block;
                      }
                      list.push_back(std::move(info));
                    }
                    return list;
                  }});

  dispatcher.add({"guest-get-disks", {}, [&paths](const Json&) {
                    Json list = Json::array();
                    std::string block_dir = paths.sysfs_root + "/block";
                    for (const auto& name : list_directory(block_dir)) {
                      std::string sys_path = real_path(block_dir + "/" + name);
                      if (sys_path.empty()) continue;
                      // Virtual devices (loop, dm, ram) are listed when in use, without an address.
                      bool is_virtual = sys_path.find("/virtual/") != std::string::npos;
                      if (is_virtual && std::strtoull(read_text_file(sys_path + "/size").value_or("0").c_str(), nullptr, 10) == 0) continue;
                      Json disk = {{"name", "/dev/" + name}, {"partition", false}, {"dependencies", Json::array()}};
                      for (const auto& slave : list_directory(sys_path + "/slaves")) disk["dependencies"].push_back("/dev/" + slave);
                      if (!is_virtual) disk["address"] = disk_address(sys_path, name);
                      list.push_back(disk);
                      for (const auto& child : list_directory(sys_path)) {
                        if (::access((sys_path + "/" + child + "/partition").c_str(), F_OK) != 0) continue;
                        list.push_back({{"name", "/dev/" + child}, {"partition", true}, {"dependencies", {"/dev/" + name}}});
                      }
                    }
                    return list;
                  }});

  dispatcher.add({"guest-get-diskstats", {}, [&paths](const Json&) {
                    Json list = Json::array();
                    auto text = read_text_file(paths.proc_root + "/diskstats");
                    if (!text) throw CommandError(fmt::format("can't open {}/diskstats: {}", paths.proc_root, kiln::errno_text(errno)));
                    std::istringstream lines(*text);
                    std::string line;
                    static constexpr const char* kFields[] = {"read-ios", "read-merges", "read-sectors", "read-ticks",
                                                              "write-ios", "write-merges", "write-sectors", "write-ticks",
                                                              "ios-pgr", "total-ticks", "weight-ticks", "discard-ios",
                                                              "discard-merges", "discard-sectors", "discard-ticks",
                                                              "flush-ios", "flush-ticks"};
                    while (std::getline(lines, line)) {
                      std::istringstream fields(line);
                      std::uint64_t major, minor;
                      std::string name;
                      if (!(fields >> major >> minor >> name)) continue;
                      Json stats = Json::object();
                      std::uint64_t value;
                      for (const char* field : kFields) {
                        if (!(fields >> value)) break;
                        stats[field] = value;
                      }
                      list.push_back({{"name", name}, {"major", major}, {"minor", minor}, {"stats", stats}});
                    }
                    return list;
                  }});
}

}  // namespace kiln::ga
