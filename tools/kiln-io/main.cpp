// kiln-io: a qemu-io compatible disk exerciser. Program options follow
// qemu-io's getopt syntax exactly (including where -c may appear and its
// error texts), which is why they are parsed with getopt_long rather than
// CLI11: scripts written for qemu-io must behave the same.
#include <getopt.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "commands.h"
#include "options.h"
#include "output.h"

namespace {

using namespace kiln::io;

constexpr const char* kUsage =
    "Usage: {0} [OPTIONS]... [-c STRING]... [file]\n"
    "Kiln disk exerciser (qemu-io compatible)\n"
    "\n"
    "  --object OBJECTDEF   not supported (refused)\n"
    "  --image-opts         treat file as option string\n"
    "  -c, --cmd STRING     execute command with its arguments\n"
    "                       from the given string\n"
    "  -f, --format FMT     specifies the block driver to use\n"
    "  -r, --read-only      export read-only\n"
    "  -s, --snapshot       use snapshot file\n"
    "  -n, --nocache        disable host cache, short for -t none\n"
    "  -C, --copy-on-read   enable copy-on-read\n"
    "  -m, --misalign       misalign allocations for O_DIRECT\n"
    "  -k, --native-aio     use kernel AIO implementation\n"
    "                       (Linux only, prefer use of -i)\n"
    "  -i, --aio=MODE       use AIO mode (threads, native or io_uring)\n"
    "  -t, --cache=MODE     use the given cache mode for the image\n"
    "  -d, --discard=MODE   use the given discard mode for the image\n"
    "  -T, --trace          not supported (refused)\n"
    "  -U, --force-share    force shared permissions\n"
    "  -h, --help           display this help and exit\n"
    "  -V, --version        output version information and exit\n"
    "\n"
    "See '{0} -c help' for information on available commands.\n";

void print_usage_text() { out(fmt::format(kUsage, program_invocation_short_name)); }

void fatal(std::string_view message) { err(fmt::format("{}: {}\n", program_invocation_short_name, message)); }

}  // namespace

int main(int argc, char** argv) {
  argv[0] = program_invocation_short_name;  // getopt's messages say "kiln-io: ...", as qemu-io's do
  static const option kLongOptions[] = {
      {"help", no_argument, nullptr, 'h'},          {"version", no_argument, nullptr, 'V'},
      {"cmd", required_argument, nullptr, 'c'},     {"format", required_argument, nullptr, 'f'},
      {"read-only", no_argument, nullptr, 'r'},     {"snapshot", no_argument, nullptr, 's'},
      {"nocache", no_argument, nullptr, 'n'},       {"copy-on-read", no_argument, nullptr, 'C'},
      {"misalign", no_argument, nullptr, 'm'},      {"native-aio", no_argument, nullptr, 'k'},
      {"aio", required_argument, nullptr, 'i'},     {"discard", required_argument, nullptr, 'd'},
      {"cache", required_argument, nullptr, 't'},   {"trace", required_argument, nullptr, 'T'},
      {"object", required_argument, nullptr, 'O'},  {"force-share", no_argument, nullptr, 'U'},
      {"image-opts", no_argument, nullptr, 'I'},    {nullptr, 0, nullptr, 0},
  };
  IoState state;
  DeviceOptions& options = state.defaults;
  options.open.cache = kDefaultCacheMode;
  std::vector<std::string> commands;
  bool format_given = false;
  int c;
  while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", kLongOptions, nullptr)) != -1) {
    switch (c) {
      case 's': options.snapshot = true; break;
      case 'n': options.open.cache = kiln::block::CacheMode::None; break;
      case 'C': options.copy_on_read = true; break;
      case 'd':
        if (!apply_discard_option(options, optarg)) return 1;
        break;
      case 'f': options.open.format = optarg; format_given = true; break;
      case 'c': commands.emplace_back(optarg); break;
      case 'r': options.open.read_only = true; break;
      case 'm': state.misalign = true; break;
      case 'k': options.native_aio = true; break;
      case 'i':
        if (!apply_aio_option(options, optarg)) return 1;
        break;
      case 't':
        if (!apply_cache_option(options, optarg)) return 1;
        break;
      case 'T': fatal("-T: tracing is not supported"); return 1;
      case 'O': fatal("--object: objects (secrets, encryption keys) are not supported"); return 1;
      case 'U': options.open.force_share = true; break;
      case 'I': options.image_opts = true; break;
      case 'V': out(fmt::format("{} version {}\n", program_invocation_short_name, KILN_VERSION)); return 0;
      case 'h': print_usage_text(); return 0;
      default: print_usage_text(); return 1;
    }
  }
  if (argc - optind > 1) {
    print_usage_text();
    return 1;
  }
  if (options.image_opts && format_given) {
    fatal("--image-opts and -f are mutually exclusive");
    return 1;
  }
  if (optind < argc) {
    DeviceOptions first = options;
    first.filename = argv[optind];
    if (open_device(state, first) < 0) return 1;
  }
  // Later `open` commands start from these defaults but name their own file.
  options.image_opts = false;

  bool failed = false;
  if (!commands.empty()) {
    for (const auto& command : commands) {
      if (state.quit) break;
      if (run_command_line(state, command) < 0) failed = true;
    }
  } else {
    std::string line;
    while (!state.quit) {
      out("qemu-io> ");  // the prompt scripts written for qemu-io wait for
      std::fflush(stdout);
      if (!std::getline(std::cin, line)) break;
      if (run_command_line(state, line) < 0) failed = true;
    }
  }
  state.close();
  std::fflush(stdout);
  return failed ? 1 : 0;
}
