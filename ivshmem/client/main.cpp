// kiln-ivshmem-client: QEMU ivshmem-client compatible debugging client, with a
// scripted mode (-c) for tests and shell scripts.
#include <sys/epoll.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "session.h"

namespace {

constexpr const char* kProgram = "kiln-ivshmem-client";

void print_usage() {
  fmt::print(
      "Usage: {} [OPTION]...\n"
      "  -h: show this help\n"
      "  -v: verbose mode\n"
      "  -S <unix-socket-path>: path to the unix socket\n"
      "     to connect to.\n"
      "     default /tmp/ivshmem_socket\n"
      "  -c <command>: run a command instead of reading them from stdin; repeatable,\n"
      "     run in order, the first failing one ends the client with status 1\n"
      "  -t <seconds>: timeout of the handshake and default timeout of the wait-*\n"
      "     commands (default 10)\n"
      "Commands (interactive or -c):\n",
      kProgram);
  kiln::ivshmem::CommandRunner::print_help();
}

// Reads commands from stdin as they come, while serving the connection.
int run_interactive(kiln::ivshmem::EventLoop& loop, kiln::ivshmem::CommandRunner& runner) {
  const bool prompt = ::isatty(STDIN_FILENO) != 0;
  std::string pending;
  bool input_closed = false;
  auto show_prompt = [&] {
    if (prompt) {
      fmt::print("cmd> ");
      std::fflush(stdout);
    }
  };
  kiln::ivshmem::EventLoop::Handler on_input;
  on_input = [&](uint32_t) {
    char buffer[4096];
    ssize_t got = ::read(STDIN_FILENO, buffer, sizeof buffer);
    if (got <= 0) {
      if (got < 0 && errno == EINTR) return;
      input_closed = true;
      loop.remove(STDIN_FILENO);
      return;
    }
    pending.append(buffer, static_cast<size_t>(got));
    // Commands that wait run the loop themselves: stop reading input meanwhile
    // so that the next command cannot start inside the current one.
    loop.remove(STDIN_FILENO);
    for (size_t newline; !runner.quit_requested() && (newline = pending.find('\n')) != std::string::npos;) {
      std::string line = pending.substr(0, newline);
      pending.erase(0, newline + 1);
      try {
        runner.run(line);
      } catch (const kiln::Error& error) {
        // Interactive mistakes do not end the session.
        fmt::print(stderr, "{}: {}\n", kProgram, error.what());
      }
      if (!runner.quit_requested()) show_prompt();
    }
    loop.add(STDIN_FILENO, EPOLLIN, on_input);
  };
  loop.add(STDIN_FILENO, EPOLLIN, on_input);
  show_prompt();
  while (!input_closed && !runner.quit_requested()) loop.run_once(-1);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  bool help = false;
  bool verbose = false;
  std::string socket_path = "/tmp/ivshmem_socket";
  std::vector<std::string> commands;
  double timeout_seconds = 10;

  CLI::App app{"ivshmem client", kProgram};
  app.set_help_flag();
  app.add_flag("-h", help);
  app.add_flag("-v", verbose);
  app.add_option("-S", socket_path);
  app.add_option("-c", commands)->allow_extra_args(false);
  app.add_option("-t", timeout_seconds)->check(CLI::Range(0.0, 86400.0 * 365));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    fmt::print(stderr, "{}: {}\nTry '{} -h' for more information.\n", kProgram, error.what(), kProgram);
    return 1;
  }
  if (help) {
    print_usage();
    return 0;
  }
  if (verbose) kiln::log::set_level(kiln::log::Level::Info);
  const bool interactive = commands.empty();

  try {
    kiln::ivshmem::EventLoop loop;
    // Interactive users see events as they happen; scripts see them only with -v.
    auto notice = [interactive](const std::string& line) {
      if (interactive) {
        fmt::print("{}\n", line);
        std::fflush(stdout);
      } else {
        kiln::log::info("{}", line);
      }
    };
    kiln::ivshmem::ClientSession session(socket_path, loop, notice);
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds * 1000));
    session.connect(timeout);
    kiln::log::info("connected to '{}' as peer {}", socket_path, session.id());
    kiln::ivshmem::CommandRunner runner(session, timeout);
    if (interactive) return run_interactive(loop, runner);
    for (const std::string& command : commands) {
      runner.run(command);
      if (runner.quit_requested()) break;
      // Serve what arrived meanwhile (peer notices, interrupts) between commands.
      while (loop.run_once(0) > 0) {
      }
    }
  } catch (const kiln::Error& error) {
    std::fflush(stdout);
    fmt::print(stderr, "{}: {}\n", kProgram, error.what());
    return 1;
  }
  return 0;
}
