// write, writev, aio_write.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "kiln/common/error.h"
#include "kiln/common/fd.h"
#include "output.h"

namespace kiln::io {
namespace {

using Clock = std::chrono::steady_clock;
constexpr int kDefaultWritePattern = 0xcd;

void print_write_report(uint64_t offset, uint64_t count, Clock::time_point start, bool quiet, bool machine) {
  const auto elapsed = Clock::now() - start;
  if (!quiet) out(format_report("wrote", elapsed, offset, count, count, 1, machine));
}

// write -s: the file's bytes, repeated until the buffer is full.
std::unique_ptr<IoBuffer> buffer_from_file(const char* name, size_t count, bool misalign) {
  std::FILE* file = std::fopen(name, "r");
  if (file == nullptr) {
    err(fmt::format("{}: {}\n", name, errno_text(errno)));
    return nullptr;
  }
  auto buffer = std::make_unique<IoBuffer>(count, misalign, 0);
  const size_t got = std::fread(buffer->data(), 1, count, file);
  const bool failed = std::ferror(file) != 0;
  std::fclose(file);
  if (failed) {
    err(fmt::format("{}: {}\n", name, errno_text(EIO)));
    return nullptr;
  }
  if (got == 0 && count > 0) {
    err(fmt::format("{}: file is empty\n", name));
    return nullptr;
  }
  for (size_t filled = got; filled < count && got > 0;) {
    const size_t chunk = std::min(filled, count - filled);  // doubling copy
    std::memcpy(buffer->data() + filled, buffer->data(), chunk);
    filled += chunk;
  }
  return buffer;
}

}  // namespace

int write_command(IoState& state, Args& args) {
  bool vmstate = false, compressed = false, machine = false, fua = false, no_fallback = false, quiet = false, unmap = false,
       zeroes = false, has_pattern = false, from_file = false;
  int pattern = kDefaultWritePattern;
  const char* file_name = nullptr;
  int c;
  while ((c = next_option(args, "bcCfnpP:qs:uz")) != -1) {
    switch (c) {
      case 'b': vmstate = true; break;
      case 'c': compressed = true; break;
      case 'C': machine = true; break;
      case 'f': fua = true; break;
      case 'n': no_fallback = true; break;
      case 'p': break;  // accepted for compatibility, no effect
      case 'P':
        has_pattern = true;
        pattern = parse_pattern(optarg);
        if (pattern < 0) return -EINVAL;
        break;
      case 'q': quiet = true; break;
      case 's': from_file = true; file_name = optarg; break;
      case 'u': unmap = true; break;
      case 'z': zeroes = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) != args.size() - 2) return usage(args);
  if (vmstate && zeroes) {
    out("-b and -z cannot be specified at the same time\n");
    return -EINVAL;
  }
  if (fua && (vmstate || compressed)) {
    out("-f and -b or -c cannot be specified at the same time\n");
    return -EINVAL;
  }
  if (no_fallback && !zeroes) {
    out("-n requires -z to be specified\n");
    return -EINVAL;
  }
  if (unmap && !zeroes) {
    out("-u requires -z to be specified\n");
    return -EINVAL;
  }
  if (int(zeroes) + int(has_pattern) + int(from_file) > 1) {
    out("Only one of -z, -P, and -s can be specified at the same time\n");
    return -EINVAL;
  }
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
  if (static_cast<uint64_t>(count) > kMaxRequestBytes && !no_fallback) {
    out(fmt::format("length cannot exceed {} without -n, given {}\n", kMaxRequestBytes, args[optind + 1]));
    return -EINVAL;
  }
  if (vmstate || compressed) {
    if (offset % 512 != 0) {
      out(fmt::format("{} is not a sector-aligned value for 'offset'\n", offset));
      return -EINVAL;
    }
    if (count % 512 != 0) {
      out(fmt::format("{} is not a sector-aligned value for 'count'\n", count));
      return -EINVAL;
    }
  }
  std::unique_ptr<IoBuffer> buffer;
  if (!zeroes) {
    if (from_file) {
      buffer = buffer_from_file(file_name, static_cast<size_t>(count), state.misalign);
      if (!buffer) return -EINVAL;
    } else {
      buffer = std::make_unique<IoBuffer>(static_cast<size_t>(count), state.misalign, pattern);
    }
  }
  const auto start = Clock::now();
  int r;
  if (zeroes) {
    r = state.device->write_zeroes(static_cast<uint64_t>(offset), static_cast<uint64_t>(count), unmap, no_fallback, fua);
  } else if (vmstate) {
    r = -ENOTSUP;  // no format keeps VM state yet
  } else if (compressed) {
    r = state.device->write_compressed(static_cast<uint64_t>(offset), buffer->span());
  } else {
    r = state.device->write(static_cast<uint64_t>(offset), buffer->span(), fua);
  }
  if (r < 0) {
    out(fmt::format("write failed: {}\n", errno_text(-r)));
    return r;
  }
  print_write_report(static_cast<uint64_t>(offset), static_cast<uint64_t>(count), start, quiet, machine);
  return 0;
}

int writev_command(IoState& state, Args& args) {
  bool machine = false, fua = false, quiet = false;
  int pattern = kDefaultWritePattern;
  int c;
  while ((c = next_option(args, "CfqP:")) != -1) {
    switch (c) {
      case 'C': machine = true; break;
      case 'f': fua = true; break;
      case 'q': quiet = true; break;
      case 'P':
        pattern = parse_pattern(optarg);
        if (pattern < 0) return -EINVAL;
        break;
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
  IoBuffer buffer(static_cast<size_t>(total), state.misalign, pattern);
  const auto start = Clock::now();
  const int r = state.device->write(static_cast<uint64_t>(offset), buffer.span(), fua);
  if (r < 0) {
    out(fmt::format("writev failed: {}\n", errno_text(-r)));
    return r;
  }
  print_write_report(static_cast<uint64_t>(offset), static_cast<uint64_t>(total), start, quiet, machine);
  return 0;
}

int aio_write_command(IoState& state, Args& args) {
  bool machine = false, fua = false, quiet = false, unmap = false, zeroes = false;
  int pattern = kDefaultWritePattern;
  int c;
  while ((c = next_option(args, "CfiqP:uz")) != -1) {
    switch (c) {
      case 'C': machine = true; break;
      case 'f': fua = true; break;
      case 'i': out("injecting invalid write request\n"); return 0;
      case 'q': quiet = true; break;
      case 'P':
        pattern = parse_pattern(optarg);
        if (pattern < 0) return -EINVAL;
        break;
      case 'u': unmap = true; break;
      case 'z': zeroes = true; break;
      default: return usage(args);
    }
  }
  if (static_cast<size_t>(optind) + 2 > args.size()) return usage(args);
  if (zeroes && static_cast<size_t>(optind) != args.size() - 2) {
    out("-z supports only a single length parameter\n");
    return -EINVAL;
  }
  if (unmap && !zeroes) {
    out("-u requires -z to be specified\n");
    return -EINVAL;
  }
  const int64_t offset = parse_number(args[optind]);
  if (offset < 0) {
    print_number_error(offset, args[optind]);
    return -EINVAL;
  }
  Device* device = state.device.get();
  if (zeroes) {
    const int64_t count = parse_number(args[optind + 1]);
    if (count < 0) {
      print_number_error(count, args[optind + 1]);
      return -EINVAL;
    }
    const auto start = Clock::now();
    state.aio.submit([=] {
      const int r = device->write_zeroes(static_cast<uint64_t>(offset), static_cast<uint64_t>(count), unmap, false, fua);
      if (r < 0) {
        out(fmt::format("aio_write failed: {}\n", errno_text(-r)));
        return;
      }
      print_write_report(static_cast<uint64_t>(offset), static_cast<uint64_t>(count), start, quiet, machine);
    });
    return 0;
  }
  const int64_t total = parse_vector_lengths(args, static_cast<size_t>(optind) + 1);
  if (total < 0) return -EINVAL;
  auto buffer = std::make_shared<IoBuffer>(static_cast<size_t>(total), state.misalign, pattern);
  const auto start = Clock::now();
  state.aio.submit([=] {
    const int r = device->write(static_cast<uint64_t>(offset), buffer->span(), fua);
    if (r < 0) {
      out(fmt::format("aio_write failed: {}\n", errno_text(-r)));
      return;
    }
    print_write_report(static_cast<uint64_t>(offset), static_cast<uint64_t>(total), start, quiet, machine);
  });
  return 0;
}

}  // namespace kiln::io
