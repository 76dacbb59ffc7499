#include "kiln/common/progress.h"

#include <fmt/format.h>

namespace kiln {

Progress::Progress(bool enabled, std::FILE* stream) : enabled_(enabled), stream_(stream) {
  if (enabled_) {
    std::lock_guard lock(mutex_);
    draw_locked(true);
  }
}

Progress::~Progress() { finish(); }

void Progress::set_total(uint64_t total) {
  std::lock_guard lock(mutex_);
  total_ = total;
}

void Progress::advance(uint64_t amount) {
  if (!enabled_) return;
  std::lock_guard lock(mutex_);
  done_ += amount;
  draw_locked(false);
}

void Progress::finish() {
  if (!enabled_) return;
  std::lock_guard lock(mutex_);
  if (finished_) return;
  finished_ = true;
  done_ = total_;
  draw_locked(true);
  fmt::print(stream_, "\n");
  std::fflush(stream_);
}

void Progress::draw_locked(bool force) {
  double percent = total_ == 0 ? (finished_ ? 100.0 : 0.0) : 100.0 * static_cast<double>(done_) / static_cast<double>(total_);
  if (percent > 100.0) percent = 100.0;
  // Redraw only when the figure moves by at least 1% to keep terminals quiet.
  if (!force && percent - last_drawn_ < 1.0) return;
  last_drawn_ = percent;
  fmt::print(stream_, "    ({:.2f}/100%)\r", percent);
  std::fflush(stream_);
}

}  // namespace kiln
