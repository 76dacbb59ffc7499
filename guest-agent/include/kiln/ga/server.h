// kiln-ga's options (command line and qemu-ga's key file) and the channel
// loop that carries QMP between the host and the Agent.
#pragma once

#include <string>
#include <vector>

#include "kiln/ga/agent.h"

namespace kiln::ga {

struct ServerOptions {
  std::string method = "virtio-serial";  // virtio-serial | isa-serial | unix-listen | vsock-listen
  std::string path;                      // empty: the method's default
  std::string logfile;
  std::string pidfile = "/var/run/kiln-ga.pid";
  bool pidfile_requested = false;  // -f given: write it even in the foreground
  bool daemonize = false;
  bool verbose = false;
  bool retry_path = false;
  AgentConfig agent;
};

std::string default_channel_path(const std::string& method);
// Reads a qemu-ga key file ([general] section) over `options`. Throws kiln::Error.
void load_config_file(const std::string& path, ServerOptions& options);
// The effective configuration in the same key file format (-D).
std::string dump_config(const ServerOptions& options);
// Splits an RPC list as qemu-ga does ("a,b" or "a;b").
std::vector<std::string> split_rpc_list(const std::string& text);

// Runs the agent until SIGTERM/SIGINT. Throws kiln::Error on setup failures.
void run_server(const ServerOptions& options);

}  // namespace kiln::ga
