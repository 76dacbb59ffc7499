// kiln-nbd: serve any image the block layer opens over NBD, with qemu-nbd's
// command line (see man/kiln-nbd.8).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "kiln/block/image.h"
#include "kiln/block/snapshot_overlay.h"
#include "kiln/common/error.h"
#include "kiln/common/key_value.h"
#include "kiln/common/log.h"
#include "kiln/common/size.h"
#include "server.h"

namespace {

using namespace kiln;
using namespace kiln::nbd;

constexpr const char* kProgram = "kiln-nbd";

struct ExitCode {
  int code;
};

void print_error(const std::string& message) { std::fprintf(stderr, "%s: %s\n", kProgram, message.c_str()); }

struct CommandLine {
  std::string filename;
  std::string format;
  bool read_only = false;
  std::string export_name;
  std::string description;
  std::string port = "10809";
  std::string bind_address;
  std::string socket_path;
  bool persistent = false;
  unsigned shared = 1;
  bool snapshot = false;
  std::string load_snapshot;
  std::string cache = "writeback";
  bool nocache = false;
  std::string aio = "threads";
  std::string discard = "ignore";
  std::string detect_zeroes = "off";
  std::string offset;
  std::vector<std::string> objects;
  std::string tls_creds;
  std::string tls_authz;
  std::string pid_file;
  bool fork = false;
  bool allocation_depth = false;
  std::vector<std::string> bitmaps;
  bool verbose = false;
  bool image_opts = false;
};

struct Objects {
  std::map<std::string, TlsCredentials> credentials;
  std::map<std::string, TlsAuthorization> authorizations;
};

// --object authz-simple,id=ID,identity=NAME
TlsAuthorization parse_authz_simple(const KeyValueList& options) {
  TlsAuthorization authorization;
  bool has_identity = false;
  for (size_t i = 1; i < options.size(); ++i) {
    const auto& [key, value] = options[i];
    if (key == "id") {
      authorization.id = value;
    } else if (key == "identity") {
      authorization.identity = value;
      has_identity = true;
    } else if (key == "loaded") {
      continue;
    } else {
      throw invalid_argument("Property 'authz-simple.{}' not found", key);
    }
  }
  if (authorization.id.empty()) throw invalid_argument("Parameter 'id' is missing");
  if (!has_identity) throw invalid_argument("Parameter 'identity' is missing for object '{}'", authorization.id);
  return authorization;
}

// --object tls-creds-x509,id=ID,dir=DIR,endpoint=server,verify-peer=on|off / tls-creds-psk,... / authz-simple,...
Objects parse_objects(const std::vector<std::string>& objects) {
  Objects parsed;
  std::set<std::string> ids;
  for (const std::string& text : objects) {
    KeyValueList options = parse_key_value_list(text);
    if (options.empty() || !options.front().second.empty()) throw invalid_argument("Invalid object '{}'", text);
    const std::string type = options.front().first;
    TlsCredentials creds;
    if (type == "authz-simple") {
      TlsAuthorization authorization = parse_authz_simple(options);
      if (!ids.insert(authorization.id).second) throw invalid_argument("attempt to add duplicate property '{}' to object", authorization.id);
      parsed.authorizations[authorization.id] = std::move(authorization);
      continue;
    } else if (type == "authz-list" || type == "authz-listfile" || type == "authz-pam") {
      throw invalid_argument("object type '{}' is not supported (only authz-simple)", type);
    } else if (type == "tls-creds-x509") {
      creds.kind = TlsCredentials::Kind::X509;
    } else if (type == "tls-creds-psk") {
      creds.kind = TlsCredentials::Kind::Psk;
    } else if (type == "secret") {
      continue;  // secrets are accepted (for encrypted images the block layer reads)
    } else {
      throw invalid_argument("invalid object type: {}", type);
    }
    for (size_t i = 1; i < options.size(); ++i) {
      const auto& [key, value] = options[i];
      if (key == "id") {
        creds.id = value;
      } else if (key == "dir") {
        creds.dir = value;
      } else if (key == "endpoint") {
        creds.endpoint = value;
      } else if (key == "verify-peer") {
        if (value == "on" || value == "yes" || value == "true") {
          creds.verify_peer = true;
        } else if (value == "off" || value == "no" || value == "false") {
          creds.verify_peer = false;
        } else {
          throw invalid_argument("Parameter 'verify-peer' expects 'on' or 'off'");
        }
      } else if (key == "username" || key == "priority" || key == "sanity-check" || key == "loaded" || key == "passwordid") {
        continue;  // accepted for compatibility; OpenSSL picks its own priorities
      } else {
        throw invalid_argument("Property '{}.{}' not found", type, key);
      }
    }
    if (creds.id.empty()) throw invalid_argument("Parameter 'id' is missing");
    if (creds.dir.empty()) throw invalid_argument("Parameter 'dir' is missing for object '{}'", creds.id);
    if (!ids.insert(creds.id).second) throw invalid_argument("attempt to add duplicate property '{}' to object", creds.id);
    parsed.credentials[creds.id] = creds;
  }
  return parsed;
}

bool option_on(const std::string& key, const std::string& value) {
  if (value == "on" || value == "true" || value == "yes") return true;
  if (value == "off" || value == "false" || value == "no") return false;
  throw invalid_argument("Parameter '{}' expects 'on' or 'off'", key);
}

// --image-opts: the file name is an option string such as
// "driver=qcow2,file.filename=x.qcow2,cache.direct=on". Keys the block layer's
// format drivers know (raw's offset/size, qcow2's cache sizes...) are passed
// to it; the protocol is always a local file. Returns the file name.
std::string apply_image_opts(const std::string& text, block::OpenOptions& open_options) {
  std::string filename;
  std::string driver;
  for (auto& [key, value] : parse_key_value_list(text)) {
    if (key == "driver") {
      driver = value;
    } else if (key == "file" || key == "file.filename") {
      filename = value;
    } else if (key == "filename") {
      if (driver != "file" && driver != "host_device") {
        throw invalid_argument("Block format '{}' does not support the option 'filename'", driver);
      }
      filename = value;
    } else if (key == "file.driver") {
      if (value != "file" && value != "host_device") throw invalid_argument("Unknown protocol driver '{}' (only 'file')", value);
    } else if (key == "read-only") {
      open_options.read_only = open_options.read_only || option_on(key, value);
    } else if (key == "force-share") {
      open_options.force_share = option_on(key, value);
    } else if (key == "cache.direct" || key == "file.cache.direct") {
      if (option_on(key, value)) {
        // O_DIRECT on top of whatever --cache chose, keeping O_DSYNC if it had it.
        const bool dsync = open_options.cache == block::CacheMode::Writethrough || open_options.cache == block::CacheMode::Directsync;
        open_options.cache = dsync ? block::CacheMode::Directsync : block::CacheMode::None;
      }
    } else if (key == "cache.no-flush") {
      if (option_on(key, value)) open_options.cache = block::CacheMode::Unsafe;
    } else if (key == "file.locking" || key == "locking") {
      open_options.locking = value == "auto" || option_on(key, value);
    } else if (key == "file.aio" || key == "aio" || key == "discard" || key == "file.discard" || key == "node-name" ||
               key == "file.node-name") {
      continue;  // accepted: kiln picks its own I/O and kiln-nbd's --discard governs discards
    } else if (key.rfind("file.", 0) == 0) {
      throw invalid_argument("Block protocol 'file' doesn't support the option '{}'", key.substr(5));
    } else {
      open_options.driver_options.emplace_back(key, value);
    }
  }
  if (filename.empty()) throw invalid_argument("A block device must be specified for \"file\"");
  // "driver=file" is the file itself, which kiln serves as raw.
  open_options.format = driver == "file" || driver == "host_device" ? "raw" : driver;
  return filename;
}

// Listening sockets handed over by systemd (LISTEN_PID / LISTEN_FDS), if any.
std::vector<UniqueFd> socket_activation_fds() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* count = std::getenv("LISTEN_FDS");
  if (pid == nullptr || count == nullptr) return {};
  if (std::strtol(pid, nullptr, 10) != getpid()) return {};
  const long n = std::strtol(count, nullptr, 10);
  if (n != 1) throw invalid_argument("qemu-nbd only supports systemd socket activation with LISTEN_FDS=1 (got {})", count);
  std::vector<UniqueFd> fds;
  fds.emplace_back(3);
  unsetenv("LISTEN_PID");
  unsetenv("LISTEN_FDS");
  return fds;
}

