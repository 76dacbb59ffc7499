// Host name, OS, time, users, CPUs, memory blocks, load, network, devices and
// shutdown. Everything that changes the machine goes through SystemPaths.
#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <utmpx.h>

#include <bit>
#include <cstdlib>
#include <map>
#include <sstream>

#include <fmt/format.h>

#include "internal.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"

namespace kiln::ga {

namespace {

bool write_text_file(const std::string& path, std::string_view text) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (!fd.valid()) return false;
  return ::write(fd.get(), text.data(), text.size()) == ssize_t(text.size());
}

Json os_info(const SystemPaths& paths) {
  Json info = Json::object();
  struct utsname names;
  if (::uname(&names) == 0) {
    info["kernel-release"] = names.release;
    info["kernel-version"] = names.version;
    info["machine"] = names.machine;
  }
  auto text = read_text_file(paths.os_release);
  if (!text) text = read_text_file("/usr/lib/os-release");
  if (!text) return info;
  static const std::map<std::string, const char*> kKeys = {
      {"ID", "id"}, {"NAME", "name"}, {"PRETTY_NAME", "pretty-name"}, {"VERSION", "version"},
      {"VERSION_ID", "version-id"}, {"VARIANT", "variant"}, {"VARIANT_ID", "variant-id"}};
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto key = kKeys.find(trim(line.substr(0, eq)));
    if (key == kKeys.end()) continue;
    std::string value = trim(line.substr(eq + 1));
    // Shell-style quoting: strip one level of quotes and backslash escapes.
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    std::string unescaped;
    for (size_t i = 0; i < value.size(); ++i) {
      if (value[i] == '\\' && i + 1 < value.size()) ++i;
      unescaped += value[i];
    }
    info[key->second] = unescaped;
  }
  return info;
}

Json logged_in_users() {
  std::map<std::string, double> earliest;
  std::vector<std::string> order;
  ::setutxent();
  while (utmpx* entry = ::getutxent()) {
    if (entry->ut_type != USER_PROCESS) continue;
    std::string user(entry->ut_user, ::strnlen(entry->ut_user, sizeof entry->ut_user));
    double login = double(entry->ut_tv.tv_sec) + double(entry->ut_tv.tv_usec) / 1e6;
    auto [it, inserted] = earliest.emplace(user, login);
    if (inserted) order.push_back(user);
    else if (login < it->second) it->second = login;
  }
  ::endutxent();
  Json users = Json::array();
  for (const auto& user : order) users.push_back({{"user", user}, {"login-time", earliest[user]}});
  return users;
}

Json vcpus(const SystemPaths& paths) {
  Json list = Json::array();
  std::string dir = paths.sysfs_root + "/devices/system/cpu";
  std::vector<std::pair<long, std::string>> cpus;
  for (const auto& name : list_directory(dir)) {
    char* end = nullptr;
    if (name.size() < 4 || name.compare(0, 3, "cpu") != 0) continue;
    long id = std::strtol(name.c_str() + 3, &end, 10);
    if (*end != '\0' || end == name.c_str() + 3) continue;
    cpus.push_back({id, name});
  }
  std::sort(cpus.begin(), cpus.end());
  for (const auto& [id, name] : cpus) {
    auto online = read_text_file(dir + "/" + name + "/online");
    Json cpu = {{"logical-id", id}};
    // Without an "online" file the CPU cannot be taken offline (usually cpu0).
    cpu["online"] = online ? trim(*online) == "1" : true;
    cpu["can-offline"] = online.has_value();
    list.push_back(cpu);
  }
  return list;
}

std::int64_t set_vcpus(const SystemPaths& paths, const Json& requested) {
  std::int64_t processed = 0;
  for (size_t i = 0; i < requested.size(); ++i) {
    const Json& cpu = requested[i];
    std::string where = fmt::format("vcpus[{}]", i);
    if (!cpu.is_object()) qmp::throw_bad_type(where, ParamType::Object);
    auto id_it = cpu.find("logical-id");
    auto online_it = cpu.find("online");
    if (id_it == cpu.end()) throw CommandError(fmt::format("Parameter '{}.logical-id' is missing", where));
    if (!qmp::matches_type(*id_it, ParamType::Int)) qmp::throw_bad_type(where + ".logical-id", ParamType::Int);
    if (online_it == cpu.end()) throw CommandError(fmt::format("Parameter '{}.online' is missing", where));
    if (!online_it->is_boolean()) qmp::throw_bad_type(where + ".online", ParamType::Bool);
    std::int64_t id = id_it->get<std::int64_t>();
    bool want_online = online_it->get<bool>();
    std::string cpu_dir = fmt::format("{}/devices/system/cpu/cpu{}", paths.sysfs_root, id);
    std::string error;
    if (::access(cpu_dir.c_str(), F_OK) != 0) {
      error = fmt::format("logical processor #{} not found", id);
    } else {
      auto current = read_text_file(cpu_dir + "/online");
      if (!current) {
        if (!want_online) error = fmt::format("logical processor #{} can't be offlined", id);
      } else if ((trim(*current) == "1") != want_online &&
                 !write_text_file(cpu_dir + "/online", want_online ? "1" : "0")) {
        error = fmt::format("failed to write {}/online: {}", cpu_dir, kiln::errno_text(errno));
      }
    }
    if (!error.empty()) {
      if (processed == 0) throw CommandError(error);
      break;
    }
    ++processed;
  }
  return processed;
}

