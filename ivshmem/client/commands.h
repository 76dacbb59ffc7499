// The client's command language, shared by the interactive prompt and the
// scripted -c mode.
#pragma once

#include <chrono>
#include <string>

#include "session.h"

namespace kiln::ivshmem {

class CommandRunner {
 public:
  CommandRunner(ClientSession& session, std::chrono::milliseconds default_timeout)
      : session_(session), default_timeout_(default_timeout) {}

  // Runs one command line; throws kiln::Error with a one-line message on failure.
  void run(const std::string& line);
  bool quit_requested() const { return quit_; }

  static void print_help();

 private:
  ClientSession& session_;
  std::chrono::milliseconds default_timeout_;
  bool quit_ = false;
};

}  // namespace kiln::ivshmem
