#include "commands.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include <fmt/format.h>

#include "kiln/common/error.h"
#include "output.h"

namespace kiln::io {
namespace {

// Alphabetical, as `help` lists them.
constexpr Command kCommands[] = {
    {"abort", nullptr, abort_command, 0, 0, false, false, nullptr, "simulate a program crash using abort(3)"},
    {"aio_flush", nullptr, aio_flush_command, 0, 0, true, false, nullptr, "completes all outstanding aio requests"},
    {"aio_read", nullptr, aio_read_command, 2, -1, true, false, "[-Ciqv] [-P pattern] off len [len..]",
     "asynchronously reads a number of bytes"},
    {"aio_write", nullptr, aio_write_command, 2, -1, true, true, "[-Cfiquz] [-P pattern] off len [len..]",
     "asynchronously writes a number of bytes"},
    {"alloc", "a", alloc_command, 1, 2, true, false, "offset [count]", "checks if offset is allocated in the file"},
    {"break", nullptr, break_command, 2, 2, true, false, "event tag", "sets a breakpoint on event and tags the stopped request as tag"},
    {"close", "c", close_command, 0, 0, true, false, nullptr, "close the current open file"},
    {"discard", "d", discard_command, 2, -1, true, true, "[-Cq] off len", "discards a number of bytes at a specified offset"},
    {"flush", "f", flush_command, 0, 0, true, false, nullptr, "flush all in-core file state to disk"},
    {"help", "?", help_command, 0, 1, false, false, "[command]", "help for one or all commands"},
    {"info", "i", info_command, 0, 0, true, false, nullptr, "prints information about the current file"},
    {"length", "l", length_command, 0, 0, true, false, nullptr, "gets the length of the current file"},
    {"map", nullptr, map_command, 0, 0, true, false, "", "prints the allocated areas of a file"},
    {"open", "o", open_command, 1, -1, false, false, "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
     "open the file specified by path"},
    {"quit", "q", quit_command, 0, -1, false, false, nullptr, "exit the program"},
    {"read", "r", read_command, 2, -1, true, false, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
     "reads a number of bytes at a specified offset"},
    {"readv", nullptr, readv_command, 2, -1, true, false, "[-Cqv] [-P pattern] off len [len..]",
     "reads a number of bytes at a specified offset"},
    {"remove_break", nullptr, remove_break_command, 1, 1, true, false, "tag", "remove a breakpoint by tag"},
    {"reopen", nullptr, reopen_command, 0, -1, true, false, "[(-r|-w)] [-c cache] [-o options]", "reopens an image with new options"},
    {"resume", nullptr, resume_command, 1, 1, true, false, "tag", "resumes the request tagged as tag"},
    {"sigraise", nullptr, sigraise_command, 1, 1, false, false, "signal", "raises a signal"},
    {"sleep", nullptr, sleep_command, 1, 1, false, false, nullptr, "waits for the given value in milliseconds"},
    {"truncate", "t", truncate_command, 1, 3, true, true, "[-m prealloc_mode] off", "truncates the current file at the given offset"},
    {"wait_break", nullptr, wait_break_command, 1, 1, true, false, "tag", "waits for the suspension of a request"},
    {"write", "w", write_command, 2, -1, true, true, "[-bcCfnquz] [-P pattern | -s source_file] off len",
     "writes a number of bytes at a specified offset"},
    {"writev", nullptr, writev_command, 2, -1, true, true, "[-Cfq] [-P pattern] off len [len..]",
     "writes a number of bytes at a specified offset"},
};

std::string oneline_help(const Command& command, std::string_view name) {
  std::string text = fmt::format("{} ", name);
  if (command.args != nullptr) text += fmt::format("{} ", command.args);
  return text + fmt::format("-- {}\n", command.oneline);
}

int check_argument_count(const Command& command, int count) {
  if (count >= command.min_args && (command.max_args == -1 || count <= command.max_args)) return 0;
  std::string expected;
  if (command.max_args == -1) {
    expected = fmt::format("at least {} arguments", command.min_args);
  } else if (command.min_args == command.max_args) {
    expected = fmt::format("{} arguments", command.min_args);
  } else {
    expected = fmt::format("between {} and {} arguments", command.min_args, command.max_args);
  }
  err(fmt::format("bad argument count {} to {}, expected {}\n", count, command.name, expected));
  return -EINVAL;
}

}  // namespace

std::span<const Command> command_table() { return kCommands; }

const Command* find_command(std::string_view name) {
  for (const Command& command : kCommands) {
    if (name == command.name || (command.alias != nullptr && name == command.alias)) return &command;
  }
  return nullptr;
}

int print_usage(const Command& command) {
  out(oneline_help(command, command.name));
  return -EINVAL;
}

int usage(const Args& args) {
  const Command* command = find_command(args[0]);
  out(oneline_help(*command, args[0]));
  return -EINVAL;
}

int next_option(Args& args, const char* optstring) {
  return getopt(static_cast<int>(args.size()), args.data(), optstring);
}

int run_command_line(IoState& state, const std::string& line) {
  // Words are separated by spaces only, as in qemu-io (no quoting).
  std::vector<std::string> words;
  size_t position = 0;
  while (position < line.size()) {
    const size_t end = std::min(line.find(' ', position), line.size());
    if (end > position) words.push_back(line.substr(position, end - position));
    position = end + 1;
  }
  if (words.empty()) return 0;
  const Command* command = find_command(words[0]);
  if (command == nullptr) {
    err(fmt::format("command \"{}\" not found\n", words[0]));
    return -EINVAL;
  }
  if (command->needs_file && !state.device) {
    err("no file open, try 'help open'\n");
    return -EINVAL;
  }
  if (command->needs_write && state.device && state.device->read_only()) {
    err(fmt::format("{}: Block node is read-only\n", program_invocation_short_name));
    return -EPERM;
  }
  if (int r = check_argument_count(*command, static_cast<int>(words.size()) - 1); r < 0) return r;
  Args args(words);
  optind = 0;  // glibc: reinitialise getopt for a new argument vector
  opterr = 1;
  // Anything a command did not report itself still ends as one line.
  try {
    return command->function(state, args);
  } catch (const Error& error) {
    err(fmt::format("{}: {}\n", program_invocation_short_name, error.what()));
    return error.errno_value() != 0 ? -error.errno_value() : -EIO;
  } catch (const std::bad_alloc&) {
    err(fmt::format("{}: {}: {}\n", program_invocation_short_name, words[0], errno_text(ENOMEM)));
    return -ENOMEM;
  }
}

int help_command(IoState&, Args& args) {
  if (args.size() == 1) {
    std::string text;
    for (const Command& command : kCommands) text += oneline_help(command, command.name);
    text += "\nUse 'help commandname' for extended help.\n";
    out(text);
    return 0;
  }
  const Command* command = find_command(args[1]);
  if (command == nullptr) {
    out(fmt::format("command {} not found\n", args[1]));
    return -EINVAL;
  }
  out(oneline_help(*command, args[1]) + std::string(extended_help(command->name)));
  return 0;
}

void IoState::close() {
  aio.drain();
  device.reset();
}

IoBuffer::IoBuffer(size_t size, bool misalign, int fill) : storage_(nullptr, std::free), size_(size) {
  // -m: qemu-io offsets buffers by 16 bytes to exercise bounce paths.
  const size_t shift = misalign ? 16 : 0;
  const size_t allocation = (size + shift + 4095) / 4096 * 4096 + 4096;
  storage_.reset(static_cast<std::byte*>(std::aligned_alloc(4096, allocation)));
  if (!storage_) throw std::bad_alloc();
  data_ = storage_.get() + shift;
  std::memset(data_, fill, size);
}

int64_t parse_vector_lengths(Args& args, size_t first) {
  uint64_t total = 0;
  for (size_t i = first; i < args.size(); ++i) {
    const int64_t length = parse_number(args[i]);
    if (length < 0) {
      print_number_error(length, args[i]);
      return -EINVAL;
    }
    if (static_cast<uint64_t>(length) > kMaxRequestBytes) {
      out(fmt::format("Argument '{}' exceeds maximum size {}\n", args[i], kMaxRequestBytes));
      return -EINVAL;
    }
    if (total > kMaxRequestBytes - static_cast<uint64_t>(length)) {
      out(fmt::format("The total number of bytes exceed the maximum size {}\n", kMaxRequestBytes));
      return -EINVAL;
    }
    total += static_cast<uint64_t>(length);
  }
  return static_cast<int64_t>(total);
}

}  // namespace kiln::io