Json memory_blocks(const SystemPaths& paths) {
  Json list = Json::array();
  std::string dir = paths.sysfs_root + "/devices/system/memory";
  for (const auto& name : list_directory(dir)) {
    if (name.compare(0, 6, "memory") != 0) continue;
    char* end = nullptr;
    unsigned long long index = std::strtoull(name.c_str() + 6, &end, 10);
    if (*end != '\0' || end == name.c_str() + 6) continue;
    auto state = read_text_file(dir + "/" + name + "/state");
    Json block = {{"phys-index", index}, {"online", state && trim(*state) == "online"}};
    if (auto removable = read_text_file(dir + "/" + name + "/removable")) block["can-offline"] = trim(*removable) == "1";
    list.push_back(block);
  }
  return list;
}

Json set_memory_blocks(const SystemPaths& paths, const Json& blocks) {
  Json responses = Json::array();
  for (size_t i = 0; i < blocks.size(); ++i) {
    const Json& block = blocks[i];
    std::string where = fmt::format("mem-blks[{}]", i);
    if (!block.is_object()) qmp::throw_bad_type(where, ParamType::Object);
    auto index_it = block.find("phys-index");
    auto online_it = block.find("online");
    if (index_it == block.end() || !qmp::matches_type(*index_it, ParamType::Uint)) qmp::throw_bad_type(where + ".phys-index", ParamType::Uint);
    if (online_it == block.end() || !online_it->is_boolean()) qmp::throw_bad_type(where + ".online", ParamType::Bool);
    std::uint64_t index = index_it->get<std::uint64_t>();
    std::string state_path = fmt::format("{}/devices/system/memory/memory{}/state", paths.sysfs_root, index);
    Json response = {{"phys-index", index}};
    auto state = read_text_file(state_path);
    if (!state) {
      response["response"] = errno == ENOENT ? "not-found" : "operation-failed";
      if (errno != ENOENT) response["error-code"] = errno;
    } else if ((trim(*state) == "online") != online_it->get<bool>()) {
      if (!write_text_file(state_path, online_it->get<bool>() ? "online" : "offline")) {
        response["response"] = "operation-failed";
        response["error-code"] = errno;
      } else {
        response["response"] = "success";
      }
    } else {
      response["response"] = "success";
    }
    responses.push_back(response);
  }
  return responses;
}