int run(CommandLine& cli) {
  if (cli.verbose) log::set_level(log::Level::Info);
  if (cli.image_opts && !cli.format.empty()) throw invalid_argument("--image-opts and -f are mutually exclusive");
  if (!cli.tls_authz.empty() && cli.tls_creds.empty()) throw invalid_argument("--tls-authz is not permitted without --tls-creds");

  block::OpenOptions open_options;
  open_options.format = cli.format;
  if (cli.nocache) cli.cache = "none";
  auto cache = block::parse_cache_mode(cli.cache);
  if (!cache) throw invalid_argument("Invalid cache mode '{}'", cli.cache);
  open_options.cache = *cache;
  if (cli.aio != "threads" && cli.aio != "native" && cli.aio != "io_uring") throw invalid_argument("Invalid aio mode '{}'", cli.aio);
  bool discard_unmap;
  if (cli.discard == "ignore" || cli.discard == "off") {
    discard_unmap = false;
  } else if (cli.discard == "unmap" || cli.discard == "on") {
    discard_unmap = true;
  } else {
    throw invalid_argument("Invalid discard option specified");
  }
  DetectZeroes detect_zeroes;
  if (cli.detect_zeroes == "off") {
    detect_zeroes = DetectZeroes::Off;
  } else if (cli.detect_zeroes == "on") {
    detect_zeroes = DetectZeroes::On;
  } else if (cli.detect_zeroes == "unmap") {
    if (!discard_unmap) throw invalid_argument("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap");
    detect_zeroes = DetectZeroes::Unmap;
  } else {
    throw invalid_argument("parameter 'detect-zeroes' does not accept value '{}'", cli.detect_zeroes);
  }
  if (!cli.offset.empty()) {
    auto offset = parse_size(cli.offset);
    if (!offset) throw invalid_argument("Invalid offset '{}'", cli.offset);
    open_options.driver_options.emplace_back("offset", std::to_string(*offset));
  }
  if (!cli.load_snapshot.empty()) {
    if (cli.snapshot) throw invalid_argument("-l and -s can not be used together");
    open_options.snapshot = cli.load_snapshot;
    cli.read_only = true;  // an internal snapshot is served read-only, as qemu-nbd does
  }
  open_options.read_only = cli.read_only || cli.snapshot;
  std::string filename = cli.filename;
  if (cli.image_opts) {
    try {
      filename = apply_image_opts(cli.filename, open_options);
      // A read-only node cannot back a writable export (qemu-nbd says the same).
      if (open_options.read_only && !cli.read_only && !cli.snapshot) throw invalid_argument("Block node is read-only");
    } catch (const Error& error) {
      throw with_context(error, fmt::format("Failed to blk_new_open '{}'", cli.filename));
    }
  }
  if (cli.snapshot) open_options.force_share = false;

  // TLS credentials.
  std::unique_ptr<TlsContext> tls;
  Objects objects = parse_objects(cli.objects);
  if (!cli.tls_creds.empty()) {
    auto found = objects.credentials.find(cli.tls_creds);
    if (found == objects.credentials.end()) throw invalid_argument("No TLS credentials with id '{}'", cli.tls_creds);
    std::optional<TlsAuthorization> authorization;
    if (!cli.tls_authz.empty()) {
      auto authz = objects.authorizations.find(cli.tls_authz);
      if (authz == objects.authorizations.end()) throw invalid_argument("No authorization object with id '{}'", cli.tls_authz);
      authorization = authz->second;
    }
    tls = TlsContext::create(found->second, std::move(authorization));
  }

  // Listening sockets before the image, so address errors come first (as qemu-nbd).
  std::vector<UniqueFd> listeners = socket_activation_fds();
  if (!listeners.empty()) {
    if (!cli.socket_path.empty() || !cli.bind_address.empty() || cli.port != "10809") {
      throw invalid_argument("-p, -b and -k cannot be used with systemd socket activation");
    }
  } else if (!cli.socket_path.empty()) {
    listeners.push_back(listen_unix(cli.socket_path));
  } else {
    listeners = listen_tcp(cli.bind_address.empty() ? "0.0.0.0" : cli.bind_address, cli.port);
  }

  std::unique_ptr<block::Image> image;
  try {
    image = block::Image::open(filename, open_options);
  } catch (const Error& error) {
    throw with_context(error, fmt::format("Failed to blk_new_open '{}'", cli.filename));  // qemu-nbd's wording
  }
  std::unique_ptr<block::Node> overlay;
  block::Node* node = &image->top();
  block::Node* bitmap_node = node;
  const std::vector<block::Node::DirtyBitmapInfo> available = bitmap_node->dirty_bitmaps();
  for (const std::string& bitmap : cli.bitmaps) {
    auto it = std::find_if(available.begin(), available.end(), [&](const auto& b) { return b.name == bitmap; });
    if (it == available.end()) throw invalid_argument("Bitmap '{}' is not found", bitmap);
    if (!it->consistent) throw invalid_argument("Bitmap '{}' is inconsistent and cannot be used", bitmap);
  }
  if (cli.snapshot) {
    overlay = block::create_snapshot_overlay(std::move(image));
    node = overlay.get();
  }

  ServerOptions options;
  options.export_config = {.node = node,
                           .name = cli.export_name,
                           .description = cli.description,
                           .read_only = cli.read_only,
                           // One shared node behind every connection: a flush on one flushes all
                           // (advertised, like qemu-nbd, when several clients may connect).
                           .multi_conn = cli.shared != 1,
                           .discard_unmap = discard_unmap,
                           .detect_zeroes = detect_zeroes,
                           .allocation_depth = cli.allocation_depth,
                           .bitmap_node = bitmap_node,
                           .bitmaps = cli.bitmaps};
  options.persistent = cli.persistent;
  options.shared = cli.shared == 0 ? UINT_MAX : cli.shared;  // -e 0: unlimited
  options.tls = tls.get();
  options.workers = std::max(4u, std::min(16u, std::thread::hardware_concurrency() * 2));

  int ready_pipe[2] = {-1, -1};
  if (cli.fork) {
    if (pipe(ready_pipe) == -1) throw system_error(errno, "Failed to create pipe");
    pid_t pid = ::fork();
    if (pid < 0) throw system_error(errno, "Failed to fork");
    if (pid > 0) {
      ::close(ready_pipe[1]);
      char byte = 0;
      ssize_t n = ::read(ready_pipe[0], &byte, 1);
      _exit(n == 1 ? 0 : 1);  // the child reports its own errors
    }
    ::close(ready_pipe[0]);
    setsid();
  }
  if (!cli.pid_file.empty()) {
    std::ofstream pid_file(cli.pid_file);
    pid_file << getpid() << "\n";
    if (!pid_file) throw system_error(errno, "Failed to write pid file '{}'", cli.pid_file);
  }

  // Signals are taken by a thread with sigwait, so stopping may lock.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGHUP);
  sigaddset(&signals, SIGUSR2);  // only used to end the signal thread
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  Server server(std::move(options), std::move(listeners));
  std::thread signal_thread([&] {
    int received = 0;
    sigwait(&signals, &received);
    if (received != SIGUSR2) server.stop();
  });
  if (cli.fork) {
    char byte = 1;
    [[maybe_unused]] ssize_t n = ::write(ready_pipe[1], &byte, 1);
    ::close(ready_pipe[1]);
    int null_fd = ::open("/dev/null", O_RDWR);
    if (null_fd >= 0) {
      dup2(null_fd, STDIN_FILENO);
      dup2(null_fd, STDOUT_FILENO);
      if (!cli.verbose) dup2(null_fd, STDERR_FILENO);
      ::close(null_fd);
    }
  }
  server.run();
  const ReadStats& reads = server.read_stats();
  log::info("kiln-nbd: {} reads zero-copy ({} answered on the connection thread), {} read into memory", reads.zero_copy.load(),
            reads.answered_now.load(), reads.copied.load());
  // Wake the signal thread if no signal came.
  pthread_kill(signal_thread.native_handle(), SIGUSR2);
  signal_thread.join();

  int status = 0;
  try {
    node->flush();
  } catch (const Error& error) {
    print_error(error.what());
    status = 1;
  }
  if (!cli.socket_path.empty()) ::unlink(cli.socket_path.c_str());
  if (!cli.pid_file.empty()) ::unlink(cli.pid_file.c_str());
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"kiln-nbd: serve a disk image over NBD (qemu-nbd compatible)", kProgram};
  app.set_version_flag("-V,--version", "kiln-nbd version 0.1.0 (compatible with qemu-nbd 7.2)");
  CommandLine cli;
  app.add_option("filename", cli.filename, "Image to export")->required();
  app.add_option("-f,--format", cli.format, "Image format (probed when absent)");
  app.add_flag("-r,--read-only", cli.read_only, "Export read-only");
  app.add_option("-x,--export-name", cli.export_name, "Export name (default: empty)");
  app.add_option("-D,--description", cli.description, "Export description");
  app.add_option("-p,--port", cli.port, "TCP port (default 10809)");
  app.add_option("-b,--bind", cli.bind_address, "Address to listen on (default 0.0.0.0)");
  app.add_option("-k,--socket", cli.socket_path, "UNIX socket to listen on");
  app.add_flag("-t,--persistent", cli.persistent, "Keep serving after the last client disconnects");
  app.add_option("-e,--shared", cli.shared, "Clients served at once (default 1, 0 = unlimited)");
  app.add_flag("-s,--snapshot", cli.snapshot, "Writes go to a temporary overlay");
  app.add_option("-l,--load-snapshot", cli.load_snapshot, "Serve an internal snapshot (read-only)");
  app.add_option("--cache", cli.cache, "Cache mode: none, writeback, unsafe, directsync, writethrough");
  app.add_flag("-n,--nocache", cli.nocache, "Same as --cache=none");
  app.add_option("--aio", cli.aio, "AIO mode: threads, native, io_uring (accepted; Kiln picks its own)");
  app.add_option("--discard", cli.discard, "Discard requests: ignore (default) or unmap");
  app.add_option("--detect-zeroes", cli.detect_zeroes, "off (default), on, unmap");
  app.add_option("-o,--offset", cli.offset, "Offset into a raw image");
  app.add_option("--object", cli.objects, "tls-creds-x509,... / tls-creds-psk,... / secret,...");
  app.add_option("--tls-creds", cli.tls_creds, "Require TLS with the credentials object of this id");
  app.add_option("--tls-authz", cli.tls_authz, "Only let in TLS clients an authz-simple object of this id allows");
  app.add_option("--pid-file", cli.pid_file, "Write the server's pid to this file");
  app.add_flag("--fork", cli.fork, "Fork once the server is ready");
  app.add_flag("-A,--allocation-depth", cli.allocation_depth, "Offer the qemu:allocation-depth meta context");
  app.add_option("-B,--bitmap", cli.bitmaps, "Offer qemu:dirty-bitmap:NAME");
  app.add_flag("-v,--verbose", cli.verbose, "Log connections");
  app.add_flag("--image-opts", cli.image_opts, "Treat the file name as an option string (driver=...,file.filename=...)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::ParseError& error) {
    print_error(error.what());
    return 1;
  }
  try {
    return run(cli);
  } catch (const Error& error) {
    print_error(error.what());
    return 1;
  } catch (const std::exception& error) {
    print_error(error.what());
    return 1;
  }
}
