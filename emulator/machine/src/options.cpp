#include "kiln/machine/options.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <map>

#include "kiln/common/error.h"

namespace kiln::machine {

namespace {

// Options taking a value; everything else qemu-like is a flag.
const std::map<std::string, bool, std::less<>> kOptions = {
    {"m", true},       {"kernel", true}, {"append", true},  {"initrd", true}, {"serial", true},
    {"display", true}, {"monitor", true}, {"device", true}, {"accel", true},  {"smp", true},
    {"d", true},       {"D", true},       {"machine", true}, {"M", true},
    {"nographic", false}, {"no-reboot", false}, {"enable-kvm", false}, {"help", false}, {"h", false},
    {"version", false},
};

uint64_t parse_number(std::string_view text, std::string_view what) {
  uint64_t value = 0;
  int base = 10;
  if (text.starts_with("0x") || text.starts_with("0X")) {
    text.remove_prefix(2);
    base = 16;
  }
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (ec != std::errc{} || end != text.data() + text.size() || text.empty())
    throw invalid_argument("{}", what);
  return value;
}

void parse_device(std::string_view spec, MachineConfig& config) {
  const size_t comma = spec.find(',');
  const std::string_view driver = spec.substr(0, comma);
  if (driver != "isa-debug-exit") throw invalid_argument("-device {}: '{}' is not a valid device model name", spec, driver);
  if (config.debug_exit) throw invalid_argument("-device {}: only one isa-debug-exit is supported", spec);
  DebugExitConfig device;
  std::string_view rest = comma == std::string_view::npos ? std::string_view{} : spec.substr(comma + 1);
  while (!rest.empty()) {
    const size_t next = rest.find(',');
    const std::string_view item = rest.substr(0, next);
    rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
    const size_t eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    const std::string_view value = eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
    if (key != "iobase" && key != "iosize")
      throw invalid_argument("-device {}: Property 'isa-debug-exit.{}' not found", spec, key);
    const std::string bad = fmt::format("-device {}: Property 'isa-debug-exit.{}' doesn't take value '{}'", spec, key, value);
    const uint64_t n = parse_number(value, bad);
    if (key == "iobase") {
      if (n > 0xffff) throw invalid_argument("{}", bad);
      device.iobase = static_cast<uint16_t>(n);
    } else {
      if (n != 1 && n != 2 && n != 4) throw invalid_argument("{}", bad);
      device.iosize = static_cast<uint16_t>(n);
    }
  }
  if (uint32_t{device.iobase} + device.iosize > 0x10000) throw invalid_argument("-device {}: ports out of range", spec);
  config.debug_exit = device;
}

void parse_accel(std::string_view value, const std::string& kvm_device) {
  const std::string_view name = value.substr(0, value.find(','));
  if (name == "tcg") return;
  if (name == "kvm") {
    if (::access(kvm_device.c_str(), R_OK | W_OK) != 0)
      throw system_error(errno, "-accel {}: KVM is not available ({})", value, kvm_device);
    throw invalid_argument("-accel {}: KVM acceleration is not implemented yet (use -accel tcg)", value);
  }
  throw invalid_argument("-accel {}: invalid accelerator {}", value, name);
}

void parse_machine(std::string_view value, const std::string& kvm_device) {
  std::string_view rest = value;
  bool first = true;
  while (!rest.empty()) {
    const size_t next = rest.find(',');
    const std::string_view item = rest.substr(0, next);
    rest = next == std::string_view::npos ? std::string_view{} : rest.substr(next + 1);
    if (item.starts_with("accel=")) {
      parse_accel(item.substr(6), kvm_device);
    } else if (first || item.starts_with("type=")) {
      const std::string_view type = item.starts_with("type=") ? item.substr(5) : item;
      // Both are run as the one PC machine Kiln has (i440FX-era ISA devices).
      if (type != "pc" && type != "q35" && !type.starts_with("pc-")) throw invalid_argument("unsupported machine type");
    } else {
      throw invalid_argument("-machine {}: Property '{}' not supported", value, item.substr(0, item.find('=')));
    }
    first = false;
  }
}

}  // namespace

uint64_t parse_memory_size(std::string_view text) {
  std::string_view value = text;
  if (value.starts_with("size=")) value.remove_prefix(5);
  const std::string bad = fmt::format(
      "-m {}: Parameter 'size' expects a non-negative number below 2^64\n"
      "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
      "and exabytes, respectively.",
      text);
  if (value.empty()) throw invalid_argument("{}", bad);
  unsigned shift = 20;  // no suffix: MiB
  const char suffix = value.back();
  if (suffix < '0' || suffix > '9') {
    switch (suffix) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      case 'b': case 'B': shift = 0; break;
      default: throw invalid_argument("{}", bad);
    }
    value.remove_suffix(1);
  }
  // Fractions such as 1.5G are allowed by qemu.
  double number = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), number);
  if (ec != std::errc{} || end != value.data() + value.size() || number < 0) throw invalid_argument("{}", bad);
  const double bytes = number * static_cast<double>(uint64_t{1} << shift);
  if (bytes >= 18446744073709551616.0) throw invalid_argument("{}", bad);
  return static_cast<uint64_t>(bytes);
}

