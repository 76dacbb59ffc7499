// Session and housekeeping commands: open, close, reopen, flush, aio_flush,
// discard, truncate, sleep, quit, abort, sigraise and the blkdebug
// breakpoint commands (no Kiln driver supports breakpoints).
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <thread>

#include <fmt/format.h>

#include "commands.h"
#include "kiln/common/error.h"
#include "options.h"
#include "output.h"

namespace kiln::io {
namespace {

void report_error(std::string_view message) { err(fmt::format("{}: {}\n", program_invocation_short_name, message)); }

}  // namespace

int open_device(IoState& state, const DeviceOptions& options) {
  if (state.device) {
    report_error("file open already, try 'help close'");
    return -EBUSY;
  }
  try {
    state.device = Device::open(options);
  } catch (const Error& error) {
    // Option strings are not device names: qemu-io then says just "can't open".
    report_error(options.image_opts || options.filename.empty()
                     ? fmt::format("can't open: {}", error.what())
                     : fmt::format("can't open device {}: {}", options.filename, error.what()));
    return -EINVAL;
  }
  return 0;
}

int open_command(IoState& state, Args& args) {
  // Like qemu-io, `open` does not inherit the program options.
  DeviceOptions options;
  options.open.cache = kDefaultCacheMode;
  std::string option_string;
  int c;
  while ((c = next_option(args, "snCro:kt:d:i:U")) != -1) {
    switch (c) {
      case 's': options.snapshot = true; break;
      case 'n': options.open.cache = block::CacheMode::None; break;
      case 'C': options.copy_on_read = true; break;
      case 'r': options.open.read_only = true; break;
      case 'o':
        if (!option_string.empty()) option_string += ',';
        option_string += optarg;
        break;
      case 'k': options.native_aio = true; break;
      case 't':
        if (!apply_cache_option(options, optarg)) return -EINVAL;
        break;
      case 'd':
        if (!apply_discard_option(options, optarg)) return -EINVAL;
        break;
      case 'i':
        if (!apply_aio_option(options, optarg)) return -EINVAL;
        break;
      case 'U': options.open.force_share = true; break;
      default: return usage(args);
    }
  }
  if (!option_string.empty()) {
    // -o driver=raw,file.filename=x: the same keys as --image-opts.
    std::string path = static_cast<size_t>(optind) == args.size() - 1 ? args[optind] : "";
    options.image_opts = true;
    options.filename = path.empty() ? option_string : option_string + ",file.filename=" + escape_option_value(path);
    if (static_cast<size_t>(optind) < args.size() - 1) return usage(args);
    if (!path.empty()) {
      // "open -o ... path" names a device, as qemu-io reports it.
      if (state.device) return open_device(state, options);
      try {
        state.device = Device::open(options);
      } catch (const Error& error) {
        report_error(fmt::format("can't open device {}: {}", path, error.what()));
        return -EINVAL;
      }
      return 0;
    }
    return open_device(state, options);
  }
  if (static_cast<size_t>(optind) != args.size() - 1) return usage(args);
  options.image_opts = false;
  options.filename = args[optind];
  return open_device(state, options);
}

int close_command(IoState& state, Args&) {
  state.close();
  return 0;
}

int reopen_command(IoState& state, Args& args) {
  DeviceOptions options = state.device->options();
  bool read_only = false, read_write = false;
  int c;
  while ((c = next_option(args, "c:o:rw")) != -1) {
    switch (c) {
      case 'c': {
        auto mode = block::parse_cache_mode(optarg);
        if (!mode) {
          report_error(fmt::format("Invalid cache option: {}", optarg));
          return -EINVAL;
        }
        options.open.cache = *mode;
        break;
      }
      case 'o':
        // No Kiln driver has options that can change while open.
        for (auto& [key, value] : parse_key_value_list(optarg)) {
          report_error(fmt::format("Cannot change the option '{}'", key));
          return -EINVAL;
        }
        break;
      case 'r': read_only = true; break;
      case 'w': read_write = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) != args.size()) return usage(args);
  if (read_only && read_write) {
    report_error("Only one -r/-w option may be given");
    return -EINVAL;
  }
  if (read_only) options.open.read_only = true;
  if (read_write) options.open.read_only = false;
  if (options.snapshot) {
    report_error("Cannot reopen an image in snapshot mode: its temporary overlay would be lost");
    return -ENOTSUP;
  }
  const DeviceOptions previous = state.device->options();
  state.close();
  try {
    state.device = Device::open(options);
  } catch (const Error& error) {
    report_error(error.what());
    try {
      state.device = Device::open(previous);
    } catch (const Error&) {
    }
    return -EINVAL;
  }
  return 0;
}

int flush_command(IoState& state, Args&) { return state.device->flush(); }

int aio_flush_command(IoState& state, Args&) {
  state.aio.drain();
  return 0;
}

int discard_command(IoState& state, Args& args) {
  bool machine = false, quiet = false;
  int c;
  while ((c = next_option(args, "Cq")) != -1) {
    switch (c) {
      case 'C': machine = true; break;
      case 'q': quiet = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) != args.size() - 2) return usage(args);
  const int64_t offset = parse_number(args[optind]);
  if (offset < 0) {
    print_number_error(offset, args[optind]);
    return -EINVAL;
  }
  const int64_t bytes = parse_number(args[optind + 1]);
  if (bytes < 0) {
    print_number_error(bytes, args[optind + 1]);
    return -EINVAL;
  }
  if (static_cast<uint64_t>(bytes) > kMaxRequestBytes) {
    out(fmt::format("length cannot exceed {}, given {}\n", kMaxRequestBytes, args[optind + 1]));
    return -EINVAL;
  }
  const auto start = std::chrono::steady_clock::now();
  const int r = state.device->discard(static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes));
  if (r < 0) {
    out(fmt::format("discard failed: {}\n", errno_text(-r)));
    return r;
  }
  if (!quiet) {
    out(format_report("discard", std::chrono::steady_clock::now() - start, static_cast<uint64_t>(offset), static_cast<uint64_t>(bytes),
                      static_cast<uint64_t>(bytes), 1, machine));
  }
  return 0;
}

