// kiln-ga: the guest agent. Options follow qemu-ga(8).
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "kiln/common/error.h"
#include "kiln/common/log.h"
#include "kiln/ga/server.h"

namespace {

constexpr const char* kDefaultConfig = "/etc/qemu/qemu-ga.conf";
constexpr const char* kDefaultHook = "/etc/qemu/fsfreeze-hook";

}  // namespace

int main(int argc, char** argv) {
  using kiln::ga::ServerOptions;
  CLI::App app{"kiln-ga: QEMU guest agent compatible agent"};
  app.set_version_flag("-V,--version", "kiln-ga " + kiln::ga::agent_version());

  // First pass for -c so that command-line options override the config file.
  std::string config_path;
  std::string method, path, logfile, pidfile, statedir, block, allow;
  std::string hook;
  bool daemonize = false, verbose = false, dump = false, retry = false;
  ServerOptions defaults;
  app.add_option("-m,--method", method, "transport: virtio-serial (default), isa-serial, unix-listen, vsock-listen");
  app.add_option("-p,--path", path, "device or socket path (vsock: CID:PORT)");
  app.add_option("-l,--logfile", logfile, "log to this file instead of stderr");
  app.add_option("-f,--pidfile", pidfile, "pid file (default /var/run/kiln-ga.pid)");
  auto* hook_option = app.add_option("-F,--fsfreeze-hook", hook, "fsfreeze hook script (default /etc/qemu/fsfreeze-hook)")
                          ->expected(0, 1);
  app.add_option("-t,--statedir", statedir, "folder for persistent state (default /var/run)");
  app.add_flag("-v,--verbose", verbose, "log extra debugging information");
  app.add_flag("-d,--daemonize", daemonize, "become a daemon");
  app.add_option("-b,--block-rpcs", block, "comma-separated commands to disable");
  app.add_option("-a,--allow-rpcs", allow, "comma-separated commands to enable (all others are disabled)");
  app.add_flag("-D,--dump-conf", dump, "print the effective configuration in key file format and exit");
  app.add_option("-c,--config", config_path, std::string("configuration file (default ") + kDefaultConfig + " if present)");
  app.add_flag("-r,--retry-path", retry, "wait for the channel device to appear instead of failing");

  // Test seams (see README): point system queries and changes elsewhere.
  auto* seams = app.add_option_group("test seams", "redirect system access (for tests)");
  seams->add_option("--sysfs-root", defaults.agent.paths.sysfs_root, "sysfs folder (default /sys)");
  seams->add_option("--proc-root", defaults.agent.paths.proc_root, "procfs folder (default /proc)");
  seams->add_option("--mountinfo", defaults.agent.paths.mountinfo, "mount table (default /proc/self/mountinfo)");
  seams->add_option("--os-release", defaults.agent.paths.os_release, "os-release file (default /etc/os-release)");
  seams->add_option("--helper-dir", defaults.agent.paths.helper_dir, "folder with shutdown, hwclock and chpasswd");
  seams->add_option("--clock-file", defaults.agent.paths.clock_file, "guest-set-time records the time here instead of setting the clock");
  seams->add_option("--passwd-file", defaults.agent.paths.passwd_file, "look users up in this passwd file");

  CLI11_PARSE(app, argc, argv);

  ServerOptions options = defaults;
  options.agent.state_dir = "/var/run";
  try {
    if (!config_path.empty()) {
      kiln::ga::load_config_file(config_path, options);
    } else if (::access(kDefaultConfig, R_OK) == 0) {
      kiln::ga::load_config_file(kDefaultConfig, options);
    }
  } catch (const kiln::Error& error) {
    std::fprintf(stderr, "kiln-ga: %s\n", error.what());
    return 1;
  }
  if (!method.empty()) options.method = method;
  if (!path.empty()) options.path = path;
  if (!logfile.empty()) options.logfile = logfile;
  if (!pidfile.empty()) {
    options.pidfile = pidfile;
    options.pidfile_requested = true;
  }
  if (hook_option->count() > 0) options.agent.fsfreeze_hook = hook.empty() ? kDefaultHook : hook;
  if (!statedir.empty()) options.agent.state_dir = statedir;
  if (verbose) options.verbose = true;
  if (daemonize) options.daemonize = true;
  if (retry) options.retry_path = true;
  if (!block.empty()) options.agent.block_rpcs = kiln::ga::split_rpc_list(block);
  if (!allow.empty()) options.agent.allow_rpcs = kiln::ga::split_rpc_list(allow);

  if (dump) {
    std::cout << kiln::ga::dump_config(options);
    return 0;
  }

  std::FILE* log_stream = nullptr;
  if (!options.logfile.empty()) {
    log_stream = std::fopen(options.logfile.c_str(), "a");
    if (!log_stream) {
      std::fprintf(stderr, "kiln-ga: failed to open log file '%s': %s\n", options.logfile.c_str(),
                   kiln::errno_text(errno).c_str());
      return 1;
    }
    std::setvbuf(log_stream, nullptr, _IOLBF, 0);
    kiln::log::set_stream(log_stream);
  }
  kiln::log::set_level(options.verbose ? kiln::log::Level::Debug : kiln::log::Level::Info);

  try {
    kiln::ga::run_server(options);
  } catch (const kiln::Error& error) {
    kiln::log::error("{}", error.what());
    if (log_stream) std::fprintf(stderr, "kiln-ga: %s\n", error.what());
    return 1;
  }
  if (log_stream) std::fclose(log_stream);
  return 0;
}