CommandLine parse_command_line(const std::vector<std::string>& args, const std::string& kvm_device) {
  // qemu spells long options with one dash and values may start with '-':
  // normalise to "--name=value" for CLI11.
  std::vector<std::string> normalised;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg.size() < 2 || arg[0] != '-') throw invalid_argument("{}: disk images are not supported yet", arg);
    std::string name = arg.substr(arg[1] == '-' ? 2 : 1);
    std::string value;
    const size_t eq = name.find('=');
    bool has_value = false;
    if (eq != std::string::npos && arg[1] == '-') {
      value = name.substr(eq + 1);
      name.resize(eq);
      has_value = true;
    }
    const auto it = kOptions.find(name);
    if (it == kOptions.end()) throw invalid_argument("{}: invalid option", arg);
    if (it->second && !has_value) {
      if (i + 1 >= args.size()) throw invalid_argument("{}: requires an argument", arg);
      value = args[++i];
      has_value = true;
    }
    if (name == "M") name = "machine";
    if (name == "h") name = "help";
    if (name == "enable-kvm") {
      name = "accel";
      value = "kvm";
      has_value = true;
    }
    normalised.push_back(has_value ? fmt::format("--{}={}", name, value) : "--" + name);
  }

  CLI::App app{"kiln-system-x86_64: a PC emulator (qemu-system-x86_64 command line)", "kiln-system-x86_64"};
  app.set_help_flag();  // handled below so qemu's -h/-help work
  std::string memory = "128M", kernel, append, initrd, display, monitor, accel = "tcg", smp = "1", log_items, log_file,
              machine = "pc";
  std::vector<std::string> serial, devices;
  bool nographic = false, no_reboot = false, help = false, version = false;
  app.add_option("--m", memory, "RAM size (default 128M; suffixes k, M, G)");
  app.add_option("--kernel", kernel, "Multiboot kernel to boot");
  app.add_option("--append", append, "kernel command line");
  app.add_option("--initrd", initrd, "Multiboot modules: \"file1 args,file2\"");
  app.add_option("--serial", serial, "serial port backend: stdio, mon:stdio, file:PATH, unix:PATH[,server,nowait], none")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--display", display, "display: none");
  app.add_option("--monitor", monitor, "monitor: none");
  app.add_option("--device", devices, "isa-debug-exit[,iobase=N][,iosize=N]")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--accel", accel, "accelerator: tcg (kvm later)");
  app.add_option("--smp", smp, "number of CPUs: 1");
  app.add_option("--d", log_items, "log items: in_asm,op,op_opt,exec,cpu");
  app.add_option("--D", log_file, "log file (default stderr)");
  app.add_option("--machine", machine, "machine type: pc or q35 (the same PC)");
  app.add_flag("--nographic", nographic, "no display; serial port on stdio (Ctrl-A x quits)");
  app.add_flag("--no-reboot", no_reboot, "exit instead of rebooting");
  app.add_flag("--help", help, "show this help");
  app.add_flag("--version", version, "show the version");
  std::vector<std::string> reversed(normalised.rbegin(), normalised.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    throw invalid_argument("{}", e.what());
  }

  CommandLine result;
  if (help) {
    fmt::print("{}", app.help());
    result.exit_now = true;
    return result;
  }
  if (version) {
    fmt::print("kiln-system-x86_64 version 0.1.0 (command line of QEMU emulator version 7.2)\n");
    result.exit_now = true;
    return result;
  }
  MachineConfig& c = result.config;
  c.ram_size = parse_memory_size(memory);
  c.kernel = kernel;
  c.append = append;
  c.initrd = initrd;
  if (c.kernel.empty() && !c.initrd.empty()) throw invalid_argument("-initrd only allowed with -kernel option");
  if (c.kernel.empty() && !c.append.empty()) throw invalid_argument("-append only allowed with -kernel option");
  for (const std::string& s : serial) c.serial.push_back(s);
  if (!display.empty() && display != "none")
    throw invalid_argument("-display {}: only 'none' is available (there is no graphical display yet)", display);
  if (!monitor.empty() && monitor != "none")
    throw invalid_argument("-monitor {}: the monitor is not supported yet (only 'none')", monitor);
  for (const std::string& d : devices) parse_device(d, c);
  parse_accel(accel, kvm_device);
  parse_machine(machine, kvm_device);
  {
    std::string_view cpus = smp;
    if (cpus.starts_with("cpus=")) cpus.remove_prefix(5);
    if (cpus != "1") throw invalid_argument("-smp {}: only one CPU is supported yet", smp);
  }
  if (!log_items.empty()) c.log_mask = emu::parse_log_mask(log_items);
  c.log_file = log_file;
  c.no_reboot = no_reboot;
  // -nographic puts the first serial port on stdio (with qemu's Ctrl-A
  // escapes, the monitor multiplexer's) unless -serial says otherwise.
  if (nographic && c.serial.empty()) c.serial.push_back("mon:stdio");
  // Otherwise qemu's default COM1 is a virtual console; without a display that
  // is a UART whose output goes nowhere.
  if (c.serial.empty()) c.serial.push_back("null");
  if (c.serial.size() > 4) throw invalid_argument("-serial: too many serial ports (at most 4)");
  int stdio_users = 0;
  for (const std::string& s : c.serial) stdio_users += s == "stdio" || s == "mon:stdio";
  if (stdio_users > 1) throw invalid_argument("cannot use stdio by multiple character devices");
  return result;
}

}  // namespace kiln::machine
