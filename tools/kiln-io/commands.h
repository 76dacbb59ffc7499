// The command table and the state commands share. Each command parses its
// own options getopt-style (argv[0] is the command name, as in qemu-io) and
// returns 0 or a negative errno; any failure makes the exit status 1.
#pragma once

#include <getopt.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "aio.h"
#include "device.h"

namespace kiln::io {

struct IoState {
  std::unique_ptr<Device> device;
  AioQueue aio;
  bool quit = false;
  bool misalign = false;  // -m: buffers deliberately off page alignment
  // The program options' image settings.
  DeviceOptions defaults;

  // Waits for asynchronous requests, then closes the image.
  void close();
};

// argv-style words of one command; argv[size()] is nullptr as getopt expects.
class Args {
 public:
  explicit Args(std::vector<std::string>& words) {
    for (auto& word : words) argv_.push_back(word.data());
    argv_.push_back(nullptr);
  }
  size_t size() const { return argv_.size() - 1; }
  char* operator[](size_t index) const { return argv_[index]; }
  char** data() { return argv_.data(); }

 private:
  std::vector<char*> argv_;
};
using CommandFunction = int (*)(IoState& state, Args& args);

struct Command {
  const char* name;
  const char* alias;  // nullptr when none
  CommandFunction function;
  int min_args;
  int max_args;        // -1: unlimited
  bool needs_file;
  bool needs_write;    // refused on read-only images
  const char* args;    // synopsis, "" when none
  const char* oneline;
};

std::span<const Command> command_table();
const Command* find_command(std::string_view name);

// Splits a command line at spaces and runs it. Returns 0 or a negative errno.
int run_command_line(IoState& state, const std::string& line);

// "read [-abCqv] ... -- reads a number of bytes ..." (printed by usage errors).
int print_usage(const Command& command);
// Usage for the command named in args[0].
int usage(const Args& args);
std::string_view extended_help(std::string_view name);

// getopt over a command's arguments (restarts parsing for each command).
int next_option(Args& args, const char* optstring);

// I/O buffers: page-aligned (or deliberately misaligned with -m), filled with a pattern.
class IoBuffer {
 public:
  IoBuffer(size_t size, bool misalign, int fill);
  std::span<std::byte> span() { return {data_, size_}; }
  std::byte* data() { return data_; }
  size_t size() const { return size_; }

 private:
  std::unique_ptr<std::byte[], void (*)(void*)> storage_;
  std::byte* data_;
  size_t size_;
};

// Per-group command functions (cmd_*.cpp).
int read_command(IoState&, Args&);
int readv_command(IoState&, Args&);
int aio_read_command(IoState&, Args&);
int write_command(IoState&, Args&);
int writev_command(IoState&, Args&);
int aio_write_command(IoState&, Args&);
int aio_flush_command(IoState&, Args&);
int discard_command(IoState&, Args&);
int flush_command(IoState&, Args&);
int truncate_command(IoState&, Args&);
int length_command(IoState&, Args&);
int info_command(IoState&, Args&);
int map_command(IoState&, Args&);
int alloc_command(IoState&, Args&);
int open_command(IoState&, Args&);
int close_command(IoState&, Args&);
int reopen_command(IoState&, Args&);
int sleep_command(IoState&, Args&);
int help_command(IoState&, Args&);
int quit_command(IoState&, Args&);
int abort_command(IoState&, Args&);
int sigraise_command(IoState&, Args&);
int break_command(IoState&, Args&);
int remove_break_command(IoState&, Args&);
int resume_command(IoState&, Args&);
int wait_break_command(IoState&, Args&);

// Shared by read/readv/aio_read and write/writev/aio_write: parses
// "len [len..]" vector lengths, printing qemu-io's messages. Returns the total
// or a negative errno.
int64_t parse_vector_lengths(Args& args, size_t first);

}  // namespace kiln::io