Json network_interfaces(const SystemPaths& paths) {
  ifaddrs* addresses = nullptr;
  if (::getifaddrs(&addresses) < 0) throw CommandError(fmt::format("getifaddrs failed: {}", kiln::errno_text(errno)));
  std::vector<std::string> order;
  std::map<std::string, Json> interfaces;
  for (ifaddrs* entry = addresses; entry; entry = entry->ifa_next) {
    std::string name = entry->ifa_name;
    auto [it, inserted] = interfaces.emplace(name, Json{{"name", name}});
    if (inserted) order.push_back(name);
    Json& interface = it->second;
    if (!entry->ifa_addr) continue;
    int family = entry->ifa_addr->sa_family;
    if (family == AF_PACKET) {
      auto* link = reinterpret_cast<sockaddr_ll*>(entry->ifa_addr);
      if (link->sll_halen == 6) {
        const unsigned char* mac = link->sll_addr;
        interface["hardware-address"] =
            fmt::format("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
      }
      continue;
    }
    if (family != AF_INET && family != AF_INET6) continue;
    char text[INET6_ADDRSTRLEN] = {};
    int prefix = 0;
    if (family == AF_INET) {
      ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(entry->ifa_addr)->sin_addr, text, sizeof text);
      if (entry->ifa_netmask) prefix = std::popcount(reinterpret_cast<sockaddr_in*>(entry->ifa_netmask)->sin_addr.s_addr);
    } else {
      ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(entry->ifa_addr)->sin6_addr, text, sizeof text);
      if (entry->ifa_netmask) {
        for (unsigned char byte : reinterpret_cast<sockaddr_in6*>(entry->ifa_netmask)->sin6_addr.s6_addr) prefix += std::popcount(byte);
      }
    }
    interface["ip-addresses"].push_back(
        {{"ip-address", text}, {"ip-address-type", family == AF_INET ? "ipv4" : "ipv6"}, {"prefix", prefix}});
  }
  ::freeifaddrs(addresses);

  // Statistics from /proc/net/dev: "name: rx_bytes rx_packets rx_errs rx_drop ... tx_bytes tx_packets tx_errs tx_drop ..."
  if (auto text = read_text_file(paths.proc_root + "/net/dev")) {
    std::istringstream lines(*text);
    std::string line;
    while (std::getline(lines, line)) {
      auto colon = line.find(':');
      if (colon == std::string::npos) continue;
      auto it = interfaces.find(trim(line.substr(0, colon)));
      if (it == interfaces.end()) continue;
      std::istringstream fields(line.substr(colon + 1));
      std::uint64_t values[16];
      int count = 0;
      while (count < 16 && fields >> values[count]) ++count;
      if (count < 12) continue;
      it->second["statistics"] = {{"rx-bytes", values[0]}, {"rx-packets", values[1]}, {"rx-errs", values[2]},
                                  {"rx-dropped", values[3]}, {"tx-bytes", values[8]}, {"tx-packets", values[9]},
                                  {"tx-errs", values[10]}, {"tx-dropped", values[11]}};
    }
  }
  Json list = Json::array();
  for (const auto& name : order) list.push_back(std::move(interfaces[name]));
  return list;
}

// PCI devices with their bound driver (qemu-ga has this on Windows only).
Json pci_devices(const SystemPaths& paths) {
  Json list = Json::array();
  std::string dir = paths.sysfs_root + "/bus/pci/devices";
  for (const auto& name : list_directory(dir)) {
    std::string device_dir = dir + "/" + name;
    char target[4096];
    ssize_t n = ::readlink((device_dir + "/driver").c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    std::string driver = target;
    driver = driver.substr(driver.rfind('/') + 1);
    Json device = {{"driver-name", driver}};
    auto vendor = read_text_file(device_dir + "/vendor");
    auto product = read_text_file(device_dir + "/device");
    if (vendor && product) {
      device["id"] = {{"type", "pci"},
                      {"vendor-id", std::strtoul(vendor->c_str(), nullptr, 16) & 0xffff},
                      {"device-id", std::strtoul(product->c_str(), nullptr, 16) & 0xffff}};
    }
    if (auto version = read_text_file(device_dir + "/driver/module/version")) device["driver-version"] = trim(*version);
    list.push_back(device);
  }
  return list;
}

Json cpu_stats(const SystemPaths& paths) {
  auto text = read_text_file(paths.proc_root + "/stat");
  if (!text) throw CommandError(fmt::format("can't open {}/stat: {}", paths.proc_root, kiln::errno_text(errno)));
  static constexpr const char* kFields[] = {"user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal", "guest", "guestnice"};
  Json list = Json::array();
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.compare(0, 3, "cpu") != 0 || line.size() < 4 || !std::isdigit((unsigned char)line[3])) continue;
    std::istringstream fields(line.substr(3));
    int cpu;
    fields >> cpu;
    Json stats = {{"type", "linux"}, {"cpu", cpu}};
    std::uint64_t value;
    int count = 0;
    for (const char* field : kFields) {
      if (!(fields >> value)) break;
      stats[field] = value;
      ++count;
    }
    if (count >= 4) list.push_back(stats);
  }
  return list;
}

// /proc/net/route and /proc/net/ipv6_route as GuestNetworkRoute entries.
std::string ipv4_from_hex(const std::string& hex) {
  std::uint32_t value = std::uint32_t(std::strtoul(hex.c_str(), nullptr, 16));  // network order, read little-endian
  char text[INET_ADDRSTRLEN] = {};
  in_addr address{value};
  ::inet_ntop(AF_INET, &address, text, sizeof text);
  return text;
}