int truncate_command(IoState& state, Args& args) {
  block::Preallocation prealloc = block::Preallocation::Off;
  int c;
  while ((c = next_option(args, "m:")) != -1) {
    switch (c) {
      case 'm': {
        auto mode = block::parse_preallocation(optarg);
        if (!mode) {
          report_error(fmt::format("Invalid preallocation mode '{}'", optarg));
          return -EINVAL;
        }
        prealloc = *mode;
        break;
      }
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) >= args.size()) return usage(args);
  const int64_t size = parse_number(args[optind]);
  if (size < 0) {
    print_number_error(size, args[optind]);
    return -EINVAL;
  }
  try {
    state.aio.drain();
    state.device->truncate(static_cast<uint64_t>(size), prealloc);
  } catch (const Error& error) {
    report_error(error.what());
    return error.errno_value() ? -error.errno_value() : -EIO;
  }
  return 0;
}

int sleep_command(IoState&, Args& args) {
  char* end = nullptr;
  const long milliseconds = std::strtol(args[1], &end, 0);
  if (milliseconds < 0 || *end != '\0') {
    out(fmt::format("{} is not a valid number\n", args[1]));
    return -EINVAL;
  }
  std::fflush(stdout);
  std::this_thread::sleep_for(std::chrono::milliseconds(milliseconds));
  return 0;
}

int quit_command(IoState& state, Args&) {
  state.quit = true;
  return 0;
}

int abort_command(IoState&, Args&) { std::abort(); }

int sigraise_command(IoState&, Args& args) {
  const int64_t signal_number = parse_number(args[1]);
  if (signal_number < 0) {
    print_number_error(signal_number, args[1]);
    return -EINVAL;
  }
  if (signal_number > NSIG) {
    out(fmt::format("signal argument '{}' is too large to be a valid signal\n", args[1]));
    return -EINVAL;
  }
  std::fflush(stdout);
  std::fflush(stderr);
  std::raise(static_cast<int>(signal_number));
  return 0;
}

int break_command(IoState&, Args&) {
  out(fmt::format("Could not set breakpoint: {}\n", errno_text(ENOTSUP)));
  return -ENOTSUP;
}

int remove_break_command(IoState&, Args& args) {
  out(fmt::format("Could not remove breakpoint {}: {}\n", args[1], errno_text(ENOTSUP)));
  return -ENOTSUP;
}

int resume_command(IoState&, Args&) {
  out(fmt::format("Could not resume request: {}\n", errno_text(ENOTSUP)));
  return -ENOTSUP;
}

// No request can ever stop at a breakpoint, so there is nothing to wait for.
int wait_break_command(IoState&, Args& args) {
  out(fmt::format("Could not wait for breakpoint {}: {}\n", args[1], errno_text(ENOTSUP)));
  return -ENOTSUP;
}

}  // namespace kiln::io
