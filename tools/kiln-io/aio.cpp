#include "aio.h"

#include <cerrno>
#include <cstdio>
#include <exception>

namespace kiln::io {

AioQueue::AioQueue(unsigned workers) : worker_count_(workers) {}

AioQueue::~AioQueue() {
  drain();
  {
    std::lock_guard guard(mutex_);
    stopping_ = true;
  }
  queued_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void AioQueue::submit(std::function<void()> request) {
  {
    std::lock_guard guard(mutex_);
    // Threads start with the first request: most runs never use aio.
    if (workers_.empty()) {
      for (unsigned i = 0; i < worker_count_; ++i) workers_.emplace_back([this] { worker_loop(); });
    }
    queue_.push_back(std::move(request));
    ++in_flight_;
  }
  queued_.notify_one();
}

void AioQueue::drain() {
  std::unique_lock guard(mutex_);
  idle_.wait(guard, [&] { return in_flight_ == 0; });
}

void AioQueue::worker_loop() {
  std::unique_lock guard(mutex_);
  while (true) {
    queued_.wait(guard, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping
    auto request = std::move(queue_.front());
    queue_.pop_front();
    guard.unlock();
    try {
      request();
    } catch (const std::exception& error) {  // requests report their own errors; this is a last resort
      std::fprintf(stderr, "%s: aio request failed: %s\n", program_invocation_short_name, error.what());
    }
    guard.lock();
    if (--in_flight_ == 0) idle_.notify_all();
  }
}

}  // namespace kiln::io
