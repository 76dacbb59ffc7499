// A small epoll loop: the one event loop style of the ivshmem server and client.
#pragma once

#include <cstdint>
#include <functional>
#include <unordered_map>

#include "kiln/common/fd.h"

namespace kiln::ivshmem {

class EventLoop {
 public:
  using Handler = std::function<void(uint32_t events)>;

  EventLoop();

  // Watches `fd` (not owned) for epoll `events` and calls `handler` with what happened.
  void add(int fd, uint32_t events, Handler handler);
  void modify(int fd, uint32_t events);
  // Stops watching; safe from inside a handler (pending events for it are dropped).
  void remove(int fd);
  bool watching(int fd) const { return handlers_.count(fd) != 0; }

  // Waits up to timeout_ms (-1: forever) and dispatches the ready handlers.
  // Returns how many were dispatched (0 on timeout or EINTR).
  int run_once(int timeout_ms);

 private:
  struct Slot {
    uint32_t generation;
    Handler handler;
  };
  UniqueFd epoll_;
  uint32_t next_generation_ = 1;
  std::unordered_map<int, Slot> handlers_;
};

// Blocks `signals` for the process and returns a signalfd for them (non-blocking).
UniqueFd block_signals_into_fd(std::initializer_list<int> signals);

}  // namespace kiln::ivshmem
