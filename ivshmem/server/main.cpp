// kiln-ivshmem-server: QEMU ivshmem-server compatible command line.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "kiln/common/size.h"
#include "server.h"

namespace {

constexpr const char* kProgram = "kiln-ivshmem-server";

std::string default_pid_file() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  return std::string(runtime != nullptr && *runtime != '\0' ? runtime : "/var/run") + "/ivshmem-server.pid";
}

void print_usage() {
  const kiln::ivshmem::ServerOptions defaults;
  fmt::print(
      "Usage: {} [OPTION]...\n"
      "  -h: show this help\n"
      "  -v: verbose mode\n"
      "  -F: foreground mode (default is to daemonize)\n"
      "  -p <pid-file>: path to the PID file (used in daemon mode only)\n"
      "     default {}\n"
      "  -S <unix-socket-path>: path to the unix socket to listen to\n"
      "     default {}\n"
      "  -M <shm-name>: POSIX shared memory object to use\n"
      "     default {}\n"
      "  -m <dir-name>: where to create shared memory\n"
      "  -l <size>: size of shared memory in bytes\n"
      "     suffixes K, M and G can be used, e.g. 1K means 1024\n"
      "     default {}\n"
      "  -n <nvectors>: number of vectors\n"
      "     default {}\n"
      "  --max-peers <count>: refuse clients beyond this many peers (Kiln extension)\n"
      "     default {}\n",
      kProgram, default_pid_file(), defaults.socket_path, defaults.shm_name, defaults.shm_size, defaults.vectors,
      defaults.max_peers);
}

[[noreturn]] void usage_error(const std::string& message) {
  fmt::print(stderr, "{}: {}\nTry '{} -h' for more information.\n", kProgram, message, kProgram);
  std::exit(1);
}

// Every peer costs 1 + vectors descriptors here, and descriptors in flight
// count against our limit: take all the kernel allows.
void raise_descriptor_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

std::string absolute(const std::string& path) { return std::filesystem::absolute(path).string(); }

// Writes the PID file (created or truncated, like QEMU's).
void write_pid_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw kiln::system_error(errno, "cannot open pid file '{}'", path);
  kiln::UniqueFd owned(fd);
  std::string text = fmt::format("{}\n", ::getpid());
  if (::write(fd, text.data(), text.size()) != static_cast<ssize_t>(text.size())) {
    throw kiln::system_error(errno, "cannot write pid file '{}'", path);
  }
}

// Detaches into the background. Returns in the daemon only; the parent exits
// with 0 once the daemon has written its PID file, 1 if it failed to.
void daemonize(const std::string& pid_file) {
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) < 0) throw kiln::system_error(errno, "cannot create a pipe");
  pid_t child = ::fork();
  if (child < 0) throw kiln::system_error(errno, "cannot fork");
  if (child > 0) {
    ::close(ready[1]);
    char status = 1;
    ssize_t got = ::read(ready[0], &status, 1);
    // _exit: the parent must not run the destructors that remove the socket and memory.
    ::_exit(got == 1 && status == 0 ? 0 : 1);
  }
  ::close(ready[0]);
  ::setsid();
  char status = 1;
  try {
    write_pid_file(pid_file);
    status = 0;
  } catch (const kiln::Error& error) {
    fmt::print(stderr, "{}: {}\n", kProgram, error.what());
  }
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0) {
    ::dup2(null, STDIN_FILENO);
    ::dup2(null, STDOUT_FILENO);
    ::dup2(null, STDERR_FILENO);
    ::close(null);
  }
  [[maybe_unused]] ssize_t written = ::write(ready[1], &status, 1);
  ::close(ready[1]);
  if (status != 0) throw kiln::Error(EIO, "the daemon could not start");
  if (::chdir("/") < 0) {
    // Paths were made absolute; staying in the old directory is harmless.
  }
}

}  // namespace

int main(int argc, char** argv) {
  kiln::ivshmem::ServerOptions options;
  bool verbose = false;
  bool foreground = false;
  bool help = false;
  std::string pid_file = default_pid_file();
  std::string size_text;
  std::string vectors_text;
  size_t max_peers = options.max_peers;

  CLI::App app{"ivshmem server", kProgram};
  app.set_help_flag();
  app.add_flag("-h", help);
  app.add_flag("-v", verbose);
  app.add_flag("-F", foreground);
  app.add_option("-p", pid_file);
  app.add_option("-S", options.socket_path);
  // -M and -m pick the kind of memory; like getopt, the last one given wins.
  app.add_option_function<std::string>("-M", [&](const std::string& name) {
       options.shm_name = name;
       options.shm_directory.clear();
     })->trigger_on_parse();
  app.add_option_function<std::string>("-m", [&](const std::string& directory) {
       options.shm_directory = directory;
     })->trigger_on_parse();
  app.add_option("-l", size_text);
  app.add_option("-n", vectors_text);
  app.add_option("--max-peers", max_peers);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& error) {
    usage_error(error.what());
  }
  if (help) {
    print_usage();
    return 0;
  }
  if (!app.remaining().empty()) usage_error(fmt::format("unexpected argument '{}'", app.remaining().front()));
  if (!size_text.empty()) {
    auto size = kiln::parse_size(size_text);
    if (!size || *size == 0) usage_error(fmt::format("cannot parse shm size '{}'", size_text));
    options.shm_size = *size;
  }
  if (!vectors_text.empty()) {
    char* end = nullptr;
    errno = 0;
    unsigned long long value = std::strtoull(vectors_text.c_str(), &end, 0);
    if (errno != 0 || end == vectors_text.c_str() || *end != '\0' || vectors_text[0] == '-' || value == 0) {
      usage_error(fmt::format("cannot parse n_vectors '{}'", vectors_text));
    }
    if (value > kiln::ivshmem::kMaxVectors) {
      usage_error(fmt::format("too many requested vectors (max is {})", kiln::ivshmem::kMaxVectors));
    }
    options.vectors = static_cast<unsigned>(value);
  }
  if (max_peers == 0 || max_peers > kiln::ivshmem::kMaxPeers) {
    usage_error(fmt::format("--max-peers must be between 1 and {}", kiln::ivshmem::kMaxPeers));
  }
  options.max_peers = max_peers;
  if (verbose && !foreground) usage_error("cannot use verbose in daemon mode");
  if (verbose) kiln::log::set_level(kiln::log::Level::Info);

  try {
    ::signal(SIGPIPE, SIG_IGN);
    raise_descriptor_limit();
    kiln::UniqueFd signals = kiln::ivshmem::block_signals_into_fd({SIGTERM, SIGINT});
    if (!foreground) {
      options.socket_path = absolute(options.socket_path);
      pid_file = absolute(pid_file);
    }
    // Created before detaching so that errors reach the terminal and the exit status.
    kiln::ivshmem::Server server(options);
    std::optional<std::string> written_pid_file;
    if (!foreground) {
      daemonize(pid_file);
      written_pid_file = pid_file;
    }
    server.run(signals.get());
    if (written_pid_file) ::unlink(written_pid_file->c_str());
  } catch (const kiln::Error& error) {
    fmt::print(stderr, "{}: {}\n", kProgram, error.what());
    return 1;
  }
  return 0;
}
