// Asynchronous requests for aio_read/aio_write: a small pool of worker
// threads runs queued requests; each request prints its own completion lines
// when it finishes, and drain() (aio_flush, close, exit) waits for all.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln::io {

class AioQueue {
 public:
  explicit AioQueue(unsigned workers = 4);
  ~AioQueue();
  AioQueue(const AioQueue&) = delete;
  AioQueue& operator=(const AioQueue&) = delete;

  void submit(std::function<void()> request);
  // Returns when every submitted request has completed.
  void drain();

 private:
  void worker_loop();

  std::mutex mutex_;
  std::condition_variable queued_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> queue_;
  size_t in_flight_ = 0;  // queued or running
  bool stopping_ = false;
  std::vector<std::thread> workers_;
  const unsigned worker_count_;
};

}  // namespace kiln::io