std::string ipv6_from_hex(const std::string& hex) {
  in6_addr address{};
  for (size_t i = 0; i < 16 && 2 * i + 1 < hex.size(); ++i) {
    address.s6_addr[i] = std::uint8_t(std::strtoul(hex.substr(2 * i, 2).c_str(), nullptr, 16));
  }
  char text[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(AF_INET6, &address, text, sizeof text);
  return text;
}

Json network_routes(const SystemPaths& paths) {
  Json routes = Json::array();
  if (auto text = read_text_file(paths.proc_root + "/net/route")) {
    std::istringstream lines(*text);
    std::string line;
    std::getline(lines, line);  // header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string iface, destination, gateway, flags, refcnt, use, metric, mask, mtu, window, irtt;
      if (!(fields >> iface >> destination >> gateway >> flags >> refcnt >> use >> metric >> mask >> mtu >> window >> irtt)) continue;
      routes.push_back({{"iface", iface}, {"destination", ipv4_from_hex(destination)}, {"gateway", ipv4_from_hex(gateway)},
                        {"mask", ipv4_from_hex(mask)}, {"metric", std::stol(metric)}, {"flags", std::strtoull(flags.c_str(), nullptr, 16)},
                        {"refcnt", std::stol(refcnt)}, {"use", std::stol(use)}, {"mtu", std::stol(mtu)},
                        {"window", std::stol(window)}, {"irtt", std::stol(irtt)}, {"version", 4}});
    }
  }
  if (auto text = read_text_file(paths.proc_root + "/net/ipv6_route")) {
    std::istringstream lines(*text);
    std::string line;
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string destination, dest_prefix, source, source_prefix, next_hop, metric, refcnt, use, flags, iface;
      if (!(fields >> destination >> dest_prefix >> source >> source_prefix >> next_hop >> metric >> refcnt >> use >> flags >> iface)) continue;
      routes.push_back({{"iface", iface}, {"destination", ipv6_from_hex(destination)},
                        {"desprefixlen", std::to_string(std::strtoul(dest_prefix.c_str(), nullptr, 16))},
                        {"source", ipv6_from_hex(source)},
                        {"srcprefixlen", std::to_string(std::strtoul(source_prefix.c_str(), nullptr, 16))},
                        {"nexthop", ipv6_from_hex(next_hop)}, {"metric", std::int64_t(std::strtoul(metric.c_str(), nullptr, 16))},
                        {"refcnt", std::int64_t(std::strtoul(refcnt.c_str(), nullptr, 16))},
                        {"use", std::int64_t(std::strtoul(use.c_str(), nullptr, 16))},
                        {"flags", std::strtoull(flags.c_str(), nullptr, 16)}, {"version", 6}});
    }
  }
  return routes;
}

// guest-suspend-*: checks /sys/power/state for support, then asks systemd
// (systemctl from the helper folders) or, without it, writes /sys/power/state.
void suspend(const SystemPaths& paths, const std::string& mode) {
  auto states = read_text_file(paths.sysfs_root + "/power/state");
  auto supported = [&](const char* word) { return states && states->find(word) != std::string::npos; };
  bool ok = mode == "disk" ? supported("disk") : mode == "ram" ? supported("mem") : supported("mem") && supported("disk");
  if (!ok) throw CommandError("the requested suspend mode is not supported by the guest");
  const char* verb = mode == "disk" ? "hibernate" : mode == "ram" ? "suspend" : "hybrid-sleep";
  ::sync();
  try {
    int status = run_helper(paths, "systemctl", {verb});
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return;
  } catch (const CommandError&) {
    // No systemctl: fall back to the kernel interface below.
  }
  if (mode == "hybrid") throw CommandError("hybrid suspend needs systemd");
  if (!write_text_file(paths.sysfs_root + "/power/state", mode == "disk" ? "disk" : "mem")) {
    throw CommandError(fmt::format("failed to suspend: {}", kiln::errno_text(errno)));
  }
}

void run_checked(const SystemPaths& paths, const std::string& program, const std::vector<std::string>& args,
                 const std::string& failure, std::string_view input = {}) {
  int status = run_helper(paths, program, args, input);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) throw CommandError(failure);
}

}  // namespace

