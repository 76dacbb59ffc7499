#include "kiln/common/log.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace kiln::log {
namespace {

Level level_from_environment() {
  const char* value = std::getenv("KILN_LOG");
  if (value == nullptr) return Level::Warn;
  if (std::strcmp(value, "debug") == 0) return Level::Debug;
  if (std::strcmp(value, "info") == 0) return Level::Info;
  if (std::strcmp(value, "error") == 0) return Level::Error;
  if (std::strcmp(value, "off") == 0) return Level::Off;
  return Level::Warn;
}

std::atomic<Level> current_level{level_from_environment()};
std::atomic<std::FILE*> current_stream{nullptr};
std::mutex write_mutex;

const char* level_name(Level level) {
  switch (level) {
    case Level::Debug: return "debug";
    case Level::Info: return "info";
    case Level::Warn: return "warning";
    case Level::Error: return "error";
    case Level::Off: break;
  }
  return "";
}

}  // namespace

void set_level(Level level) { current_level = level; }
Level level() { return current_level; }
void set_stream(std::FILE* stream) { current_stream = stream; }

void write(Level message_level, std::string_view message) {
  std::FILE* stream = current_stream.load();
  if (stream == nullptr) stream = stderr;
  std::lock_guard lock(write_mutex);
  fmt::print(stream, "kiln {}: {}\n", level_name(message_level), message);
  std::fflush(stream);
}

}  // namespace kiln::log
