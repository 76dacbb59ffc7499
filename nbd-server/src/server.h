// The socket side of kiln-nbd: listening sockets, one reader thread per
// connection feeding its Session, and a worker pool shared by all
// connections that executes requests (so replies may come out of order).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kiln/common/fd.h"
#include "session.h"
#include "tls.h"

namespace kiln::nbd {

class WorkerPool final : public Executor {
 public:
  explicit WorkerPool(unsigned threads);
  ~WorkerPool() override;
  void submit(Task& task) override;

 private:
  void loop();
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task*> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

struct ServerOptions {
  ExportConfig export_config;
  SessionLimits limits;
  bool persistent = false;      // -t: keep serving after the last client leaves
  unsigned shared = 1;          // -e: clients served at once
  unsigned workers = 8;
  const TlsContext* tls = nullptr;  // set: TLS is required
};

// Listening sockets: "-k PATH" or "-b ADDRESS -p PORT"; throws kiln::Error.
UniqueFd listen_unix(const std::string& path);
std::vector<UniqueFd> listen_tcp(const std::string& address, const std::string& port);

class Server {
 public:
  Server(ServerOptions options, std::vector<UniqueFd> listeners);
  ~Server();
  // Serves until stop() or, without `persistent`, until the first client(s)
  // have all gone. Waits for every connection to end before returning.
  void run();
  // Safe from any thread (signals are taken by a sigwait thread in main).
  void stop();
  // Serves one already-connected socket (used by run(); also by tests).
  void serve_connection(UniqueFd fd);
  unsigned connections_served() const { return served_.load(); }
  const ReadStats& read_stats() const { return read_stats_; }

 private:
  void connection_thread(int fd);

  ServerOptions options_;
  std::vector<UniqueFd> listeners_;
  UniqueFd stop_event_;  // eventfd: written by stop()
  BufferPool buffers_;   // payload buffers of every connection (outlives the workers)
  ReadStats read_stats_;
  WorkerPool pool_;

  std::mutex mutex_;
  std::condition_variable changed_;
  std::set<int> active_;  // sockets of live connections
  unsigned threads_running_ = 0;
  std::atomic<unsigned> served_{0};
  std::atomic<bool> stopping_{false};
};

}  // namespace kiln::nbd