void register_system_commands(qmp::Dispatcher& dispatcher, const AgentConfig& config) {
  const SystemPaths& paths = config.paths;
  dispatcher.add({"guest-get-osinfo", {}, [&paths](const Json&) { return os_info(paths); }});
  dispatcher.add({"guest-get-host-name", {}, [](const Json&) {
                    char name[256] = {};
                    if (::gethostname(name, sizeof name - 1) < 0) {
                      throw CommandError(fmt::format("failed to get host name: {}", kiln::errno_text(errno)));
                    }
                    return Json{{"host-name", name}};
                  }});
  dispatcher.add({"guest-get-time", {}, [](const Json&) {
                    timespec now;
                    ::clock_gettime(CLOCK_REALTIME, &now);
                    return Json(std::int64_t(now.tv_sec) * 1000000000 + now.tv_nsec);
                  }});
  dispatcher.add({"guest-set-time", {{"time", ParamType::Int, true}}, [&paths](const Json& args) {
                    if (auto time = optional_arg<std::int64_t>(args, "time")) {
                      if (*time < 0) throw CommandError("Failed to set time to guest: Invalid argument");
                      timespec when{time_t(*time / 1000000000), long(*time % 1000000000)};
                      if (!paths.clock_file.empty()) {
                        // Test seam: record the time instead of changing the machine's clock.
                        std::FILE* out = std::fopen(paths.clock_file.c_str(), "w");
                        if (!out) throw CommandError(fmt::format("Failed to set time to guest: {}", kiln::errno_text(errno)));
                        fmt::print(out, "{}\n", *time);
                        std::fclose(out);
                      } else if (::clock_settime(CLOCK_REALTIME, &when) < 0) {
                        throw CommandError(fmt::format("Failed to set time to guest: {}", kiln::errno_text(errno)));
                      }
                      run_checked(paths, "hwclock", {"-w"}, "hwclock failed to set hardware clock to system time");
                    } else {
                      run_checked(paths, "hwclock", {"-s"}, "hwclock failed to set system time from hardware clock");
                    }
                    return Json::object();
                  }});
  dispatcher.add({"guest-get-timezone", {}, [](const Json&) {
                    time_t now = ::time(nullptr);
                    struct tm local;
                    ::localtime_r(&now, &local);
                    Json zone = {{"offset", std::int64_t(local.tm_gmtoff)}};
                    if (local.tm_zone) zone["zone"] = local.tm_zone;
                    return zone;
                  }});
  dispatcher.add({"guest-get-users", {}, [](const Json&) { return logged_in_users(); }});
  dispatcher.add({"guest-get-vcpus", {}, [&paths](const Json&) { return vcpus(paths); }});
  dispatcher.add({"guest-set-vcpus", {{"vcpus", ParamType::Array}}, [&paths](const Json& args) {
                    return Json(set_vcpus(paths, args["vcpus"]));
                  }});
  dispatcher.add({"guest-get-memory-blocks", {}, [&paths](const Json&) { return memory_blocks(paths); }});
  dispatcher.add({"guest-set-memory-blocks", {{"mem-blks", ParamType::Array}}, [&paths](const Json& args) {
                    return set_memory_blocks(paths, args["mem-blks"]);
                  }});
  dispatcher.add({"guest-get-memory-block-info", {}, [&paths](const Json&) {
                    std::string path = paths.sysfs_root + "/devices/system/memory/block_size_bytes";
                    auto text = read_text_file(path);
                    if (!text) throw CommandError(fmt::format("failed to open file '{}': {}", path, kiln::errno_text(errno)));
                    return Json{{"size", std::strtoull(text->c_str(), nullptr, 16)}};
                  }});
  dispatcher.add({"guest-get-load", {}, [&paths](const Json&) {
                    auto text = read_text_file(paths.proc_root + "/loadavg");
                    double load[3];
                    if (!text || std::sscanf(text->c_str(), "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) {
                      throw CommandError("cannot query load average");
                    }
                    return Json{{"load1m", load[0]}, {"load5m", load[1]}, {"load15m", load[2]}};
                  }});
  dispatcher.add({"guest-get-cpustats", {}, [&paths](const Json&) { return cpu_stats(paths); }});
  dispatcher.add({"guest-network-get-interfaces", {}, [&paths](const Json&) { return network_interfaces(paths); }});
  dispatcher.add({"guest-network-get-route", {}, [&paths](const Json&) { return network_routes(paths); }});
  for (const char* mode : {"disk", "ram", "hybrid"}) {
    dispatcher.add({std::string("guest-suspend-") + mode, {},
                    [&paths, mode](const Json&) {
                      suspend(paths, mode);
                      return Json::object();
                    },
                    false});
  }
  dispatcher.add({"guest-get-devices", {}, [&paths](const Json&) { return pci_devices(paths); }});
  dispatcher.add({"guest-shutdown", {{"mode", ParamType::Str, true}},
                  [&paths](const Json& args) {
                    std::string mode = optional_arg<std::string>(args, "mode").value_or("powerdown");
                    const char* flag = mode == "halt" ? "-H" : mode == "powerdown" ? "-P" : mode == "reboot" ? "-r" : nullptr;
                    if (!flag) throw CommandError("mode is invalid (valid values are: halt|powerdown|reboot");
                    ::sync();
                    run_checked(paths, "shutdown", {flag, "+0", "hypervisor initiated shutdown"},
                                "child process has failed to shutdown");
                    return Json::object();
                  },
                  false});
}

}  // namespace kiln::ga
