// Progress reporting for long operations (kiln-img convert -p and friends).
// Prints qemu-img's "    (42.00/100%)" line, redrawn in place; thread-safe.
#pragma once

#include <cstdint>
#include <cstdio>
#include <mutex>

namespace kiln {

class Progress {
 public:
  // Disabled progress does nothing. Output goes to `stream` (stdout by default).
  explicit Progress(bool enabled, std::FILE* stream = stdout);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void set_total(uint64_t total);
  void advance(uint64_t amount);
  // Prints 100% and the final newline (also done by the destructor).
  void finish();

 private:
  void draw_locked(bool force);

  bool enabled_;
  std::FILE* stream_;
  std::mutex mutex_;
  uint64_t total_ = 0;
  uint64_t done_ = 0;
  double last_drawn_ = -1.0;
  bool finished_ = false;
};

}  // namespace kiln
