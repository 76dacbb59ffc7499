// read, readv, aio_read.
#include <chrono>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "kiln/common/error.h"
#include "output.h"

namespace kiln::io {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kReadFill = 0xab;  // buffer contents before a read, to spot short reads

bool matches_pattern(std::span<const std::byte> data, int pattern) {
  const auto expected = static_cast<std::byte>(pattern);
  return std::all_of(data.begin(), data.end(), [&](std::byte b) { return b == expected; });
}

struct ReadFlags {
  bool machine = false;  // -C
  bool quiet = false;    // -q
  bool verbose = false;  // -v
  int pattern = -1;      // -P
};

// Pattern check, dump and report shared by readv and aio_read.
int finish_vector_read(std::span<const std::byte> data, uint64_t offset, const ReadFlags& flags, Clock::time_point start) {
  const auto elapsed = Clock::now() - start;
  int result = 0;
  std::string text;
  if (flags.pattern >= 0 && !matches_pattern(data, flags.pattern)) {
    text += fmt::format("Pattern verification failed at offset {}, {} bytes\n", offset, data.size());
    result = -EINVAL;
  }
  if (!flags.quiet) {
    if (flags.verbose) text += format_dump(data, offset);
    text += format_report("read", elapsed, offset, data.size(), data.size(), 1, flags.machine);
  }
  out(text);
  return result;
}

}  // namespace

int read_command(IoState& state, Args& args) {
  ReadFlags flags;
  bool vmstate = false, has_length = false, has_start = false;
  int64_t pattern_offset = 0, pattern_count = 0;
  int c;
  while ((c = next_option(args, "abCl:pP:qs:v")) != -1) {
    switch (c) {
      case 'a': case 'p': break;  // accepted for compatibility, no effect
      case 'b': vmstate = true; break;
      case 'C': flags.machine = true; break;
      case 'l':
        has_length = true;
        pattern_count = parse_number(optarg);
        if (pattern_count < 0) {
          print_number_error(pattern_count, optarg);
          return -EINVAL;
        }
        break;
      case 'P':
        flags.pattern = parse_pattern(optarg);
        if (flags.pattern < 0) return -EINVAL;
        break;
      case 'q': flags.quiet = true; break;
      case 's':
        has_start = true;
        pattern_offset = parse_number(optarg);
        if (pattern_offset < 0) {
          print_number_error(pattern_offset, optarg);
          return -EINVAL;
        }
        break;
      case 'v': flags.verbose = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) != args.size() - 2) return usage(args);
  const int64_t offset = parse_number(args[optind]);
  if (offset < 0) {
    print_number_error(offset, args[optind]);
    return -EINVAL;
  }
  const int64_t count = parse_number(args[optind + 1]);
  if (count < 0) {
    print_number_error(count, args[optind + 1]);
    return -EINVAL;
  }
  if (static_cast<uint64_t>(count) > kMaxRequestBytes) {
    out(fmt::format("length cannot exceed {}, given {}\n", kMaxRequestBytes, args[optind + 1]));
    return -EINVAL;
  }
  if (flags.pattern < 0 && (has_length || has_start)) return usage(args);
  if (!has_length) pattern_count = count - pattern_offset;
  if (pattern_count < 0 || pattern_count + pattern_offset > count) {
    out("pattern verification range exceeds end of read data\n");
    return -EINVAL;
  }
  if (vmstate) {
    if (offset % 512 != 0) {
      out(fmt::format("{} is not a sector-aligned value for 'offset'\n", offset));
      return -EINVAL;
    }
    if (count % 512 != 0) {
      out(fmt::format("{} is not a sector-aligned value for 'count'\n", count));
      return -EINVAL;
    }
  }
  IoBuffer buffer(static_cast<size_t>(count), state.misalign, kReadFill);
  const auto start = Clock::now();
  // No format keeps VM state yet, so -b fails as it does for raw images in qemu.
  const int r = vmstate ? -ENOTSUP : state.device->read(static_cast<uint64_t>(offset), buffer.span());
  if (r < 0) {
    out(fmt::format("read failed: {}\n", errno_text(-r)));
    return r;
  }
  const auto elapsed = Clock::now() - start;
  int result = 0;
  std::string text;
  if (flags.pattern >= 0 &&
      !matches_pattern(buffer.span().subspan(static_cast<size_t>(pattern_offset), static_cast<size_t>(pattern_count)), flags.pattern)) {
    text += fmt::format("Pattern verification failed at offset {}, {} bytes\n", offset + pattern_offset, pattern_count);
    result = -EINVAL;
  }
  if (!flags.quiet) {
    if (flags.verbose) text += format_dump(buffer.span(), static_cast<uint64_t>(offset));
    text += format_report("read", elapsed, static_cast<uint64_t>(offset), static_cast<uint64_t>(count), static_cast<uint64_t>(count), 1,
                          flags.machine);
  }
  out(text);
  return result;
}

int readv_command(IoState& state, Args& args) {
  ReadFlags flags;
  int c;
  while ((c = next_option(args, "CP:qv")) != -1) {
    switch (c) {
      case 'C': flags.machine = true; break;
      case 'P':
        flags.pattern = parse_pattern(optarg);
        if (flags.pattern < 0) return -EINVAL;
        break;
      case 'q': flags.quiet = true; break;
      case 'v': flags.verbose = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) + 2 > args.size()) return usage(args);
  const int64_t offset = parse_number(args[optind]);
  if (offset < 0) {
    print_number_error(offset, args[optind]);
    return -EINVAL;
  }
  const int64_t total = parse_vector_lengths(args, static_cast<size_t>(optind) + 1);
  if (total < 0) return -EINVAL;
  IoBuffer buffer(static_cast<size_t>(total), state.misalign, kReadFill);
  const auto start = Clock::now();
  const int r = state.device->read(static_cast<uint64_t>(offset), buffer.span());
  if (r < 0) {
    out(fmt::format("readv failed: {}\n", errno_text(-r)));
    return r;
  }
  return finish_vector_read(buffer.span(), static_cast<uint64_t>(offset), flags, start);
}

int aio_read_command(IoState& state, Args& args) {
  ReadFlags flags;
  int c;
  while ((c = next_option(args, "CP:iqv")) != -1) {
    switch (c) {
      case 'C': flags.machine = true; break;
      case 'P':
        flags.pattern = parse_pattern(optarg);
        if (flags.pattern < 0) return -EINVAL;
        break;
      case 'i': out("injecting invalid read request\n"); return 0;
      case 'q': flags.quiet = true; break;
      case 'v': flags.verbose = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) + 2 > args.size()) return usage(args);
  const int64_t offset = parse_number(args[optind]);
  if (offset < 0) {
    print_number_error(offset, args[optind]);
    return -EINVAL;
  }
  const int64_t total = parse_vector_lengths(args, static_cast<size_t>(optind) + 1);
  if (total < 0) return -EINVAL;
  auto buffer = std::make_shared<IoBuffer>(static_cast<size_t>(total), state.misalign, kReadFill);
  Device* device = state.device.get();
  const auto start = Clock::now();
  // Completion problems are reported but, as in qemu-io, do not fail the command.
  state.aio.submit([device, buffer, offset, flags, start] {
    const int r = device->read(static_cast<uint64_t>(offset), buffer->span());
    if (r < 0) {
      out(fmt::format("readv failed: {}\n", errno_text(-r)));
      return;
    }
    finish_vector_read(buffer->span(), static_cast<uint64_t>(offset), flags, start);
  });
  return 0;
}

}  // namespace kiln::io
